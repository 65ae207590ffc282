//! The scheduler: enqueues the jobs of due schedules, exactly once per fire time however many
//! schedulers run.
//!
//! Each batch of a round, in one transaction: lock due schedules (`FOR UPDATE SKIP LOCKED`, so two
//! schedulers never work on one schedule at once), work out their fire times from the cron
//! expression and database time, insert one job per fire time with `run_at` equal to it — a
//! unique index on `(schedule, run_at)` refuses a second job for the same fire time, even from
//! a scheduler that worked from stale data — and store each schedule's next fire time. A
//! schedule whose next fire time is unknown (new, changed, resumed) gets one computed from now
//! and fires from then on.
//!
//! Fire times up to [`SchedulerConfig::misfire_grace`] old fire: that is a scheduler running
//! late. Older ones were missed while no scheduler ran, and the schedule's [`Misfire`] policy
//! decides: skip them, fire once, or backfill up to N.
//!
//! # Load and stopping
//! Work is bounded at every level: a batch (one transaction) handles at most 100 schedules, a
//! round at most 10 batches (then the next round starts at once), a schedule fires at most
//! [`MAX_FIRES_PER_ROUND`] times per round, and missed fire times are counted up to
//! [`MAX_COUNTED_MISSES`], never listed. Every database call has a deadline
//! ([`SchedulerConfig::timeout`]). A stop request is honoured at once, even in the middle of a
//! round: [`Scheduler::run_until`] returns at once, and the batch in progress is rolled back (it
//! is one transaction, and nothing is lost: the next round of any scheduler fires those times).
//! A worker's shutdown waits for that rollback when it closes its pool, which its
//! `statement_timeout` (the worker's `db_timeout`) bounds.
//!
//! What it is built for: one scheduler fires about 2,000 jobs per second (measured in a release
//! build on a 2-core machine shared with PostgreSQL and other busy processes: 2,000 every-second
//! schedules kept up, 20,000 made it fire 2,900 per second while falling behind). That is tens
//! of thousands of schedules firing every minute, or a thousand or two firing every second;
//! more schedulers (`skiplock scheduler` processes, workers that do not elect a maintenance
//! leader) share the load. Past that it falls behind, fairly
//! (the schedules due longest fire first), and fire times more than the misfire grace late
//! follow each schedule's [`Misfire`] policy. It stops at once when asked whatever the load
//! (50-70 ms for `skiplock scheduler` with 20,000 every-second schedules).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::deadline::{DbCallError, deadline};
use crate::cron::CronSchedule;
use crate::db;
use crate::schedule::Misfire;

/// The longest the scheduler sleeps between rounds: 1 s. It sleeps less when a schedule is due
/// sooner.
pub const DEFAULT_SCHEDULER_INTERVAL: Duration = Duration::from_secs(1);

/// How late a fire time may be and still fire as usual: 60 s.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// The deadline of each database call of a scheduler running on its own: 10 s. The scheduler
/// embedded in a worker uses the worker's
/// [`db_timeout`](crate::WorkerBuilder::db_timeout) instead.
pub const DEFAULT_SCHEDULER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most fire times one schedule fires in one round, on-time and backfilled together:
/// 1,000. Older ones beyond it are skipped (and counted in [`SchedulerReport::skipped`]).
pub const MAX_FIRES_PER_ROUND: usize = 1_000;

/// The most missed fire times counted per schedule and round for
/// [`SchedulerReport::skipped`] and the warning: 1,000. A schedule that missed more (an
/// every-second schedule whose scheduler was down for a day) reports 1,000; counting costs one
/// step per fire time, so it is capped, and nothing is ever allocated per missed time.
pub const MAX_COUNTED_MISSES: usize = 1_000;

/// Schedules handled per batch (one transaction).
const BATCH: i64 = 100;

/// Batches per round: a round handles at most `BATCH × MAX_BATCHES` schedules.
const MAX_BATCHES: usize = 10;

/// Configuration of the [`Scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The longest sleep between rounds. Default: [`DEFAULT_SCHEDULER_INTERVAL`].
    pub interval: Duration,
    /// How late a fire time may be and still fire as usual. Default: [`DEFAULT_MISFIRE_GRACE`].
    pub misfire_grace: Duration,
    /// The deadline of each database call. Default: [`DEFAULT_SCHEDULER_TIMEOUT`]; a worker's
    /// embedded scheduler uses the worker's `db_timeout`.
    pub timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_SCHEDULER_INTERVAL,
            misfire_grace: DEFAULT_MISFIRE_GRACE,
            timeout: DEFAULT_SCHEDULER_TIMEOUT,
        }
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerReport {
    /// Jobs enqueued.
    pub fired: usize,
    /// Missed fire times skipped by their schedule's policy (counted up to
    /// [`MAX_COUNTED_MISSES`] per schedule).
    pub skipped: usize,
    /// Schedules handled.
    pub schedules: usize,
    /// Fire times whose job the database refused (a `CHECK` of `skiplock.jobs`: more tags or
    /// bigger arguments than `skiplock.set_limits` allows, a value written by hand); each is
    /// logged as an error and passed over, and the schedule goes on to its next fire time.
    pub refused: usize,
    /// Whether the round stopped at its bound with schedules still due: the next round should
    /// start at once.
    pub more_due: bool,
}

