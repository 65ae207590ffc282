//! What a job is: the [`Job`] trait, its [`JobState`], and [`JobRow`] for reading one back.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgExecutor;

use crate::db;

/// The queue a job goes to unless its kind or the enqueue options say otherwise: `"default"`.
pub const DEFAULT_QUEUE: &str = "default";

/// How many attempts a job gets unless its kind or the enqueue options say otherwise: 25.
///
/// With the default backoff that spreads retries over about nine and a half days. The SQL function
/// `skiplock.enqueue` uses the same default.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 25;

/// The data of a background job: a serde type with a stable kind string.
///
/// The kind is stored in every row and is how a worker finds the handler for a job. It is a
/// compatibility contract: it must never be derived from the Rust type name, so renaming or
/// moving the struct does not orphan the jobs already queued. Changing `KIND` (or the shape of
/// the arguments in a way serde cannot read) while jobs of the old kind are queued does orphan
/// them: jobs of a kind no worker runs wait in `available` (listed by
/// `skiplock.unrunnable_jobs()`, and each worker warns about those in its queues), and jobs whose
/// arguments no longer deserialize fail on their first attempt with an `undecodable_args` error
/// instead of looping.
///
/// Enqueueing needs only this trait; running needs [`Handler`](crate::Handler) too.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skiplock::Job;
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
///     const QUEUE: &'static str = "mail";
///     const MAX_ATTEMPTS: i32 = 5;
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name of this kind of job (1 to 128 characters).
    const KIND: &'static str;

    /// The queue jobs of this kind go to by default. Defaults to [`DEFAULT_QUEUE`].
    const QUEUE: &'static str = DEFAULT_QUEUE;

    /// Priority by default; lower runs first within a queue. Defaults to 0.
    const PRIORITY: i16 = 0;

    /// Attempts by default, the first one included (at least 1). Defaults to
    /// [`DEFAULT_MAX_ATTEMPTS`].
    const MAX_ATTEMPTS: i32 = DEFAULT_MAX_ATTEMPTS;

    /// How long one attempt may run by default: stored with each job enqueued through this type
    /// (and with each job its schedules fire), so it holds whichever worker runs the job. Jobs
    /// enqueued without the type (SQL, the CLI, [`NewJob::untyped`](crate::NewJob::untyped))
    /// carry a timeout only when given one. Defaults to `None`: the worker's
    /// [`job_timeout`](crate::WorkerBuilder::job_timeout), if any.
    const TIMEOUT: Option<std::time::Duration> = None;
}

/// The state of a job; see `docs/schema.md` for every transition.
///
/// Mapped by sqlx to the PostgreSQL enum `skiplock.job_state` (and arrays of it), so it binds
/// and decodes directly, with no text conversion.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[sqlx(type_name = "skiplock.job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Part of a workflow, waiting for the jobs it depends on to finish (migration 0019): it
    /// becomes `available` when the last of them finishes, or fails or is cancelled with them.
    Pending,
    /// Waiting for its `run_at` time.
    Scheduled,
    /// Runnable now, waiting for a worker.
    Available,
    /// Claimed by a worker and running.
    Running,
    /// An attempt failed; it runs again once its backoff has passed.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Failed permanently, or ran out of attempts.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Every state, in the order a job usually passes through them.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Scheduled,
        Self::Available,
        Self::Running,
        Self::Retryable,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The state's name as stored in the database, e.g. `"available"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scheduled => "scheduled",
            Self::Available => "available",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job is finished for good (`completed`, `failed` or `cancelled`).
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of parsing an unknown job state name.
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct ParseJobStateError(String);

impl FromStr for JobState {
    type Err = ParseJobStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "scheduled" => Self::Scheduled,
            "available" => Self::Available,
            "running" => Self::Running,
            "retryable" => Self::Retryable,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(ParseJobStateError(other.to_owned())),
        })
    }
}

/// Why an attempt ended, as each `errors[].kind` of a job records it; `docs/schema.md` explains
/// every kind.
///
/// Serialized as its snake_case name (`"worker_lost"`). A name this version does not know (written
/// by another language's client or a newer skiplock) reads as [`ErrorKind::Other`], keeping it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `error`: the handler returned a retryable error.
    Error,
    /// `permanent`: the handler returned a permanent error.
    Permanent,
    /// `panic`: the handler panicked.
    Panic,
    /// `timeout`: the attempt ran past its timeout.
    Timeout,
    /// `cancelled`: the job was cancelled while it ran.
    Cancelled,
    /// `undecodable_args`: the stored arguments did not deserialize into the job type.
    UndecodableArgs,
    /// `undecodable_row`: another column holds a value the worker cannot represent (a foreign
    /// writer stored `created_at = 'infinity'`, say).
    UndecodableRow,
    /// `unserializable_output`: the handler succeeded but its output did not serialize to JSON.
    UnserializableOutput,
    /// `unknown_kind`: the worker that claimed the job has no handler for its kind.
    UnknownKind,
    /// `interrupted`: the worker shut down while the attempt ran; the attempt was given back.
    Interrupted,
    /// `worker_lost`: the worker stopped renewing its lease and a rescuer took the job back.
    WorkerLost,
    /// `superseded`: a unique job could not go back to a state it is unique in because a
    /// duplicate holds its key; it was cancelled instead.
    Superseded,
    /// `unrecordable_outcome`: the database refused to store the attempt's outcome; the job
    /// failed instead.
    UnrecordableOutcome,
    /// `dependency`: a job of its workflow that it waited for failed or was cancelled, and the
    /// workflow propagates failures; the job never ran.
    Dependency,
    /// Any other name, kept as written.
    Other(String),
}

