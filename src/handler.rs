//! Running a job: the [`Handler`] trait, the [`JobContext`] it receives, and [`JobError`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::runtime::running::{Attempt, StopReason};
use crate::{Backoff, Job, JobState, TraceParent};

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
/// - `Err(JobError::snooze(delay))`: runs again after `delay` without using up an attempt;
/// - a panic is caught and recorded as a failed attempt (retried like a retryable error); the
///   worker keeps running.
///
/// For database work that must happen exactly once, complete the job in the same transaction
/// as the work with [`JobContext::complete_in`].
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
    /// The future may be dropped at an `.await` when the attempt must stop — its timeout passed,
    /// the job was cancelled, the worker is shutting down, or its lease was lost — and it has
    /// not returned within the worker's cancel timeout: [`JobContext::cancellation`] fires
    /// first, so that a handler can stop cleanly.
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
    pub(crate) attempt: Arc<Attempt>,
    /// Writes progress updates on the worker's own connections.
    pub(crate) pool: ProgressWriter,
}

/// Where [`JobContext::set_progress`] writes: the worker's progress pool, which lease renewals
/// do not share, with the worker's `db_timeout` as deadline.
#[derive(Clone, Debug)]
pub(crate) struct ProgressWriter {
    pool: PgPool,
    timeout: Duration,
}

impl ProgressWriter {
    pub(crate) fn new(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }
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
    pub(crate) traceparent: Option<TraceParent>,
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

    /// This attempt's number, starting at 1. A snoozed attempt, or one interrupted by a worker
    /// shutdown, is given back: the next run has the same number.
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

    /// The trace context the job was enqueued with
    /// ([`EnqueueOptions::traceparent`](crate::EnqueueOptions::traceparent)), if any. A value
    /// in the table that is not a valid [`TraceParent`] (written before the database checked
    /// it) is `None`.
    pub fn traceparent(&self) -> Option<&TraceParent> {
        self.meta.traceparent.as_ref()
    }

    /// The application's state, as given to [`Worker::builder`](crate::Worker::builder).
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Fires when this attempt should stop: the job was cancelled, its timeout passed, its
    /// lease was lost, or the worker is shutting down and the grace period is over. A handler
    /// that does long work should `select!` on [`cancelled()`](CancellationToken::cancelled) or
    /// check [`is_cancelled()`](Self::is_cancelled) between steps; one that does not is dropped
    /// at its next `.await` after the worker's cancel timeout.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.attempt.cancellation
    }

    /// Whether [`cancellation`](Self::cancellation) has fired.
    pub fn is_cancelled(&self) -> bool {
        self.attempt.cancellation.is_cancelled()
    }

    /// Completes the job inside the caller's transaction, storing `output` as its result:
    /// the job is `completed` exactly when that transaction commits, together with the
    /// handler's own writes in it. This gives exactly-once effects for database work.
    ///
    /// Fenced: if this attempt no longer holds the job (its lease expired and the job was
    /// rescued), nothing is written and [`ContextError::LeaseLost`] is returned — roll the
    /// transaction back. After a successful call, return `Ok` from the
    /// handler; the worker does not write the outcome again. If the transaction then rolls back
    /// instead, return the error: the attempt is then recorded like any failed one. (Returning
    /// `Ok` after a rollback records nothing: the job stays `running` until its lease expires
    /// and it is rescued.)
    ///
    /// ```no_run
    /// # use skiplock::{JobContext, JobError};
    /// # async fn handle(ctx: JobContext<sqlx::PgPool>, order_id: i64) -> Result<(), JobError> {
    /// let mut tx = ctx.state().begin().await?;
    /// sqlx::query("UPDATE orders SET paid = true WHERE id = $1")
    ///     .bind(order_id)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// ctx.complete_in(&mut tx, &"paid").await?;
    /// tx.commit().await?;
    /// Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ContextError`] when the output does not serialize, the update fails, or the lease is
    /// lost.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is committed until the caller commits its transaction.
    pub async fn complete_in(
        &self,
        tx: &mut PgConnection,
        output: &impl Serialize,
    ) -> Result<(), ContextError> {
        let result = serde_json::to_value(output).map_err(ContextError::Serialize)?;
        let (id, lease_token) = (self.attempt.id, self.attempt.lease_token);
        if !db::job::complete_one(tx, id, lease_token, &result).await? {
            self.attempt.stop(StopReason::LeaseLost);
            return Err(ContextError::LeaseLost(LeaseLost { job_id: id }));
        }
        self.attempt.mark_completed_in_tx();
        Ok(())
    }

    /// Stores `progress` (any JSON: a percentage, a cursor, a step name) in the job's
    /// `progress` column, where SQL and monitoring can read it. Written on the worker's own
    /// progress connections (two per worker, which lease renewals do not share: a handler
    /// writing progress in a loop slows other progress writes, never a renewal), with the
    /// worker's [`db_timeout`](crate::WorkerBuilder::db_timeout) as deadline, and fenced like
    /// every write after a claim.
    ///
    /// # Errors
    /// [`ContextError`] when the value does not serialize, the update fails or takes longer
    /// than the deadline, or the lease is lost (the cancellation token fires then too).
    ///
    /// # Cancel safety
    /// Cancel safe: dropped midway, the progress may or may not have been stored.
    pub async fn set_progress(&self, progress: &impl Serialize) -> Result<(), ContextError> {
        let progress = serde_json::to_value(progress).map_err(ContextError::Serialize)?;
        let (id, lease_token) = (self.attempt.id, self.attempt.lease_token);
        let write = db::job::set_progress(&self.pool.pool, id, lease_token, &progress);
        let written = tokio::time::timeout(self.pool.timeout, write)
            .await
            .map_err(|_| ContextError::Timeout(self.pool.timeout))??;
        if !written {
            self.attempt.stop(StopReason::LeaseLost);
            return Err(ContextError::LeaseLost(LeaseLost { job_id: id }));
        }
        Ok(())
    }
}

