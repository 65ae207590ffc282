//! The fleet at a glance: queues, workers and schedules.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Acquire, Postgres};

use super::{Count, InspectError, JobFilter, begin};
use crate::{JobState, ScheduleRow, db};

/// Per queue, waiting states (pending, scheduled, available, running, retryable) are counted exactly up
/// to this many jobs: 10,000; past it, a count is the planner's [`Count::Estimate`] (never
/// less than this).
pub const QUEUE_WAITING_EXACT_UP_TO: i64 = 10_000;

/// Per queue, finished states are counted exactly up to this many jobs: 1,000; past it, as
/// for [`QUEUE_WAITING_EXACT_UP_TO`].
pub const QUEUE_FINISHED_EXACT_UP_TO: i64 = 1_000;

/// One queue's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Workflow jobs waiting for the jobs they depend on.
    pub pending: Count,
    /// Jobs waiting for their `run_at`.
    pub scheduled: Count,
    /// Jobs runnable now, waiting for a worker.
    pub available: Count,
    /// Jobs running.
    pub running: Count,
    /// Jobs waiting out a backoff before running again.
    pub retryable: Count,
    /// Completed jobs still kept (see retention).
    pub completed: Count,
    /// Failed jobs still kept.
    pub failed: Count,
    /// Cancelled jobs still kept.
    pub cancelled: Count,
    /// The queue's pickup lag: how long the job that runs next (of each kind, in claim order:
    /// priority, then `run_at`) has been runnable, the longest of them. `None` when nothing is
    /// available.
    pub oldest_available_age: Option<Duration>,
    /// Attempts completed in the last full minute, by every worker (`skiplock.job_stats`).
    pub completed_last_minute: u64,
    /// Attempts that failed for good in the last full minute.
    pub failed_last_minute: u64,
    /// Attempts completed in the last hour.
    pub completed_last_hour: u64,
    /// Attempts that failed for good in the last hour.
    pub failed_last_hour: u64,
    /// Attempts that failed and will be retried, in the last hour.
    pub retried_last_hour: u64,
    /// Live workers that work the queue.
    pub workers: u64,
    /// Their slots in the queue: how many of its jobs can run at once.
    pub concurrency: u64,
    /// Set while the queue is paused ([`crate::queue::pause`]): no worker claims from it.
    pub paused: Option<QueuePause>,
}

/// A queue's pause: when, by whom, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueuePause {
    /// When it was paused (database time).
    pub since: DateTime<Utc>,
    /// The database role that paused it.
    pub by: Option<String>,
    /// The reason given, if any.
    pub reason: Option<String>,
}

impl QueueInfo {
    /// The count of jobs in `state`.
    pub fn count(&self, state: JobState) -> Count {
        match state {
            JobState::Pending => self.pending,
            JobState::Scheduled => self.scheduled,
            JobState::Available => self.available,
            JobState::Running => self.running,
            JobState::Retryable => self.retryable,
            JobState::Completed => self.completed,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
        }
    }
}

fn non_negative(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Every queue that has jobs, live workers or active schedules, or is paused, with its figures,
/// by name;
/// one statement.
///
/// # Errors
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn queues<'c, A>(conn: A) -> Result<Vec<QueueInfo>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let rows = db::inspect::queues(
        &mut *tx,
        QUEUE_WAITING_EXACT_UP_TO,
        QUEUE_FINISHED_EXACT_UP_TO,
    )
    .await?;
    let mut infos = Vec::with_capacity(rows.len());
    for row in rows {
        // Past its cap, each count is the planner's estimate (one EXPLAIN, nothing read).
        let mut counts = Vec::with_capacity(JobState::ALL.len());
        for (state, n) in JobState::ALL.into_iter().zip([
            row.pending,
            row.scheduled,
            row.available,
            row.running,
            row.retryable,
            row.completed,
            row.failed,
            row.cancelled,
        ]) {
            let cap = if state.is_finished() {
                QUEUE_FINISHED_EXACT_UP_TO
            } else {
                QUEUE_WAITING_EXACT_UP_TO
            };
            counts.push(if n > cap {
                let filter = JobFilter::new().state(state).queue(row.queue.clone());
                let estimate = crate::db::job_list::count_estimate(&mut *tx, &filter).await?;
                Count::Estimate(non_negative(estimate.max(cap)))
            } else {
                Count::Exact(non_negative(n))
            });
        }
        infos.push((row, counts));
    }
    tx.commit().await?;
    Ok(infos
        .into_iter()
        .map(|(row, counts)| QueueInfo {
            name: row.queue,
            pending: counts[0],
            scheduled: counts[1],
            available: counts[2],
            running: counts[3],
            retryable: counts[4],
            completed: counts[5],
            failed: counts[6],
            cancelled: counts[7],
            oldest_available_age: row
                .oldest_available_at
                .map(|at| (row.now - at).to_std().unwrap_or_default()),
            completed_last_minute: non_negative(row.completed_last_minute),
            failed_last_minute: non_negative(row.failed_last_minute),
            completed_last_hour: non_negative(row.completed_last_hour),
            failed_last_hour: non_negative(row.failed_last_hour),
            retried_last_hour: non_negative(row.retried_last_hour),
            workers: non_negative(row.workers),
            concurrency: non_negative(row.concurrency),
            paused: row.paused_at.map(|since| QueuePause {
                since,
                by: row.paused_by,
                reason: row.pause_reason,
            }),
        })
        .collect())
}

