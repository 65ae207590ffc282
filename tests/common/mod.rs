//! Shared by the integration tests: job types that record every run in a ledger table, and
//! helpers to wait for the database to reach a state.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod child;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skiplock::{Handler, Job, JobContext, JobError, JobRow, Worker, WorkerBuilder, WorkerHandle};
use skiplock_testing::TestDatabase;
use sqlx::PgPool;

/// A fresh database with the skiplock schema and a `ledger` table.
pub async fn database() -> TestDatabase {
    log_when_asked();
    let db = TestDatabase::new().await.expect("test database");
    sqlx::raw_sql(
        "CREATE TABLE ledger (
             seq bigint GENERATED ALWAYS AS IDENTITY,
             job_id bigint NOT NULL,
             kind text NOT NULL,
             attempt int NOT NULL,
             worker text NOT NULL,
             started_at timestamptz NOT NULL DEFAULT clock_timestamp()
         )",
    )
    .execute(db.pool())
    .await
    .expect("ledger table");
    db
}

/// With `RUST_LOG` set (`RUST_LOG=skiplock=debug cargo test ...`), the library's logs are
/// shown with a failing test's output; without it, nothing is installed.
pub fn log_when_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A worker builder with test-friendly timings: quick polling, short shutdown.
pub fn worker(pool: &PgPool) -> WorkerBuilder<PgPool> {
    Worker::builder(pool.clone(), pool.clone())
        .poll_interval(Duration::from_millis(200))
        .promote_interval(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(5))
        .cancel_timeout(Duration::from_secs(1))
        .rescue_interval(Duration::from_millis(500))
}

/// Builds and starts the worker `builder` describes.
pub fn start(builder: WorkerBuilder<PgPool>) -> WorkerHandle {
    builder.build().expect("worker").start()
}

/// Starts the worker `builder` describes, runs `body` (typically: enqueue, then wait for a
/// state) while it works, shuts the worker down, and returns what `body` returned.
pub async fn with_worker<T>(builder: WorkerBuilder<PgPool>, body: impl Future<Output = T>) -> T {
    let running = start(builder);
    let value = body.await;
    running.shutdown().await.expect("shutdown");
    value
}

/// Starts `worker`, runs `body` while it works, shuts the worker down, and returns what `body`
/// returned: [`with_worker`] for workers of any state.
pub async fn with_worker_of<S, T>(worker: Worker<S>, body: impl Future<Output = T>) -> T
where
    S: Clone + Send + Sync + 'static,
{
    let running = worker.start();
    let value = body.await;
    running.shutdown().await.expect("shutdown");
    value
}

/// Replaces the skiplock schema with the one migrations up to `version` build (0: none at all):
/// a database as an earlier release left it.
pub async fn schema_at(pool: &PgPool, version: i32) {
    sqlx::raw_sql("DROP SCHEMA skiplock CASCADE")
        .execute(pool)
        .await
        .expect("drop the schema");
    if version > 0 {
        let report = skiplock::migrate_to(pool, version).await.expect("migrate");
        assert_eq!(report.applied.last(), Some(&version));
    }
}

/// Records the attempt in the ledger table.
pub async fn record(ctx: &JobContext<PgPool>) -> Result<(), JobError> {
    sqlx::query("INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, $2, $3, $4)")
        .bind(ctx.id())
        .bind(ctx.kind())
        .bind(ctx.attempt())
        .bind(ctx.worker_id())
        .execute(ctx.state())
        .await?;
    Ok(())
}

/// Records its run and returns `n * 2`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub n: i64,
}

impl Job for Record {
    const KIND: &'static str = "record";
}

impl Handler<PgPool> for Record {
    type Output = i64;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<i64, JobError> {
        record(&ctx).await?;
        Ok(self.n * 2)
    }
}

/// Records its run, then fails the way `mode` says: "retryable", "permanent", "panic", or
/// "once" (retryable on the first attempt only).
#[derive(Debug, Serialize, Deserialize)]
pub struct Fail {
    pub mode: String,
}

impl Job for Fail {
    const KIND: &'static str = "fail";
    const MAX_ATTEMPTS: i32 = 3;
}

impl Handler<PgPool> for Fail {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        record(&ctx).await?;
        match self.mode.as_str() {
            "retryable" => Err(JobError::retryable(std::io::Error::other(
                "upstream timed out",
            ))),
            "permanent" => Err(JobError::permanent("bad input")),
            "panic" => panic!("handler blew up"),
            "once" if ctx.attempt() == 1 => Err("first attempt fails".into()),
            _ => Ok(()),
        }
    }

    fn backoff(_attempt: i32) -> Duration {
        Duration::from_millis(300)
    }
}

/// Records its start, then sleeps `millis` (ignoring cancellation when `stubborn`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Sleep {
    pub millis: u64,
    pub stubborn: bool,
}

impl Job for Sleep {
    const KIND: &'static str = "sleep";
}

impl Handler<PgPool> for Sleep {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        record(&ctx).await?;
        let sleep = tokio::time::sleep(Duration::from_millis(self.millis));
        if self.stubborn {
            sleep.await;
        } else {
            tokio::select! {
                () = sleep => {}
                () = ctx.cancellation().cancelled() => return Err("cancelled".into()),
            }
        }
        Ok(())
    }
}

/// A job's state, attempt and errors, read as text so that any row reads.
pub async fn outcome(pool: &PgPool, id: i64) -> (String, i32, Value) {
    sqlx::query_as("SELECT state::text, attempt, errors FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("job")
}

/// Enqueues a job of `kind` with `args` (JSON text) through `skiplock.enqueue()`; its id.
pub async fn enqueue_sql(pool: &PgPool, kind: &str, args: &str) -> i64 {
    sqlx::query_scalar("SELECT skiplock.enqueue($1, $2::jsonb)")
        .bind(kind)
        .bind(args)
        .fetch_one(pool)
        .await
        .expect("enqueue")
}

/// Enqueues `Record { n }` for `n` in `0..count` into `queue` with one `enqueue_many`; their ids.
pub async fn enqueue_records(pool: &PgPool, queue: &str, count: i64) -> Vec<i64> {
    let jobs: Vec<skiplock::NewJob> = (0..count)
        .map(|n| {
            skiplock::NewJob::with_options(
                &Record { n },
                skiplock::EnqueueOptions::new().queue(queue),
            )
        })
        .collect::<Result<_, _>>()
        .expect("serialize");
    skiplock::enqueue_many(pool, jobs).await.expect("enqueue")
}

/// Waits until `check` returns `Some`, polling every 20 ms; panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs per state, e.g. `count_state(pool, "completed")`.
pub async fn count_state(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE state::text = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count jobs")
}

/// Waits until `n` jobs are in `state`.
pub async fn wait_for_state(pool: &PgPool, state: &str, n: i64, timeout: Duration) {
    eventually(timeout, &format!("{n} jobs {state}"), || async {
        (count_state(pool, state).await == n).then_some(())
    })
    .await;
}

pub async fn job(pool: &PgPool, id: i64) -> JobRow {
    skiplock::get_job(pool, id)
        .await
        .expect("get job")
        .expect("job exists")
}

/// Ledger rows per job id: (job_id, runs).
pub async fn runs_per_job(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT job_id, count(*) FROM ledger GROUP BY job_id ORDER BY job_id")
        .fetch_all(pool)
        .await
        .expect("ledger")
}
