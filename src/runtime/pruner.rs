//! The pruner: deletes finished jobs (`completed`, `failed`, `cancelled`) once their
//! `finished_at` is older than the [`Retention`] for their state, so that `skiplock.jobs` does
//! not grow forever.
//!
//! The maintenance leader runs one, every
//! [`WorkerBuilder::prune_interval`](super::WorkerBuilder::prune_interval).
//! A round deletes, state by state, in batches of [`PrunerConfig::batch_size`] rows, one short
//! autocommit statement each, going on while a batch was full. It never blocks the queue: rows
//! are chosen with `FOR UPDATE SKIP LOCKED`, only in final states, by database time. Several
//! pruners never conflict: a transaction-scoped advisory lock lets one statement of one pruner
//! run at a time, and the others skip their turn (see `db::job::delete_finished`).
//!
//! Each (state, queue, kind) is read in id order, from just after the largest id the pruner
//! has deleted there, across rounds: while a long transaction pins the xmin horizon, the index
//! keeps an entry for every job deleted since, none of which can be marked dead, and a read
//! from its start visits the heap for each (the rounds' first statements seen running for over
//! 150 ms took 1.6–2.0 s on average, during a 5-minute hold at 10,000 jobs/s). What such
//! reads cannot see waits for a round that reads every (queue, kind) of the state from its
//! start (see [`Pruner`]). Each state has its own schedule: its next such read is due its
//! retention after its last one (its statement in a round's first step) finished (at most
//! [`WHOLE_READ_EVERY`]), or [`SPACING`](super::whole_reads::SPACING) times as long as that
//! statement took if that is longer (one over a tenth of the spacing). One that fails or times
//! out (after hours of a hold it may) is spaced the same way, by how long it ran (a statement
//! that timed out after 10 s: 100 s later at least), and the rounds in between read from the
//! positions. Jobs finish out of id order all the time (a long run next to short ones), so
//! some are always passed over: with reads from the start at most a retention apart, a job
//! goes within about twice its retention, at most 5 minutes (and a prune interval) late. A
//! statement that found another pruner at work says so and reads nothing: a read from the
//! start locked out that way does not count as one, and the next round tries it again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DEFAULT_DB_TIMEOUT;
use super::deadline::DbCallError;
use super::service::{self, Monitor, RoleMonitor, Service, Step};
use super::whole_reads::WholeReads;
use crate::db::job::PrunePosition;
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

