//! `skiplock::bench`: each scenario runs end to end at a small size, reports what the database
//! holds, and leaves no database behind. These check that the benchmarks measure the right
//! thing; they never judge speed.

use std::time::Duration;

use skiplock::bench::{
    self, BenchConfig, Drain, HoldSnapshot, Insert, InsertMode, Latency, Report, Scenario, Steady,
};
use skiplock_testing::TestDatabase;

/// Benchmarks of this process run one at a time, so that each can check it left no database.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(db: &TestDatabase, scenario: Scenario, async_commit: bool) -> Report {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut config = BenchConfig::new(db.connect_options().clone());
    config.async_commit = async_commit;
    let report = bench::run(&config, &scenario, &|_| {})
        .await
        .expect("benchmark runs");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'skiplock_bench_' || $1 || '_%'",
    )
    .bind(std::process::id().to_string())
    .fetch_one(db.pool())
    .await
    .expect("count databases");
    assert_eq!(left, 0, "the benchmark database is dropped");
    report
}

#[tokio::test]
async fn inserts_are_counted_in_the_database() {
    let db = TestDatabase::new().await.expect("database");
    let single = Insert {
        jobs: 40,
        mode: InsertMode::Single,
        clients: 2,
    };
    let report = run(&db, Scenario::Insert(single), false).await;
    assert_eq!((report.scenario, report.jobs), ("insert_single", 40));
    assert!(
        report.commits_per_job >= 1.0,
        "one commit per job at least: {report:?}"
    );

    let bulk = Insert {
        jobs: 450,
        mode: InsertMode::Bulk { batch: 100 },
        clients: 1,
    };
    let report = run(&db, Scenario::Insert(bulk), false).await;
    assert_eq!((report.scenario, report.jobs), ("insert_bulk", 450));
    assert!(report.commits_per_job < 0.5, "batched commits: {report:?}");
    assert!(report.jobs_per_s > 0.0 && report.wal_bytes_per_job > 0.0);
}

#[tokio::test]
async fn a_drain_completes_every_job_and_times_it_in_the_database() {
    let db = TestDatabase::new().await.expect("database");
    let drain = Drain {
        jobs: 3_000,
        workers: 2,
        concurrency: 100,
        scheduled: 500,
        finished: 1_000,
        foreign: 500,
        // With a dashboard watching: the drain completes all the same.
        dashboard: true,
        concurrency_limit: None,
    };
    let report = run(&db, Scenario::Drain(drain), true).await;
    assert_eq!((report.scenario, report.jobs), ("drain", 3_000));
    assert!(report.seconds > 0.0, "{report:?}");
    assert!(report.async_commit);
    // Claims and completions are batched: far fewer than two commits per job.
    assert!(report.commits_per_job < 1.0, "{report:?}");
    assert_eq!(report.details["workers"], 2);
    // The job table's own settings, as migrated.
    let settings = report.details["jobs_settings"].to_string();
    assert!(
        settings.contains("autovacuum_vacuum_cost_delay=0"),
        "{settings}"
    );
    // And the server's, as it ran (a naptime has a unit: "1min", "10s").
    let server = report.details["server_settings"].to_string();
    assert!(server.contains("autovacuum_naptime="), "{server}");
    assert!(server.contains("synchronous_commit="), "{server}");
}

#[tokio::test]
async fn latency_is_measured_per_job_with_and_without_notify() {
    let db = TestDatabase::new().await.expect("database");
    let notify = Latency {
        samples: 10,
        ..Latency::default()
    };
    let report = run(&db, Scenario::Latency(notify), false).await;
    assert_eq!(report.jobs, 10);
    let p99 = report.p99_ms.expect("percentiles");
    assert!(report.p50_ms <= Some(p99) && Some(p99) <= report.max_ms);

    // Without LISTEN the worker still finds every job, by polling.
    let polling = Latency {
        samples: 3,
        notify: false,
        poll_interval: Duration::from_millis(100),
        ..Latency::default()
    };
    let report = run(&db, Scenario::Latency(polling), false).await;
    assert_eq!(report.jobs, 3);
    assert_eq!(report.details["notify"], false);
}

#[tokio::test]
async fn a_steady_load_reports_rates_backlog_and_the_held_snapshot() {
    let db = TestDatabase::new().await.expect("database");
    let dir = std::env::temp_dir().join(format!("skiplock-steady-{}", db.name()));
    std::fs::create_dir_all(&dir).expect("dir");
    let steady = Steady {
        rate: 200,
        duration: Duration::from_secs(3),
        workers: 1,
        concurrency: 50,
        hold_snapshot: Some(HoldSnapshot {
            at: Duration::from_secs(1),
            hold: Duration::from_secs(1),
        }),
        sample_every: Duration::from_millis(500),
        samples: Some(dir.join("samples.jsonl")),
        chart: Some(dir.join("soak.svg")),
        retention: Some(Duration::from_secs(1)),
        finished: 500,
        server_autovacuum: true,
    };
    let report = run(&db, Scenario::Steady(steady), false).await;
    assert_eq!(report.scenario, "steady");
    assert_eq!(report.details["finished"], 500, "counted in the table");
    assert_eq!(
        report.details["jobs_settings"],
        serde_json::json!([]),
        "the server's autovacuum settings"
    );
    assert_eq!(report.details["enqueued"], 600);
    assert!(report.jobs > 400 && report.jobs <= 600, "{report:?}");
    assert!(report.p50_ms.is_some());
    let per_second = report.details["started_per_s"]
        .as_array()
        .expect("a timeline");
    assert_eq!(per_second.len(), 3);
    assert!(report.details.contains_key("per_s_during_hold"));
    // Three seconds hold no 10-s window (the unit tests in bench::steady check the window).
    for key in ["lowest_10s_started_to_offered", "lowest_10s_during_hold"] {
        assert_eq!(report.details[key], serde_json::Value::Null, "{key}");
    }

    // The soak's samples: one JSON line every 500 ms, the held snapshot visible in them.
    let lines = std::fs::read_to_string(dir.join("samples.jsonl")).expect("samples");
    let samples: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(
        (5..=6).contains(&samples.len()),
        "{} samples",
        samples.len()
    );
    assert!(samples.iter().all(|s| s["table_bytes"].as_i64() > Some(0)));
    assert!(samples.iter().any(|s| s["lag_p99_ms"].is_number()));
    assert!(
        samples
            .iter()
            .any(|s| s["xmin_held_s"].as_f64().is_some_and(|held| held >= 0.3)),
        "the held snapshot shows in the xmin horizon: {lines}"
    );
    assert_eq!(report.details["samples"], samples.len());
    assert!(report.details.contains_key("lag_p99_ms_end_window"));
    let svg = std::fs::read_to_string(dir.join("soak.svg")).expect("chart");
    assert!(svg.starts_with("<svg") && svg.contains("pickup lag"));
    std::fs::remove_dir_all(dir).expect("cleanup");
}
