//! Metrics (`skiplock::metrics`, the `metrics` feature): a real worker counts what its jobs did,
//! the database gauges describe the queue, both are scraped over real HTTP from the axum
//! router, and `promtool` (Debian's `prometheus` package) accepts the output, the alert rules
//! and their unit tests; the Grafana dashboard and the alerts use only metrics skiplock exports.
//!
//! The promtool tests say why they skip when `promtool` is not installed, unless
//! `SKIPLOCK_REQUIRE_PROMTOOL=1` or `CI=true`: then its absence fails them.

// The promtool tests say on stderr why they skipped.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiplock::metrics::{METRIC_NAMES, Metrics};
use skiplock::{EnqueueOptions, Handler, Job, JobContext, JobError, NewJob, Worker};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `promtool`, or `None` (with a message) when it is absent and not required.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file());
    if found.is_none() {
        let required = std::env::var("SKIPLOCK_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !required,
            "promtool is required here (SKIPLOCK_REQUIRE_PROMTOOL=1 or CI=true) but is not on \
             PATH: install Debian's `prometheus` package"
        );
        eprintln!("skipped: no promtool on PATH (apt-get install prometheus)");
    }
    found
}

/// Runs `promtool args...` with `stdin`; panics with its output unless it succeeds.
fn run_promtool(promtool: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The test's job: does what `act` says.
#[derive(Serialize, Deserialize)]
struct Act {
    act: String,
}

impl Job for Act {
    const KIND: &'static str = "act";
    const MAX_ATTEMPTS: i32 = 3;
}

#[derive(Default)]
struct Acts {
    snoozed: Mutex<HashSet<i64>>,
}

impl Handler<Arc<Acts>> for Act {
    type Output = ();

    async fn handle(self, ctx: JobContext<Arc<Acts>>) -> Result<(), JobError> {
        match self.act.as_str() {
            "complete" => Ok(()),
            "fail" => Err(JobError::permanent("no")),
            "retry_once" if ctx.attempt() == 1 => Err("not yet".into()),
            "snooze_once" => {
                let first = ctx
                    .state()
                    .snoozed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(ctx.id());
                if first {
                    Err(JobError::snooze(Duration::from_millis(100)))
                } else {
                    Ok(())
                }
            }
            "wait_cancel" => {
                ctx.cancellation().cancelled().await;
                Err("stopped".into())
            }
            _ => Ok(()),
        }
    }

    fn backoff(_attempt: i32) -> Duration {
        Duration::from_millis(100)
    }
}

/// Serves `metrics` on a free loopback port; returns its address.
async fn serve(metrics: Metrics) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app: axum::Router = skiplock::metrics::router(metrics);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// `GET /metrics` over HTTP/1.1 with `accept`; returns the content type and the body.
async fn scrape(address: std::net::SocketAddr, accept: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("a content type");
    (content_type, body.to_owned())
}

/// Every sample of a scrape, by `name{labels}` as printed.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}; have {:#?}", sorted(samples)))
}

fn sorted(samples: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut all: Vec<_> = samples.iter().collect();
    all.sort_by(|x, y| x.0.cmp(y.0));
    all
}

