//! Periodic jobs: fire times, misfire policies, daylight saving time, pause/resume/run-now,
//! and schedules declared in code (several `skiplock scheduler` processes at once: in the CLI
//! crate's tests). Most tests inject the clock into `Scheduler::run_once` and replay hours in
//! milliseconds.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::database;
use serde::{Deserialize, Serialize};
use skiplock::{Job, Misfire, Schedule, ScheduleError, Scheduler, SchedulerConfig, schedule};
use sqlx::PgPool;

#[derive(Serialize, Deserialize)]
struct Report {
    name: String,
}

impl Job for Report {
    const KIND: &'static str = "report";
    const QUEUE: &'static str = "reports";
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid time")
}

fn scheduler(pool: &PgPool) -> Scheduler {
    Scheduler::new(pool.clone(), SchedulerConfig::default())
}

/// The fire times (`run_at`) of the jobs of `name`, ascending.
async fn fired(pool: &PgPool, name: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT run_at FROM skiplock.jobs WHERE schedule = $1 ORDER BY run_at")
        .bind(name)
        .fetch_all(pool)
        .await
        .expect("jobs")
}

/// Runs the scheduler at each instant, in order.
async fn replay(scheduler: &Scheduler, instants: impl IntoIterator<Item = DateTime<Utc>>) {
    for now in instants {
        scheduler.run_once(Some(now)).await.expect("round");
    }
}