/// One job a workflow job waited for, as [`JobContext::dependencies`] reads it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Dependency {
    /// Its id.
    pub job_id: i64,
    /// Its state: `completed`, unless the workflow runs jobs whatever their dependencies did
    /// ([`OnFailure::Run`](crate::workflow::OnFailure::Run)). `None` when its row is gone.
    pub state: Option<JobState>,
    /// Its output (`result`), for a completed job.
    pub output: Option<Value>,
}

impl<S> JobContext<S> {
    /// The jobs this one waited for in its workflow, in order (a chain step's: the previous
    /// step's last jobs; a chord callback's: every member of its group, in the group's
    /// order), with their states and outputs; empty outside workflows. One statement on the
    /// worker's progress connections, with its `db_timeout`.
    ///
    /// # Errors
    /// [`ContextError::Database`] or [`ContextError::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn dependencies(&self) -> Result<Vec<Dependency>, ContextError> {
        let read = db::workflow::dependencies(&self.pool.pool, self.meta.id);
        let rows = tokio::time::timeout(self.pool.timeout, read)
            .await
            .map_err(|_| ContextError::Timeout(self.pool.timeout))??;
        Ok(rows
            .into_iter()
            .map(|row| Dependency {
                job_id: row.job_id,
                state: row.state,
                output: row.result,
            })
            .collect())
    }

    /// The output of the one job this one waited for (a chain step reading the step before
    /// it), deserialized as `T` (the producing handler's `Output`).
    ///
    /// # Errors
    /// [`ContextError::Inputs`] when the job waited for no job or for several (use
    /// [`inputs`](Self::inputs)), or that job did not complete; [`ContextError::Deserialize`]
    /// when its output is not a `T`; otherwise as [`dependencies`](Self::dependencies).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn input<T: DeserializeOwned>(&self) -> Result<T, ContextError> {
        let mut dependencies = self.dependencies().await?;
        if dependencies.len() != 1 {
            return Err(ContextError::Inputs(format!(
                "job {} waited for {} jobs, not one: read them with inputs()",
                self.meta.id,
                dependencies.len()
            )));
        }
        let dependency = dependencies.remove(0);
        decode_output(dependency)
    }

    /// The outputs of every job this one waited for, in order (a chord callback reading its
    /// group), each deserialized as `T`.
    ///
    /// # Errors
    /// [`ContextError::Inputs`] when one of them did not complete (possible only under
    /// [`OnFailure::Run`](crate::workflow::OnFailure::Run): read
    /// [`dependencies`](Self::dependencies) then); [`ContextError::Deserialize`] when an
    /// output is not a `T`; otherwise as [`dependencies`](Self::dependencies).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn inputs<T: DeserializeOwned>(&self) -> Result<Vec<T>, ContextError> {
        self.dependencies()
            .await?
            .into_iter()
            .map(decode_output)
            .collect()
    }
}