/// The error of [`Scheduler::run_once`]; nothing of the batch it interrupted is kept (batches
/// before it are).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The database refused a statement.
    #[error("scheduler query failed")]
    Database(#[source] sqlx::Error),
    /// The database did not answer within [`SchedulerConfig::timeout`].
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
}

impl From<DbCallError> for SchedulerError {
    fn from(error: DbCallError) -> Self {
        match error {
            DbCallError::Database(error) => Self::Database(error),
            DbCallError::Timeout(limit) => Self::Timeout(limit),
        }
    }
}

/// Runs schedules; embedded in every worker by default, or on its own (`skiplock scheduler`).
#[derive(Clone, Debug)]
pub struct Scheduler {
    pool: PgPool,
    config: SchedulerConfig,
}

impl Scheduler {
    /// A scheduler working through `pool`.
    pub fn new(pool: PgPool, config: SchedulerConfig) -> Self {
        Self { pool, config }
    }

    /// Runs rounds until `shutdown` completes; errors are logged and retried. Returns as soon
    /// as `shutdown` completes, whatever the load: a round in progress is rolled back.
    ///
    /// # Cancel safety
    /// Cancel safe: each batch is one transaction.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        super::run_until(shutdown, |stop| self.run(stop)).await;
    }

    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            let round = tokio::select! {
                () = stop.cancelled() => break,
                round = self.round(None, Some(&stop)) => round,
            };
            let mut sleep = self.config.interval;
            match round {
                Ok(report) if report.more_due => sleep = Duration::ZERO,
                Ok(_) => {
                    let next = db::schedule::seconds_until_next_fire(&self.pool);
                    if let Ok(Some(seconds)) = deadline(self.config.timeout, next).await {
                        let until = Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(sleep);
                        sleep = sleep.min(until).max(Duration::from_millis(5));
                    }
                }
                Err(error) => tracing::warn!(%error, "could not run schedules; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Runs one round at `now`, or at the database's `now()` when `None` (tests pass a time to
    /// replay days in milliseconds). A round handles at most 1,000 schedules, in batches of
    /// 100; [`SchedulerReport::more_due`] says whether some were left for the next round.
    ///
    /// # Errors
    /// [`SchedulerError`] when the database fails or does not answer in time; the batch it
    /// interrupted is rolled back.
    pub async fn run_once(
        &self,
        now: Option<DateTime<Utc>>,
    ) -> Result<SchedulerReport, SchedulerError> {
        self.round(now, None).await
    }

    async fn round(
        &self,
        now: Option<DateTime<Utc>>,
        stop: Option<&CancellationToken>,
    ) -> Result<SchedulerReport, SchedulerError> {
        let mut report = SchedulerReport::default();
        for _ in 0..MAX_BATCHES {
            if stop.is_some_and(CancellationToken::is_cancelled) {
                return Ok(report);
            }
            if !self.batch(now, &mut report).await? {
                return Ok(report);
            }
        }
        report.more_due = true;
        Ok(report)
    }

    /// One transaction over up to `BATCH` due schedules; returns whether the batch was full
    /// (more may be due).
    async fn batch(
        &self,
        now: Option<DateTime<Utc>>,
        report: &mut SchedulerReport,
    ) -> Result<bool, SchedulerError> {
        let limit = self.config.timeout;
        let mut tx = deadline(limit, db::begin(&self.pool)).await?;
        let now = match now {
            Some(now) => now,
            None => deadline(limit, db::now(&mut *tx)).await?,
        };
        let due = deadline(limit, db::schedule::lock_due(&mut tx, now, BATCH)).await?;
        let full = due.len() as i64 == BATCH;
        for row in due {
            report.schedules += 1;
            let cron = match CronSchedule::parse(&row.cron, &row.timezone) {
                Ok(cron) => cron,
                Err(error) => {
                    // Only SQL can store an invalid schedule: deactivate it for a human.
                    tracing::error!(schedule = %row.name, %error, "invalid schedule; marked inactive");
                    deadline(limit, db::schedule::deactivate(&mut tx, &row.name)).await?;
                    continue;
                }
            };
            let Some(next) = row.next_fire_at else {
                // New, changed or resumed: fire from the next time after now.
                match cron.next_after(now) {
                    Some(next) => {
                        let advance = db::schedule::advance(&mut tx, &row.name, Some(next), None);
                        deadline(limit, advance).await?;
                    }
                    None => {
                        tracing::warn!(schedule = %row.name, "schedule has no future fire time; marked inactive");
                        deadline(limit, db::schedule::deactivate(&mut tx, &row.name)).await?;
                    }
                }
                continue;
            };
            let policy = row.misfire;
            let (fire, skipped) = self.fire_times(&cron, next, now, policy);
            report.skipped += skipped;
            if skipped > 0 {
                tracing::warn!(schedule = %row.name, skipped, ?policy, "fire times were missed while no scheduler ran");
            }
            // In a savepoint: a job the table refuses (its row's data, SQLSTATE classes 22 and
            // 23) must not roll back the batch's other schedules, nor stop every round after
            // it (the schedule would stay first in line, due).
            let mut savepoint = deadline(limit, sqlx::Connection::begin(&mut *tx)).await?;
            let insert = db::schedule::insert_fires(&mut savepoint, &row.name, &fire);
            let last = match deadline(limit, insert).await {
                Ok(ids) => {
                    deadline(limit, savepoint.commit()).await?;
                    report.fired += ids.len();
                    for fired in &fire {
                        tracing::info!(schedule = %row.name, fire_time = %fired, "schedule fired");
                    }
                    fire.last().copied()
                }
                Err(DbCallError::Database(error)) if db::is_data_error(&error) => {
                    deadline(limit, savepoint.rollback()).await?;
                    report.refused += fire.len();
                    tracing::error!(schedule = %row.name, error = %error, fire_times = fire.len(),
                        "the database refused the schedule's job; fire times passed over");
                    // Not fired: last_fire_at keeps the last fire time that made a job.
                    None
                }
                Err(error) => return Err(error.into()),
            };
            let next = cron.next_after(now);
            let advance = db::schedule::advance(&mut tx, &row.name, next, last);
            deadline(limit, advance).await?;
            if next.is_none() {
                deadline(limit, db::schedule::deactivate(&mut tx, &row.name)).await?;
            }
        }
        deadline(limit, tx.commit()).await?;
        Ok(full)
    }

    /// The fire times to enqueue, from `next` (the stored next fire time) up to `now`, at most
    /// [`MAX_FIRES_PER_ROUND`], and how many missed ones are skipped (counted up to
    /// [`MAX_COUNTED_MISSES`]).
    fn fire_times(
        &self,
        cron: &CronSchedule,
        next: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: Misfire,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let grace =
            chrono::Duration::from_std(self.config.misfire_grace).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(grace)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let just_before = |at: DateTime<Utc>| {
            at.checked_sub_signed(chrono::Duration::nanoseconds(1))
                .unwrap_or(at)
        };
        let before_next = just_before(next);
        let before_cutoff = just_before(cutoff);
        // On time: fire times in [max(next, cutoff), now], the latest MAX_FIRES_PER_ROUND.
        let from = before_next.max(before_cutoff);
        let mut on_time = cron.fire_times(from, now, MAX_FIRES_PER_ROUND);
        let mut skipped = 0;
        if on_time.len() == MAX_FIRES_PER_ROUND {
            // More on-time fire times than a round fires: the oldest are skipped.
            let first = just_before(on_time[0]);
            skipped += count_fire_times(cron, from, first, MAX_COUNTED_MISSES);
        }
        if next >= cutoff {
            return (on_time, skipped);
        }
        // Missed: fire times in [next, cutoff).
        let keep = match policy {
            Misfire::Skip => 0,
            Misfire::RunOnce => 1,
            Misfire::Backfill(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
        .min(MAX_FIRES_PER_ROUND - on_time.len());
        let missed = count_fire_times(cron, before_next, before_cutoff, MAX_COUNTED_MISSES);
        let mut fire = if keep > 0 {
            cron.fire_times(before_next, before_cutoff, keep)
        } else {
            Vec::new()
        };
        skipped += missed.saturating_sub(fire.len());
        fire.append(&mut on_time);
        (fire, skipped)
    }
}

/// How many fire times lie in `(after, until]`, counted up to `cap`, without allocating.
fn count_fire_times(
    cron: &CronSchedule,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    cap: usize,
) -> usize {
    let mut count = 0;
    let mut cursor = after;
    while count < cap {
        match cron.next_after(cursor) {
            Some(at) if at <= until => {
                count += 1;
                cursor = at;
            }
            _ => break,
        }
    }
    count
}
