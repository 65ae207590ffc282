//! The pruner: deletes finished jobs (`completed`, `failed`, `cancelled`) once their
//! `finished_at` is older than the [`Retention`] for their state, so that `skiplock.jobs` does
//! not grow forever.
//!
//! The maintenance leader runs one, every
//! [`WorkerBuilder::prune_interval`](super::WorkerBuilder::prune_interval).
//! A round deletes, state by state, in batches of [`PrunerConfig::batch_size`] rows, one short
//! autocommit statement each, going on while a batch was full; each statement after a round's
//! first reads the queues and kinds that first one found just after the last row the round
//! deleted in each, so that a pinned xmin horizon does not make every batch walk the rows
//! deleted before it. It never blocks the queue: rows are chosen with `FOR UPDATE SKIP LOCKED`,
//! only in final states, by database time. Several pruners never conflict: a
//! transaction-scoped advisory lock lets one statement of one pruner run at a time, and the
//! others skip their turn (see `db::job::delete_finished`).

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::DEFAULT_DB_TIMEOUT;
use super::deadline::DbCallError;
use super::service::{self, Monitor, RoleMonitor, Service, Step};
use crate::{JobState, db};

/// How often the pruner looks for finished jobs past their retention: 30 s.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// How long `completed` jobs are kept after they finished: 24 hours.
pub const DEFAULT_COMPLETED_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long `failed` jobs are kept after they finished: 7 days.
pub const DEFAULT_FAILED_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long `cancelled` jobs are kept after they finished: 7 days.
pub const DEFAULT_CANCELLED_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How many jobs one pruning statement deletes at most: 1,000.
pub const DEFAULT_PRUNE_BATCH: usize = 1_000;

/// The key of the advisory lock that lets one pruning statement run at a time: the ASCII bytes
/// of "sl-prune" read as a big-endian integer (the migration lock uses "skiplock").
const LOCK_KEY: i64 = 0x736c_2d70_7275_6e65;

/// How long `skiplock.job_stats` keeps its per-minute outcome counts: 8 days, so that a week
/// can be compared with the one before (whatever the retention of finished jobs).
pub(crate) const JOB_STATS_KEPT: Duration = Duration::from_secs(8 * 24 * 3600);

/// Ages are capped at 1,000 years, which keeps them within PostgreSQL's `interval` and
/// `timestamptz` ranges and is forever for any job.
const MAX_AGE: Duration = Duration::from_secs(1_000 * 366 * 24 * 60 * 60);

/// How long finished jobs are kept, per final state, counted from their `finished_at`; `None`
/// keeps the jobs of that state forever.
///
/// ```
/// use std::time::Duration;
/// use skiplock::Retention;
///
/// // Completed jobs for an hour, failed and cancelled ones for the default 7 days:
/// let retention = Retention {
///     completed: Some(Duration::from_secs(60 * 60)),
///     ..Retention::default()
/// };
/// // Failed jobs forever, for a human to look at:
/// let retention = Retention { failed: None, ..retention };
/// // Nothing is ever deleted:
/// let retention = Retention::keep_forever();
/// # let _ = retention;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// How long `completed` jobs are kept. Default: [`DEFAULT_COMPLETED_RETENTION`] (24 hours).
    pub completed: Option<Duration>,
    /// How long `failed` jobs are kept. Default: [`DEFAULT_FAILED_RETENTION`] (7 days).
    pub failed: Option<Duration>,
    /// How long `cancelled` jobs are kept. Default: [`DEFAULT_CANCELLED_RETENTION`] (7 days).
    pub cancelled: Option<Duration>,
}

impl Retention {
    /// Keeps every finished job forever: nothing is pruned.
    pub const fn keep_forever() -> Self {
        Self {
            completed: None,
            failed: None,
            cancelled: None,
        }
    }

    /// Whether this keeps every finished job forever.
    pub const fn keeps_everything(&self) -> bool {
        self.completed.is_none() && self.failed.is_none() && self.cancelled.is_none()
    }
}

impl Default for Retention {
    /// Completed jobs for 24 hours, failed and cancelled jobs for 7 days.
    fn default() -> Self {
        Self {
            completed: Some(DEFAULT_COMPLETED_RETENTION),
            failed: Some(DEFAULT_FAILED_RETENTION),
            cancelled: Some(DEFAULT_CANCELLED_RETENTION),
        }
    }
}