fn decode_output<T: DeserializeOwned>(dependency: Dependency) -> Result<T, ContextError> {
    if dependency.state != Some(JobState::Completed) {
        let state = dependency.state.map_or("gone", JobState::as_str);
        return Err(ContextError::Inputs(format!(
            "dependency {} is {state}, not completed",
            dependency.job_id
        )));
    }
    serde_json::from_value(dependency.output.unwrap_or(Value::Null))
        .map_err(ContextError::Deserialize)
}

/// This attempt no longer holds its job: its lease expired and the job was rescued (it may be
/// running elsewhere now). Nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id}: this attempt no longer holds the job's lease")]
pub struct LeaseLost {
    /// The job's id.
    pub job_id: i64,
}

/// The error of [`JobContext::complete_in`] and [`JobContext::set_progress`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The attempt no longer holds the job; roll back whatever it was doing.
    #[error(transparent)]
    LeaseLost(LeaseLost),
    /// The value does not serialize to JSON.
    #[error("could not serialize the value")]
    Serialize(#[source] serde_json::Error),
    /// The update failed.
    #[error("could not update the job")]
    Database(#[from] sqlx::Error),
    /// The database did not answer within the worker's `db_timeout` (the duration).
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
    /// The job's workflow inputs are not what was asked for (the message says how).
    #[error("workflow inputs: {0}")]
    Inputs(String),
    /// A dependency's output does not deserialize into the type asked for.
    #[error("could not deserialize a dependency's output")]
    Deserialize(#[source] serde_json::Error),
}

/// Why a handler failed, and whether the job may be retried.
///
/// Any error converts into a *retryable* `JobError`, so `?` works on every error type. Use
/// [`JobError::permanent`] for failures that no retry can fix (bad input, a deleted record).
/// `JobError` keeps its source; the message stored in the job's `errors` column is the source's
/// whole chain (`outer: inner: root`).
pub struct JobError {
    kind: ErrorKind,
    source: BoxError,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ErrorKind {
    Retryable,
    Permanent,
    Snooze(Duration),
}

/// Why a job was snoozed, for [`JobError::source`].
#[derive(Debug, thiserror::Error)]
#[error("snoozed for {0:?}")]
struct Snoozed(Duration);

impl JobError {
    /// A failure worth retrying after backoff (a timeout, a 503).
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            source: error.into(),
        }
    }

    /// A failure no retry can fix: the job goes straight to `failed`.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            source: error.into(),
        }
    }

    /// Not a failure: run the job again after `delay`, without using up an attempt (the next
    /// run has the same attempt number) and without an entry in `errors`. For "not yet" —
    /// waiting for an upstream export, a rate limit window.
    pub fn snooze(delay: Duration) -> Self {
        Self {
            kind: ErrorKind::Snooze(delay),
            source: Box::new(Snoozed(delay)),
        }
    }

    /// Whether the job must not be retried.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// The delay asked for by [`JobError::snooze`], if this is one.
    pub fn snoozed_for(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::Snooze(delay) => Some(delay),
            _ => None,
        }
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
            .field("kind", &self.kind)
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
