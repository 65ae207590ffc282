//! The dashboard: web pages and a JSON API over [`skiplock::inspect`](crate::inspect), as an
//! [`axum::Router`] an application mounts under any path (feature `web`).
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use skiplock::web::{Access, Dashboard};
//!
//! let dashboard = Dashboard::new(pool)
//!     // Without an authorizer the dashboard is read-only for everyone who reaches it.
//!     .authorizer(|request: &axum::http::request::Parts| {
//!         // Your own middleware authenticated the request: decide from what it left.
//!         match request.headers.get("x-user-role").and_then(|v| v.to_str().ok()) {
//!             Some("admin") => Access::Full,
//!             Some(_) => Access::ReadOnly,
//!             None => Access::Forbidden,
//!         }
//!     })
//!     .redact_keys(["password", "token", "secret"]);
//! let app = axum::Router::new().nest("/admin/jobs", dashboard.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! What it serves, below the path it is nested under:
//! - pages: `/` (overview: counts per queue, throughput and failures per minute and per ten
//!   minutes, pickup lag, workers, health warnings), `/jobs` (filters, keyset pages, bulk
//!   actions), `/jobs/{id}` (arguments, result, attempts and errors, live progress, why it
//!   is not running), `/queues`, `/workers`, `/schedules`, `/health`;
//! - the JSON API under `/api/v1/` (see `docs/dashboard.md`), and Server-Sent Events at
//!   `/api/v1/events` (the overview, every [`LIVE_INTERVAL`]) and `/api/v1/events?job=ID` (a
//!   job's state and progress, pushed as it changes). One poller per [`Dashboard`] feeds every
//!   open overview, and one [`Results`](crate::results::Results) (one `LISTEN` connection
//!   while a job stream is open, polling as a fallback) every open job stream: a hundred open
//!   tabs cost the database what one does.
//!
//! For the application's own pages, [`JobEvents`] streams one job's progress (and ships a
//! script that draws it as a progress bar) without exposing the dashboard.
//!
//! Secure by default:
//! - read-only unless an [`authorizer`](Dashboard::authorizer) grants [`Access::Full`];
//!   authorization is checked for every request before any handler runs;
//! - mutations are `POST`s only, each checked for a same-origin request (`Origin`: scheme,
//!   host and port; `Sec-Fetch-Site`) and a CSRF token (double submit: a cookie, `Secure`
//!   over HTTPS, and a form field or the `x-csrf-token` header); clients that are not
//!   browsers (no `Origin`, no `Sec-Fetch-Site`) send JSON instead;
//! - a strict Content-Security-Policy (no inline script or style), every piece of job data
//!   escaped, framing refused;
//! - job arguments, results, progress and errors pass through a [redactor](Dashboard::redact)
//!   before they reach a browser;
//! - pages of at most [`MAX_PAGE_SIZE`] jobs; every query runs with
//!   [`inspect::STATEMENT_TIMEOUT`] and takes no lock a
//!   worker waits on.

mod api;
mod assets;
mod events;
mod pages;
mod params;
mod progress;
mod redact;
mod security;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::request::Parts;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::inspect::{self, HealthOptions, HealthReport};

pub use self::progress::JobEvents;
pub use self::redact::Field;
pub use self::security::constant_time_eq;

/// How often the live view polls the database while a browser watches: 2 seconds.
pub const LIVE_INTERVAL: Duration = Duration::from_secs(2);

/// The most jobs a dashboard page or API call lists: 200.
pub const MAX_PAGE_SIZE: u32 = 200;

/// The most jobs one [`Dashboard`] (or one [`JobEvents`]) streams at once: 10,000. Their
/// [`Results`](crate::results::Results) reads them 1,000 per statement, so at most ten
/// statements a polling round; a stream for one more job is refused with 503 until others end.
/// One client opening thousands of streams is for your own middleware to limit (per user or
/// per address).
pub const MAX_WATCHED_JOBS: usize = 10_000;