impl ErrorKind {
    /// The kind's name as stored in `errors[].kind`, e.g. `"worker_lost"`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Error => "error",
            Self::Permanent => "permanent",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::UndecodableArgs => "undecodable_args",
            Self::UndecodableRow => "undecodable_row",
            Self::UnserializableOutput => "unserializable_output",
            Self::UnknownKind => "unknown_kind",
            Self::Interrupted => "interrupted",
            Self::WorkerLost => "worker_lost",
            Self::Superseded => "superseded",
            Self::UnrecordableOutcome => "unrecordable_outcome",
            Self::Dependency => "dependency",
            Self::Other(name) => name,
        }
    }
}

impl From<&str> for ErrorKind {
    /// The kind of that name; [`ErrorKind::Other`] for names this version does not know.
    fn from(name: &str) -> Self {
        match name {
            "error" => Self::Error,
            "permanent" => Self::Permanent,
            "panic" => Self::Panic,
            "timeout" => Self::Timeout,
            "cancelled" => Self::Cancelled,
            "undecodable_args" => Self::UndecodableArgs,
            "undecodable_row" => Self::UndecodableRow,
            "unserializable_output" => Self::UnserializableOutput,
            "unknown_kind" => Self::UnknownKind,
            "interrupted" => Self::Interrupted,
            "worker_lost" => Self::WorkerLost,
            "superseded" => Self::Superseded,
            "unrecordable_outcome" => Self::UnrecordableOutcome,
            "dependency" => Self::Dependency,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from(name.as_ref()))
    }
}

/// One failed attempt of a job, as its `errors` column records it (oldest first).
///
/// Entries are read leniently, since other clients may write them: fields that are missing or of
/// another type read as `None` (or an empty [`ErrorKind::Other`] kind, an empty message, attempt
/// 0), so that a malformed entry never makes [`get_job`] fail; an entry that is not a JSON object
/// at all reads as a kind of `Other("")` whose message is the entry's JSON text.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// The attempt it records, counting from 1 (0 when the entry does not say).
    pub attempt: i32,
    /// When it was recorded (database time).
    pub at: Option<DateTime<Utc>>,
    /// Why the attempt ended.
    pub kind: ErrorKind,
    /// The error and its causes, `outer: inner: root`.
    pub message: String,
    /// The id of the worker that ran the attempt.
    pub worker: Option<String>,
}

impl AttemptError {
    /// Reads one `errors` entry; never fails (see the type's documentation).
    pub(crate) fn from_entry(entry: &Value) -> Self {
        let Some(fields) = entry.as_object() else {
            return Self {
                attempt: 0,
                at: None,
                kind: ErrorKind::Other(String::new()),
                message: entry.to_string(),
                worker: None,
            };
        };
        let text = |key: &str| fields.get(key).and_then(Value::as_str);
        Self {
            attempt: fields
                .get("attempt")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(0),
            at: text("at")
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok().map(|at| at.to_utc())),
            kind: ErrorKind::from(text("kind").unwrap_or_default()),
            message: text("message").unwrap_or_default().to_owned(),
            worker: text("worker").map(str::to_owned),
        }
    }

    /// Reads a whole `errors` column: one entry per element of a JSON array, none otherwise.
    pub(crate) fn from_column(errors: &Value) -> Vec<Self> {
        errors
            .as_array()
            .map(|entries| entries.iter().map(Self::from_entry).collect())
            .unwrap_or_default()
    }
}

/// One row of `skiplock.jobs`, as [`get_job`] returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobRow {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind ([`Job::KIND`]).
    pub kind: String,
    /// Its serialized arguments.
    pub args: Value,
    /// Its state.
    pub state: JobState,
    /// Its priority; lower runs first.
    pub priority: i16,
    /// How many attempts have started (0 before the first claim).
    pub attempt: i32,
    /// How many attempts it may have.
    pub max_attempts: i32,
    /// When it may run (next).
    pub run_at: DateTime<Utc>,
    /// When it was enqueued (database time).
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it finished (`completed`, `failed` or `cancelled`).
    pub finished_at: Option<DateTime<Utc>>,
    /// While running: when its worker's lease on it runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The ids of the workers that claimed it, one per claim (snoozed and interrupted runs
    /// included), oldest first; only the last 100 are kept.
    pub attempted_by: Vec<String>,
    /// One entry per attempt that did not succeed (failed, interrupted, cancelled, superseded,
    /// ...; see `docs/schema.md`), oldest first.
    pub errors: Vec<AttemptError>,
    /// The handler's output, once completed.
    pub result: Option<Value>,
    /// Free-form labels given at enqueue time.
    pub tags: Vec<String>,
    /// The latest progress its handler reported
    /// ([`JobContext::set_progress`](crate::JobContext::set_progress)).
    pub progress: Option<Value>,
    /// How long one attempt may run; `None`: the worker's default.
    pub timeout: Option<std::time::Duration>,
    /// When somebody asked to cancel it.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Its unique key, for unique jobs.
    pub unique_key: Option<String>,
    /// The schedule that enqueued it, for periodic jobs; its `run_at` is the fire time.
    pub schedule: Option<String>,
}

