//! Fault tests with real processes: workers SIGKILLed, frozen with SIGSTOP, their database
//! connections terminated, the database restarted under them. Assertions read the database
//! (a ledger the handlers write and `skiplock.jobs`), never logs.
//!
//! Worker processes are this test binary itself, re-run with `--ignored --exact child_worker`
//! and their configuration in the environment.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::child::{self, ChildWorker};
use common::database;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use skiplock::{Handler, Job, JobContext, JobError, NewJob, Worker};
use skiplock_testing::embedded::{EmbeddedPostgres, ShutdownMode};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const CHILD_ENV: &str = "SKIPLOCK_FAULT_CHILD";
/// Long enough that a live worker starved of CPU (tests run in parallel on two cores) still
/// renews in time: at 2 s, a starved worker fenced itself now and then and its jobs ran twice,
/// which is the lease doing its job but not what this file tests.
const LEASE_MS: u64 = 4_000;
const RESCUE_MS: u64 = 300;

/// A child worker's configuration.
#[derive(Serialize, Deserialize)]
struct ChildConfig {
    url: String,
    id: String,
    concurrency: usize,
    lease_ms: u64,
}

/// Records its start in the ledger (autocommit, before any effect), sleeps, returns the id
/// of the worker that ran it.
#[derive(Serialize, Deserialize)]
struct Work {
    millis: u64,
}

impl Job for Work {
    const KIND: &'static str = "work";
}

impl Handler<PgPool> for Work {
    type Output = String;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<String, JobError> {
        sqlx::query(
            "INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, 'work', $2, $3)",
        )
        .bind(ctx.id())
        .bind(ctx.attempt())
        .bind(ctx.worker_id())
        .execute(ctx.state())
        .await?;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(ctx.worker_id().to_owned())
    }
}

/// Writes its effect and completes in the same transaction.
#[derive(Serialize, Deserialize)]
struct Effect {
    millis: u64,
}

impl Job for Effect {
    const KIND: &'static str = "effect";
}

impl Handler<PgPool> for Effect {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        let mut tx = ctx.state().begin().await?;
        sqlx::query("INSERT INTO effects (job_id) VALUES ($1)")
            .bind(ctx.id())
            .execute(&mut *tx)
            .await?;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        ctx.complete_in(&mut tx, &()).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The worker process of the fault tests; does nothing unless a fault test started it.
#[test]
#[ignore = "entry point of the worker processes the fault tests start"]
fn child_worker() {
    child::run(CHILD_ENV, |config| {
        let config: ChildConfig = serde_json::from_str(&config).expect("config");
        let options = config
            .url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect("url");
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_lazy_with(options.application_name("skiplock-test-handler"));
        let lease = Duration::from_millis(config.lease_ms);
        Worker::builder(pool.clone(), pool)
            .id(config.id)
            .queue("default", config.concurrency)
            .lease(lease)
            .rescue_interval(Duration::from_millis(RESCUE_MS))
            .poll_interval(Duration::from_millis(200))
            .promote_interval(Duration::from_millis(100))
            .shutdown_timeout(Duration::from_secs(5))
            .register::<Work>()
            .register::<Effect>()
    });
}

/// Starts a worker process with the id `id` and `concurrency` slots.
fn start_worker(url: &str, id: &str, concurrency: usize) -> ChildWorker {
    let config = ChildConfig {
        url: url.to_owned(),
        id: id.to_owned(),
        concurrency,
        lease_ms: LEASE_MS,
    };
    ChildWorker::start(
        "child_worker",
        CHILD_ENV,
        &serde_json::to_string(&config).expect("config"),
    )
}

/// `sql` as an i64, or `None` while the database is unreachable (during a restart).
async fn scalar(pool: &PgPool, sql: &'static str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.ok()
}

/// Waits until `sql` returns at least `n`.
async fn until_at_least(pool: &PgPool, sql: &'static str, n: i64, timeout: Duration) {
    common::eventually(timeout, sql, || async {
        scalar(pool, sql)
            .await
            .filter(|count| *count >= n)
            .map(|_| ())
    })
    .await;
}

const COMPLETED: &str = "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_and_reruns_only_what_was_in_flight() {
    let db = database().await;
    let pool = db.pool();
    let jobs: Vec<NewJob> = (0..1_000)
        .map(|n| {
            NewJob::new(&Work {
                millis: 100 + (n * 37) % 400,
            })
        })
        .collect::<Result<_, _>>()
        .expect("jobs");
    skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
    let a = start_worker(&db.url(), "a", 16);
    let b = start_worker(&db.url(), "b", 16);
    until_at_least(
        pool,
        "SELECT count(*) FROM ledger",
        150,
        Duration::from_secs(60),
    )
    .await;