/// Configuration of the [`Pruner`].
#[derive(Clone, Debug)]
pub struct PrunerConfig {
    /// How long to sleep between rounds. Default: [`DEFAULT_PRUNE_INTERVAL`].
    pub interval: Duration,
    /// What to keep, and for how long. Default: [`Retention::default`].
    pub retention: Retention,
    /// How many jobs one statement deletes at most (0 counts as 1). Default:
    /// [`DEFAULT_PRUNE_BATCH`].
    pub batch_size: usize,
    /// The deadline of each step of a round: one batch of each state. Default:
    /// [`DEFAULT_DB_TIMEOUT`](super::DEFAULT_DB_TIMEOUT).
    pub timeout: Duration,
}

impl Default for PrunerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_PRUNE_INTERVAL,
            retention: Retention::default(),
            batch_size: DEFAULT_PRUNE_BATCH,
            timeout: DEFAULT_DB_TIMEOUT,
        }
    }
}

/// What one round of the [`Pruner`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// `completed` jobs deleted.
    pub completed: u64,
    /// `failed` jobs deleted.
    pub failed: u64,
    /// `cancelled` jobs deleted.
    pub cancelled: u64,
    /// Finished workflows deleted whole, with their jobs (which the three counts above do
    /// not include).
    pub workflows: u64,
}

impl PruneReport {
    /// Jobs deleted outside workflows, all states together.
    pub fn total(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}

/// The error of [`Pruner::run_once`]. Whatever was deleted before it stays deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The database refused a statement.
    #[error("could not prune finished jobs")]
    Database(#[source] sqlx::Error),
    /// A step (one batch per state) got no answer within [`PrunerConfig::timeout`].
    #[error("no answer from the database within {0:?} while pruning finished jobs")]
    Timeout(Duration),
}

impl From<DbCallError> for PruneError {
    fn from(error: DbCallError) -> Self {
        match error {
            DbCallError::Database(error) => Self::Database(error),
            DbCallError::Timeout(limit) => Self::Timeout(limit),
        }
    }
}

/// Deletes finished jobs past their [`Retention`]; embedded in every worker, or run on its own.
#[derive(Clone, Debug)]
pub struct Pruner {
    pool: PgPool,
    config: PrunerConfig,
}

impl Pruner {
    /// A pruner working through `pool`.
    pub fn new(pool: PgPool, config: PrunerConfig) -> Self {
        Self { pool, config }
    }

    /// Runs rounds every [`PrunerConfig::interval`] until `shutdown` completes; errors are
    /// logged and retried next round.
    ///
    /// # Cancel safety
    /// Cancel safe: each statement deletes its batch or nothing.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        super::run_until(shutdown, |stop| self.run(stop)).await;
    }

    /// Runs rounds every interval until `stop` fires, interrupting a round in progress (each
    /// statement deletes its batch or nothing).
    pub(crate) async fn run(&self, stop: CancellationToken) {
        let health = Monitor::default().role(<Self as Service>::NAME);
        self.run_supervised(&stop, &health).await;
    }

    /// As [`run`](Self::run), recording failures in `health`.
    pub(crate) async fn run_supervised(&self, stop: &CancellationToken, health: &RoleMonitor) {
        if self.config.retention.keeps_everything() {
            return;
        }
        service::run(self, stop, health).await;
    }

    /// One round: deletes every finished job past its state's retention, in batches, and says
    /// how many per state. A state kept forever is not touched. While another pruner is
    /// deleting, this one deletes nothing (it would only compete for the same rows).
    ///
    /// # Errors
    /// [`PruneError`] when a statement fails or a step (one batch per state) gets no answer
    /// within [`PrunerConfig::timeout`]; batches deleted before stay deleted.
    ///
    /// # Cancel safety
    /// Cancel safe: each statement deletes its batch or nothing.
    pub async fn run_once(&self) -> Result<PruneReport, PruneError> {
        let round = service::round(self, &CancellationToken::new()).await?;
        Ok(round.report)
    }
}

/// How many finished workflows one step deletes, with all their jobs: 100 (a workflow has up
/// to 100,000 jobs; the round goes on until fewer are left).
const WORKFLOWS_PER_STEP: i32 = 100;

