//! `skiplock scheduler`: several processes at once on one database.
#![allow(clippy::print_stderr)]

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skiplock::{Job, Schedule, schedule};
use skiplock_testing::TestDatabase;
use sqlx::PgPool;

#[derive(Serialize, Deserialize)]
struct Report {
    name: String,
}

impl Job for Report {
    const KIND: &'static str = "report";
    const QUEUE: &'static str = "reports";
}

/// The fire times (`run_at`) of the jobs of `name`, ascending.
async fn fired(pool: &PgPool, name: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT run_at FROM skiplock.jobs WHERE schedule = $1 ORDER BY run_at")
        .bind(name)
        .fetch_all(pool)
        .await
        .expect("jobs")
}

#[tokio::test]
async fn three_scheduler_processes_fire_an_every_second_schedule_exactly_once_per_second() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let job = Report { name: "s".into() };
    let every_second = Schedule::new("every-second", "* * * * * *", &job).expect("schedule");
    schedule::add(pool, &every_second).await.expect("add");

    let mut schedulers: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_skiplock"))
                .args(["scheduler", "--interval", "100ms"])
                .env("DATABASE_URL", db.url())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn scheduler")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for child in &schedulers {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }
    for child in &mut schedulers {
        assert!(child.wait().expect("wait").success(), "a scheduler failed");
    }

    let times = fired(pool, "every-second").await;
    let (first, last) = (times[0], times[times.len() - 1]);
    let span = (last - first).num_seconds() + 1;
    let mut distinct = times.clone();
    distinct.dedup();
    let gaps = span - distinct.len() as i64;
    eprintln!(
        "3 schedulers, 10 s: {} jobs for {span} fire times ({first} .. {last}), {} duplicates, {gaps} gaps",
        times.len(),
        times.len() - distinct.len()
    );
    assert!(times.len() >= 8, "only {} jobs in 10 s", times.len());
    assert_eq!(times.len(), distinct.len(), "a fire time has two jobs");
    assert_eq!(gaps, 0, "a fire time has no job");
    assert!(
        times.iter().all(|t| t.timestamp_subsec_nanos() == 0),
        "fire times are whole seconds"
    );
}
