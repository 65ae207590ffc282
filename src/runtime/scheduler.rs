//! The scheduler: enqueues the jobs of due schedules, exactly once per fire time however many
//! schedulers run.
//!
//! Each round, in one transaction: lock the due schedules (`FOR UPDATE SKIP LOCKED`, so two
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

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cron::CronSchedule;
use crate::db;
use crate::schedule::Misfire;

/// The longest the scheduler sleeps between rounds: 1 s. It sleeps less when a schedule is due
/// sooner.
pub const DEFAULT_SCHEDULER_INTERVAL: Duration = Duration::from_secs(1);

/// How late a fire time may be and still fire as usual: 60 s.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// Schedules handled per round (one transaction); more take several rounds.
const BATCH: i64 = 100;

/// The most fire times within the grace that one schedule fires in one round.
const MAX_ON_TIME: usize = 10_000;

/// Configuration of the [`Scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The longest sleep between rounds. Default: [`DEFAULT_SCHEDULER_INTERVAL`].
    pub interval: Duration,
    /// How late a fire time may be and still fire as usual. Default: [`DEFAULT_MISFIRE_GRACE`].
    pub misfire_grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_SCHEDULER_INTERVAL,
            misfire_grace: DEFAULT_MISFIRE_GRACE,
        }
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerReport {
    /// Jobs enqueued.
    pub fired: usize,
    /// Missed fire times skipped by their schedule's policy.
    pub skipped: usize,
    /// Schedules handled.
    pub schedules: usize,
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

    /// Runs rounds until `shutdown` completes; errors are logged and retried.
    ///
    /// # Cancel safety
    /// Cancel safe: each round is one transaction.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        super::run_until(shutdown, |stop| self.run(stop)).await;
    }

    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            let mut sleep = self.config.interval;
            match self.run_once(None).await {
                Ok(_) => {
                    if let Ok(Some(seconds)) =
                        db::schedule::seconds_until_next_fire(&self.pool).await
                    {
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
    /// replay days in milliseconds).
    ///
    /// # Errors
    /// The database's error; nothing of the round is kept then.
    pub async fn run_once(
        &self,
        now: Option<DateTime<Utc>>,
    ) -> Result<SchedulerReport, sqlx::Error> {
        let mut report = SchedulerReport::default();
        loop {
            let mut tx = self.pool.begin().await?;
            let now = match now {
                Some(now) => now,
                None => db::schedule::now(&mut tx).await?,
            };
            let due = db::schedule::lock_due(&mut tx, now, BATCH).await?;
            let full = due.len() as i64 == BATCH;
            for row in due {
                report.schedules += 1;
                let cron = match CronSchedule::parse(&row.cron, &row.timezone) {
                    Ok(cron) => cron,
                    Err(error) => {
                        // Only SQL can store an invalid schedule: deactivate it for a human.
                        tracing::error!(schedule = %row.name, %error, "invalid schedule; marked inactive");
                        db::schedule::deactivate(&mut tx, &row.name).await?;
                        continue;
                    }
                };
                let Some(next) = row.next_fire_at else {
                    // New, changed or resumed: fire from the next time after now.
                    match cron.next_after(now) {
                        Some(next) => {
                            db::schedule::advance(&mut tx, &row.name, Some(next), None).await?
                        }
                        None => {
                            tracing::warn!(schedule = %row.name, "schedule has no future fire time; marked inactive");
                            db::schedule::deactivate(&mut tx, &row.name).await?;
                        }
                    }
                    continue;
                };
                let policy = Misfire::from_columns(&row.misfire, row.backfill_limit);
                let (fire, skipped) = self.fire_times(&cron, next, now, policy);
                report.skipped += skipped;
                if skipped > 0 {
                    tracing::warn!(schedule = %row.name, skipped, ?policy, "fire times were missed while no scheduler ran");
                }
                let inserted = db::schedule::insert_fires(&mut tx, &row.name, &fire).await?;
                report.fired += inserted.len();
                for fired in &fire {
                    tracing::info!(schedule = %row.name, fire_time = %fired, "schedule fired");
                }
                let last = fire.last().copied();
                match cron.next_after(now) {
                    Some(next) => {
                        db::schedule::advance(&mut tx, &row.name, Some(next), last).await?
                    }
                    None => {
                        db::schedule::advance(&mut tx, &row.name, None, last).await?;
                        db::schedule::deactivate(&mut tx, &row.name).await?;
                    }
                }
            }
            tx.commit().await?;
            if !full {
                return Ok(report);
            }
        }
    }

    /// The fire times to enqueue, from `next` (the stored next fire time) up to `now`, and how
    /// many missed ones the policy skips.
    fn fire_times(
        &self,
        cron: &CronSchedule,
        next: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: Misfire,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let grace =
            chrono::Duration::from_std(self.config.misfire_grace).unwrap_or(chrono::Duration::MAX);
        let cutoff = now - grace;
        let before_next = next - chrono::Duration::nanoseconds(1);
        if next >= cutoff {
            return (cron.fire_times(before_next, now, MAX_ON_TIME), 0);
        }
        // Missed: fire times in [next, cutoff); on time: [cutoff, now].
        let keep = match policy {
            Misfire::Skip => 0,
            Misfire::RunOnce => 1,
            Misfire::Backfill(n) => n as usize,
        };
        let before_cutoff = cutoff - chrono::Duration::nanoseconds(1);
        let missed_total = count_fire_times(cron, before_next, before_cutoff);
        let mut fire = if keep > 0 {
            cron.fire_times(before_next, before_cutoff, keep)
        } else {
            Vec::new()
        };
        let kept = fire.len();
        fire.extend(cron.fire_times(before_cutoff, now, MAX_ON_TIME));
        (fire, missed_total.saturating_sub(kept))
    }
}

/// How many fire times lie in `(after, until]`, counted up to a bound (for reporting only).
fn count_fire_times(cron: &CronSchedule, after: DateTime<Utc>, until: DateTime<Utc>) -> usize {
    cron.fire_times(after, until, 100_000).len()
}
