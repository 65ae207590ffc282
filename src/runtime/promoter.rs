//! The promoter: makes `scheduled` and `retryable` jobs `available` once their `run_at` has
//! passed, and wakes the workers of their queues.
//!
//! Why a promoter rather than claiming such jobs directly: the claim index then holds only
//! runnable rows. A claim that also considered future jobs would walk every not-yet-due row of
//! a better priority before reaching a runnable one, and a million jobs scheduled for tomorrow
//! would slow every claim today. The price is that a due job waits for the next promotion; the
//! promoter sleeps until the earliest known `run_at` (bounded by its interval), so that delay
//! is a few milliseconds for jobs it knows about and at most one interval for jobs scheduled
//! after it went to sleep. The maintenance leader runs it (see `leader.rs`); concurrent
//! promoters skip each other's rows.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::deadline::DbCallError;
use super::service::{self, RoleMonitor, Service, Step};
use crate::db;

/// How many jobs one statement promotes; a larger backlog takes several statements.
pub(crate) const BATCH: i64 = 1_000;

/// The shortest sleep between promotions, so an overdue job the promoter cannot move (locked
/// by another promoter) does not make it spin.
const MIN_SLEEP: Duration = Duration::from_millis(5);

/// Configuration of the [`Promoter`].
#[derive(Clone, Debug)]
pub(crate) struct PromoterConfig {
    /// The longest sleep between promotions.
    pub(crate) interval: Duration,
    /// The deadline of each step (one batch).
    pub(crate) timeout: Duration,
}

/// What one promotion round did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct PromoterReport {
    /// Jobs made available.
    pub(crate) promoted: i64,
    /// How long until the next known job is due, if any.
    pub(crate) next_due: Option<Duration>,
}

pub(crate) struct Promoter {
    pool: PgPool,
    config: PromoterConfig,
}

impl Promoter {
    pub(crate) fn new(pool: PgPool, config: PromoterConfig) -> Self {
        Self { pool, config }
    }

    /// Promotes due jobs until `stop` fires.
    pub(crate) async fn run(&self, stop: &CancellationToken, health: &RoleMonitor) {
        service::run(self, stop, health).await;
    }

    /// Promotes every job due now, then asks when the next one is due.
    #[cfg(test)]
    pub(crate) async fn run_once(&self) -> Result<PromoterReport, DbCallError> {
        service::round(self, &CancellationToken::new()).await
    }
}