    // Freeze `a` first, so it claims nothing between the read below and the kill; a claim it
    // had already sent still commits on the server, so give that a moment. Everything `a` holds
    // then is what may run twice.
    a.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let in_flight: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM skiplock.jobs WHERE state = 'running' AND attempted_by[cardinality(attempted_by)] = 'a'",
    )
    .fetch_all(pool)
    .await
    .expect("in flight");
    a.signal(Signal::SIGKILL);
    drop(a);
    let killed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .expect("now");
    assert!(
        in_flight.len() >= 5,
        "only {} jobs in flight at the kill",
        in_flight.len()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let a2 = start_worker(&db.url(), "a2", 16);
    until_at_least(pool, COMPLETED, 1_000, Duration::from_secs(120)).await;

    let rerun: Vec<i64> = sqlx::query_scalar(
        "SELECT job_id FROM ledger GROUP BY job_id HAVING count(*) > 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("reruns");
    let outside: Vec<i64> = rerun
        .iter()
        .copied()
        .filter(|id| !in_flight.contains(id))
        .collect();
    if !outside.is_empty() {
        // Who ran them and why they ran again, for the failure message.
        let history: Vec<(i64, Vec<String>, serde_json::Value)> = sqlx::query_as(
            "SELECT id, attempted_by, errors FROM skiplock.jobs WHERE id = ANY ($1) ORDER BY id",
        )
        .bind(&outside)
        .fetch_all(pool)
        .await
        .expect("history");
        panic!("jobs not in flight at the kill ran twice: {history:?}");
    }
    let never: i64 = scalar(pool, "SELECT count(*) FROM skiplock.jobs WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE job_id = id)")
        .await
        .expect("count");
    assert_eq!(never, 0);
    let wrong: i64 = scalar(
        pool,
        "SELECT count(*) FROM skiplock.jobs WHERE attempt > 2
            OR (attempt = 2 AND errors->0->>'kind' IS DISTINCT FROM 'worker_lost')",
    )
    .await
    .expect("count");
    assert_eq!(wrong, 0, "a rescued job took more than one extra attempt");

    // Recovery: from the kill until the job is runnable again (rescued), and until it runs.
    let (rescued_ms, rerun_ms): (f64, f64) = sqlx::query_as(
        "SELECT max(extract(epoch FROM (errors->0->>'at')::timestamptz - $1) * 1000)::float8,
                max(extract(epoch FROM l.started_at - $1) * 1000)::float8
         FROM skiplock.jobs JOIN ledger l ON l.job_id = id AND l.attempt = 2",
    )
    .bind(killed_at)
    .fetch_one(pool)
    .await
    .expect("recovery");
    let bound = (LEASE_MS + 2 * RESCUE_MS) as f64;
    eprintln!(
        "sigkill: {} in flight at the kill, {} rerun, 0 lost, 0 reruns outside the in-flight set; \
         all rescued within {rescued_ms:.0} ms and running again within {rerun_ms:.0} ms \
         (bound lease + 2 x rescue interval = {bound} ms)",
        in_flight.len(),
        rerun.len()
    );
    assert!(!rerun.is_empty(), "the killed worker's jobs were not rerun");
    assert!(rescued_ms <= bound, "recovery took {rescued_ms:.0} ms");
    // The rerun also waits for a2's process to start and connect: seconds on a loaded machine.
    assert!(
        rerun_ms <= bound + 3_000.0,
        "reruns started {rerun_ms:.0} ms after the kill"
    );

    // The dead worker is marked lost after twice its lease (its row stays an hour, so that
    // inspection shows what went away).
    until_at_least(
        pool,
        "SELECT count(*) FROM skiplock.workers WHERE id = 'a' AND stop_reason = 'lost'",
        1,
        Duration::from_secs(15),
    )
    .await;
    b.stop();
    a2.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_cannot_complete_a_job_another_worker_took_over() {
    let db = database().await;
    let pool = db.pool();
    let id = skiplock::enqueue(pool, &Work { millis: 1_500 })
        .await
        .expect("enqueue");
    let mut a = start_worker(&db.url(), "a", 1);
    until_at_least(
        pool,
        "SELECT count(*) FROM ledger",
        1,
        Duration::from_secs(30),
    )
    .await;
    a.signal(Signal::SIGSTOP);

    // `b` rescues the job once a's lease expires, and runs attempt 2 to completion.
    let b = start_worker(&db.url(), "b", 1);
    until_at_least(pool, COMPLETED, 1, Duration::from_secs(30)).await;
    a.signal(Signal::SIGCONT);
    // a's handler finishes its sleep and tries to complete; give it time to fail to.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let row = common::job(pool, id).await;
    assert_eq!(row.attempt, 2);
    assert_eq!(row.attempted_by, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(
        row.result,
        Some(serde_json::json!("b")),
        "the stale completion landed"
    );
    let kinds: Vec<&str> = row.errors.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["worker_lost"]);
    assert!(
        a.is_running(),
        "the frozen worker died instead of recovering"
    );
    eprintln!("sigstop: stale completion refused; final row: attempt 2 by b, result \"b\"");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_completion_has_exactly_one_effect_per_job_under_faults() {
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql("CREATE TABLE effects (job_id bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("effects");
    let jobs: Vec<NewJob> = (0..300)
        .map(|_| NewJob::new(&Effect { millis: 40 }))
        .collect::<Result<_, _>>()
        .expect("jobs");
    skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
    let a = start_worker(&db.url(), "a", 8);
    let b = start_worker(&db.url(), "b", 8);

    until_at_least(
        pool,
        "SELECT count(*) FROM effects",
        60,
        Duration::from_secs(60),
    )
    .await;
    a.signal(Signal::SIGKILL);
    drop(a);
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = '{}' AND application_name IN ('skiplock-test-handler', 'skiplock-worker')",
        db.name()
    );
    let mut terminated = 0;
    for threshold in [150, 220] {
        until_at_least(
            pool,
            "SELECT count(*) FROM effects",
            threshold,
            Duration::from_secs(60),
        )
        .await;
        let killed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(terminate.clone()))
            .fetch_one(pool)
            .await
            .expect("terminate");
        terminated += killed;
    }
    let a2 = start_worker(&db.url(), "a2", 8);
    until_at_least(pool, COMPLETED, 300, Duration::from_secs(120)).await;

    let (effects, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT job_id) FROM effects")
            .fetch_one(pool)
            .await
            .expect("effects");
    eprintln!(
        "transactional completion: 300 jobs, {effects} effects, {distinct} distinct; {terminated} backends terminated"
    );
    assert_eq!((effects, distinct), (300, 300));
    assert!(terminated > 0, "no backend was terminated");
    b.stop();
    a2.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_during_a_drain_lose_nothing_and_the_worker_stays_up() {
    // This test restarts its server, so it gets one of its own (durable: fsync on).
    let server = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .expect("task")
        .expect("server");
    let url = server.url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("pool");
    skiplock::migrate(&pool).await.expect("migrate");
    sqlx::raw_sql(
        "CREATE TABLE ledger (seq bigint GENERATED ALWAYS AS IDENTITY, job_id bigint NOT NULL,
             kind text NOT NULL, attempt int NOT NULL, worker text NOT NULL,
             started_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&pool)
    .await
    .expect("ledger");
    let jobs: Vec<NewJob> = (0..5_000)
        .map(|n| NewJob::new(&Work { millis: n % 5 }))
        .collect::<Result<_, _>>()
        .expect("jobs");
    skiplock::enqueue_many(&pool, jobs).await.expect("enqueue");
    let mut worker = start_worker(&url, "w", 16);

    let server = std::sync::Arc::new(server);
    for (threshold, mode) in [
        (1_000, ShutdownMode::Fast),
        (3_000, ShutdownMode::Immediate),
    ] {
        until_at_least(&pool, COMPLETED, threshold, Duration::from_secs(120)).await;
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart(mode))
            .await
            .expect("task")
            .expect("restart");
        eprintln!("restart: server restarted ({mode:?}) after {threshold}+ completions");
    }
    until_at_least(&pool, COMPLETED, 5_000, Duration::from_secs(120)).await;
    assert!(worker.is_running(), "the worker exited");
    let (jobs, ran): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM skiplock.jobs), count(DISTINCT job_id) FROM ledger",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    let reruns: i64 = scalar(
        &pool,
        "SELECT count(*) - count(DISTINCT job_id) FROM ledger",
    )
    .await
    .expect("reruns");
    eprintln!("restart: {jobs} jobs, all completed, {reruns} reruns (jobs in flight at a restart)");
    assert_eq!((jobs, ran), (5_000, 5_000));
    worker.stop();
    pool.close().await;
}
