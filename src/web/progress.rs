//! A job's progress for the application's own pages: an event stream per job and a small
//! script that turns it into a progress bar, without the dashboard and without a polling loop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Dashboard, LIVE_INTERVAL, Shared};

const SCRIPT: &str = include_str!("assets/progress.js");

type Watcher = dyn Fn(&Parts, i64) -> bool + Send + Sync;

/// Serves `GET /jobs/{id}` (Server-Sent Events: the job's state and progress, as the
/// dashboard's `job` events, until it finishes) and `GET /progress.js` (a script that draws a
/// live progress bar in every element with `data-skiplock-job`). Nest it anywhere:
///
/// ```no_run
/// # #[derive(Clone)] struct User { jobs: Vec<i64> }
/// # impl User { fn started(&self, job: i64) -> bool { self.jobs.contains(&job) } }
/// # fn example(pool: sqlx::PgPool) -> axum::Router {
/// use skiplock::web::JobEvents;
///
/// // Who may watch which job: the user who started it. Your auth middleware, layered
/// // around this router, put the `User` in the request's extensions.
/// let events = JobEvents::new(pool, |request, job_id| {
///     request
///         .extensions
///         .get::<User>()
///         .is_some_and(|user| user.started(job_id))
/// })
/// .redact_keys(["token"]);
/// axum::Router::new().nest("/progress", events.router())
/// # }
/// ```
///
/// and in a page (no inline script needed):
///
/// ```html
/// <div data-skiplock-job data-skiplock-events="/progress/jobs/42" data-skiplock-reload>
///   <progress max="100"></progress> <span data-skiplock-label></span>
/// </div>
/// <script src="/progress/progress.js" defer></script>
/// ```
///
/// The script sets the bar and the label, sets `data-state` on the element, dispatches
/// `skiplock:job` events (the event's `detail` is the job's JSON) and `skiplock:finished`
/// once, and reloads the page then if the element has `data-skiplock-reload`. The streams watch
/// their jobs through one [`Results`](crate::results::Results) per router (one `LISTEN`
/// connection while a stream is open: progress and outcomes are pushed as they are stored, and
/// every watched job is also read each [`interval`](Self::interval)), up to
/// [`MAX_WATCHED_JOBS`](super::MAX_WATCHED_JOBS) jobs at once. A stream ends after the event
/// that says its job finished (or when the job is deleted), and every stream ends when the
/// [shutdown token](Self::shutdown_on) is cancelled.
pub struct JobEvents {
    /// What the streams share with the dashboard: the pool, interval and shutdown token.
    dashboard: Dashboard,
    may_watch: Arc<Watcher>,
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents")
            .field("interval", &self.dashboard.live_interval)
            .finish_non_exhaustive()
    }
}

impl JobEvents {
    /// Streams for the jobs `may_watch` allows (called with the request and the job's id;
    /// `false` answers 404, as for a job that does not exist).
    pub fn new(
        pool: PgPool,
        may_watch: impl Fn(&Parts, i64) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            dashboard: Dashboard::new(pool).live_interval(LIVE_INTERVAL),
            may_watch: Arc::new(may_watch),
        }
    }

    /// How often watched jobs are read whatever notifications say (default
    /// [`LIVE_INTERVAL`]; at least 200 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.dashboard = self.dashboard.live_interval(interval);
        self
    }

    /// Watches jobs through the application's own [`Results`](crate::results::Results), as
    /// [`Dashboard::results`] does.
    pub fn results(mut self, results: crate::results::Results) -> Self {
        self.dashboard = self.dashboard.results(results);
        self
    }

    /// Rewrites each job's progress value before it is sent, as [`Dashboard::redact`] does
    /// (called with [`Field::Progress`](super::Field::Progress), the job's kind and the
    /// value). Without one, the streams send the progress as the handler stored it, with the
    /// job's id, kind, queue, state, attempts and `percent`: give a redactor when what the
    /// handler stores is not for whoever `may_watch` admits. Replaces an earlier
    /// [`redact_keys`](Self::redact_keys).
    pub fn redact(
        mut self,
        redactor: impl Fn(super::Field, &str, &mut serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        self.dashboard = self.dashboard.redact(redactor);
        self
    }

    /// Redacts, at any depth of each progress value, the value of every object key that
    /// contains one of `keys` (ignoring case), as [`Dashboard::redact_keys`] does. Replaces
    /// an earlier [`redact`](Self::redact).
    pub fn redact_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dashboard = self.dashboard.redact_keys(keys);
        self
    }

    /// Ends every stream, and stops the poller, once `token` is cancelled: pass the token
    /// your server's graceful shutdown waits on (see [`Dashboard::shutdown_on`], which this
    /// mirrors). By default the router has a token of its own, which
    /// [`shutdown_token`](Self::shutdown_token) returns.
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.dashboard = self.dashboard.shutdown_on(token);
        self
    }

    /// The token that ends these streams (see [`shutdown_on`](Self::shutdown_on)).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.dashboard.shutdown_token()
    }

    /// The router.
    pub fn router(self) -> Router {
        let shared = Arc::new(Shared::new(self.dashboard));
        let state = Arc::new((shared, self.may_watch));
        Router::new()
            .route("/jobs/{id}", get(stream))
            .route("/progress.js", get(script))
            .with_state(state)
    }
}

type EventsState = Arc<(Arc<Shared>, Arc<Watcher>)>;

async fn stream(
    State(state): State<EventsState>,
    Path(id): Path<i64>,
    request: axum::extract::Request,
) -> Response {
    let (shared, may_watch) = &*state;
    let (parts, _) = request.into_parts();
    if !may_watch(&parts, id) {
        return (axum::http::StatusCode::NOT_FOUND, "no such job").into_response();
    }
    match super::job_stream(shared, id).await {
        Ok(stream) => stream,
        Err(refusal) => refusal.into_response(),
    }
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
}