/// What a request may do, as an [`authorizer`](Dashboard::authorizer) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// See everything and act: cancel, retry and delete jobs, pause, resume and run schedules.
    Full,
    /// See everything, change nothing (every `POST` is refused with 403).
    ReadOnly,
    /// Ask for credentials: 401 with `WWW-Authenticate: Basic`.
    Unauthenticated,
    /// Nothing: 403.
    Forbidden,
}

type Authorizer = dyn Fn(&Parts) -> Access + Send + Sync;
type Redactor = dyn Fn(Field, &str, &mut Value) + Send + Sync;

/// Builds the dashboard's [`Router`]: see the [module documentation](self).
#[derive(Clone)]
pub struct Dashboard {
    pool: PgPool,
    authorizer: Option<Arc<Authorizer>>,
    redactor: Option<Arc<Redactor>>,
    allowed_hosts: Option<Arc<[String]>>,
    live_interval: Duration,
    title: String,
    shutdown: CancellationToken,
    results: Option<crate::results::Results>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("authorizer", &self.authorizer.is_some())
            .field("redactor", &self.redactor.is_some())
            .field("allowed_hosts", &self.allowed_hosts)
            .field("live_interval", &self.live_interval)
            .field("title", &self.title)
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A read-only dashboard over the jobs of `pool`'s database. Its queries need only the
    /// `observer` access level (docs/security.md); actions need what `skiplock jobs cancel`,
    /// `retry` and `delete` and the schedule functions need.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            authorizer: None,
            redactor: None,
            allowed_hosts: None,
            live_interval: LIVE_INTERVAL,
            title: "skiplock".to_owned(),
            shutdown: CancellationToken::new(),
            results: None,
        }
    }

    /// Decides what each request may do, from its method, path, headers and the extensions
    /// your own middleware added (an authenticated user, say). Called for every request,
    /// pages, API and events alike, before any handler. Without one, everyone who reaches the
    /// dashboard gets [`Access::ReadOnly`].
    ///
    /// `parts.uri` is the path below the prefix the router is nested under (`/queues` for
    /// `/admin/jobs/queues`: axum strips what `nest` matched); the full one is in the
    /// [`OriginalUri`](axum::extract::OriginalUri) extension:
    /// `parts.extensions.get::<axum::extract::OriginalUri>()`.
    pub fn authorizer(
        mut self,
        authorizer: impl Fn(&Parts) -> Access + Send + Sync + 'static,
    ) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Rewrites job data before it is shown or sent: called with the [`Field`], the job's
    /// kind and the value (arguments, result, progress, metadata, or an error message as a
    /// JSON string). Lists then show no argument previews (they are cut text that cannot be
    /// redacted): a job's page shows its redacted arguments. Arguments, results and progress
    /// whose JSON `serde_json` cannot read (a number beyond `f64`, nesting past 128 levels:
    /// `skiplock::inspect` gives their text as a string) are not shown at all, as
    /// `(N bytes, not shown)`: the redactor could not see inside them. Replaces an earlier
    /// [`redact_keys`](Self::redact_keys).
    pub fn redact(
        mut self,
        redactor: impl Fn(Field, &str, &mut Value) + Send + Sync + 'static,
    ) -> Self {
        self.redactor = Some(Arc::new(redactor));
        self
    }

    /// Redacts, at any depth of arguments, results, progress and metadata, the value of every
    /// object key that contains one of `keys` (ignoring case): `redact_keys(["password"])`
    /// hides `{"db_password": "…"}`. An error message that contains one of `keys` (ignoring
    /// case) is replaced whole, as `[redacted: the message mentions a redacted key]`: a
    /// message is free text, in which the secret cannot be told from the words around it.
    /// Replaces an earlier [`redact`](Self::redact).
    pub fn redact_keys<I, S>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(|k| k.into().to_lowercase()).collect();
        self.redact(move |field, _, value| match field {
            Field::Error => redact::redact_message(value, &keys),
            _ => redact::redact_keys(value, &keys),
        })
    }

    /// Accepts requests only for these host names (a port after them is ignored), answering
    /// 421 otherwise: what keeps a DNS-rebinding page from reading a dashboard that listens on
    /// loopback without credentials. The name is the `Host` header's or, in HTTP/2 (which has
    /// no `Host`), the `:authority`'s. Off by default (an application behind its own proxy knows
    /// its host names); `skiplock dashboard` sets it to `localhost`, `127.0.0.1` and `[::1]`
    /// when it runs without credentials.
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = Some(hosts.into_iter().map(|h| h.into().to_lowercase()).collect());
        self
    }

    /// How often the live view polls while someone watches (default [`LIVE_INTERVAL`]; at
    /// least 200 ms): the overview, and the watched jobs whatever notifications say (a job's
    /// progress and outcome are pushed as they are stored; a claim, or a change made by hand,
    /// is seen at the next poll).
    pub fn live_interval(mut self, interval: Duration) -> Self {
        self.live_interval = interval.max(Duration::from_millis(200));
        self
    }

    /// Watches jobs through the application's own [`Results`](crate::results::Results) (one
    /// per process is the idea: it has one `LISTEN` connection for every wait and watch),
    /// polled as its [`ResultsConfig`](crate::results::ResultsConfig) says. By default the
    /// dashboard makes one of its own while a job's stream is open, polled every
    /// [`live_interval`](Self::live_interval), and drops it (and its connection, taken from the
    /// dashboard's pool) when the last stream ends.
    pub fn results(mut self, results: crate::results::Results) -> Self {
        self.results = Some(results);
        self
    }

    /// The name in the page titles and header (default `skiplock`).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Ends every event stream, and stops the live poller, once `token` is cancelled: pass
    /// the token your server's graceful shutdown waits on. An open browser tab holds its
    /// stream (and so the connection) open for as long as it stays open, and a graceful
    /// shutdown waits for every response to end: without this, it never finishes while a tab
    /// is open. Streams asked for after the cancellation end at once. By default the dashboard
    /// has a token of its own, which [`shutdown_token`](Self::shutdown_token) returns.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let stop = CancellationToken::new();
    /// let dashboard = skiplock::web::Dashboard::new(pool).shutdown_on(stop.clone());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// let server = axum::serve(listener, dashboard.router())
    ///     .with_graceful_shutdown(stop.clone().cancelled_owned());
    /// let server = tokio::spawn(server.into_future());
    /// tokio::signal::ctrl_c().await?;
    /// stop.cancel();
    /// // Streams end at once; give the other requests 5 seconds.
    /// let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The token that ends this dashboard's event streams (see
    /// [`shutdown_on`](Self::shutdown_on)): cancel it when your server begins its graceful
    /// shutdown, or pass `token.cancelled_owned()` to `with_graceful_shutdown` and cancel it
    /// on your signal.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The router: nest it under any path (`Router::nest("/admin/jobs", …)`) or serve it at
    /// the root. Its live view polls on a task spawned on the Tokio runtime that serves the
    /// first event stream, and only while a stream is open.
    pub fn router(self) -> Router {
        let shared = Arc::new(Shared::new(self));
        let routes = pages::routes()
            .merge(api::routes())
            .merge(assets::routes())
            .fallback(api::not_found);
        security::layer(routes, shared.clone()).with_state(shared)
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pool: PgPool,
    authorizer: Option<Arc<Authorizer>>,
    redactor: Option<Arc<Redactor>>,
    allowed_hosts: Option<Arc<[String]>>,
    hub: events::Hub,
    title: String,
    /// The last health report and when it was read: the overview shows its warnings without
    /// running every check on each load.
    health: tokio::sync::Mutex<Option<(Instant, Arc<HealthReport>)>>,
}

