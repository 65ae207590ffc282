//! The scheduler under more load than it can fire: it stops at once when asked, each round's
//! work is bounded, every database call has a deadline, and missed fire times are counted
//! without being listed.

#![allow(clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::database;
use serde::{Deserialize, Serialize};
use skiplock::{
    Job, Misfire, Schedule, Scheduler, SchedulerConfig, SchedulerError, runtime, schedule,
};
use sqlx::PgPool;

#[derive(Serialize, Deserialize)]
struct Report;

impl Job for Report {
    const KIND: &'static str = "report";
}

/// `n` every-second schedules of a kind no worker runs, each `behind` seconds late: 2,000
/// schedules 30 s late have 31 fire times each to insert, more than a debug build fires in a
/// second.
async fn every_second_schedules(pool: &PgPool, n: i32, behind: f64) {
    sqlx::query(
        "INSERT INTO skiplock.schedules (name, cron, kind, next_fire_at)
         SELECT 'load-' || i, '* * * * * *', 'nobody', now() - make_interval(secs => $2)
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .bind(behind)
    .execute(pool)
    .await
    .expect("schedules");
}

async fn jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_busy_scheduler_stops_at_once() {
    let db = database().await;
    let pool = db.pool();
    every_second_schedules(pool, 2_000, 30.0).await;
    let scheduler = Scheduler::new(pool.clone(), SchedulerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        scheduler
            .run_until(async {
                let _ = stopped.await;
            })
            .await;
    });
    common::eventually(Duration::from_secs(10), "the scheduler to fire", || async {
        (jobs(pool).await > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the scheduler did not stop within 2 s")
        .expect("scheduler task");
    eprintln!("stopped {:?} after being asked", asked.elapsed());
}

#[tokio::test]
async fn a_worker_with_a_busy_embedded_scheduler_shuts_down_in_time() {
    let db = database().await;
    let pool = db.pool();
    every_second_schedules(pool, 2_000, 30.0).await;
    let worker = common::start(
        common::worker(pool)
            .register::<common::Record>()
            .schedule_owner("load-test"),
    );
    common::eventually(Duration::from_secs(10), "the scheduler to fire", || async {
        (jobs(pool).await > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No job runs, so the shutdown timeout never comes into play: 2 s is ample.
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), worker.shutdown())
        .await
        .expect("the worker did not shut down within 2 s")
        .expect("shutdown");
    eprintln!("shut down {:?} after being asked", asked.elapsed());
}

#[tokio::test]
async fn a_round_handles_at_most_a_thousand_schedules() {
    let db = database().await;
    let pool = db.pool();
    every_second_schedules(pool, 2_500, 2.0).await;
    let scheduler = Scheduler::new(pool.clone(), SchedulerConfig::default());
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .expect("now");
    let first = scheduler.run_once(Some(now)).await.expect("round");
    assert_eq!((first.schedules, first.more_due), (1_000, true));
    let second = scheduler.run_once(Some(now)).await.expect("round");
    assert_eq!((second.schedules, second.more_due), (1_000, true));
    let third = scheduler.run_once(Some(now)).await.expect("round");
    assert_eq!((third.schedules, third.more_due), (500, false));
    // 2 or 3 fire times each, as `now` falls in the second.
    let fired = first.fired + second.fired + third.fired;
    assert!([2_500 * 2, 2_500 * 3].contains(&fired), "{fired}");
}

#[tokio::test]
async fn every_database_call_of_the_scheduler_has_a_deadline() {
    let db = database().await;
    let pool = db.pool();
    schedule::add(
        pool,
        &Schedule::new("s", "* * * * *", &Report).expect("schedule"),
    )
    .await
    .expect("add");
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE skiplock.schedules IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let config = SchedulerConfig {
        timeout: Duration::from_millis(300),
        ..SchedulerConfig::default()
    };
    let round = tokio::time::timeout(
        Duration::from_secs(5),
        Scheduler::new(pool.clone(), config).run_once(None),
    )
    .await
    .expect("the scheduler waited past its deadline");
    assert!(
        matches!(round, Err(SchedulerError::Timeout(limit)) if limit == Duration::from_millis(300)),
        "{round:?}"
    );
    blocker.rollback().await.expect("rollback");
}

#[tokio::test]
async fn years_of_missed_fire_times_are_counted_up_to_a_cap_without_listing_them() {
    let db = database().await;
    let pool = db.pool();
    let every_second = Schedule::new("every-second", "* * * * * *", &Report)
        .expect("schedule")
        .misfire(Misfire::Backfill(3));
    schedule::add(pool, &every_second).await.expect("add");
    let scheduler = Scheduler::new(pool.clone(), SchedulerConfig::default());
    let then = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    scheduler.run_once(Some(then)).await.expect("first round");

    // Six years later: about 190 million missed fire times.
    let now = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let report = scheduler.run_once(Some(now)).await.expect("catch-up");
    // 3 backfilled, and the 61 fire times within the 60 s grace.
    assert_eq!(report.fired, 3 + 61);
    assert_eq!(report.skipped, runtime::MAX_COUNTED_MISSES - 3);
    assert_eq!(jobs(pool).await, 64);
}
