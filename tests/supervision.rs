//! Supervision: a background role that fails is logged, counted, retried, and shows in the
//! worker's health; one bad row cannot stop a role for everybody.

mod common;

use std::time::Duration;

use common::{Record, database, eventually, wait_for_state, worker};
use skiplock::{EnqueueOptions, Retention};

#[tokio::test]
async fn a_job_at_infinity_does_not_stop_promotion() {
    let db = database().await;
    let pool = db.pool();
    // It made the promoter fail every round (PostgreSQL 15: "cannot subtract infinite
    // timestamps") or panic and die (16+: an infinite interval). Since 0008 only rows from before
    // that migration (created earlier: jobs_run_at_range spares them) can hold it.
    sqlx::raw_sql(
        "INSERT INTO skiplock.jobs (queue, kind, args, state, run_at, created_at)
         VALUES ('nobody', 'record', '{\"n\": 0}', 'scheduled', 'infinity', '2000-01-01')",
    )
    .execute(pool)
    .await
    .expect("insert");
    let handle = worker(pool)
        .register::<Record>()
        .build()
        .expect("build")
        .start();
    for n in 1..=3 {
        let delay = EnqueueOptions::new().delay(Duration::from_millis(100 * n));
        skiplock::enqueue_with(pool, &Record { n: n as i64 }, delay)
            .await
            .expect("enqueue");
    }
    wait_for_state(pool, "completed", 3, Duration::from_secs(10)).await;
    let health = handle.health();
    let promoter = health.role("promoter").expect("the promoter runs");
    assert_eq!(promoter.failures, 0, "{promoter:?}");
    assert!(promoter.last_success.is_some());
    assert!(health.is_healthy(), "{health:?}");
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn health_reports_a_role_that_keeps_failing_until_it_recovers() {
    let db = database().await;
    let pool = db.pool();
    // Only the pruner deletes jobs: make every delete fail.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'deletes are refused'; END $$;
         CREATE TRIGGER refuse BEFORE DELETE ON skiplock.jobs
             FOR EACH ROW EXECUTE FUNCTION refuse();
         INSERT INTO skiplock.jobs (queue, kind, args, state, attempt, attempted_at, finished_at)
         VALUES ('nobody', 'record', '{\"n\": 0}', 'completed', 1,
                 now() - interval '2 hours', now() - interval '2 hours')",
    )
    .execute(pool)
    .await
    .expect("set up");
    let retention = Retention {
        completed: Some(Duration::from_secs(60)),
        ..Retention::default()
    };
    let handle = worker(pool)
        .register::<Record>()
        .retention(retention)
        .prune_interval(Duration::from_millis(50))
        .build()
        .expect("build")
        .start();

    let pruner = eventually(Duration::from_secs(10), "an unhealthy pruner", || async {
        let health = handle.health();
        (!health.is_healthy()).then(|| health.role("pruner").cloned())
    })
    .await
    .expect("the pruner is the failing role");
    assert!(pruner.consecutive_failures >= skiplock::runtime::UNHEALTHY_AFTER);
    assert_eq!(pruner.panics, 0);
    let error = pruner.last_error.expect("an error");
    assert!(error.contains("deletes are refused"), "{error}");
    assert_eq!(pruner.last_success, None);
    // Every other role is fine.
    let health = handle.health();
    let others = health.roles.iter().filter(|role| role.name != "pruner");
    assert!(others.clone().all(|role| role.failures == 0), "{health:?}");

    // The cause goes away: the pruner, still retrying (with backoff), recovers by itself.
    sqlx::raw_sql("DROP TRIGGER refuse ON skiplock.jobs")
        .execute(pool)
        .await
        .expect("drop trigger");
    eventually(Duration::from_secs(10), "a healthy pruner", || async {
        handle.health().is_healthy().then_some(())
    })
    .await;
    wait_for_state(pool, "completed", 0, Duration::from_secs(5)).await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn one_worker_runs_maintenance_and_another_takes_over_when_it_stops() {
    let db = database().await;
    let pool = db.pool();
    let mut handles: Vec<_> = (0..3)
        .map(|i| {
            worker(pool)
                .register::<Record>()
                .id(format!("w{i}"))
                .build()
                .expect("build")
                .start()
        })
        .collect();
    let leaders = |handles: &[skiplock::WorkerHandle]| {
        handles
            .iter()
            .enumerate()
            .filter(|(_, handle)| handle.health().maintenance)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let leader = eventually(Duration::from_secs(10), "one leader", || async {
        match leaders(&handles)[..] {
            [leader] => Some(leader),
            _ => None,
        }
    })
    .await;
    // Only the leader runs the promoter; a delayed job still runs.
    let promoters = handles
        .iter()
        .filter(|handle| handle.health().role("promoter").is_some())
        .count();
    assert_eq!(promoters, 1);
    let delay = EnqueueOptions::new().delay(Duration::from_millis(200));
    skiplock::enqueue_with(pool, &Record { n: 1 }, delay.clone())
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;

    // The leader stops: its connection closes, and a follower takes over within an interval
    // (the rescue interval: 500 ms here).
    handles.remove(leader).shutdown().await.expect("shutdown");
    eventually(Duration::from_secs(5), "a new leader", || async {
        (leaders(&handles).len() == 1).then_some(())
    })
    .await;
    skiplock::enqueue_with(pool, &Record { n: 2 }, delay)
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 2, Duration::from_secs(10)).await;
    for handle in handles {
        assert!(handle.health().is_healthy());
        handle.shutdown().await.expect("shutdown");
    }
}