#[tokio::test]
async fn a_schedule_fires_once_per_fire_time_with_run_at_the_fire_time() {
    let db = database().await;
    let pool = db.pool();
    let hourly = Schedule::new("hourly-reminder", "0 * * * *", &Report { name: "r".into() })
        .expect("schedule");
    schedule::add(pool, &hourly).await.expect("add");
    let scheduler = scheduler(pool);

    // First round: the next fire time is computed, nothing fires.
    replay(&scheduler, [at(2026, 1, 5, 9, 30, 0)]).await;
    assert!(fired(pool, "hourly-reminder").await.is_empty());
    // Every minute for three hours: three fire times, once each, however often it runs.
    replay(
        &scheduler,
        (0..180).map(|m| at(2026, 1, 5, 9, 31, 0) + chrono::Duration::minutes(m)),
    )
    .await;
    assert_eq!(
        fired(pool, "hourly-reminder").await,
        [
            at(2026, 1, 5, 10, 0, 0),
            at(2026, 1, 5, 11, 0, 0),
            at(2026, 1, 5, 12, 0, 0)
        ]
    );
    let job: (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT kind, queue, args FROM skiplock.jobs WHERE schedule = 'hourly-reminder' LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .expect("job");
    assert_eq!(
        job,
        (
            "report".into(),
            "reports".into(),
            serde_json::json!({"name": "r"})
        )
    );
    let row = &schedule::list(pool).await.expect("list")[0];
    assert_eq!(row.last_fire_at, Some(at(2026, 1, 5, 12, 0, 0)));
    assert_eq!(row.next_fire_at, Some(at(2026, 1, 5, 13, 0, 0)));
}

#[tokio::test]
async fn fire_times_missed_while_no_scheduler_ran_follow_the_misfire_policy() {
    let db = database().await;
    let pool = db.pool();
    let job = Report { name: "m".into() };
    for (name, policy) in [
        ("skip", Misfire::Skip),
        ("once", Misfire::RunOnce),
        ("backfill", Misfire::Backfill(3)),
    ] {
        let every_minute = Schedule::new(name, "* * * * *", &job)
            .expect("schedule")
            .misfire(policy);
        schedule::add(pool, &every_minute).await.expect("add");
    }
    let scheduler = scheduler(pool);
    replay(
        &scheduler,
        [at(2026, 1, 5, 9, 0, 30), at(2026, 1, 5, 9, 1, 0)],
    )
    .await;
    // Down from 09:01 to 09:11:00: 09:02 .. 09:09 are missed (over 60 s late), 09:10 and
    // 09:11 are within the grace.
    replay(&scheduler, [at(2026, 1, 5, 9, 11, 0)]).await;
    let minutes = |ms: &[u32]| {
        ms.iter()
            .map(|m| at(2026, 1, 5, 9, *m, 0))
            .collect::<Vec<_>>()
    };
    assert_eq!(fired(pool, "skip").await, minutes(&[1, 10, 11]));
    assert_eq!(fired(pool, "once").await, minutes(&[1, 9, 10, 11]));
    assert_eq!(
        fired(pool, "backfill").await,
        minutes(&[1, 7, 8, 9, 10, 11])
    );
}

#[tokio::test]
async fn daylight_saving_transitions_fire_once() {
    let db = database().await;
    let pool = db.pool();
    let job = Report { name: "dst".into() };
    for (name, expression, zone) in [
        ("brussels", "30 2 * * *", "Europe/Brussels"),
        ("new-york", "30 2 * * *", "America/New_York"),
        // New York falls back from 02:00 EDT to 01:00 EST: its repeated hour is 01:00-02:00.
        ("new-york-1:30", "30 1 * * *", "America/New_York"),
    ] {
        let nightly = Schedule::new(name, expression, &job)
            .expect("schedule")
            .timezone(zone)
            .expect("zone");
        schedule::add(pool, &nightly).await.expect("add");
    }
    let scheduler = scheduler(pool);
    // Every 10 minutes through both 2026 transitions of both zones.
    for (from, days) in [
        (at(2026, 3, 6, 0, 0, 0), 25),
        (at(2026, 10, 23, 0, 0, 0), 11),
    ] {
        let instants = (0..days * 144).map(|i| from + chrono::Duration::minutes(10 * i));
        replay(&scheduler, instants).await;
    }
    let day = |times: &[DateTime<Utc>], from: DateTime<Utc>| -> Vec<DateTime<Utc>> {
        let until = from + chrono::Duration::days(1);
        times
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < until)
            .collect()
    };

    let brussels = fired(pool, "brussels").await;
    // Spring forward (29 March, 02:00 -> 03:00): 02:30 does not exist; it fires once, at 03:00
    // CEST (01:00 UTC). Fall back (25 October, 03:00 -> 02:00): 02:30 happens twice; it fires
    // once, at the first (00:30 UTC).
    assert_eq!(
        day(&brussels, at(2026, 3, 28, 0, 0, 0)),
        [at(2026, 3, 28, 1, 30, 0)]
    );
    assert_eq!(
        day(&brussels, at(2026, 3, 29, 0, 0, 0)),
        [at(2026, 3, 29, 1, 0, 0)]
    );
    assert_eq!(
        day(&brussels, at(2026, 3, 30, 0, 0, 0)),
        [at(2026, 3, 30, 0, 30, 0)]
    );
    assert_eq!(
        day(&brussels, at(2026, 10, 25, 0, 0, 0)),
        [at(2026, 10, 25, 0, 30, 0)]
    );
    // One per day, no gaps and no doubles.
    assert_eq!(brussels.len(), 25 + 11, "{brussels:?}");

    let new_york = fired(pool, "new-york").await;
    // Spring forward (8 March, 02:00 -> 03:00): at 03:00 EDT.
    assert_eq!(
        day(&new_york, at(2026, 3, 8, 5, 0, 0)),
        [at(2026, 3, 8, 7, 0, 0)]
    );
    assert_eq!(
        day(&new_york, at(2026, 11, 1, 4, 0, 0)),
        [at(2026, 11, 1, 7, 30, 0)],
        "02:30 EST"
    );
    assert_eq!(new_york.len(), 25 + 11, "{new_york:?}");
    let repeated = fired(pool, "new-york-1:30").await;
    let first = [at(2026, 11, 1, 5, 30, 0)];
    assert_eq!(
        day(&repeated, at(2026, 11, 1, 4, 0, 0)),
        first,
        "01:30 EDT, the first of two"
    );
    assert_eq!(repeated.len(), 25 + 11, "{repeated:?}");
}

