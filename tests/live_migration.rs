//! Migrating a big, busy jobs table: a worker of the previous release keeps draining it while
//! `migrate` brings the schema up to date, and never stalls for more than 2 s.
#![allow(clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use skiplock_testing::TestDatabase;
use sqlx::PgPool;

/// The last version of the previous release (0.1): the schema the test starts from.
const PREVIOUS_RELEASE: i32 = 6;
const FINISHED_ROWS: i64 = 1_900_000;
const WAITING_ROWS: i64 = 100_000;

/// One round of the previous release's worker: claim up to 10 jobs (its claim statement, as in
/// 0.1) and complete them by lease token. Returns how many it completed.
async fn old_worker_round(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let claimed: Vec<(i64, i64)> = sqlx::query_as(
        "WITH picked AS MATERIALIZED (
             SELECT id FROM skiplock.jobs
             WHERE state = 'available' AND queue = 'default' AND kind = ANY($1)
             ORDER BY priority, run_at, id
             LIMIT 10
             FOR UPDATE SKIP LOCKED
         )
         UPDATE skiplock.jobs AS j
         SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
             attempted_by = array_append(j.attempted_by, 'old-worker'),
             lease_expires_at = now() + interval '30 seconds',
             lease_token = nextval('skiplock.lease_token_seq')
         FROM picked WHERE j.id = picked.id
         RETURNING j.id, j.lease_token",
    )
    .bind(vec!["noop".to_owned()])
    .fetch_all(pool)
    .await?;
    let (ids, tokens): (Vec<i64>, Vec<i64>) = claimed.into_iter().unzip();
    let done = sqlx::query(
        "UPDATE skiplock.jobs AS j
         SET state = 'completed', finished_at = now(), lease_expires_at = NULL, lease_token = NULL
         FROM unnest($1::bigint[], $2::bigint[]) AS o(id, lease_token)
         WHERE j.id = o.id AND j.lease_token = o.lease_token",
    )
    .bind(&ids)
    .bind(&tokens)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_big_busy_table_never_stalls_its_workers() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    common::schema_at(pool, PREVIOUS_RELEASE).await;
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, args, state, finished_at, attempt)
         SELECT 'noop', jsonb_build_object('n', n), 'completed', now(), 1
         FROM generate_series(1, $1) AS n",
    )
    .bind(FINISHED_ROWS)
    .execute(pool)
    .await
    .expect("finished rows");
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, args)
         SELECT 'noop', jsonb_build_object('n', n) FROM generate_series(1, $1) AS n",
    )
    .bind(WAITING_ROWS)
    .execute(pool)
    .await
    .expect("waiting rows");
    sqlx::raw_sql("ANALYZE skiplock.jobs")
        .execute(pool)
        .await
        .expect("analyze");

    // Two old workers drain the queue for as long as the migration runs, and a little more.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                let mut completed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    completed += old_worker_round(&pool).await.expect("old worker round");
                    longest = longest.max(started.elapsed());
                }
                (longest, completed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let report = skiplock::migrate(pool)
        .await
        .expect("migrate the live table");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    let mut completed = 0;
    for worker in workers {
        let (stall, done) = worker.await.expect("worker task");
        longest = longest.max(stall);
        completed += done;
    }
    let latest = skiplock::MIGRATIONS.last().expect("a migration").version;
    assert!(
        report.applied.is_empty() || report.applied.last() == Some(&latest),
        "{report:?}"
    );
    eprintln!(
        "migrated {:?} in {took:?}; old workers completed {completed} jobs meanwhile, longest round {longest:?}",
        report.applied
    );
    assert!(completed > 0, "the old workers made progress");
    assert!(
        longest < Duration::from_secs(2),
        "a worker round took {longest:?} while migrating"
    );
}