/// How long the overview reuses a health report: 30 seconds.
const HEALTH_FRESH: Duration = Duration::from_secs(30);

impl Shared {
    fn new(dashboard: Dashboard) -> Self {
        Self {
            hub: events::Hub::new(
                dashboard.pool.clone(),
                dashboard.live_interval,
                dashboard.shutdown,
                dashboard.results,
            ),
            pool: dashboard.pool,
            authorizer: dashboard.authorizer,
            redactor: dashboard.redactor,
            allowed_hosts: dashboard.allowed_hosts,
            title: dashboard.title,
            health: tokio::sync::Mutex::new(None),
        }
    }

    fn access(&self, parts: &Parts) -> Access {
        self.authorizer
            .as_ref()
            .map_or(Access::ReadOnly, |authorize| authorize(parts))
    }

    /// `value` as the redactor would show it; with a redactor, JSON text it could not see
    /// inside (see [`redact::unparsed_text`]) is not shown at all.
    fn redacted(&self, field: Field, kind: &str, value: &mut Value) {
        if let Some(redact) = &self.redactor {
            if field != Field::Error
                && let Some(bytes) = redact::unparsed_text(value)
            {
                *value = Value::String(format!("({bytes} bytes, not shown)"));
                return;
            }
            redact(field, kind, value);
        }
    }