#[tokio::test]
async fn pause_resume_run_now_and_changed_expressions() {
    let db = database().await;
    let pool = db.pool();
    let job = Report { name: "p".into() };
    let every_minute = Schedule::new("p", "* * * * *", &job).expect("schedule");
    schedule::add(pool, &every_minute).await.expect("add");
    let scheduler = scheduler(pool);
    replay(
        &scheduler,
        [at(2026, 1, 5, 9, 0, 30), at(2026, 1, 5, 9, 1, 0)],
    )
    .await;
    assert_eq!(fired(pool, "p").await.len(), 1);

    assert!(schedule::pause(pool, "p").await.expect("pause"));
    replay(&scheduler, (2..6).map(|m| at(2026, 1, 5, 9, m, 0))).await;
    assert_eq!(fired(pool, "p").await.len(), 1, "a paused schedule fired");

    // Run now: one job at once, cadence untouched.
    let id = schedule::run_now(pool, "p")
        .await
        .expect("run now")
        .expect("exists");
    assert_eq!(common::job(pool, id).await.schedule.as_deref(), Some("p"));
    assert!(
        schedule::run_now(pool, "nope")
            .await
            .expect("run now")
            .is_none()
    );

    // Resumed at 09:06:10: from its next fire time (09:07), without making up for the paused
    // ones, not even 09:06, which would still be within the misfire grace.
    assert!(schedule::resume(pool, "p").await.expect("resume"));
    replay(
        &scheduler,
        [at(2026, 1, 5, 9, 6, 10), at(2026, 1, 5, 9, 7, 0)],
    )
    .await;
    let times = fired(pool, "p").await;
    assert!(times.contains(&at(2026, 1, 5, 9, 7, 0)), "{times:?}");
    assert!(!times.contains(&at(2026, 1, 5, 9, 6, 0)), "{times:?}");
    assert!(!times.contains(&at(2026, 1, 5, 9, 3, 0)), "{times:?}");

    // A changed expression takes effect from its next fire time.
    let hourly = Schedule::new("p", "0 * * * *", &job).expect("schedule");
    schedule::add(pool, &hourly).await.expect("update");
    replay(
        &scheduler,
        (8..70).map(|m| at(2026, 1, 5, 9, 0, 0) + chrono::Duration::minutes(m)),
    )
    .await;
    let after_change: Vec<_> = fired(pool, "p")
        .await
        .into_iter()
        .filter(|t| *t > at(2026, 1, 5, 9, 7, 0) && *t < at(2026, 2, 1, 0, 0, 0))
        .collect();
    assert_eq!(after_change, [at(2026, 1, 5, 10, 0, 0)]);

    assert!(schedule::remove(pool, "p").await.expect("remove"));
    assert!(schedule::list(pool).await.expect("list").is_empty());
}

#[tokio::test]
async fn invalid_expressions_and_zones_are_refused_when_declared() {
    let job = Report { name: "x".into() };
    for expression in ["", "61 * * * *", "* * *", "every day"] {
        let error = Schedule::new("bad", expression, &job).expect_err(expression);
        assert!(
            matches!(error, ScheduleError::Cron(_)),
            "{expression}: {error}"
        );
        assert!(
            error.to_string().contains("invalid cron expression"),
            "{error}"
        );
    }
    let error = Schedule::new("bad", "0 2 * * *", &job)
        .expect("schedule")
        .timezone("Europe/Atlantis")
        .expect_err("unknown zone");
    assert!(
        error
            .to_string()
            .contains("unknown time zone \"Europe/Atlantis\""),
        "{error}"
    );
    assert!(matches!(
        Schedule::new("", "0 2 * * *", &job),
        Err(ScheduleError::InvalidName(_))
    ));
}

#[tokio::test]
async fn the_unique_index_alone_refuses_a_second_job_for_a_fire_time() {
    let db = database().await;
    let pool = db.pool();
    let job = Report { name: "u".into() };
    schedule::add(
        pool,
        &Schedule::new("u", "* * * * *", &job).expect("schedule"),
    )
    .await
    .expect("add");
    let scheduler = scheduler(pool);
    replay(
        &scheduler,
        [at(2026, 1, 5, 9, 0, 30), at(2026, 1, 5, 9, 1, 0)],
    )
    .await;
    // A scheduler that read the schedule before the first one committed works from the stale
    // next fire time: the database still refuses the duplicate.
    sqlx::query("UPDATE skiplock.schedules SET next_fire_at = $1 WHERE name = 'u'")
        .bind(at(2026, 1, 5, 9, 1, 0))
        .execute(pool)
        .await
        .expect("rewind");
    let report = scheduler
        .run_once(Some(at(2026, 1, 5, 9, 1, 0)))
        .await
        .expect("round");
    assert_eq!(report.fired, 0);
    assert_eq!(fired(pool, "u").await, [at(2026, 1, 5, 9, 1, 0)]);
}

