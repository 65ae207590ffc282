//! Notifications are hints: nothing a notification says is trusted.

mod common;

use std::time::Duration;

use common::{Sleep, database, eventually, start, worker};
use skiplock::JobState;
use sqlx::{Connection, PgConnection};

/// Waits until job `id` has started (its ledger row exists).
async fn started(pool: &sqlx::PgPool, id: i64) {
    eventually(Duration::from_secs(10), "the job to start", || async {
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE job_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("ledger");
        (runs > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_spoofed_cancel_notification_does_not_cancel_a_running_job() {
    let db = database().await;
    let pool = db.pool();
    // A role that may connect and nothing else: no rights on schema skiplock.
    let role = format!("spoof_{}", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE \"{role}\" LOGIN")))
        .execute(pool)
        .await
        .expect("create role");

    let running = start(worker(pool).register::<Sleep>());
    let victim = Sleep {
        millis: 60_000,
        stubborn: false,
    };
    let id = skiplock::enqueue(pool, &victim).await.expect("enqueue");
    let bystander = skiplock::enqueue(pool, &victim).await.expect("enqueue");
    started(pool, id).await;
    started(pool, bystander).await;

    let outsider = db.connect_options().clone().username(&role);
    let mut outsider = PgConnection::connect_with(&outsider)
        .await
        .expect("connect as the outsider");
    let denied = sqlx::query("SELECT count(*) FROM skiplock.jobs")
        .execute(&mut outsider)
        .await;
    assert!(
        denied.is_err(),
        "the outsider must have no rights on skiplock"
    );
    // A flood of spoofed cancels for every id, and garbage.
    for _ in 0..200 {
        for payload in [id.to_string(), bystander.to_string(), "x".repeat(100)] {
            sqlx::query("SELECT pg_notify('skiplock_cancel', $1)")
                .bind(payload)
                .execute(&mut outsider)
                .await
                .expect("notify");
        }
    }
    outsider.close().await.expect("close");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for job in [id, bystander] {
        let row = common::job(pool, job).await;
        assert_eq!(row.state, JobState::Running, "job {job} was cancelled");
    }

    // A real cancel still stops the job at once (through the notification: the default lease
    // is renewed only every 10 s).
    let begun = std::time::Instant::now();
    skiplock::cancel(pool, id).await.expect("cancel");
    eventually(Duration::from_secs(3), "the cancel", || async {
        (common::job(pool, id).await.state == JobState::Cancelled).then_some(())
    })
    .await;
    assert!(begun.elapsed() < Duration::from_secs(3));
    assert_eq!(common::job(pool, bystander).await.state, JobState::Running);

    running.shutdown().await.expect("shutdown");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(pool)
        .await
        .expect("drop role");
}