/// A round of the pruner in progress: what it deleted, where each state's deletes stand (see
/// `db::job::delete_finished`), and which states (and whether the workflows) are done.
#[derive(Debug, Default)]
pub(crate) struct PruneRound {
    report: PruneReport,
    positions: [Vec<db::job::PrunePosition>; 3],
    drained: [bool; 3],
    workflows_drained: bool,
}

impl Service for Pruner {
    type Report = PruneRound;
    const NAME: &'static str = "pruner";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// One batch of each state not yet done.
    async fn step(&self, round: &mut PruneRound) -> Result<Step, DbCallError> {
        let retention = &self.config.retention;
        let batch = i64::try_from(self.config.batch_size.max(1)).unwrap_or(i64::MAX);
        // A workflow's jobs go together, once the workflow finished longer ago than the
        // longest retention (never, if a state is kept forever): no workflow is half pruned.
        let workflow_age = [retention.completed, retention.failed, retention.cancelled]
            .into_iter()
            .try_fold(Duration::ZERO, |longest, age| {
                age.map(|age| longest.max(age))
            })
            .unwrap_or(MAX_AGE)
            .min(MAX_AGE)
            .as_secs_f64();
        let report = &mut round.report;
        for (((state, age, deleted), drained), positions) in [
            (
                JobState::Completed,
                retention.completed,
                &mut report.completed,
            ),
            (JobState::Failed, retention.failed, &mut report.failed),
            (
                JobState::Cancelled,
                retention.cancelled,
                &mut report.cancelled,
            ),
        ]
        .into_iter()
        .zip(&mut round.drained)
        .zip(&mut round.positions)
        {
            let Some(age) = age.filter(|_| !*drained) else {
                *drained = true;
                continue;
            };
            let older_than_secs = age.min(MAX_AGE).as_secs_f64();
            *positions = db::job::delete_finished(
                &self.pool,
                state,
                older_than_secs,
                batch,
                LOCK_KEY,
                positions,
            )
            .await?;
            let n: i64 = positions.iter().map(|p| p.deleted).sum();
            *deleted += u64::try_from(n).unwrap_or(0);
            *drained = n < batch;
        }
        if !round.drained.iter().all(|done| *done) {
            return Ok(Step::More);
        }
        if !round.workflows_drained {
            // Finished workflows, whole: their jobs, dependency rows and own row.
            let n = db::workflow::prune(&self.pool, workflow_age, WORKFLOWS_PER_STEP).await?;
            round.report.workflows += u64::try_from(n).unwrap_or(0);
            round.workflows_drained = n < WORKFLOWS_PER_STEP;
            if !round.workflows_drained {
                return Ok(Step::More);
            }
        }
        db::job::delete_old_job_stats(&self.pool, JOB_STATS_KEPT.as_secs_f64()).await?;
        // Registrations of waiters that died without removing them.
        db::waiter::delete_expired(&self.pool).await?;
        Ok(Step::Done)
    }

    fn log(round: &PruneRound) {
        let report = &round.report;
        if report.total() > 0 || report.workflows > 0 {
            tracing::debug!(
                completed = report.completed,
                failed = report.failed,
                cancelled = report.cancelled,
                workflows = report.workflows,
                "pruned finished jobs"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let retention = Retention::default();
        assert_eq!(retention.completed, Some(Duration::from_secs(86_400)));
        assert_eq!(retention.failed, Some(Duration::from_secs(604_800)));
        assert_eq!(retention.cancelled, Some(Duration::from_secs(604_800)));
        assert!(!retention.keeps_everything());
        assert!(Retention::keep_forever().keeps_everything());
        assert!(
            !Retention {
                cancelled: Some(Duration::ZERO),
                ..Retention::keep_forever()
            }
            .keeps_everything()
        );

        let config = PrunerConfig::default();
        assert_eq!(config.interval, Duration::from_secs(30));
        assert_eq!(config.batch_size, 1_000);
        assert_eq!(config.timeout, DEFAULT_DB_TIMEOUT);
        assert_eq!(config.retention, retention);
    }

    #[test]
    fn the_lock_key_is_its_name() {
        assert_eq!(LOCK_KEY.to_be_bytes(), *b"sl-prune");
    }

    #[test]
    fn report_total() {
        let report = PruneReport {
            completed: 3,
            failed: 2,
            cancelled: 1,
            workflows: 4,
        };
        assert_eq!(report.total(), 6);
    }
}