#[tokio::test]
async fn schedules_removed_from_code_are_marked_inactive() {
    let db = database().await;
    let pool = db.pool();
    let job = Report { name: "c".into() };
    let declare = |names: &[&str]| {
        let mut builder = common::worker(pool).register::<common::Record>();
        for name in names {
            builder = builder.schedule(Schedule::new(name, "0 2 * * *", &job).expect("schedule"));
        }
        builder.build().expect("worker").start()
    };
    let first = declare(&["a", "b"]);
    common::eventually(Duration::from_secs(5), "two schedules", || async {
        (schedule::list(pool).await.expect("list").len() == 2).then_some(())
    })
    .await;
    first.shutdown().await.expect("shutdown");

    let second = declare(&["a"]);
    common::eventually(Duration::from_secs(5), "b to be inactive", || async {
        let rows = schedule::list(pool).await.expect("list");
        let active: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.active)).collect();
        (active == [("a", true), ("b", false)]).then_some(())
    })
    .await;
    second.shutdown().await.expect("shutdown");
    let rows = schedule::list(pool).await.expect("list");
    assert_eq!(rows[0].source, "code");
    assert!(matches!(
        common::worker(pool)
            .register::<common::Record>()
            .schedule(Schedule::new("a", "0 2 * * *", &job).expect("schedule"))
            .schedule(Schedule::new("a", "0 3 * * *", &job).expect("schedule"))
            .build(),
        Err(skiplock::runtime::BuildError::DuplicateSchedule(_))
    ));
}

#[tokio::test]
async fn the_celery_beat_use_cases_of_the_readme() {
    let db = database().await;
    let pool = db.pool();
    let job = Report {
        name: "beat".into(),
    };
    // Exactly as in the README.
    let nightly_sync = Schedule::new("nightly-sync", "0 2 * * *", &job)
        .expect("schedule")
        .timezone("Europe/Brussels")
        .expect("zone")
        .misfire(Misfire::RunOnce);
    let monday_report = Schedule::new("monday-report", "0 9 * * 1", &job)
        .expect("schedule")
        .timezone("America/New_York")
        .expect("zone");
    let hourly_reminder = Schedule::new("hourly-reminder", "0 * * * *", &job).expect("schedule");
    for schedule in [&nightly_sync, &monday_report, &hourly_reminder] {
        schedule::add(pool, schedule).await.expect("add");
    }
    // One January week, Monday 5 to Sunday 11, every five minutes.
    let start = at(2026, 1, 4, 23, 0, 0);
    let scheduler = scheduler(pool);
    replay(
        &scheduler,
        (0..(7 * 288 + 12)).map(|i| start + chrono::Duration::minutes(5 * i)),
    )
    .await;

    let nightly = fired(pool, "nightly-sync").await;
    assert_eq!(nightly.len(), 7, "{nightly:?}");
    assert!(
        nightly
            .iter()
            .all(|t| t.format("%H:%M").to_string() == "01:00"),
        "02:00 CET"
    );
    assert_eq!(
        fired(pool, "monday-report").await,
        [at(2026, 1, 5, 14, 0, 0)],
        "09:00 EST on Monday"
    );
    assert_eq!(fired(pool, "hourly-reminder").await.len(), 7 * 24);
}

#[tokio::test]
async fn a_schedule_that_can_never_fire_is_marked_inactive_instead_of_spinning() {
    let db = database().await;
    let pool = db.pool();
    let job = Report {
        name: "never".into(),
    };
    // 30 February does not exist.
    schedule::add(
        pool,
        &Schedule::new("never", "0 0 30 2 *", &job).expect("schedule"),
    )
    .await
    .expect("add");
    let report = scheduler(pool)
        .run_once(Some(at(2026, 1, 5, 9, 0, 0)))
        .await
        .expect("round");
    assert_eq!(report.schedules, 1);
    let row = &schedule::list(pool).await.expect("list")[0];
    assert!(!row.active && row.next_fire_at.is_none());
    let again = scheduler(pool)
        .run_once(Some(at(2026, 1, 5, 9, 0, 1)))
        .await
        .expect("round");
    assert_eq!(
        again.schedules, 0,
        "an exhausted schedule is picked up again and again"
    );
}

/// `(name, active, owner)` of every schedule, by name.
async fn rows(pool: &PgPool) -> Vec<(String, bool, Option<String>)> {
    let rows = schedule::list(pool).await.expect("list");
    rows.into_iter()
        .map(|row| (row.name, row.active, row.owner))
        .collect()
}