/// How long after a state's read of every (queue, kind) from its start the next one is due,
/// at most, while the state's retention is longer: 5 minutes.
const WHOLE_READ_EVERY: Duration = Duration::from_secs(5 * 60);

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

    /// The three retentions: `completed`, `failed`, `cancelled`.
    const fn each(&self) -> [Option<Duration>; 3] {
        [self.completed, self.failed, self.cancelled]
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
///
/// A pruner remembers, per state, queue and kind, the largest id it deleted, and its next
/// rounds read on from there, so that a long transaction pinning the xmin horizon does not
/// make every round walk all the jobs deleted since it began. In its first round, and for each
/// state in the first round at least that state's retention (at most 5 minutes) after its last
/// read from the start finished, it reads every queue and kind of the state from its start
/// (a retention of zero for one state leaves the others' rounds reading on), which deletes
/// what the other rounds passed over: a job that finished after jobs enqueued later were
/// deleted (a long run, a retry, a delay, or only a slower neighbour), one another transaction
/// had locked, and the jobs of a queue or kind new to a state in which the pruner already
/// knows others. Such jobs outlive their retention by up to that much more (and a prune
/// interval): with a retention of zero, nearly every round reads that state from the start.
/// While such reads are slow (one over a tenth of that spacing), they come ten times as long
/// as they took apart instead. Clones share where they stand.
#[derive(Clone, Debug)]
pub struct Pruner {
    pool: PgPool,
    config: PrunerConfig,
    reach: Arc<Mutex<Reach>>,
}

impl Pruner {
    /// A pruner working through `pool`; its first round reads every (queue, kind) from its
    /// start.
    pub fn new(pool: PgPool, config: PrunerConfig) -> Self {
        let reach = Reach::new(&config.retention);
        Self {
            pool,
            config,
            reach: Arc::new(Mutex::new(reach)),
        }
    }

    fn reach(&self) -> MutexGuard<'_, Reach> {
        // Nothing panics while holding the guard; and the data stays valid whatever happens.
        self.reach.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The end of a round, once every state is done: finished workflows, old statistics and
    /// expired waiters.
    async fn finish(&self, round: &mut PruneRound) -> Result<Step, DbCallError> {
        if !round.workflows_drained {
            let retention = &self.config.retention;
            // A workflow's jobs go together, once the workflow finished longer ago than the
            // longest retention (never, if a state is kept forever): no workflow is half pruned.
            let workflow_age = retention
                .each()
                .into_iter()
                .try_fold(Duration::ZERO, |longest, age| {
                    age.map(|age| longest.max(age))
                })
                .unwrap_or(MAX_AGE)
                .min(MAX_AGE)
                .as_secs_f64();
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

/// How long after a state's read from the start the next is due: its retention, at most
/// [`WHOLE_READ_EVERY`] (a state kept forever is never read).
fn whole_read_every(age: Option<Duration>) -> Duration {
    age.map_or(WHOLE_READ_EVERY, |age| age.min(WHOLE_READ_EVERY))
}

/// Where a pruner stands across rounds.
#[derive(Debug)]
struct Reach {
    /// Per final state, the largest id deleted in each (queue, kind).
    positions: [BTreeMap<(String, String), i64>; 3],
    /// Per final state, when a round reads every (queue, kind) of it from its start next: each
    /// on its own retention's schedule, so that a short one for one state does not send the
    /// others' reads back to their start every round.
    whole_reads: [WholeReads; 3],
}

impl Reach {
    fn new(retention: &Retention) -> Self {
        Self {
            positions: Default::default(),
            whole_reads: retention
                .each()
                .map(|age| WholeReads::new(whole_read_every(age))),
        }
    }

    /// Makes the next round read every state from its start (tests).
    #[cfg(test)]
    fn make_due(&mut self) {
        self.whole_reads.iter_mut().for_each(WholeReads::make_due);
    }

    /// Whether a read from the start began and has not finished or failed (tests).
    #[cfg(test)]
    fn under_way(&self) -> bool {
        self.whole_reads.iter().any(WholeReads::under_way)
    }

    /// Where the state at `index` stands, for a statement to read on from.
    fn starts(&self, index: usize) -> Vec<PrunePosition> {
        self.positions[index]
            .iter()
            .map(|((queue, kind), &after)| PrunePosition {
                queue: queue.clone(),
                kind: kind.clone(),
                after,
                deleted: 0,
            })
            .collect()
    }

    /// Records where a statement left the state at `index`. A position only moves forward. A
    /// statement that read every (queue, kind) of the state from its start (`sees_every_pair`)
    /// also forgets the pairs that have no finished job of it left. A statement that returned
    /// nothing (no finished job of the state) changes nothing.
    fn record(&mut self, index: usize, now: &[PrunePosition], sees_every_pair: bool) {
        if now.is_empty() {
            return;
        }
        let known = &mut self.positions[index];
        if sees_every_pair {
            known.retain(|(queue, kind), _| {
                now.iter()
                    .any(|new| new.queue == *queue && new.kind == *kind)
            });
        }
        for new in now {
            let after = known
                .entry((new.queue.clone(), new.kind.clone()))
                .or_default();
            *after = (*after).max(new.after);
        }
    }
}

/// A round of the pruner in progress: what it deleted, how it reads, where each state's
/// deletes stand (see `db::job::delete_finished`), and which states (and whether the
/// workflows) are done.
#[derive(Debug, Default)]
pub(crate) struct PruneRound {
    report: PruneReport,
    /// Whether its first step began: the one that reads each state due from its start.
    stepped: bool,
    /// Per state, when its read from the start (the first step's statement) began, until that
    /// statement ends.
    whole_read: [Option<Instant>; 3],
    positions: [Vec<PrunePosition>; 3],
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
        let first = !round.stepped;
        if round.drained.iter().all(|done| *done) {
            return self.finish(round).await;
        }
        let mut conn = self.pool.acquire().await?;
        round.stepped = true;
        let report = &mut round.report;
        for (index, (((state, age, deleted), drained), positions)) in [
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
        .enumerate()
        {
            let Some(age) = age.filter(|_| !*drained) else {
                *drained = true;
                continue;
            };
            let older_than_secs = age.min(MAX_AGE).as_secs_f64();
            // The first step reads a state that is due from its start, the others from their
            // positions; the steps after it read on from where it stopped. Decided under the
            // lock just before the statement, so a clone's read is not repeated, and timed from
            // the statement on (a wait for a pooled connection, or another state's statement,
            // is not its cost).
            let mut read_from_start = false;
            let began = Instant::now();
            if first {
                let mut reach = self.reach();
                if reach.whole_reads[index].due(began) {
                    reach.whole_reads[index].begins(began);
                    round.whole_read[index] = Some(began);
                    read_from_start = true;
                } else {
                    *positions = reach.starts(index);
                }
            }
            // With no positions, the statement finds every (queue, kind) of the state.
            let sees_every_pair = positions.is_empty();
            let read = db::job::delete_finished(
                &mut *conn,
                state,
                older_than_secs,
                batch,
                LOCK_KEY,
                positions,
            )
            .await?;
            let Some(read) = read else {
                // Another pruner is deleting: this one read nothing, and a read from the start
                // is still due (next round).
                if read_from_start {
                    self.reach().whole_reads[index].locked_out(began);
                    round.whole_read[index] = None;
                }
                *drained = true;
                continue;
            };
            *positions = read;
            {
                let mut reach = self.reach();
                reach.record(index, positions, sees_every_pair);
                if read_from_start {
                    reach.whole_reads[index].finished(Instant::now(), began.elapsed());
                    round.whole_read[index] = None;
                }
            }
            let n: i64 = positions.iter().map(|p| p.deleted).sum();
            *deleted += u64::try_from(n).unwrap_or(0);
            *drained = n < batch;
        }
        drop(conn);
        if !round.drained.iter().all(|done| *done) {
            return Ok(Step::More);
        }
        self.finish(round).await
    }

    /// A read from the start that failed or timed out is spaced by how long it ran.
    fn round_failed(&self, round: &PruneRound) {
        let mut reach = self.reach();
        for (reads, began) in reach.whole_reads.iter_mut().zip(round.whole_read) {
            if let Some(began) = began {
                reads.failed(Instant::now(), began);
            }
        }
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
    use skiplock_testing::TestDatabase;

    /// Rounds read on from where the pruner (or a clone) last deleted; a job that finished
    /// behind that position waits for a round that reads from the start. A round from the
    /// start that found another pruner at work leaves the positions as they were, and the
    /// next round reads from the start.
    #[tokio::test]
    async fn rounds_read_on_from_the_last_deleted_and_from_the_start_when_due() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let straggler = available_job(pool).await;
        let old = finished_two_hours_ago(pool, 3).await;
        let pruner = pruner(pool, Duration::from_secs(10));
        // A clone stands where the pruner does.
        let first = pruner.clone().run_once().await.expect("first round");
        assert_eq!(first.completed, 3);

        finish_two_hours_ago(pool, straggler).await;
        let new = finished_two_hours_ago(pool, 1).await;
        assert!(old.iter().all(|&id| straggler < id && id < new[0]));
        assert_eq!(pruner.run_once().await.expect("second round").completed, 1);
        assert_eq!(ids(pool).await, [straggler]);

        // A round from the start, which deletes nothing: the other pruner holds the lock.
        pruner.reach().make_due();
        let mut other = pool.acquire().await.expect("connection");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *other)
            .await
            .expect("lock");
        assert_eq!(pruner.run_once().await.expect("locked out").total(), 0);
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *other)
            .await
            .expect("unlock");
        assert!(!pruner.reach().under_way());

        // Still due: the next round reads from the start.
        assert_eq!(pruner.run_once().await.expect("third round").completed, 1);
        assert!(ids(pool).await.is_empty());
    }

    /// A round from the start that times out (here blocked by a lock on the table) is not
    /// retried at once: the rounds after it read from the positions.
    #[tokio::test]
    async fn a_whole_read_that_times_out_leaves_the_next_rounds_the_positions() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let straggler = available_job(pool).await;
        finished_two_hours_ago(pool, 2).await;
        let pruner = pruner(pool, Duration::from_millis(500));
        assert_eq!(pruner.run_once().await.expect("first round").completed, 2);

        pruner.reach().make_due();
        let timed_out = service::while_jobs_are_locked(pool, pruner.run_once()).await;
        assert!(
            matches!(timed_out, Err(PruneError::Timeout(_))),
            "{timed_out:?}"
        );
        // Spaced by how long it ran, as one that finished.
        assert!(!pruner.reach().under_way());

        finish_two_hours_ago(pool, straggler).await;
        finished_two_hours_ago(pool, 1).await;
        assert_eq!(pruner.run_once().await.expect("next round").completed, 1);
        assert_eq!(ids(pool).await, [straggler]);
    }

    /// Positions only move forward; a round from the start forgets the pairs of a state it
    /// found no finished job of, and a statement that returned nothing changes nothing.
    #[test]
    fn positions_move_forward_and_a_whole_read_forgets_pairs_that_are_gone() {
        let at = |queue: &str, after| PrunePosition {
            queue: queue.into(),
            kind: "k".into(),
            after,
            deleted: 0,
        };
        let mut reach = Reach::new(&Retention::default());
        reach.record(0, &[at("a", 10), at("b", 20)], true);
        reach.record(0, &[at("a", 5), at("c", 1)], false);
        assert_eq!(reach.starts(0), [at("a", 10), at("b", 20), at("c", 1)]);
        reach.record(0, &[], true);
        assert_eq!(reach.starts(0).len(), 3);
        reach.record(0, &[at("b", 0)], true);
        assert_eq!(reach.starts(0), [at("b", 20)]);
        assert!(reach.starts(1).is_empty());
    }

    /// A pruner of completed, failed and cancelled jobs older than an hour, giving a step
    /// `timeout`.
    fn pruner(pool: &PgPool, timeout: Duration) -> Pruner {
        let hour = Some(Duration::from_secs(60 * 60));
        Pruner::new(
            pool.clone(),
            PrunerConfig {
                retention: Retention {
                    completed: hour,
                    failed: hour,
                    cancelled: hour,
                },
                timeout,
                ..PrunerConfig::default()
            },
        )
    }

    async fn available_job(pool: &PgPool) -> i64 {
        sqlx::query_scalar("INSERT INTO skiplock.jobs (kind, args) VALUES ('k', '{}') RETURNING id")
            .fetch_one(pool)
            .await
            .expect("insert")
    }

    /// `n` jobs completed two hours ago, in id order.
    async fn finished_two_hours_ago(pool: &PgPool, n: i32) -> Vec<i64> {
        sqlx::query_scalar(
            "INSERT INTO skiplock.jobs (kind, args, state, attempt, finished_at)
             SELECT 'k', '{}', 'completed', 1, now() - interval '2 hours'
             FROM generate_series(1, $1) ORDER BY 1 RETURNING id",
        )
        .bind(n)
        .fetch_all(pool)
        .await
        .expect("insert")
    }

    async fn finish_two_hours_ago(pool: &PgPool, id: i64) {
        sqlx::query(
            "UPDATE skiplock.jobs
             SET state = 'completed', attempt = 1, finished_at = now() - interval '2 hours'
             WHERE id = $1",
        )
        .bind(id)
        .execute(pool)
        .await
        .expect("finish");
    }

    async fn ids(pool: &PgPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM skiplock.jobs ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("ids")
    }

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
    fn each_state_is_read_from_the_start_its_retention_apart_at_most_5_minutes() {
        let minute = Duration::from_secs(60);
        assert_eq!(whole_read_every(None), 5 * minute);
        assert_eq!(
            whole_read_every(Some(Duration::from_secs(86_400))),
            5 * minute
        );
        assert_eq!(whole_read_every(Some(minute)), minute);
        assert_eq!(whole_read_every(Some(Duration::ZERO)), Duration::ZERO);
    }

    /// Each state keeps its own schedule: after a quick read, a retention of zero for
    /// `cancelled` makes it due again at once, while `completed` and `failed` wait theirs.
    #[test]
    fn each_state_keeps_its_own_schedule() {
        let hour = Some(Duration::from_secs(60 * 60));
        let mut reach = Reach::new(&Retention {
            completed: hour,
            failed: hour,
            cancelled: Some(Duration::ZERO),
        });
        let start = Instant::now();
        let read = Duration::from_millis(1);
        for reads in &mut reach.whole_reads {
            assert!(reads.due(start));
            reads.begins(start);
            reads.finished(start + read, read);
        }
        let later = start + Duration::from_secs(1);
        let due = reach.whole_reads.each_ref().map(|reads| reads.due(later));
        assert_eq!(due, [false, false, true]);
    }

    /// A round reads from the start only the states that are due: a straggler behind the
    /// position of `cancelled`, which is due, goes; one behind that of `completed` waits.
    #[tokio::test]
    async fn a_round_reads_from_the_start_only_the_states_that_are_due() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let completed_straggler = available_job(pool).await;
        let cancelled_straggler = available_job(pool).await;
        finished_two_hours_ago(pool, 2).await;
        let cancel_two_hours_ago = "UPDATE skiplock.jobs
             SET state = 'cancelled', finished_at = now() - interval '2 hours'
             WHERE id = ANY ($1)";
        let cancelled = vec![available_job(pool).await, available_job(pool).await];
        sqlx::query(cancel_two_hours_ago)
            .bind(cancelled)
            .execute(pool)
            .await
            .expect("cancel");
        let pruner = pruner(pool, DEFAULT_DB_TIMEOUT);
        let first = pruner.run_once().await.expect("first round");
        assert_eq!((first.completed, first.cancelled), (2, 2));

        finish_two_hours_ago(pool, completed_straggler).await;
        sqlx::query(cancel_two_hours_ago)
            .bind(vec![cancelled_straggler])
            .execute(pool)
            .await
            .expect("cancel");
        pruner.reach().whole_reads[2].make_due();
        let next = pruner.run_once().await.expect("next round");
        assert_eq!((next.completed, next.cancelled), (0, 1));
        assert_eq!(ids(pool).await, [completed_straggler]);
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
