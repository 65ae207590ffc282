//! The rescuer: takes back jobs whose worker stopped renewing their lease — it died, hung, or
//! lost the database — and forgets workers that stopped sending heartbeats.
//!
//! A rescued job runs again after `min(2^(attempt-1) - 1, 600)` seconds: at once after a first
//! attempt (keeping its place at the head of its queue), later and later when a job keeps losing
//! its workers (so that a job that kills its worker every time cannot crash-loop a fleet). On its
//! last attempt it becomes `failed`, and `cancelled` if a cancel was pending; each gets a
//! `worker_lost` entry in `errors`. The maintenance leader runs it; concurrent rescuers skip each
//! other's rows. A round logs one line, with counts per new state and the first ids, however many
//! jobs it took back. A job's lease expires at most `lease` after its worker's last renewal, and a
//! rescuer looks every `interval`, so a job whose worker died is runnable again within `lease +
//! interval` (plus its backoff).
//!
//! A round reads the expired leases from the lease index. While a long transaction pins the xmin
//! horizon (a `pg_dump`, a forgotten session), that index keeps an entry for every lease given
//! since, none of which can be marked dead, and a read from its head visits the heap for each
//! (54–66 ms a round after 300,000 jobs, growing for as long as the hold lasts). So a round
//! reads only the leases that expired since [`REACH_BACK`] before the last round that finished
//! began (database time): a lease that expired before that was already there for that round to
//! read, unless its writer committed more than `REACH_BACK` after it ran out. Under load during
//! a hold, such a round still visits the entries of the leases that ran out in its window:
//! about (interval + round time + `REACH_BACK`) × leases given per second (claims and renewals).
//!
//! What such rounds cannot see waits for a read of the whole index: a row another transaction had
//! locked, a unique job that waited for its duplicate, a lease written late or by hand long past.
//! That read comes every [`HEAD_EVERY`], or [`SPACING`](super::whole_reads::SPACING) times as long
//! as the last one took, whichever is longer. A rescuer's first round reads the whole index. A read
//! of the whole index that fails or times out (it may, after hours of a hold) leaves the rounds
//! after it reading from a position, so that fresh leases are still taken back, and is spaced as
//! one that finished, by how long it ran. One that got to the end is done, whatever the round's
//! later steps (reaping workers, repairing workflows) do.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadline::DbCallError;
use super::service::{self, RoleMonitor, Service, Step};
use super::whole_reads::WholeReads;
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

/// How long before the last round that finished began a round reads leases from: 10 s.
pub(crate) const REACH_BACK: TimeDelta = TimeDelta::seconds(10);

/// The longest time between two reads of the whole lease index while they take under 3 s:
/// 30 s (within the 60 s after which `skiplock doctor` calls an expired lease stuck).
pub(crate) const HEAD_EVERY: Duration = Duration::from_secs(30);

/// Where rounds read the lease index from.
#[derive(Debug)]
struct Reach {
    /// The database's time when the last round that finished began.
    last_round: Option<DateTime<Utc>>,
    /// When the whole index is read next.
    whole_reads: WholeReads,
}

impl Default for Reach {
    fn default() -> Self {
        Self {
            last_round: None,
            whole_reads: WholeReads::new(HEAD_EVERY),
        }
    }
}

impl Reach {
    /// How a round that begins at `now`, `db_now` in the database's time, reads.
    fn plan(&self, now: Instant, db_now: DateTime<Utc>) -> Scan {
        let from = match self.last_round {
            Some(last) if !self.whole_reads.due(now) => last.checked_sub_signed(REACH_BACK),
            _ => None,
        };
        Scan {
            began: db_now,
            from,
            read: Duration::ZERO,
        }
    }

    /// Records that a read of the whole index begins at `now`: should it fail or time out, the
    /// rounds after it read from its beginning on, and the next is spaced by how long it ran
    /// (`Rescuer::round_failed`).
    fn whole_read_begins(&mut self, scan: &Scan, now: Instant) {
        self.last_round.get_or_insert(scan.began);
        self.whole_reads.begins(now);
    }