/// Starts a worker of `owner` at `generation` declaring `names`, waits until its declaration
/// is done (its scheduler, which starts after it, has computed the probe's next fire time),
/// and stops it.
async fn start_declaring(pool: &PgPool, owner: &str, generation: i64, names: &[&str]) {
    sqlx::query("UPDATE skiplock.schedules SET next_fire_at = NULL WHERE name = 'probe'")
        .execute(pool)
        .await
        .expect("reset probe");
    let job = Report { name: "o".into() };
    let mut builder = common::worker(pool)
        .register::<common::Record>()
        .schedule_owner(owner)
        .schedule_generation(generation);
    for name in names {
        builder = builder.schedule(Schedule::new(name, "0 2 * * *", &job).expect("schedule"));
    }
    let worker = builder.build().expect("worker").start();
    common::eventually(Duration::from_secs(10), "the declaration", || async {
        let probe: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT next_fire_at FROM skiplock.schedules WHERE name = 'probe'")
                .fetch_one(pool)
                .await
                .expect("probe");
        probe.map(|_| ())
    })
    .await;
    worker.shutdown().await.expect("shutdown");
}

fn row(name: &str, active: bool, owner: &str) -> (String, bool, Option<String>) {
    (name.to_owned(), active, Some(owner.to_owned()))
}

#[tokio::test]
async fn a_rolling_deploy_does_not_flap_schedules() {
    let db = database().await;
    let pool = db.pool();
    let probe = Schedule::new("probe", "0 0 1 1 *", &Report { name: "p".into() });
    schedule::add(pool, &probe.expect("schedule"))
        .await
        .expect("add");
    let probe = || ("probe".to_owned(), true, None);

    // Version 1 declares s0 and s1; version 2 keeps s0, drops s1 and adds s2. During the
    // deploy, old and new processes start in turn.
    let old = |pool| start_declaring(pool, "billing", 1, &["s0", "s1"]);
    let new = |pool| start_declaring(pool, "billing", 2, &["s0", "s2"]);
    old(pool).await;
    let before = vec![
        probe(),
        row("s0", true, "billing"),
        row("s1", true, "billing"),
    ];
    assert_eq!(rows(pool).await, before);
    let after = vec![
        probe(),
        row("s0", true, "billing"),
        row("s1", false, "billing"),
        row("s2", true, "billing"),
    ];
    for step in 0..4 {
        if step % 2 == 0 {
            new(pool).await;
        } else {
            old(pool).await;
        }
        assert_eq!(rows(pool).await, after, "after start {step}");
    }
    let declared: i64 = sqlx::query_scalar(
        "SELECT generation FROM skiplock.schedule_owners WHERE owner = 'billing'",
    )
    .fetch_one(pool)
    .await
    .expect("owner");
    assert_eq!(declared, 2);
}

#[tokio::test]
async fn services_sharing_a_kind_keep_their_own_schedules() {
    let db = database().await;
    let pool = db.pool();
    let probe = Schedule::new("probe", "0 0 1 1 *", &Report { name: "p".into() });
    schedule::add(pool, &probe.expect("schedule"))
        .await
        .expect("add");
    let probe = || ("probe".to_owned(), true, None);
    // Both services register the `record` kind and declare schedules of the `report` kind.
    start_declaring(pool, "billing", 0, &["invoices"]).await;
    start_declaring(pool, "reporting", 0, &["dashboards"]).await;
    // Each start of one service leaves the other's schedules alone.
    start_declaring(pool, "billing", 0, &["invoices"]).await;
    assert_eq!(
        rows(pool).await,
        [
            row("dashboards", true, "reporting"),
            row("invoices", true, "billing"),
            probe(),
        ]
    );
    start_declaring(pool, "reporting", 0, &[]).await;
    assert_eq!(
        rows(pool).await,
        [
            row("dashboards", false, "reporting"),
            row("invoices", true, "billing"),
            probe(),
        ]
    );
    // A name another service's active schedule holds is not taken over.
    start_declaring(pool, "reporting", 0, &["invoices"]).await;
    assert_eq!(rows(pool).await[1], row("invoices", true, "billing"));
    assert!(matches!(
        common::worker(pool)
            .register::<common::Record>()
            .schedule_owner("")
            .build(),
        Err(skiplock::runtime::BuildError::InvalidScheduleOwner(_))
    ));
}