/// Whether a worker is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerStatus {
    /// Its heartbeat is current.
    Alive,
    /// Its heartbeat is late (past twice its lease) and no rescuer has declared it lost yet.
    Unresponsive,
    /// It stopped cleanly.
    Stopped,
    /// The rescuer found its heartbeat too old: it died, hung or lost the database.
    Lost,
}

impl WorkerStatus {
    pub(crate) fn from_db(status: &str) -> Self {
        match status {
            "alive" => Self::Alive,
            "shutdown" => Self::Stopped,
            "lost" => Self::Lost,
            _ => Self::Unresponsive,
        }
    }

    /// `alive`, `unresponsive`, `stopped` or `lost`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Unresponsive => "unresponsive",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One worker process.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id (`host:pid:random` by default), as in `attempted_by`.
    pub id: String,
    /// Whether it is alive.
    pub status: WorkerStatus,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// Its queues, each with how many of its jobs it runs at once.
    pub queues: Vec<WorkerQueue>,
    /// The kinds it has handlers for (`None` for workers of old versions).
    pub kinds: Option<Vec<String>>,
    /// The skiplock version it runs (`None` for old versions).
    pub version: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// When it stopped or was found lost.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Jobs running under its leases now.
    pub running: u64,
}

/// One queue a worker works.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerQueue {
    /// The queue's name.
    pub name: String,
    /// How many of its jobs the worker runs at once (`None` for workers older than this
    /// version, which do not say).
    pub concurrency: Option<u32>,
}

/// Every worker: live ones first (oldest first), then those stopped or lost in the last hour
/// (most recent first).
///
/// # Errors
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn workers<'c, A>(conn: A) -> Result<Vec<WorkerInfo>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let rows = db::inspect::workers(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let concurrency = row.concurrency.unwrap_or_default();
            WorkerInfo {
                status: WorkerStatus::from_db(&row.status),
                queues: row
                    .queues
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| WorkerQueue {
                        name,
                        concurrency: concurrency.get(i).and_then(|n| u32::try_from(*n).ok()),
                    })
                    .collect(),
                id: row.id,
                host: row.host,
                pid: row.pid,
                kinds: row.kinds,
                version: row.version,
                started_at: row.started_at,
                heartbeat_at: row.heartbeat_at,
                stopped_at: row.stopped_at,
                running: non_negative(row.running),
            }
        })
        .collect())
}

/// One schedule with its latest job.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule.
    pub schedule: ScheduleRow,
    /// Whether it is overdue: active, not paused, and due over a minute ago (no scheduler is
    /// running).
    pub overdue: bool,
    /// Its latest job (by fire time), while the job is kept.
    pub last_job: Option<LastJob>,
}

/// The latest job of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LastJob {
    /// Its id.
    pub id: i64,
    /// Its state.
    pub state: JobState,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Every schedule, by name, with its next and last fire times and its latest job.
///
/// # Errors
/// [`InspectError::Database`] when a statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn schedules<'c, A>(conn: A) -> Result<Vec<ScheduleInfo>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let rows = db::schedule::list(&mut *tx).await?;
    let mut last = db::inspect::schedule_last_jobs(&mut *tx).await?;
    tx.commit().await?;
    last.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows
        .into_iter()
        .map(|schedule| {
            let found = last
                .binary_search_by(|row| row.name.as_str().cmp(&schedule.name))
                .ok()
                .map(|i| &last[i]);
            ScheduleInfo {
                overdue: found.is_some_and(|row| row.overdue),
                last_job: found.and_then(|row| {
                    Some(LastJob {
                        id: row.job_id?,
                        state: row.job_state?,
                        finished_at: row.job_finished_at,
                    })
                }),
                schedule,
            }
        })
        .collect())
}