/// The error of [`get_job`], [`cancel`] and [`retry`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobQueryError {
    /// The query failed, or the row could not be decoded (e.g. a state this version of skiplock
    /// does not know, from a newer schema).
    #[error("job query failed")]
    Database(#[from] sqlx::Error),
}

/// Reads one job by id; `None` when there is no such job.
///
/// # Errors
/// [`JobQueryError`] when the query fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn get_job<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<JobRow>, JobQueryError> {
    Ok(db::job::get(executor, id).await?)
}

/// Cancels a job, like the SQL function `skiplock.cancel(id)`: a waiting job (scheduled,
/// available, retryable) becomes `cancelled` at once; a running job is asked to stop — its
/// worker hears of it through `NOTIFY` (or its next heartbeat), fires the job's cancellation
/// token, drops the handler if it has not returned after the worker's cancel timeout, and
/// records the job as `cancelled`. Finished jobs are left alone.
///
/// Returns the job's state after the call (`Running` for a running job that was asked to
/// stop), or `None` when there is no such job. Inside a transaction, nothing happens unless it
/// commits.
///
/// # Errors
/// [`JobQueryError`] when the query fails.
///
/// # Cancel safety
/// Not cancel safe on a pool: dropped after the statement was sent, the job may or may not have
/// been cancelled.
pub async fn cancel<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<JobState>, JobQueryError> {
    Ok(db::job::cancel(executor, id).await?)
}

/// Puts a `failed` or `cancelled` job back in its queue to run now, like the SQL function
/// `skiplock.retry(id)`; a job that had used all its attempts gets one more. Returns whether the
/// job was put back (`false` for jobs in any other state, for a unique job whose key a
/// duplicate holds, or for no such job).
///
/// A workflow job waits again (`pending`) for those of its dependencies that are unfinished.
/// In a workflow that propagates failures ([`crate::workflow::OnFailure::Propagate`]), a job
/// with a failed or cancelled dependency is not put back (`false`): retry the dependency first,
/// or the whole workflow with [`crate::workflow::retry`].
///
/// # Errors
/// [`JobQueryError`] when the query fails.
///
/// # Cancel safety
/// As [`cancel`].
pub async fn retry<'e>(executor: impl PgExecutor<'e>, id: i64) -> Result<bool, JobQueryError> {
    Ok(db::job::retry(executor, id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_keep_their_names_and_unknown_ones() {
        for name in [
            "error",
            "permanent",
            "panic",
            "timeout",
            "cancelled",
            "undecodable_args",
            "undecodable_row",
            "unserializable_output",
            "unknown_kind",
            "interrupted",
            "worker_lost",
            "superseded",
            "unrecordable_outcome",
        ] {
            let kind: ErrorKind = serde_json::from_value(Value::from(name)).expect("kind");
            assert!(!matches!(kind, ErrorKind::Other(_)), "{name}");
            assert_eq!(
                serde_json::to_value(&kind).expect("json"),
                Value::from(name)
            );
        }
        let foreign: ErrorKind = serde_json::from_value(Value::from("oom_killed")).expect("kind");
        assert_eq!(foreign, ErrorKind::Other("oom_killed".to_owned()));
        assert_eq!(foreign.as_str(), "oom_killed");
    }

    #[test]
    fn attempt_errors_read_leniently() {
        let errors = AttemptError::from_column(&serde_json::json!([
            {"attempt": 2, "at": "2026-01-02T03:04:05.5+00:00", "kind": "timeout",
             "message": "timed out", "worker": "w1"},
            {"attempt": "x", "kind": 7, "worker": null},
            "plain text",
        ]));
        assert_eq!(errors.len(), 3);
        assert_eq!(errors[0].attempt, 2);
        assert_eq!(errors[0].kind, ErrorKind::Timeout);
        assert_eq!(errors[0].message, "timed out");
        assert_eq!(errors[0].worker.as_deref(), Some("w1"));
        assert_eq!(
            errors[0].at.map(|at| at.timestamp_millis()),
            Some(1_767_323_045_500)
        );
        assert_eq!(
            (
                errors[1].attempt,
                &errors[1].kind,
                errors[1].at,
                &errors[1].worker
            ),
            (0, &ErrorKind::Other(String::new()), None, &None)
        );
        assert_eq!(errors[2].message, "\"plain text\"");
        assert!(AttemptError::from_column(&serde_json::json!({})).is_empty());
    }
}