#[derive(Serialize, Deserialize)]
struct Timed;

impl Job for Timed {
    const KIND: &'static str = "timed";
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
}

#[tokio::test]
async fn scheduled_jobs_carry_the_kinds_timeout_and_the_schedules_tags() {
    let db = database().await;
    let pool = db.pool();
    let tagged = Schedule::new("tagged", "* * * * *", &Timed)
        .expect("schedule")
        .tag("nightly")
        .tag("billing");
    schedule::add(pool, &tagged).await.expect("add");
    let untimed = Schedule::new("untimed", "* * * * *", &Report { name: "u".into() })
        .expect("schedule")
        .timeout(Duration::from_millis(1_500));
    schedule::add(pool, &untimed).await.expect("add");
    let scheduler = scheduler(pool);
    replay(
        &scheduler,
        [at(2026, 1, 5, 9, 0, 30), at(2026, 1, 5, 9, 1, 0)],
    )
    .await;
    schedule::run_now(pool, "tagged").await.expect("run now");
    let jobs: Vec<(String, Vec<String>, Option<f64>)> = sqlx::query_as(
        "SELECT schedule, tags, timeout_secs FROM skiplock.jobs ORDER BY schedule, id",
    )
    .fetch_all(pool)
    .await
    .expect("jobs");
    let tags = vec!["nightly".to_owned(), "billing".to_owned()];
    assert_eq!(
        jobs,
        [
            ("tagged".to_owned(), tags.clone(), Some(30.0)),
            ("tagged".to_owned(), tags.clone(), Some(30.0)),
            ("untimed".to_owned(), vec![], Some(1.5)),
        ]
    );
    let listed = schedule::list(pool).await.expect("list");
    assert_eq!(listed[0].tags, tags);
    assert_eq!(listed[0].timeout, Some(Duration::from_secs(30)));
}

/// A schedule whose job the table refuses (here arguments over a limit lowered after it was
/// stored), or whose fire times were written by hand as instants chrono cannot hold
/// (infinities, the year 270,000), does not stop the others: its fire time is passed over
/// (logged, counted in `refused`) or computed afresh.
/// (One transaction held every due schedule: one refused insert rolled back the batch, and
/// the schedule, still due, did it again every round; `-infinity` failed to decode.)
#[tokio::test]
async fn a_schedule_the_table_refuses_does_not_stop_the_others() {
    let db = database().await;
    let pool = db.pool();
    let big = Report {
        name: "x".repeat(200),
    };
    let ok = Report { name: "ok".into() };
    for (name, job) in [
        ("big", &big),
        ("far", &ok),
        ("hand-written", &ok),
        ("ok", &ok),
    ] {
        let hourly = Schedule::new(name, "0 * * * *", job).expect("schedule");
        schedule::add(pool, &hourly).await.expect("add");
    }
    sqlx::raw_sql("SELECT skiplock.set_limits(args_bytes => 100)")
        .execute(pool)
        .await
        .expect("limits");
    let scheduler = scheduler(pool);
    replay(&scheduler, [at(2026, 1, 5, 9, 30, 0)]).await;
    sqlx::raw_sql(
        "UPDATE skiplock.schedules SET next_fire_at = '-infinity', last_fire_at = 'infinity'
         WHERE name = 'hand-written';
         UPDATE skiplock.schedules SET next_fire_at = 'infinity', last_fire_at = '270000-01-01'
         WHERE name = 'far'",
    )
    .execute(pool)
    .await
    .expect("hand-written");

    let report = scheduler
        .run_once(Some(at(2026, 1, 5, 10, 0, 1)))
        .await
        .expect("round");
    assert_eq!((report.fired, report.refused), (1, 1));
    assert_eq!(fired(pool, "ok").await, [at(2026, 1, 5, 10, 0, 0)]);
    assert!(fired(pool, "big").await.is_empty());
    let rows = schedule::list(pool).await.expect("list");
    for row in &rows {
        assert!(row.active, "{}", row.name);
        assert_eq!(
            row.next_fire_at,
            Some(at(2026, 1, 5, 11, 0, 0)),
            "{}",
            row.name
        );
    }
    // The next fire time of each goes as the first did.
    let report = scheduler
        .run_once(Some(at(2026, 1, 5, 11, 0, 1)))
        .await
        .expect("round");
    assert_eq!((report.fired, report.refused), (3, 1));
}
