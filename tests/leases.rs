//! Leases hold whatever handlers do: progress writes in a loop, a transaction held open after
//! `complete_in`.

mod common;

use std::time::Duration;

use common::{count_state, database, record, runs_per_job, start, wait_for_state, worker};
use serde::{Deserialize, Serialize};
use skiplock::{Handler, Job, JobContext, JobError, NewJob};
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(2);

/// These tests hold short leases on purpose, and the 100-handler one keeps the CPU busy: run one
/// at a time, so that neither starves the other's heartbeat.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lets a new worker open its connections first: on a loaded machine, a claim that has to
/// open one eats into the (short) lease it takes.
async fn warm_up() {
    tokio::time::sleep(LEASE).await;
}

/// Writes progress in a tight loop for three leases, then records its run.
#[derive(Debug, Serialize, Deserialize)]
struct Busy;

impl Job for Busy {
    const KIND: &'static str = "busy";
}

impl Handler<PgPool> for Busy {
    type Output = u64;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<u64, JobError> {
        let until = tokio::time::Instant::now() + LEASE * 3;
        let mut writes = 0_u64;
        while tokio::time::Instant::now() < until {
            ctx.set_progress(&writes).await?;
            writes += 1;
        }
        record(&ctx).await?;
        Ok(writes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_writing_progress_in_a_loop_lose_no_lease() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .lease(LEASE)
            .queue("default", 100)
            .register::<Busy>(),
    );
    warm_up().await;
    let jobs = (0..100).map(|_| NewJob::new(&Busy));
    let jobs: Vec<_> = jobs.collect::<Result<_, _>>().expect("jobs");
    skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
    wait_for_state(pool, "completed", 100, Duration::from_secs(30)).await;
    running.shutdown().await.expect("shutdown");

    let runs = runs_per_job(pool).await;
    assert_eq!(runs.len(), 100);
    assert!(
        runs.iter().all(|(_, n)| *n == 1),
        "a job ran twice: {runs:?}"
    );
    let errors: i64 =
        sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE errors <> '[]'::jsonb")
            .fetch_one(pool)
            .await
            .expect("errors");
    assert_eq!(errors, 0, "some attempt lost its lease");
    let progressed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE progress IS NOT NULL")
            .fetch_one(pool)
            .await
            .expect("progress");
    assert_eq!(progressed, 100);
}

/// Completes itself in a transaction and holds it open for two leases before committing.
#[derive(Debug, Serialize, Deserialize)]
struct SlowCommit;

impl Job for SlowCommit {
    const KIND: &'static str = "slow_commit";
}

impl Handler<PgPool> for SlowCommit {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        let mut tx = ctx.state().begin().await?;
        sqlx::query("INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, $2, $3, $4)")
            .bind(ctx.id())
            .bind(ctx.kind())
            .bind(ctx.attempt())
            .bind(ctx.worker_id())
            .execute(&mut *tx)
            .await?;
        ctx.complete_in(&mut tx, &"done").await?;
        tokio::time::sleep(LEASE * 2).await;
        tx.commit().await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_transaction_held_open_after_complete_in_commits_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).lease(LEASE).register::<SlowCommit>());
    warm_up().await;
    let id = skiplock::enqueue(pool, &SlowCommit).await.expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    // Long enough for a rescue and a second run, had the job been let go.
    tokio::time::sleep(LEASE * 2).await;
    running.shutdown().await.expect("shutdown");

    assert_eq!(runs_per_job(pool).await, vec![(id, 1)]);
    let row = common::job(pool, id).await;
    assert_eq!(row.result, Some(serde_json::json!("done")));
    assert!(row.errors.is_empty());
    assert_eq!(row.attempt, 1);
    assert_eq!(count_state(pool, "completed").await, 1);
}
