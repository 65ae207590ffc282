//! Seeing into the queue: typed answers to the questions an operator asks, the one source the
//! `skiplock` CLI, the metrics exporter and the dashboard read.
//!
//! - [`jobs`] and [`count_jobs`]: jobs by state, queue, kind, tags, schedule, ids, times and
//!   arguments, newest or oldest first, a page at a time (keyset pagination: a page costs the
//!   same at the end of a table of millions as at its start).
//! - [`job`]: everything about one job: every attempt's error, progress, result, and the worker
//!   that holds it.
//! - [`queues`], [`workers`], [`schedules`]: the fleet at a glance.
//! - [`explain`]: why a job is not running, reason by reason.
//! - [`workflows()`](workflows()): the recent workflows, newest first, a page at a time;
//!   [`workflow()`](workflow()): a workflow, where it stands, and its jobs with what each waits for.
//! - [`health()`](health()): the PostgreSQL checks that keep a queue fast for months (a pinned
//!   xmin horizon, dead tuples, autovacuum, bloat) and the queue's own (stuck jobs, jobs no
//!   worker runs, overdue schedules, pickup lag, pending migrations).
//! - [`throughput`] and [`job_progress`]: what a live view polls, one cheap statement each.
//! - [`cancel_jobs`], [`retry_jobs`], [`delete_jobs`]: actions on every job a filter matches,
//!   in batches, each batch its own short transaction.
//!
//! Every function runs its statements in a short read-only transaction (or short write
//! transactions, for actions) with a statement timeout of [`STATEMENT_TIMEOUT`] and a lock
//! timeout of [`LOCK_TIMEOUT`]: inspecting never holds a lock a worker waits on for long, and
//! never takes row locks at all. Reads need only `SELECT` on the `skiplock` schema (the
//! `observer` access level of `skiplock.grant_access`, docs/security.md); the checks of
//! [`health()`](health()) that read other sessions need `pg_read_all_stats` as well, and say so
//! when they cannot see.
//!
//! # Cancel safety
//! Not cancel safe when given a pool, through a flaw of sqlx 0.9: a call dropped while its
//! `BEGIN` is on the wire returns the connection to the pool inside a transaction sqlx does not
//! know about, and whatever runs on that connection next is never committed. Let calls finish:
//! to bound one, spawn it (`tokio::spawn`) and put the timeout on the handle. The dashboard
//! runs each request on a task of its own for this reason.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), skiplock::inspect::InspectError> {
//! use skiplock::JobState;
//! use skiplock::inspect::{self, JobFilter, JobQuery};
//!
//! let failed = JobFilter::new().state(JobState::Failed).queue("emails");
//! let page = inspect::jobs(&pool, &JobQuery::new(failed.clone()).limit(20)).await?;
//! for job in &page.jobs {
//!     println!("{} {} {:?}", job.id, job.kind, job.last_error);
//! }
//! println!("{} failed in all", inspect::count_jobs(&pool, &failed).await?);
//! if let Some(explanation) = inspect::explain(&pool, 42).await? {
//!     for reason in &explanation.reasons {
//!         println!("{reason}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod actions;
mod count;
mod explain;
mod filter;
mod health;
mod job;
mod list;
mod live;
mod overview;
mod workflow;

use std::time::Duration;

use sqlx::{Acquire, PgConnection, Postgres, Transaction};

pub use self::actions::{BATCH_SIZE, BulkReport, cancel_jobs, delete_job, delete_jobs, retry_jobs};
pub use self::count::{COUNT_EXACT_UP_TO, Count, count_jobs};
pub use self::explain::{AwaitedJob, Explanation, Reason, WAITING_FOR_SHOWN, explain};
pub use self::filter::{JobFilter, JobOrder, JobQuery, MAX_PAGE_SIZE, SCAN_WINDOW};
pub use self::health::{Check, HealthOptions, HealthReport, Severity, health};
pub use self::job::{JobDetail, JobWorker, job};
pub use self::list::{JobPage, JobSummary, jobs};
pub use self::live::{
    JobProgress, MAX_BUCKETS, MAX_PROGRESS_IDS, ThroughputBucket, job_progress, percent_of,
    throughput,
};
pub use self::overview::{
    LastJob, QUEUE_FINISHED_EXACT_UP_TO, QUEUE_WAITING_EXACT_UP_TO, QueueInfo, QueuePause,
    ScheduleInfo, WorkerInfo, WorkerQueue, WorkerStatus, queues, schedules, workers,
};
pub use self::workflow::{
    MAX_WORKFLOWS_PAGE, WORKFLOW_JOBS_PAGE, WorkflowInfo, WorkflowJob, WorkflowPage, WorkflowPhase,
    WorkflowQuery, WorkflowState, WorkflowSummary, workflow, workflows,
};
pub use crate::limits::LimitStatus;

/// The longest one inspection statement may run: 10 seconds. A dashboard refreshing a slow
/// page never piles up queries on the server.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest an inspection statement waits for a lock: 1 second (reads take none that
/// workers wait on; actions lock the rows they change, skipping rows locked by others).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The error of every function in [`inspect`](self).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// A statement failed (or ran past [`STATEMENT_TIMEOUT`]).
    #[error("inspection query failed")]
    Database(#[from] sqlx::Error),
    /// The filter or page asked for something that cannot be answered, e.g. a page size of 0.
    #[error("invalid inspection request: {0}")]
    Invalid(String),
}

/// Begins a short transaction with inspection's timeouts; `read_only` for reads.
async fn begin<'c, A>(conn: A, read_only: bool) -> Result<Transaction<'c, Postgres>, sqlx::Error>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = conn.begin().await?;
    set_timeouts(&mut tx, read_only).await?;
    Ok(tx)
}

async fn set_timeouts(conn: &mut PgConnection, read_only: bool) -> Result<(), sqlx::Error> {
    crate::db::inspect::set_local_timeouts(
        &mut *conn,
        STATEMENT_TIMEOUT.as_millis() as i64,
        LOCK_TIMEOUT.as_millis() as i64,
        read_only,
    )
    .await
}

/// Every cluster-wide limit ([`crate::limits`]), queues first, with each scope's running jobs
/// now: what the dashboard's Limits table, `GET /api/v1/limits` and `skiplock limits list`
/// show. One statement.
///
/// # Errors
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn limits<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<LimitStatus>, InspectError> {
    Ok(crate::db::throttle::list(executor)
        .await?
        .into_iter()
        .filter_map(crate::limits::status)
        .collect())
}
