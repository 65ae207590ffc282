//! The rescuer: takes back jobs whose worker stopped renewing their lease — it died, hung, or
//! lost the database — and forgets workers that stopped sending heartbeats.
//!
//! A rescued job runs again after `min(2^(attempt-1) - 1, 600)` seconds: at once after a first
//! attempt (keeping its place at the head of its queue), later and later when a job keeps losing its workers (so that a job that kills its
//! worker every time cannot crash-loop a fleet). On its last attempt it becomes `failed`, and
//! `cancelled` if a cancel was pending; each gets a `worker_lost` entry in `errors`. The
//! maintenance leader runs it; concurrent rescuers skip each other's rows. A round logs one
//! line, with counts per new state and the first ids, however many jobs it took back. A job's lease expires at
//! most `lease` after its worker's last renewal, and a rescuer looks every `interval`, so a job
//! whose worker died is runnable again within `lease + interval` (plus its backoff).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::deadline::DbCallError;
use super::service::{self, RoleMonitor, Service, Step};
use crate::{JobState, db};

/// How many jobs one statement rescues; more take several.
const BATCH: i64 = 1_000;

/// How many job ids a round's log line names; the rest are counted.
const LOGGED_IDS: usize = 10;

/// Configuration of the [`Rescuer`].
#[derive(Clone, Debug)]
pub(crate) struct RescuerConfig {
    /// How often to look for expired leases.
    pub(crate) interval: Duration,
    /// How old a worker's last heartbeat may be before its `skiplock.workers` row is removed.
    pub(crate) worker_ttl: Duration,
    /// The deadline of each step (one batch).
    pub(crate) timeout: Duration,
}

/// How many workflows with missed dependencies one round recounts at most: 100.
const REPAIRS_PER_ROUND: i32 = 100;

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RescuerReport {
    /// Jobs taken back, with the state they got.
    pub(crate) rescued: Vec<(i64, JobState)>,
    /// Workers forgotten.
    pub(crate) reaped_workers: Vec<String>,
    /// Workflow dependency rows whose end no trigger saw (rows restored with triggers off),
    /// corrected now.
    pub(crate) repaired_dependencies: i32,
}

pub(crate) struct Rescuer {
    pool: PgPool,
    config: RescuerConfig,
}

impl Rescuer {
    pub(crate) fn new(pool: PgPool, config: RescuerConfig) -> Self {
        Self { pool, config }
    }

    /// Rescues every interval until `stop` fires.
    pub(crate) async fn run(&self, stop: &CancellationToken, health: &RoleMonitor) {
        service::run(self, stop, health).await;
    }

    /// Rescues every job whose lease has expired, then forgets dead workers.
    #[cfg(test)]
    pub(crate) async fn run_once(&self) -> Result<RescuerReport, DbCallError> {
        service::round(self, &CancellationToken::new()).await
    }
}

impl Service for Rescuer {
    type Report = RescuerReport;
    const NAME: &'static str = "rescuer";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    async fn step(&self, report: &mut RescuerReport) -> Result<Step, DbCallError> {
        let batch = db::job::rescue_expired(&self.pool, BATCH).await?;
        let full = batch.len() as i64 == BATCH;
        report
            .rescued
            .extend(batch.into_iter().map(|job| (job.id, job.state)));
        if full {
            return Ok(Step::More);
        }
        let ttl = self.config.worker_ttl.as_secs_f64();
        report.reaped_workers = db::job::reap_dead_workers(&self.pool, ttl).await?;
        // No workflow job waits forever for a dependency that is gone.
        report.repaired_dependencies = db::workflow::repair(&self.pool, REPAIRS_PER_ROUND).await?;
        Ok(Step::Done)
    }

    /// One line per round, however many jobs it rescued.
    fn log(report: &RescuerReport) {
        if !report.rescued.is_empty() {
            let count = |state| report.rescued.iter().filter(|(_, s)| *s == state).count();
            let ids: Vec<i64> = report
                .rescued
                .iter()
                .take(LOGGED_IDS)
                .map(|(id, _)| *id)
                .collect();
            tracing::warn!(
                rescued = report.rescued.len(),
                available = count(JobState::Available),
                retryable = count(JobState::Retryable),
                failed = count(JobState::Failed),
                cancelled = count(JobState::Cancelled),
                job.ids = ?ids,
                "rescued jobs whose worker was lost"
            );
        }
        if report.repaired_dependencies > 0 {
            tracing::warn!(
                dependencies = report.repaired_dependencies,
                "resolved workflow dependencies whose jobs were deleted unfinished"
            );
        }
        if !report.reaped_workers.is_empty() {
            let ids = &report.reaped_workers[..report.reaped_workers.len().min(LOGGED_IDS)];
            tracing::info!(
                workers = report.reaped_workers.len(),
                worker.ids = ?ids,
                "forgot workers that stopped sending heartbeats"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use super::*;
    use skiplock_testing::TestDatabase;

    /// Counts skiplock's warnings.
    struct Warnings(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            if *meta.level() == tracing::Level::WARN && meta.target().starts_with("skiplock") {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test]
    async fn rescues_expired_leases_in_one_round_with_one_warning() {
        let warnings = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (queue, kind, args, state, attempt, attempted_at,
                                        lease_expires_at, lease_token)
             SELECT 'default', 'k', '{}', 'running', 1, now(), now() - interval '1 second', g
             FROM generate_series(1, 50) AS g",
        )
        .execute(pool)
        .await
        .expect("insert");
        let rescuer = Rescuer::new(
            pool.clone(),
            RescuerConfig {
                interval: Duration::from_secs(5),
                worker_ttl: Duration::from_secs(60),
                timeout: Duration::from_secs(10),
            },
        );
        let stop = CancellationToken::new();
        let health = super::super::service::Monitor::default().role("rescuer");
        let run = rescuer.run(&stop, &health);
        let watch = async {
            // Until the round has logged, not merely rescued: stopping cuts a round short.
            while running_jobs(pool).await > 0 || warnings.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.cancel();
        };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, watch) })
            .await
            .expect("rescued");
        // One line for the round, not one per job.
        assert_eq!(warnings.load(Ordering::SeqCst), 1);
        assert_eq!(
            rescuer.run_once().await.expect("rescue"),
            RescuerReport::default()
        );
    }

    /// Jobs still running.
    async fn running_jobs(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE state = 'running'")
            .fetch_one(pool)
            .await
            .expect("count")
    }
}