    /// Records that the round of `scan` read its index to the end at `now`: a read of the whole
    /// index is done then, whatever the round's later steps do.
    fn read_to_end(&mut self, scan: &Scan, now: Instant) {
        if scan.from.is_none() {
            self.whole_reads.finished(now, scan.read);
        }
    }

    /// Records that the round of `scan` finished: the next reads from its beginning on.
    fn finished(&mut self, scan: Scan) {
        self.last_round = Some(scan.began);
    }
}

/// How one round reads the lease index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The database's time when the round began.
    began: DateTime<Utc>,
    /// The earliest expiry the round reads; `None` for the whole index.
    from: Option<DateTime<Utc>>,
    /// How long its reads of the index took (with the rescues they made).
    read: Duration,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RescuerReport {
    /// How the round read the lease index; set by its first step.
    pub(crate) scan: Option<Scan>,
    /// When its read of the whole index began, until it read to the end.
    pub(crate) whole_read: Option<Instant>,
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
    reach: Mutex<Reach>,
}

impl Rescuer {
    pub(crate) fn new(pool: PgPool, config: RescuerConfig) -> Self {
        Self {
            pool,
            config,
            reach: Mutex::default(),
        }
    }

    fn reach(&self) -> std::sync::MutexGuard<'_, Reach> {
        // Nothing panics while holding the guard; and the data stays valid whatever happens.
        self.reach.lock().unwrap_or_else(PoisonError::into_inner)
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
        let first = report.scan.is_none();
        let mut scan = match report.scan {
            Some(scan) => scan,
            // Read before the round's first statement: its bound is no later than that.
            None => {
                let db_now = db::now(&self.pool).await?;
                self.reach().plan(Instant::now(), db_now)
            }
        };
        // Timed from the statement on: a wait for a pooled connection is not the index's cost.
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        if first && scan.from.is_none() {
            self.reach().whole_read_begins(&scan, started);
            report.whole_read = Some(started);
        }
        let batch = db::job::rescue_expired(&mut *conn, BATCH, scan.from).await?;
        scan.read += started.elapsed();
        drop(conn);
        report.scan = Some(scan);
        // Counted as locked, not as rescued: duplicates left waiting make a full read short.
        let full = batch.first().is_some_and(|job| job.locked == BATCH);
        report
            .rescued
            .extend(batch.into_iter().map(|job| (job.id, job.state)));
        if full {
            return Ok(Step::More);
        }
        // Read to its end: what fails from here on is not the read's.
        self.reach().read_to_end(&scan, Instant::now());
        report.whole_read = None;
        let ttl = self.config.worker_ttl.as_secs_f64();
        report.reaped_workers = db::job::reap_dead_workers(&self.pool, ttl).await?;
        // No workflow job waits forever for a dependency that is gone.
        report.repaired_dependencies = db::workflow::repair(&self.pool, REPAIRS_PER_ROUND).await?;
        // Only a round that read all its leases moves the position.
        self.reach().finished(scan);
        Ok(Step::Done)
    }

    /// A read of the whole index that failed or timed out is spaced by how long it ran.
    fn round_failed(&self, report: &RescuerReport) {
        if let Some(began) = report.whole_read {
            self.reach().whole_reads.failed(Instant::now(), began);
        }
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
        let rescuer = rescuer(pool);
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
        let again = rescuer.run_once().await.expect("rescue");
        assert_eq!(
            (
                again.rescued,
                again.reaped_workers,
                again.repaired_dependencies
            ),
            (vec![], vec![], 0)
        );
    }

    /// Rows no round could take back once failed every round after it, and with it every
    /// other rescue: two duplicates of a job unique only while waiting, lost together (both
    /// went back to `available` in one statement), and a job lost at its 1,100th attempt
    /// (`2^1099` overflowed before the 600-s cap).
    #[tokio::test]
    async fn duplicates_lost_together_and_a_thousandth_attempt_do_not_stop_rescues() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO skiplock.jobs (kind, args, state, attempt, max_attempts, attempted_at,
                                        lease_expires_at, lease_token, unique_key, unique_states)
             VALUES ('k', '{}', 'running', 1, 25, now(), now() - interval '3 seconds', 1,
                     'sync:7', '{scheduled,available}'),
                    ('k', '{}', 'running', 1, 25, now(), now() - interval '2 seconds', 2,
                     'sync:7', '{scheduled,available}'),
                    ('k', '{}', 'running', 1100, 100000, now(), now() - interval '2 seconds', 3,
                     NULL, NULL),
                    ('k', '{}', 'running', 1, 25, now(), now() - interval '1 second', 4,
                     NULL, NULL)
             RETURNING id",
        )
        .fetch_all(pool)
        .await
        .expect("insert");
        let rescuer = rescuer(pool);
        let mut rescued = rescuer.run_once().await.expect("round").rescued;
        rescued.sort_by_key(|(id, _)| *id);
        assert_eq!(
            rescued,
            [
                (ids[0], JobState::Available),
                (ids[2], JobState::Retryable),
                (ids[3], JobState::Available)
            ]
        );
        let delay: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM run_at - now())::float8 FROM skiplock.jobs WHERE id = $1",
        )
        .bind(ids[2])
        .fetch_one(pool)
        .await
        .expect("run_at");
        assert!((590.0..=600.0).contains(&delay), "{delay}");
        // The second duplicate waits while the first holds the key, as one lost alone does.
        let again = rescuer.run_once().await.expect("round");
        assert_eq!(again.rescued, []);
        assert_eq!(running_jobs(pool).await, 1);
    }

    /// A round reads the leases that expired since shortly before the previous round; one
    /// that expired long before (here written by hand) waits for a round from the head.
    #[tokio::test]
    async fn rounds_read_from_the_last_one_and_from_the_head_when_due() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let rescuer = rescuer(pool);
        let first = rescuer.run_once().await.expect("first round");
        let first = first.scan.expect("a scan");
        assert_eq!(first.from, None, "the whole index");
        let ids = expired_an_hour_and_a_second_ago(pool).await;

        let second = rescuer.run_once().await.expect("second round");
        let from = second.scan.and_then(|scan| scan.from);
        assert_eq!(from, Some(first.began - REACH_BACK));
        assert_eq!(second.rescued, [(ids[1], JobState::Available)]);

        rescuer.reach().whole_reads.make_due();
        let third = rescuer.run_once().await.expect("third round");
        assert_eq!(
            third.scan.map(|scan| scan.from),
            Some(None),
            "the whole index"
        );
        assert_eq!(third.rescued, [(ids[0], JobState::Available)]);
    }

    /// A read of the whole index that times out (here blocked by a lock on the table) leaves
    /// the next round reading from a position: fresh leases are still taken back.
    #[tokio::test]
    async fn a_whole_read_that_times_out_leaves_the_next_round_a_position() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let rescuer = impatient(pool);
        times_out_while_locked(
            pool,
            &rescuer,
            "LOCK TABLE skiplock.jobs IN ACCESS EXCLUSIVE MODE",
        )
        .await;
        // Spaced by how long it ran, as one that finished.
        assert!(!rescuer.reach().whole_reads.under_way());
        let ids = expired_an_hour_and_a_second_ago(pool).await;

        let next = rescuer.run_once().await.expect("next round");
        assert!(next.scan.and_then(|scan| scan.from).is_some(), "{next:?}");
        assert_eq!(next.rescued, [(ids[1], JobState::Available)]);
    }

    /// A round whose read of the whole index got to the end, and which then timed out (here
    /// reaping workers, blocked by a lock on their table), counts that read as done.
    #[tokio::test]
    async fn a_whole_read_that_got_to_the_end_counts_when_a_later_step_times_out() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        let rescuer = impatient(pool);
        let lock = "LOCK TABLE skiplock.workers IN ACCESS EXCLUSIVE MODE";
        times_out_while_locked(pool, &rescuer, lock).await;
        assert!(!rescuer.reach().whole_reads.under_way());
        let next = rescuer.run_once().await.expect("next round");
        assert!(next.scan.and_then(|scan| scan.from).is_some(), "{next:?}");
    }

    /// The whole index is read first, then every `HEAD_EVERY`, or `whole_reads::SPACING` times as
    /// long as its last read took; other rounds read from `REACH_BACK` before the last round
    /// that finished.
    #[test]
    fn the_whole_index_is_read_first_then_when_due() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let db_start = Utc::now();
        let db_at = |secs: i64| db_start + TimeDelta::seconds(secs);
        let mut reach = Reach::default();
        let mut whole = reach.plan(at(0), db_at(0));
        assert_eq!(whole.from, None);
        whole.read = Duration::from_secs(1);
        reach.read_to_end(&whole, at(1));
        reach.finished(whole);

        let next = reach.plan(at(6), db_at(6));
        assert_eq!(next.from, Some(db_at(0) - REACH_BACK));
        // It failed: the one after reaches back as far.
        assert_eq!(reach.plan(at(11), db_at(11)).from, next.from);
        let round = reach.plan(at(11), db_at(11));
        reach.read_to_end(&round, at(12));
        reach.finished(round);
        assert_eq!(
            reach.plan(at(16), db_at(16)).from,
            Some(db_at(11) - REACH_BACK)
        );
        assert_eq!(reach.plan(at(1) + HEAD_EVERY, db_at(31)).from, None);

        // A read of the whole index still under way (or cut off unreported): positions from
        // its beginning on, and another try `HEAD_EVERY` later.
        let mut reach = Reach::default();
        let failed = reach.plan(at(0), db_at(0));
        reach.whole_read_begins(&failed, at(0));
        assert_eq!(
            reach.plan(at(10), db_at(10)).from,
            Some(db_at(0) - REACH_BACK)
        );
        assert_eq!(reach.plan(at(0) + HEAD_EVERY, db_at(30)).from, None);

        // A read of the whole index that took 20 s: the next one 200 s after the round.
        let mut reach = Reach::default();
        let mut slow = reach.plan(at(0), db_at(0));
        slow.read = Duration::from_secs(20);
        reach.read_to_end(&slow, at(25));
        reach.finished(slow);
        assert!(reach.plan(at(224), db_at(224)).from.is_some());
        assert_eq!(reach.plan(at(225), db_at(225)).from, None);
    }

    /// A rescuer that looks every 5 s, forgets workers silent for 60 s, and gives a step 10 s.
    fn rescuer(pool: &PgPool) -> Rescuer {
        Rescuer::new(
            pool.clone(),
            RescuerConfig {
                interval: Duration::from_secs(5),
                worker_ttl: Duration::from_secs(60),
                timeout: Duration::from_secs(10),
            },
        )
    }

    /// `rescuer`, giving a step 500 ms.
    fn impatient(pool: &PgPool) -> Rescuer {
        Rescuer::new(
            pool.clone(),
            RescuerConfig {
                timeout: Duration::from_millis(500),
                ..rescuer(pool).config
            },
        )
    }

    /// Runs a round of `rescuer` while another transaction holds `lock`: it times out.
    async fn times_out_while_locked(pool: &PgPool, rescuer: &Rescuer, lock: &'static str) {
        let timed_out = service::while_locked(pool, lock, rescuer.run_once()).await;
        assert!(
            matches!(timed_out, Err(DbCallError::Timeout(_))),
            "{timed_out:?}"
        );
    }

    /// Two running jobs, written by hand: one whose lease ran out an hour ago, one a second ago.
    async fn expired_an_hour_and_a_second_ago(pool: &PgPool) -> Vec<i64> {
        sqlx::query_scalar(
            "INSERT INTO skiplock.jobs (kind, args, state, attempt, attempted_at,
                                        lease_expires_at, lease_token)
             VALUES ('k', '{}', 'running', 1, now(), now() - interval '1 hour', 1),
                    ('k', '{}', 'running', 1, now(), now() - interval '1 second', 2)
             RETURNING id",
        )
        .fetch_all(pool)
        .await
        .expect("insert")
    }

    /// Jobs still running.
    async fn running_jobs(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE state = 'running'")
            .fetch_one(pool)
            .await
            .expect("count")
    }
}
