//! A job's progress for the application's own pages: an event stream per job and a small
//! script that turns it into a progress bar, without the dashboard and without a polling loop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use super::{LIVE_INTERVAL, Shared};

const SCRIPT: &str = include_str!("assets/progress.js");

type Watcher = dyn Fn(&Parts, i64) -> bool + Send + Sync;

/// Serves `GET /jobs/{id}` (Server-Sent Events: the job's state and progress, as the
/// dashboard's `job` events, until it finishes) and `GET /progress.js` (a script that draws a
/// live progress bar in every element with `data-skiplock-job`). Nest it anywhere:
///
/// ```no_run
/// # fn example(pool: sqlx::PgPool) -> axum::Router {
/// use skiplock::web::JobEvents;
///
/// // Who may watch which job: here, anyone (check the job belongs to the user in yours).
/// let events = JobEvents::new(pool, |_request, _job_id| true);
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
/// once, and reloads the page then if the element has `data-skiplock-reload`. One poller per
/// router reads every watched job in one statement each round.
pub struct JobEvents {
    pool: PgPool,
    may_watch: Arc<Watcher>,
    interval: Duration,
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents")
            .field("interval", &self.interval)
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
            pool,
            may_watch: Arc::new(may_watch),
            interval: LIVE_INTERVAL,
        }
    }

    /// How often watched jobs are read (default [`LIVE_INTERVAL`]; at least 200 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(200));
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        let shared = Arc::new(Shared::new(
            super::Dashboard::new(self.pool).live_interval(self.interval),
        ));
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
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    }
    match shared.hub.job(shared, id) {
        Some(events) => Sse::new(events).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many jobs watched at once",
        )
            .into_response(),
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
