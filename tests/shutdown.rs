//! Graceful shutdown: jobs in flight finish, or go back to the queue; none is lost.

mod common;

use std::time::Duration;

use common::{Sleep, database, eventually, job, start, with_worker, worker};
use skiplock::JobState;

async fn started(pool: &sqlx::PgPool, n: i64) {
    eventually(Duration::from_secs(10), "jobs to start", || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
            .fetch_one(pool)
            .await
            .expect("ledger");
        (count >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_waits_for_jobs_in_flight() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Sleep>());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let sleep = Sleep {
            millis: 800,
            stubborn: false,
        };
        ids.push(skiplock::enqueue(pool, &sleep).await.expect("enqueue"));
    }
    started(pool, 5).await;

    running.shutdown().await.expect("shutdown");
    for id in ids {
        assert_eq!(job(pool, id).await.state, JobState::Completed, "job {id}");
    }
}

#[tokio::test]
async fn jobs_outliving_the_grace_period_are_cancelled_or_dropped_and_run_again() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .shutdown_timeout(Duration::from_millis(300))
            .cancel_timeout(Duration::from_millis(300))
            .register::<Sleep>(),
    );
    // One handler stops when cancelled, one ignores cancellation and must be dropped.
    let polite = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: false,
        },
    )
    .await
    .expect("enqueue");
    let stubborn = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: true,
        },
    )
    .await
    .expect("enqueue");
    started(pool, 2).await;

    let begun = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        begun.elapsed()
    );

    // Both go straight back to `available`, the interrupted attempt given back: the polite
    // one returned when its token fired, the stubborn one was dropped.
    for id in [polite, stubborn] {
        let row = job(pool, id).await;
        assert_eq!(
            (row.state, row.attempt),
            (JobState::Available, 0),
            "job {id}"
        );
        assert_eq!(row.errors[0].kind.as_str(), "interrupted");
        assert_eq!(row.lease_expires_at, None);
    }

    // Neither is lost: a new worker runs them again.
    sqlx::query(
        "UPDATE skiplock.jobs SET args = jsonb_set(args, '{millis}', '10'), run_at = now()",
    )
    .execute(pool)
    .await
    .expect("shorten jobs");
    with_worker(
        worker(pool).register::<Sleep>(),
        common::wait_for_state(pool, "completed", 2, Duration::from_secs(10)),
    )
    .await;
    assert_eq!(job(pool, polite).await.attempt, 1);
    assert_eq!(job(pool, stubborn).await.attempt, 1);
}