    /// A health report at most [`HEALTH_FRESH`] old; `None` (logged) when the checks fail.
    async fn cached_health(&self) -> Option<Arc<HealthReport>> {
        let mut cached = self.health.lock().await;
        if let Some((_, report)) = cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < HEALTH_FRESH)
        {
            return Some(report.clone());
        }
        match inspect::health(&self.pool, &HealthOptions::default()).await {
            Ok(report) => {
                let report = Arc::new(report);
                *cached = Some((Instant::now(), report.clone()));
                Some(report)
            }
            Err(error) => {
                tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard: health checks failed");
                None
            }
        }
    }

    async fn store_health(&self, report: HealthReport) {
        *self.health.lock().await = Some((Instant::now(), Arc::new(report)));
    }

    fn redacts(&self) -> bool {
        self.redactor.is_some()
    }

    /// Refuses an `args` filter that names what the redactor hides: matching on a hidden
    /// value would tell whether a guess is right. The redactor is given the filter's value
    /// as [`Field::Args`] for each kind the filter names (the empty string when it names
    /// none); the filter is refused when it comes back changed.
    fn check_filter(&self, filter: &inspect::JobFilter) -> Result<(), String> {
        let (Some(redact), Some(args)) = (&self.redactor, &filter.args) else {
            return Ok(());
        };
        let kinds: Vec<&str> = if filter.kinds.is_empty() {
            vec![""]
        } else {
            filter.kinds.iter().map(String::as_str).collect()
        };
        for kind in kinds {
            let mut seen = args.clone();
            redact(Field::Args, kind, &mut seen);
            if seen != *args {
                return Err(
                    "the args filter names a value this dashboard's redactor hides: \
                            filter on other keys"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }

    /// An error message as the redactor would show it.
    fn redacted_message(&self, kind: &str, message: &str) -> String {
        match &self.redactor {
            None => message.to_owned(),
            Some(redact) => {
                let mut value = Value::String(message.to_owned());
                redact(Field::Error, kind, &mut value);
                match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                }
            }
        }
    }
}

type State = axum::extract::State<Arc<Shared>>;

/// Job `id`'s event stream, or why not: 404 when there is no such job, 503 when the database
/// did not answer or too many jobs are watched.
async fn job_stream(
    shared: &Arc<Shared>,
    id: i64,
) -> Result<axum::response::Response, (axum::http::StatusCode, &'static str)> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    match shared.hub.job(shared, id).await {
        Ok(events) => Ok(axum::response::sse::Sse::new(events).into_response()),
        Err(events::Refused::NotFound) => Err((StatusCode::NOT_FOUND, "no such job")),
        Err(events::Refused::Unavailable) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer: see the server's log",
        )),
        Err(events::Refused::TooManyJobs) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many jobs watched at once",
        )),
    }
}
