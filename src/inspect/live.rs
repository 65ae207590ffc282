//! What a live view polls: throughput over time and the progress of a few jobs, each one
//! cheap statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{Acquire, Postgres};

use super::job::lenient_json;
use super::{InspectError, begin};
use crate::{JobState, db};

/// The most buckets [`throughput`] answers with: 1,440 (a day of minutes).
pub const MAX_BUCKETS: u32 = 1_440;

/// The most jobs one [`job_progress`] call reads: 1,000.
pub const MAX_PROGRESS_IDS: usize = 1_000;

/// Attempt outcomes over all queues in one time bucket, as workers record them (each worker
/// adds its counts every heartbeat interval, so the current bucket fills in as it goes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ThroughputBucket {
    /// The bucket's first minute.
    pub start: DateTime<Utc>,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed for good.
    pub failed: u64,
    /// Attempts that failed and will be tried again.
    pub retried: u64,
    /// Attempts cancelled while running.
    pub cancelled: u64,
    /// Attempts lost with a worker that stopped renewing its lease (found by a rescuer).
    pub lost: u64,
}

/// Outcomes in `buckets` buckets of `step_minutes` minutes each, oldest first, the last one
/// holding the current minute: `throughput(&pool, 60, 1)` is the last hour by minute,
/// `throughput(&pool, 144, 10)` the last day by ten minutes.
///
/// # Errors
/// [`InspectError::Invalid`] when `buckets` is 0 or above [`MAX_BUCKETS`], or `step_minutes`
/// is 0 or above 1,440; [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn throughput<'c, A>(
    conn: A,
    buckets: u32,
    step_minutes: u32,
) -> Result<Vec<ThroughputBucket>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    if buckets == 0 || buckets > MAX_BUCKETS {
        return Err(InspectError::Invalid(format!(
            "buckets must be 1 to {MAX_BUCKETS}, not {buckets}"
        )));
    }
    if step_minutes == 0 || step_minutes > 1_440 {
        return Err(InspectError::Invalid(format!(
            "a bucket must be 1 to 1440 minutes, not {step_minutes}"
        )));
    }
    let mut tx = begin(conn, true).await?;
    // Both fit an i32: checked above.
    let rows = db::inspect::throughput(&mut *tx, buckets as i32, step_minutes as i32).await?;
    tx.commit().await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(|row| ThroughputBucket {
            start: row.start,
            completed: count(row.completed),
            failed: count(row.failed),
            retried: count(row.retried),
            cancelled: count(row.cancelled),
            lost: count(row.lost),
        })
        .collect())
}

/// Where a job is, in a few fields: what a progress bar or a waiting page polls.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobProgress {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its state.
    pub state: JobState,
    /// Attempts made so far (0 before the first).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// What the handler last stored with `JobContext::set_progress`, if anything (JSON that
    /// `serde_json` cannot hold comes as its text).
    pub progress: Option<Value>,
    /// When it finished, if it has.
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobProgress {
    /// The progress as a percentage from 0 to 100, when it reads as one: a number (taken as
    /// a percentage), `{"percent": p}`, or `{"done": d, "total": t}` (also `current` for
    /// `done`); clamped to 0–100. A finished, completed job is at 100.
    pub fn percent(&self) -> Option<f64> {
        if self.state == JobState::Completed {
            return Some(100.0);
        }
        percent_of(self.progress.as_ref()?)
    }
}

/// The percentage a progress value reads as (see [`JobProgress::percent`]).
pub fn percent_of(progress: &Value) -> Option<f64> {
    let number = |key: &str| progress.get(key).and_then(Value::as_f64);
    let percent = match progress {
        Value::Number(n) => n.as_f64()?,
        Value::Object(_) => match number("percent") {
            Some(p) => p,
            None => {
                let done = number("done").or_else(|| number("current"))?;
                let total = number("total").filter(|t| *t > 0.0)?;
                done / total * 100.0
            }
        },
        _ => return None,
    };
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

/// The state and progress of each job of `ids` that exists, in id order, in one statement.
///
/// # Errors
/// [`InspectError::Invalid`] when asked for more than [`MAX_PROGRESS_IDS`] jobs;
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn job_progress<'c, A>(conn: A, ids: &[i64]) -> Result<Vec<JobProgress>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    if ids.len() > MAX_PROGRESS_IDS {
        return Err(InspectError::Invalid(format!(
            "at most {MAX_PROGRESS_IDS} jobs at a time, not {}",
            ids.len()
        )));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = begin(conn, true).await?;
    let rows = db::inspect::job_progress(&mut *tx, ids).await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| JobProgress {
            id: row.id,
            queue: row.queue,
            kind: row.kind,
            state: row.state,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            progress: row.progress_text.as_deref().map(lenient_json),
            finished_at: row.finished_at,
        })
        .collect())
}