impl Service for Promoter {
    type Report = PromoterReport;
    const NAME: &'static str = "promoter";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    async fn step(&self, report: &mut PromoterReport) -> Result<Step, DbCallError> {
        let batch = db::job::promote_due(&self.pool, BATCH).await?;
        report.promoted += batch;
        if batch == BATCH {
            return Ok(Step::More);
        }
        report.next_due = db::job::seconds_until_next_due(&self.pool)
            .await?
            .and_then(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).ok());
        Ok(Step::Done)
    }

    fn next_round(&self, report: &PromoterReport) -> Duration {
        report
            .next_due
            .map_or(self.config.interval, |due| due.min(self.config.interval))
            .max(MIN_SLEEP)
    }

    fn log(report: &PromoterReport) {
        if report.promoted > 0 {
            tracing::debug!(promoted = report.promoted, "promoted due jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{EnqueueOptions, JobState, NewJob};
    use skiplock_testing::TestDatabase;

    #[tokio::test]
    async fn promotes_due_jobs_only_and_reports_the_next_due() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        // Far enough ahead that a loaded machine does not reach it before the first round.
        let soon = EnqueueOptions::new().delay(Duration::from_secs(2));
        let later = EnqueueOptions::new().delay(Duration::from_secs(3600));
        let ids = crate::enqueue_many(
            pool,
            [
                NewJob::untyped("k", json!({}), soon),
                NewJob::untyped("k", json!({}), later),
            ],
        )
        .await
        .expect("enqueue");
        let promoter = Promoter::new(
            pool.clone(),
            PromoterConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(10),
            },
        );

        let report = promoter.run_once().await.expect("promote");
        assert_eq!(report.promoted, 0);
        let next = report.next_due.expect("a job is scheduled");
        assert!(next <= Duration::from_secs(2), "{next:?}");

        tokio::time::sleep(next + Duration::from_millis(20)).await;
        let report = promoter.run_once().await.expect("promote");
        assert_eq!(report.promoted, 1);
        let next = report.next_due.expect("the later job");
        assert!(next > Duration::from_secs(3500), "{next:?}");

        let state = |id| async move {
            crate::get_job(pool, id)
                .await
                .expect("get")
                .expect("row")
                .state
        };
        assert_eq!(state(ids[0]).await, JobState::Available);
        assert_eq!(state(ids[1]).await, JobState::Scheduled);
    }

    /// Two retries of a job unique only while waiting (`scheduled`, `available`), due
    /// together: one becomes available, the other waits for it, and the promotion of others
    /// goes on. (Promoted in one statement, the two failed it, and every round after.)
    #[tokio::test]
    async fn duplicates_due_together_do_not_stop_promotion() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO skiplock.jobs (kind, args, state, attempt, run_at, unique_key,
                                        unique_states)
             VALUES ('k', '{}', 'retryable', 1, now() - interval '2 seconds', 'sync:7',
                     '{scheduled,available}'),
                    ('k', '{}', 'retryable', 1, now() - interval '1 second', 'sync:7',
                     '{scheduled,available}'),
                    ('k', '{}', 'scheduled', 0, now() - interval '1 second', NULL, NULL)
             RETURNING id",
        )
        .fetch_all(pool)
        .await
        .expect("insert");
        let config = PromoterConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        };
        let promoter = Promoter::new(pool.clone(), config);
        assert_eq!(promoter.run_once().await.expect("promote").promoted, 2);
        assert_eq!(promoter.run_once().await.expect("promote").promoted, 0);
        let mut states = Vec::new();
        for id in ids {
            let job = crate::get_job(pool, id).await.expect("get").expect("row");
            states.push(job.state);
        }
        assert_eq!(
            states,
            [
                JobState::Available,
                JobState::Retryable,
                JobState::Available
            ]
        );
    }

    #[tokio::test]
    async fn a_job_at_infinity_does_not_break_promotion() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        // PostgreSQL 15 refused `'infinity' - now()`, and 16+ made it an infinite interval that
        // panicked `Duration::from_secs_f64`. Since 0008 only rows from before that migration
        // (created earlier: jobs_run_at_range spares them) can hold it.
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (queue, kind, args, state, run_at, created_at)
             VALUES ('default', 'k', '{}', 'scheduled', 'infinity', '2000-01-01'),
                    ('default', 'k', '{}', 'scheduled', now() - interval '1 second', now())",
        )
        .execute(pool)
        .await
        .expect("insert");
        let promoter = Promoter::new(
            pool.clone(),
            PromoterConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(10),
            },
        );
        let report = promoter.run_once().await.expect("promote");
        assert_eq!(report.promoted, 1);
        let next = report.next_due.expect("the job at infinity, capped");
        assert!(next > Duration::from_secs(365 * 86_400), "{next:?}");
        assert_eq!(promoter.next_round(&report), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_round_gives_up_at_its_deadline() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        // Another transaction holds the table: every statement on it waits.
        let mut blocker = pool.begin().await.expect("begin");
        sqlx::raw_sql("LOCK TABLE skiplock.jobs IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .expect("lock");
        let timeout = Duration::from_millis(200);
        let promoter = Promoter::new(
            pool.clone(),
            PromoterConfig {
                interval: Duration::from_secs(1),
                timeout,
            },
        );
        let round = tokio::time::timeout(Duration::from_secs(5), promoter.run_once())
            .await
            .expect("the round has a deadline of its own");
        assert!(
            matches!(round, Err(DbCallError::Timeout(limit)) if limit == timeout),
            "{round:?}"
        );
        blocker.rollback().await.expect("rollback");
    }
}
