//! Running a job: the [`Handler`] trait, the [`JobContext`] it receives, and [`JobError`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{Backoff, Job};

/// A boxed error, as handlers may return any error type.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How a [`Job`] runs, with access to the application's state `S` (its pool, HTTP clients...).
///
/// The outcome decides what happens to the job:
/// - `Ok(output)`: `completed`, with `output` stored as JSON in the `result` column
///   (`()` stores `null`);
/// - `Err(JobError::retryable(..))` — which is what `?` produces — runs again after
///   [`backoff`](Self::backoff) until `max_attempts` is used up, then `failed`;
/// - `Err(JobError::permanent(..))`: `failed` at once;
/// - a panic is caught and recorded as a failed attempt (retried like a retryable error); the
///   worker keeps running.
///
/// Handlers run on the tokio runtime: blocking work (CPU-heavy loops, synchronous I/O) belongs
/// in [`tokio::task::spawn_blocking`] so that it cannot stall other jobs and the worker's own
/// bookkeeping.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skiplock::{Handler, Job, JobContext, JobError};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
/// }
///
/// #[derive(Clone)]
/// struct AppState {
///     sender: String,
/// }
///
/// impl Handler<AppState> for SendEmail {
///     type Output = ();
///
///     async fn handle(self, ctx: JobContext<AppState>) -> Result<(), JobError> {
///         if !self.to.contains('@') {
///             return Err(JobError::permanent(format!("{:?} is not an address", self.to)));
///         }
///         tracing::info!(from = %ctx.state().sender, to = %self.to, attempt = ctx.attempt(), "sending");
///         Ok(())
///     }
/// }
/// ```
pub trait Handler<S = ()>: Job {
    /// What a successful run returns; stored as JSON in the job's `result` column.
    type Output: Serialize + Send;

    /// Runs one attempt of the job.
    ///
    /// The future may be dropped at an `.await` when the worker shuts down and the attempt
    /// outlives the grace period: [`JobContext::cancellation`] fires first, so that a handler
    /// can stop cleanly.
    fn handle(
        self,
        ctx: JobContext<S>,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;

    /// How long to wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    /// Defaults to [`Backoff::DEFAULT`].
    fn backoff(attempt: i32) -> Duration {
        Backoff::DEFAULT.delay(attempt)
    }
}

/// What a handler receives besides its arguments: the job's metadata, a cancellation token and
/// the application's state.
#[derive(Clone, Debug)]
pub struct JobContext<S = ()> {
    pub(crate) meta: Arc<JobMeta>,
    pub(crate) state: S,
    pub(crate) cancellation: CancellationToken,
}

/// The metadata of one attempt.
#[derive(Debug)]
pub(crate) struct JobMeta {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) priority: i16,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) tags: Vec<String>,
    pub(crate) worker_id: Arc<str>,
}

impl<S> JobContext<S> {
    /// The job's id.
    pub fn id(&self) -> i64 {
        self.meta.id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.meta.kind
    }

    /// The queue it was claimed from.
    pub fn queue(&self) -> &str {
        &self.meta.queue
    }

    /// Its priority; lower runs first.
    pub fn priority(&self) -> i16 {
        self.meta.priority
    }

    /// This attempt's number, starting at 1. An attempt interrupted by a worker shutdown is not
    /// held against the job, so this may exceed [`max_attempts`](Self::max_attempts).
    pub fn attempt(&self) -> i32 {
        self.meta.attempt
    }

    /// How many attempts the job may have.
    pub fn max_attempts(&self) -> i32 {
        self.meta.max_attempts
    }

    /// When the job was enqueued (database time).
    pub fn created_at(&self) -> DateTime<Utc> {
        self.meta.created_at
    }

    /// The job's tags.
    pub fn tags(&self) -> &[String] {
        &self.meta.tags
    }

    /// The id of the worker running this attempt.
    pub fn worker_id(&self) -> &str {
        &self.meta.worker_id
    }

    /// The application's state, as given to [`Worker::builder`](crate::Worker::builder).
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Fires when this attempt should stop: the worker is shutting down and the grace period
    /// is over. A handler that does long work should `select!` on
    /// [`cancelled()`](CancellationToken::cancelled) or check
    /// [`is_cancelled()`](Self::is_cancelled) between steps.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }

    /// Whether [`cancellation`](Self::cancellation) has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }
}

/// Why a handler failed, and whether the job may be retried.
///
/// Any error converts into a *retryable* `JobError`, so `?` works on every error type. Use
/// [`JobError::permanent`] for failures that no retry can fix (bad input, a deleted record).
/// `JobError` keeps its source; the message stored in the job's `errors` column is the source's
/// whole chain (`outer: inner: root`).
pub struct JobError {
    permanent: bool,
    source: BoxError,
}

impl JobError {
    /// A failure worth retrying after backoff (a timeout, a 503).
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: false,
            source: error.into(),
        }
    }

    /// A failure no retry can fix: the job goes straight to `failed`.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            source: error.into(),
        }
    }

    /// Whether the job must not be retried.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// The error and its sources joined by `": "`, as stored in the `errors` column.
    pub fn chain(&self) -> String {
        error_chain(&*self.source)
    }
}

impl<E: Into<BoxError>> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("permanent", &self.permanent)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

/// Renders an error and its sources as `outer: inner: root`.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut rendered = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        rendered.push_str(": ");
        rendered.push_str(&source.to_string());
        next = source.source();
    }
    rendered
}
