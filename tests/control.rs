//! Queue control against a real database and real workers: pause and resume.

mod common;

use std::time::Duration;

use common::{
    Record, Sleep, count_state, database, enqueue_records, eventually, start, wait_for_state,
    worker,
};
use skiplock::inspect::{self, Reason};
use skiplock::queue::{self, QueueError};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// The newest attempt start in the queue, database time.
async fn last_claim(pool: &PgPool) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT max(attempted_at) FROM skiplock.jobs")
        .fetch_one(pool)
        .await
        .expect("last claim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_is_claimed_by_no_worker_until_resumed() {
    let db = database().await;
    let pool = db.pool();
    // Two workers, busy on a long stream of short jobs.
    enqueue_records(pool, "mail", 3_000).await;
    let workers: Vec<_> = (0..2)
        .map(|i| {
            start(
                worker(pool)
                    .id(format!("w{i}"))
                    .queue("mail", 4)
                    .register::<Record>(),
            )
        })
        .collect();
    eventually(Duration::from_secs(30), "some jobs done", || async {
        (count_state(pool, "completed").await >= 100).then_some(())
    })
    .await;

    assert!(
        queue::pause(pool, "mail", Some("provider outage"))
            .await
            .expect("pause")
    );
    assert!(
        !queue::pause(pool, "mail", Some("again"))
            .await
            .expect("pause again")
    );
    // Database time once the pause has committed: any claim that began after it sees the pause.
    let paused_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .expect("database time");

    // Jobs claimed before the pause finish; nothing is claimed after it.
    eventually(Duration::from_secs(10), "running jobs finish", || async {
        (count_state(pool, "running").await == 0).then_some(())
    })
    .await;
    let done = count_state(pool, "completed").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        count_state(pool, "completed").await,
        done,
        "a paused queue ran jobs"
    );
    let last = last_claim(pool).await.expect("some claims");
    assert!(
        last <= paused_at,
        "claimed at {last} after the pause at {paused_at}"
    );
    assert!(count_state(pool, "available").await > 0);

    // Everyone who looks sees the pause and why.
    let queues = inspect::queues(pool).await.expect("queues");
    let mail = queues
        .iter()
        .find(|q| q.name == "mail")
        .expect("mail listed");
    let pause = mail.paused.as_ref().expect("shown as paused");
    assert_eq!(pause.reason.as_deref(), Some("provider outage"));
    let waiting: i64 = sqlx::query_scalar(
        "SELECT id FROM skiplock.jobs WHERE state = 'available' ORDER BY id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .expect("a waiting job");
    let explanation = inspect::explain(pool, waiting)
        .await
        .expect("explain")
        .expect("job");
    assert!(
        matches!(&explanation.reasons[0], Reason::QueuePaused { queue, why, .. }
            if queue == "mail" && why.as_deref() == Some("provider outage")),
        "{:?}",
        explanation.reasons
    );
    assert!(
        explanation.reasons[0]
            .to_string()
            .contains("skiplock queues resume mail")
    );
    let health = inspect::health(pool, &inspect::HealthOptions::default())
        .await
        .expect("health");
    let lag = health
        .checks
        .iter()
        .find(|c| c.name == "pickup_lag")
        .expect("lag check");
    assert!(lag.summary.contains("paused"), "{}", lag.summary);

    // Resumed: the workers are woken and drain the queue.
    assert!(queue::resume(pool, "mail").await.expect("resume"));
    assert!(!queue::resume(pool, "mail").await.expect("resume again"));
    wait_for_state(pool, "completed", 3_000, Duration::from_secs(60)).await;
    assert!(queue::paused(pool).await.expect("paused").is_empty());
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_worker_restart_and_spares_other_queues() {
    let db = database().await;
    let pool = db.pool();
    queue::pause(pool, "slow", None)
        .await
        .expect("pause before any job");
    enqueue_records(pool, "slow", 5).await;
    // Two worker lifetimes, each running the other queue's jobs to the end.
    for round in 0..2_i64 {
        enqueue_records(pool, "fast", 5).await;
        let running = start(
            worker(pool)
                .id(format!("w{round}"))
                .queue("slow", 2)
                .queue("fast", 2)
                .register::<Record>(),
        );
        wait_for_state(pool, "completed", 5 * (round + 1), Duration::from_secs(30)).await;
        running.shutdown().await.expect("shutdown");
    }
    let by_queue: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, state::text, count(*) FROM skiplock.jobs GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("states");
    assert_eq!(
        by_queue,
        [
            ("fast".to_owned(), "completed".to_owned(), 10),
            ("slow".to_owned(), "available".to_owned(), 5)
        ]
    );
    let paused = queue::paused(pool).await.expect("paused");
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].name, "slow");
    assert_eq!(paused[0].reason, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_finishes_when_its_queue_is_paused() {
    let db = database().await;
    let pool = db.pool();
    let id = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 1_000,
            stubborn: false,
        },
    )
    .await
    .expect("enqueue");
    let running = start(worker(pool).queue("default", 1).register::<Sleep>());
    eventually(Duration::from_secs(10), "the job starts", || async {
        (count_state(pool, "running").await == 1).then_some(())
    })
    .await;
    queue::pause(pool, "default", None).await.expect("pause");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        common::job(pool, id).await.state,
        skiplock::JobState::Completed
    );
}

#[tokio::test]
async fn the_sql_functions_pause_resume_and_wake_the_queue() {
    let db = database().await;
    let pool = db.pool();
    let mut listener = PgListener::connect_with(pool).await.expect("listener");
    listener.listen("skiplock_wake").await.expect("listen");

    let paused: bool = sqlx::query_scalar("SELECT skiplock.pause_queue('reports', 'month end')")
        .fetch_one(pool)
        .await
        .expect("pause");
    assert!(paused);
    let (by, reason): (String, String) = sqlx::query_as(
        "SELECT paused_by, pause_reason FROM skiplock.queues WHERE name = 'reports'",
    )
    .fetch_one(pool)
    .await
    .expect("row");
    assert_eq!((by.as_str(), reason.as_str()), ("postgres", "month end"));
    let resumed: bool = sqlx::query_scalar("SELECT skiplock.resume_queue('reports')")
        .fetch_one(pool)
        .await
        .expect("resume");
    assert!(resumed);
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a wake-up")
        .expect("notification");
    assert_eq!(woken.payload(), "reports");
    let resumed: bool = sqlx::query_scalar("SELECT skiplock.resume_queue('reports')")
        .fetch_one(pool)
        .await
        .expect("resume again");
    assert!(!resumed, "resuming a running queue changes nothing");

    // Names and reasons are held to their limits, in Rust and by the table.
    let long = "q".repeat(129);
    assert!(matches!(
        queue::pause(pool, &long, None).await,
        Err(QueueError::InvalidName(_))
    ));
    assert!(matches!(
        queue::pause(pool, "q", Some(&"r".repeat(1_001))).await,
        Err(QueueError::ReasonTooLong)
    ));
    let refused = sqlx::query("SELECT skiplock.pause_queue($1)")
        .bind(&long)
        .execute(pool)
        .await;
    assert!(refused.is_err(), "the table's CHECK refuses a long name");
}