async fn state_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_counts_what_its_jobs_did_and_promtool_accepts_the_scrape() {
    let db = common::database().await;
    let pool = db.pool();
    let metrics = Metrics::new().with_database(pool.clone());
    let address = serve(metrics.clone()).await;

    let acts = [
        ("complete", 3),
        ("fail", 2),
        ("retry_once", 2),
        ("snooze_once", 1),
        ("wait_cancel", 1),
    ];
    let jobs = acts.iter().flat_map(|(act, n)| {
        (0..*n).map(|_| {
            NewJob::new(&Act {
                act: (*act).to_owned(),
            })
            .expect("job")
        })
    });
    let ids = skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
    let waiting = EnqueueOptions::new().queue("elsewhere");
    let later = waiting.clone().delay(Duration::from_secs(3600));
    let idle = |options: &EnqueueOptions| {
        NewJob::with_options(
            &Act {
                act: "complete".to_owned(),
            },
            options.clone(),
        )
        .expect("job")
    };
    skiplock::enqueue_many(pool, [idle(&waiting), idle(&waiting), idle(&later)])
        .await
        .expect("enqueue elsewhere");

    let worker = Worker::builder(pool.clone(), Arc::new(Acts::default()))
        .register::<Act>()
        .queue("default", 10)
        .poll_interval(Duration::from_millis(100))
        .promote_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_secs(5))
        .metrics(&metrics)
        .build()
        .expect("worker");
    let cancelled = *ids.last().expect("the wait_cancel job");
    let running = worker.start();
    common::eventually(
        Duration::from_secs(20),
        "the job to cancel runs",
        || async { (state_of(pool, cancelled).await == "running").then_some(()) },
    )
    .await;
    skiplock::cancel(pool, cancelled).await.expect("cancel");
    for (state, n) in [("completed", 6), ("failed", 2), ("cancelled", 1)] {
        common::wait_for_state(pool, state, n, Duration::from_secs(20)).await;
    }
    // The outcomes are written; the completer has recorded its batches by now.
    common::eventually(
        Duration::from_secs(10),
        "the last batch counted",
        || async {
            let (_, text) = scrape(address, "text/plain").await;
            (sample(&samples(&text), "skiplock_completion_batch_size_sum") == 12.0).then_some(())
        },
    )
    .await;

    let (content_type, text) = scrape(address, "text/plain").await;
    assert_eq!(content_type, skiplock::metrics::PROMETHEUS_CONTENT_TYPE);
    let got = samples(&text);
    let job = r#"queue="default",kind="act""#;
    assert_eq!(
        sample(&got, &format!("skiplock_jobs_started_total{{{job}}}")),
        12.0
    );
    for (outcome, n) in [
        ("completed", 6.0),
        ("retried", 2.0),
        ("failed", 2.0),
        ("cancelled", 1.0),
        ("snoozed", 1.0),
        ("interrupted", 0.0),
        ("lost", 0.0),
    ] {
        let series = format!(r#"skiplock_job_outcomes_total{{{job},outcome="{outcome}"}}"#);
        assert_eq!(sample(&got, &series), n, "{series}");
    }
    for histogram in [
        "skiplock_job_duration_seconds",
        "skiplock_job_pickup_lag_seconds",
    ] {
        let count = sample(&got, &format!("{histogram}_count{{{job}}}"));
        assert_eq!(count, 12.0, "{histogram}");
        let inf = sample(&got, &format!(r#"{histogram}_bucket{{{job},le="+Inf"}}"#));
        assert_eq!(inf, 12.0, "{histogram}");
    }
    assert_eq!(
        sample(&got, r#"skiplock_jobs_in_flight{queue="default"}"#),
        0.0
    );
    assert_eq!(
        sample(&got, r#"skiplock_queue_slots{queue="default"}"#),
        10.0
    );
    let claims = sample(&got, r#"skiplock_claim_batch_size_sum{queue="default"}"#);
    assert_eq!(claims, 12.0, "every attempt was claimed once");
    assert!(
        sample(
            &got,
            r#"skiplock_claim_duration_seconds_count{queue="default"}"#
        ) >= 1.0
    );
    assert!(sample(&got, "skiplock_completion_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&got, "skiplock_lease_renewals_failed_total"), 0.0);
    for role in ["completer", "producer:default", "heartbeat", "listener"] {
        let series = format!(r#"skiplock_role_restarts_total{{role="{role}"}}"#);
        assert_eq!(sample(&got, &series), 0.0, "{series}");
    }
    // Bounded labels: no job ids, no arguments.
    assert!(!text.contains("job_id") && !text.contains("wait_cancel"));

    // The database gauges, from the same scrape.
    assert_eq!(sample(&got, "skiplock_db_up"), 1.0);
    let elsewhere =
        |state: &str| format!(r#"skiplock_db_jobs{{queue="elsewhere",state="{state}"}}"#);
    assert_eq!(sample(&got, &elsewhere("available")), 2.0);
    assert_eq!(sample(&got, &elsewhere("scheduled")), 1.0);
    assert!(!got.contains_key(r#"skiplock_db_jobs{queue="default",state="available"}"#));
    assert!(
        sample(
            &got,
            r#"skiplock_db_oldest_available_age_seconds{queue="elsewhere"}"#
        ) >= 0.0
    );
    // Finished attempts come from skiplock.job_stats, which each worker writes every heartbeat
    // interval (10 s with the default lease).
    common::eventually(
        Duration::from_secs(30),
        "the outcome counts written",
        || async {
            let (_, text) = scrape(address, "text/plain").await;
            let got = samples(&text);
            [("completed", 6.0), ("failed", 2.0), ("cancelled", 1.0)]
                .iter()
                .all(|(state, n)| {
                    let series =
                        format!(r#"skiplock_db_jobs_finished_last_minute{{state="{state}"}}"#);
                    got.get(&series) == Some(n)
                })
                .then_some(())
        },
    )
    .await;
    assert!(sample(&got, "skiplock_db_last_completed_age_seconds") < 60.0);
    for holder in ["session", "prepared_transaction", "replication_slot"] {
        let series = format!(r#"skiplock_db_xmin_horizon_age_transactions{{holder="{holder}"}}"#);
        assert!(sample(&got, &series) >= 0.0);
    }
    assert!(sample(&got, r#"skiplock_db_table_size_bytes{table="jobs"}"#) > 0.0);
    assert_eq!(sample(&got, r#"skiplock_db_workers{status="alive"}"#), 1.0);
    assert_eq!(
        sample(&got, r#"skiplock_db_workers{status="unresponsive"}"#),
        0.0
    );
    assert!(got.contains_key(r#"skiplock_db_dead_tuples{table="jobs"}"#));

    // OpenMetrics when asked for, as Prometheus does.
    let (content_type, open) = scrape(address, "application/openmetrics-text;version=1.0.0").await;
    assert_eq!(content_type, skiplock::metrics::OPENMETRICS_CONTENT_TYPE);
    assert!(open.ends_with("# EOF\n"), "{open}");
    let open = samples(&open);
    assert_eq!(
        sample(&open, &format!("skiplock_jobs_started_total{{{job}}}")),
        12.0
    );

    running.shutdown().await.expect("shutdown");
    let (_, stopped) = scrape(address, "text/plain").await;
    let stopped = samples(&stopped);
    assert_eq!(
        sample(&stopped, r#"skiplock_queue_slots{queue="default"}"#),
        0.0
    );

    if let Some(promtool) = promtool() {
        run_promtool(&promtool, &["check", "metrics"], &text);
    }
}

/// Rows written by hand with infinite instants (a completed job finished at `infinity`, an
/// available one due since `-infinity`) leave the database gauges up: `now() - at` failed on
/// PostgreSQL 15, and every scrape reported the database down.
#[tokio::test]
async fn infinite_instants_in_rows_leave_the_database_gauges_up() {
    let db = common::database().await;
    let pool = db.pool();
    sqlx::raw_sql(
        "INSERT INTO skiplock.jobs (kind, state, attempt, finished_at)
         VALUES ('k', 'completed', 1, 'infinity');
         INSERT INTO skiplock.jobs (kind, created_at, run_at)
         VALUES ('k', '2020-01-01', '-infinity');",
    )
    .execute(pool)
    .await
    .expect("rows");
    let metrics = Metrics::new().with_database(pool.clone());
    let (_, text) = scrape(serve(metrics).await, "text/plain").await;
    let got = samples(&text);
    assert_eq!(sample(&got, "skiplock_db_up"), 1.0, "{text}");
    assert_eq!(
        sample(
            &got,
            r#"skiplock_db_oldest_available_age_seconds{queue="default"}"#
        ),
        1e9
    );
}

#[tokio::test]
async fn a_database_that_does_not_answer_is_reported_down_not_an_error() {
    let db = common::database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.connect_options().clone())
        .await
        .expect("pool");
    let metrics = Metrics::new().with_database(pool.clone());
    let (_, up) = scrape(serve(metrics.clone()).await, "text/plain").await;
    assert_eq!(sample(&samples(&up), "skiplock_db_up"), 1.0);
    // Hold the only connection: the next scrape cannot get one within its deadline.
    let held = pool.acquire().await.expect("connection");
    let metrics = metrics.database_timeout(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the reuse window
    let started = std::time::Instant::now();
    let (_, down) = scrape(serve(metrics).await, "text/plain").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let down = samples(&down);
    assert_eq!(sample(&down, "skiplock_db_up"), 0.0);
    assert!(
        !down
            .keys()
            .any(|series| series.starts_with("skiplock_db_jobs"))
    );
    drop(held);
}

/// Every `skiplock_...` name in `text`, with sample suffixes of exported metrics removed.
fn metric_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("skiplock_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| METRIC_NAMES.contains(base))
            })
            .unwrap_or(&name)
            .to_owned();
        names.insert(base);
    }
    names
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` of a Grafana dashboard, wherever it is nested.
fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(expr)) => found.push(expr.clone()),
                    _ => exprs(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, found)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_skiplock_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/skiplock.json")).expect("dashboard JSON");
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    assert!(found.len() >= 10, "{found:?}");
    let exported: HashSet<&str> = METRIC_NAMES.iter().copied().collect();
    let used = metric_names(&found.join("\n"));
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard uses {name}"
        );
    }
    assert!(
        used.len() >= 12,
        "the dashboard shows most metrics: {used:?}"
    );
    let rules: String = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let alerts = metric_names(&rules);
    assert!(alerts.len() >= 8, "{alerts:?}");
    for name in &alerts {
        assert!(exported.contains(name.as_str()), "an alert uses {name}");
    }
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    run_promtool(
        &promtool,
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        "",
    );
    run_promtool(
        &promtool,
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
        "",
    );
}
