//! Everything about one job.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{Acquire, Postgres};

use super::{InspectError, WorkerStatus, begin};
use crate::db;
use crate::{AttemptError, JobState};

/// One job with every attempt's error, its progress, result and the worker that holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobDetail {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its state.
    pub state: JobState,
    /// Its priority (lower runs first).
    pub priority: i16,
    /// Attempts started.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it may run (next); `None` only for a value that cannot be represented
    /// (`infinity`, written by something other than skiplock), as for every time below.
    pub run_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: Option<DateTime<Utc>>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// While running: when its lease runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When somebody asked to cancel it.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The workers of each claim, oldest first (the last 100).
    pub attempted_by: Vec<String>,
    /// One entry per attempt that did not succeed, oldest first.
    pub errors: Vec<AttemptError>,
    /// Its arguments. A value `serde_json` cannot hold (a number beyond `f64`, nesting past
    /// 128 levels) is given as its JSON text, a string.
    pub args: Value,
    /// The handler's output, once completed (as `args` for odd values).
    pub result: Option<Value>,
    /// The latest progress its handler reported (as `args` for odd values).
    pub progress: Option<Value>,
    /// Its tags.
    pub tags: Vec<String>,
    /// How long one attempt may run, in seconds; `None`: the worker's default.
    pub timeout_secs: Option<f64>,
    /// Its unique key, for unique jobs.
    pub unique_key: Option<String>,
    /// The states in which it blocks duplicates, for unique jobs.
    pub unique_states: Option<Vec<String>>,
    /// The schedule that enqueued it.
    pub schedule: Option<String>,
    /// The workflow it belongs to ([`crate::workflow`]; [`super::workflow()`] shows it).
    pub workflow_id: Option<i64>,
    /// The worker running it (or that ran it last), when its row is still in
    /// `skiplock.workers`.
    pub worker: Option<JobWorker>,
}

/// The worker of a job's latest claim, as [`JobDetail::worker`] shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobWorker {
    /// Its id.
    pub id: String,
    /// Whether it is alive.
    pub status: WorkerStatus,
    /// Its host name.
    pub host: Option<String>,
    /// Its process id.
    pub pid: Option<i32>,
    /// Its latest heartbeat.
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// JSON text as a value; text `serde_json` cannot read stays text.
pub(crate) fn lenient_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Reads everything about job `id`; `None` when there is no such job.
///
/// # Errors
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn job<'c, A>(conn: A, id: i64) -> Result<Option<JobDetail>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let row = db::inspect::job_detail(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(row.map(JobDetail::from_row))
}

impl JobDetail {
    pub(crate) fn from_row(row: db::inspect::JobDetailRow) -> Self {
        let worker = match (row.attempted_by.last(), row.worker_status.as_deref()) {
            (Some(id), Some(status)) => Some(JobWorker {
                id: id.clone(),
                status: WorkerStatus::from_db(status),
                host: row.worker_host,
                pid: row.worker_pid,
                heartbeat_at: row.worker_heartbeat_at,
            }),
            _ => None,
        };
        Self {
            id: row.id,
            queue: row.queue,
            kind: row.kind,
            state: row.state,
            priority: row.priority,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            created_at: row.created_at,
            attempted_at: row.attempted_at,
            finished_at: row.finished_at,
            lease_expires_at: row.lease_expires_at,
            cancel_requested_at: row.cancel_requested_at,
            attempted_by: row.attempted_by,
            errors: row
                .errors
                .as_ref()
                .map(AttemptError::from_column)
                .unwrap_or_default(),
            args: lenient_json(&row.args_text),
            result: row.result_text.as_deref().map(lenient_json),
            progress: row.progress_text.as_deref().map(lenient_json),
            tags: row.tags,
            timeout_secs: row.timeout_secs,
            unique_key: row.unique_key,
            unique_states: row.unique_states,
            schedule: row.schedule,
            workflow_id: row.workflow_id,
            worker,
        }
    }
}
