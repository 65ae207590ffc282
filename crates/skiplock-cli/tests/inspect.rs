//! `skiplock jobs|queues|limits|workers|stats|top|doctor`, run as a real process against a real
//! database, reading what it prints.

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use skiplock::{
    EnqueueOptions, Job, JobContext, JobError, JobState, NewJob, Schedule, Worker, WorkerHandle,
    schedule,
};
use skiplock_testing::TestDatabase;
use sqlx::{Connection as _, PgPool};
use tokio::sync::Notify;

async fn skiplock(db: &TestDatabase, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_skiplock"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("RUST_LOG")
        // No terminal: what a script or cron job sees.
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run skiplock")
}

/// Runs a command that must succeed; its stdout.
async fn ok(db: &TestDatabase, args: &[&str]) -> String {
    let output = skiplock(db, args).await;
    assert!(
        output.status.success(),
        "skiplock {args:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

async fn json(db: &TestDatabase, args: &[&str]) -> Value {
    let text = ok(db, args).await;
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

async fn enqueue(pool: &PgPool, kind: &str, args: Value, options: EnqueueOptions) -> i64 {
    skiplock::enqueue_new(pool, &NewJob::untyped(kind, args, options))
        .await
        .expect("enqueue")
}

async fn state(pool: &PgPool, id: i64) -> Option<JobState> {
    sqlx::query_scalar("SELECT state FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("state")
}

/// Marks jobs failed, as a worker would after their last attempt.
async fn fail(pool: &PgPool, ids: &[i64]) {
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'failed', finished_at = now(), attempt = 1, \
         errors = '[{\"attempt\": 1, \"kind\": \"error\", \"message\": \"smtp timeout\"}]' \
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .expect("fail");
}

/// The ids in the first column of a list's rows (not its header, nor its footer, `3 of 3
/// matching jobs`).
fn ids(table: &str) -> Vec<i64> {
    table
        .lines()
        .filter(|line| !line.contains(" matching job"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Serialize, Deserialize)]
struct Charge {
    card: String,
}

impl Job for Charge {
    const KIND: &'static str = "charge";
    const QUEUE: &'static str = "payments";
}

/// Declined cards fail for good; others run until the test lets them finish.
impl skiplock::Handler<Arc<Notify>> for Charge {
    type Output = ();

    async fn handle(self, ctx: JobContext<Arc<Notify>>) -> Result<(), JobError> {
        if self.card == "declined" {
            return Err(JobError::permanent("card declined"));
        }
        ctx.state().notified().await;
        Ok(())
    }
}

fn start_worker(db: &TestDatabase, release: &Arc<Notify>) -> WorkerHandle {
    Worker::builder(db.pool().clone(), release.clone())
        .register::<Charge>()
        .queue("payments", 3)
        .poll_interval(Duration::from_millis(100))
        .build()
        .expect("worker")
        .start()
}

#[tokio::test]
async fn jobs_list_filters_pages_and_prints_json() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let mut mail = Vec::new();
    for user in 1..=3 {
        let options = EnqueueOptions::new().queue("mail").tag("vip");
        mail.push(
            enqueue(
                pool,
                "send_email",
                serde_json::json!({ "user_id": user }),
                options,
            )
            .await,
        );
    }
    let report = enqueue(
        pool,
        "report",
        serde_json::json!({}),
        EnqueueOptions::new().delay(Duration::from_secs(7_200)),
    )
    .await;

    let table = ok(&db, &["jobs", "list", "--queue", "mail"]).await;
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    for column in [
        "id",
        "state",
        "queue",
        "kind",
        "attempt",
        "when",
        "last error",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(ids(&table), vec![mail[2], mail[1], mail[0]], "{table}");
    assert!(table.contains("available  mail"), "{table}");
    assert!(table.contains("0/25"), "{table}");
    assert!(
        table.ends_with("3 of 3 matching jobs, newest first"),
        "{table}"
    );
    let all = ok(&db, &["jobs", "list"]).await;
    assert!(all.contains("runs in 1h 59m"), "{all}");

    // Paging: the footer says where the next page starts.
    let first = ok(&db, &["jobs", "list", "--limit", "2", "--oldest-first"]).await;
    assert_eq!(ids(&first), vec![mail[0], mail[1]], "{first}");
    let next = format!("; next page: --after {}", mail[1]);
    assert!(
        first.ends_with(&format!("2 of 4 matching jobs, oldest first{next}")),
        "{first}"
    );
    let after = mail[1].to_string();
    let second = ok(&db, &["jobs", "list", "--oldest-first", "--after", &after]).await;
    assert_eq!(ids(&second), vec![mail[2], report], "{second}");

    let by_args = ok(&db, &["jobs", "list", "--args", r#"{"user_id": 2}"#]).await;
    assert_eq!(ids(&by_args), vec![mail[1]], "{by_args}");
    let by_tag = ok(&db, &["jobs", "list", "--tag", "vip", "--kind", "report"]).await;
    assert_eq!(by_tag, "no matching jobs");
    let by_state = ok(&db, &["jobs", "list", "--state", "scheduled,failed"]).await;
    assert_eq!(ids(&by_state), vec![report], "{by_state}");

    let page = json(
        &db,
        &["jobs", "list", "--queue", "mail", "--limit", "2", "--json"],
    )
    .await;
    let listed: Vec<i64> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(listed, vec![mail[2], mail[1]]);
    assert_eq!(page["jobs"][0]["args_preview"], r#"{"user_id": 3}"#);
    assert_eq!(page["next"], mail[1]);
    assert_eq!(
        page["total"],
        serde_json::json!({"kind": "exact", "value": 3})
    );

    let refused = skiplock(&db, &["jobs", "list", "--limit", "1001"]).await;
    assert_eq!(code(&refused), Some(2), "{}", stderr(&refused));
}

#[tokio::test]
async fn jobs_list_searches_on_past_the_end_of_a_scan_window() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let tagged = || EnqueueOptions::new().tag("needle");
    let early = enqueue(pool, "k", serde_json::json!({}), tagged()).await;
    // A gap of two scan windows between the two tagged jobs.
    sqlx::query("SELECT setval(pg_get_serial_sequence('skiplock.jobs', 'id'), $1)")
        .bind(early + 2 * skiplock::inspect::SCAN_WINDOW)
        .execute(pool)
        .await
        .expect("setval");
    let late = enqueue(pool, "k", serde_json::json!({}), tagged()).await;
    enqueue(pool, "k", serde_json::json!({}), EnqueueOptions::new()).await;

    for order in [&["--oldest-first"][..], &[]] {
        let args = [&["jobs", "list", "--tag", "needle"][..], order].concat();
        let table = ok(&db, &args).await;
        let mut found = ids(&table);
        found.sort_unstable();
        assert_eq!(found, vec![early, late], "{table}");
        assert!(table.contains("2 of 2 matching jobs"), "{table}");
    }
}

#[tokio::test]
async fn jobs_show_prints_every_field_and_exits_3_when_there_is_no_such_job() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let options = EnqueueOptions::new()
        .queue("mail")
        .tag("vip")
        .max_attempts(3);
    let id = enqueue(
        pool,
        "send_email",
        serde_json::json!({"to": "ada"}),
        options,
    )
    .await;
    fail(pool, &[id]).await;

    let shown = ok(&db, &["jobs", "show", &id.to_string()]).await;
    assert!(
        shown.starts_with(&format!("job {id}: send_email in queue mail\n")),
        "{shown}"
    );
    for expected in [
        "state         failed, attempt 1 of 3",
        "tags          vip",
        "errors (oldest first)",
        "  attempt 1  ",
        "    smtp timeout",
        "args\n  {\n    \"to\": \"ada\"\n  }",
    ] {
        assert!(shown.contains(expected), "{expected:?} in {shown}");
    }
    assert!(shown.contains("finished      20"), "{shown}");
    assert!(shown.contains(" ago)"), "{shown}");

    let detail = json(&db, &["jobs", "show", &id.to_string(), "--json"]).await;
    assert_eq!(detail["state"], "failed");
    assert_eq!(detail["args"], serde_json::json!({"to": "ada"}));
    assert_eq!(detail["errors"][0]["message"], "smtp timeout");

    let missing = skiplock(&db, &["jobs", "show", "999999"]).await;
    assert_eq!(code(&missing), Some(3));
    assert_eq!(stderr(&missing), "error: no job 999999");
    let missing = skiplock(&db, &["jobs", "explain", "999999"]).await;
    assert_eq!(code(&missing), Some(3));
}

#[tokio::test]
async fn jobs_explain_says_why_a_job_is_not_running() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let release = Arc::new(Notify::new());
    let worker = start_worker(&db, &release);
    let declined = skiplock::enqueue(
        pool,
        &Charge {
            card: "declined".into(),
        },
    )
    .await
    .expect("enqueue");
    wait_until("the declined charge to fail", || async {
        state(pool, declined).await == Some(JobState::Failed)
    })
    .await;
    let future = enqueue(
        pool,
        "charge",
        serde_json::json!({"card": "ok"}),
        EnqueueOptions::new()
            .queue("payments")
            .delay(Duration::from_secs(3_600)),
    )
    .await;
    let orphan = enqueue(
        pool,
        "resize",
        serde_json::json!({}),
        EnqueueOptions::new().queue("images"),
    )
    .await;

    let explained = ok(&db, &["jobs", "explain", &future.to_string()]).await;
    let lines: Vec<&str> = explained.lines().collect();
    assert_eq!(
        lines[0],
        format!("job {future}: charge in queue payments, scheduled, attempt 0 of 25")
    );
    assert_eq!(lines.len(), 2, "{explained}");
    assert!(lines[1].starts_with("- not due until 20"), "{explained}");

    let explained = ok(&db, &["jobs", "explain", &orphan.to_string()]).await;
    assert_eq!(
        explained,
        format!(
            "job {orphan}: resize in queue images, available, attempt 0 of 25\n\
             - no live worker works queue \"images\""
        )
    );

    let explained = ok(&db, &["jobs", "explain", &declined.to_string()]).await;
    let lines: Vec<&str> = explained.lines().collect();
    assert_eq!(lines.len(), 2, "{explained}");
    assert!(
        lines[1].starts_with("- finished: failed at 20"),
        "{explained}"
    );
    assert!(
        lines[1].ends_with("(permanent: card declined)"),
        "{explained}"
    );

    let explanation = json(&db, &["jobs", "explain", &orphan.to_string(), "--json"]).await;
    assert_eq!(explanation["job"]["id"], orphan);
    assert_eq!(
        explanation["reasons"],
        serde_json::json!([{"reason": "no_worker_for_queue", "queue": "images"}])
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn cancel_retry_and_delete_by_id_change_the_database() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let a = enqueue(pool, "k", serde_json::json!({}), EnqueueOptions::new()).await;
    let b = enqueue(pool, "k", serde_json::json!({}), EnqueueOptions::new()).await;
    let (a_text, b_text) = (a.to_string(), b.to_string());

    let cancelled = ok(&db, &["jobs", "cancel", &a_text, &b_text]).await;
    assert_eq!(cancelled, format!("job {a} cancelled\njob {b} cancelled"));
    assert_eq!(state(pool, a).await, Some(JobState::Cancelled));

    let retried = ok(&db, &["jobs", "retry", &a_text]).await;
    assert_eq!(retried, format!("job {a} put back to run now"));
    assert_eq!(state(pool, a).await, Some(JobState::Available));

    // Only finished jobs are deleted: `a` is available again.
    let refused = skiplock(&db, &["jobs", "delete", &a_text, &b_text]).await;
    assert_eq!(code(&refused), Some(1));
    assert_eq!(stdout(&refused), format!("job {b} deleted"));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: job {a} is available: only completed, failed or cancelled jobs can be deleted"
        )
    );
    assert_eq!(state(pool, b).await, None);
    assert_eq!(state(pool, a).await, Some(JobState::Available));

    let missing = skiplock(&db, &["jobs", "cancel", &b_text, "--json"]).await;
    assert_eq!(code(&missing), Some(3));
    let outcome: Value = serde_json::from_str(&stdout(&missing)).expect("json");
    assert_eq!(
        outcome,
        serde_json::json!([{"id": b, "outcome": "not_found", "message": format!("no job {b}")}])
    );
}

#[tokio::test]
async fn bulk_actions_count_first_and_never_act_silently() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let mut emails = Vec::new();
    for _ in 0..3 {
        let options = EnqueueOptions::new().queue("emails");
        emails.push(enqueue(pool, "send", serde_json::json!({}), options).await);
    }
    let other = enqueue(pool, "send", serde_json::json!({}), EnqueueOptions::new()).await;
    fail(pool, &[emails.clone(), vec![other]].concat()).await;
    let filter = ["jobs", "retry", "--state", "failed", "--queue", "emails"];
    let failed = async || {
        let mut n = 0;
        for id in [emails.clone(), vec![other]].concat() {
            n += usize::from(state(pool, id).await == Some(JobState::Failed));
        }
        n
    };

    let dry = ok(&db, &[&filter[..], &["--dry-run"]].concat()).await;
    assert_eq!(
        dry,
        "3 failed jobs in queue \"emails\" would be retried (dry run: nothing changed)"
    );
    assert_eq!(failed().await, 4);

    // No terminal to ask on and no --yes: refused, nothing changed.
    let refused = skiplock(&db, &filter).await;
    assert_eq!(code(&refused), Some(1));
    assert_eq!(
        stderr(&refused),
        "error: refusing to retry 3 failed jobs in queue \"emails\" without confirmation: there \
         is no terminal to ask on; pass --yes (or --dry-run to count only)"
    );
    assert_eq!(failed().await, 4);

    // Unfiltered: refused without --all, even with --yes.
    let unfiltered = skiplock(&db, &["jobs", "retry", "--yes"]).await;
    assert_eq!(code(&unfiltered), Some(1));
    assert!(
        stderr(&unfiltered).contains("without --all"),
        "{}",
        stderr(&unfiltered)
    );
    assert_eq!(failed().await, 4);

    let done = ok(&db, &[&filter[..], &["--yes"]].concat()).await;
    assert_eq!(done, "retried 3 jobs");
    assert_eq!(failed().await, 1);
    for id in &emails {
        assert_eq!(state(pool, *id).await, Some(JobState::Available));
    }

    let report = json(&db, &["jobs", "delete", "--all", "--yes", "--json"]).await;
    assert_eq!(
        report["matched"],
        serde_json::json!({"kind": "exact", "value": 1})
    );
    assert_eq!(report["changed"], 1);
    assert_eq!(state(pool, other).await, None);
    let nothing = ok(&db, &["jobs", "delete", "--all"]).await;
    assert_eq!(nothing, "no finished jobs: nothing to delete");
}

#[tokio::test]
async fn doctor_exits_critical_on_a_job_stuck_past_its_lease() {
    let db = TestDatabase::new().await.expect("database");
    let healthy = skiplock(&db, &["doctor"]).await;
    assert!(
        matches!(code(&healthy), Some(0)),
        "{}{}",
        stdout(&healthy),
        stderr(&healthy)
    );
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, state, attempt, attempted_at, lease_token, \
         lease_expires_at, attempted_by) VALUES ('stuck', 'running', 1, \
         now() - interval '15 minutes', nextval('skiplock.lease_token_seq'), \
         now() - interval '10 minutes', ARRAY['gone:1:abc'])",
    )
    .execute(db.pool())
    .await
    .expect("insert a stuck job");

    let doctor = skiplock(&db, &["doctor"]).await;
    assert_eq!(code(&doctor), Some(5), "{}", stderr(&doctor));
    let text = stdout(&doctor);
    let line = text
        .lines()
        .position(|line| {
            line.starts_with(
                "[critical] stuck_jobs: running jobs past their lease that nobody rescues: 1",
            )
        })
        .unwrap_or_else(|| panic!("no stuck_jobs line in {text}"));
    assert!(
        text.lines()
            .nth(line + 1)
            .is_some_and(|l| l.starts_with("  → start a worker"))
    );
    assert!(
        text.ends_with(')')
            && text
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("verdict: critical (1 critical")),
        "{text}"
    );
    assert_eq!(stderr(&doctor), "");

    let report = skiplock(&db, &["doctor", "--json"]).await;
    assert_eq!(code(&report), Some(5));
    let report: Value = serde_json::from_str(&stdout(&report)).expect("json");
    assert_eq!(report["worst"], "critical");
    let stuck = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|check| check["name"] == "stuck_jobs")
        .expect("stuck_jobs");
    assert_eq!(stuck["severity"], "critical");
}

#[tokio::test]
async fn doctor_names_the_session_idle_in_a_transaction_that_holds_the_horizon() {
    let db = TestDatabase::new().await.expect("database");
    let mut idle = sqlx::PgConnection::connect_with(db.connect_options())
        .await
        .expect("connect");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut idle)
        .await
        .expect("pid");
    sqlx::raw_sql("BEGIN; SELECT txid_current();")
        .execute(&mut idle)
        .await
        .expect("begin");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let doctor = skiplock(&db, &["doctor", "--horizon-warning", "1s"]).await;
    let text = stdout(&doctor);
    let line = text
        .lines()
        .find(|line| line.contains("xmin_horizon"))
        .unwrap_or_else(|| panic!("no xmin_horizon line in {text}"));
    assert!(line.starts_with("[warning] xmin_horizon: "), "{text}");
    assert!(line.contains(&format!("pid {pid} (")), "{text}");
    assert!(line.contains("idle in transaction"), "{text}");
    assert!(
        text.contains(&format!("pg_terminate_backend({pid})")),
        "{text}"
    );
    // A warning fails the run only with --strict.
    assert_eq!(code(&doctor), Some(0), "{text}");
    let strict = skiplock(&db, &["doctor", "--horizon-warning", "1s", "--strict"]).await;
    assert_eq!(code(&strict), Some(4));
    let critical = skiplock(
        &db,
        &[
            "doctor",
            "--horizon-warning",
            "1s",
            "--horizon-critical",
            "1s",
        ],
    )
    .await;
    assert_eq!(code(&critical), Some(5));
    idle.close().await.expect("close");
}

#[tokio::test]
async fn queues_workers_stats_and_top_show_a_running_worker() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let release = Arc::new(Notify::new());
    let worker = start_worker(&db, &release);
    let running = skiplock::enqueue(pool, &Charge { card: "ok".into() })
        .await
        .expect("enqueue");
    wait_until("the charge to run", || async {
        state(pool, running).await == Some(JobState::Running)
    })
    .await;

    let workers = ok(&db, &["workers", "list"]).await;
    let mut lines = workers.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("id "), "{workers}");
    for column in [
        "status",
        "heartbeat",
        "running",
        "queues",
        "version",
        "started",
    ] {
        assert!(header.contains(column), "{workers}");
    }
    let row = lines.next().expect("a worker");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[0], worker.id(), "{workers}");
    assert_eq!(cells[1], "alive", "{workers}");
    assert!(row.contains("payments=3"), "{workers}");
    assert!(row.contains(" ago  "), "{workers}");
    let listed = json(&db, &["workers", "list", "--json"]).await;
    assert_eq!(listed[0]["running"], 1);
    assert_eq!(
        listed[0]["queues"],
        serde_json::json!([{"name": "payments", "concurrency": 3}])
    );

    let queues = ok(&db, &["queues", "list"]).await;
    let payments = queues
        .lines()
        .find(|line| line.starts_with("payments "))
        .unwrap_or_else(|| panic!("no payments row in {queues}"));
    let cells: Vec<&str> = payments.split_whitespace().collect();
    // queue, scheduled, available, running, ..., workers, slots, paused
    assert_eq!(cells[3], "1", "{queues}");
    assert_eq!(&cells[cells.len() - 3..], ["1", "3", "-"], "{queues}");
    let listed = json(&db, &["queues", "list", "--json"]).await;
    assert_eq!(listed[0]["name"], "payments");
    assert_eq!(
        listed[0]["running"],
        serde_json::json!({"kind": "exact", "value": 1})
    );

    let explained = ok(&db, &["jobs", "explain", &running.to_string()]).await;
    let id = worker.id();
    assert!(
        explained.contains(&format!("- running on worker {id} (alive)")),
        "{explained}"
    );

    let stats = ok(&db, &["stats"]).await;
    assert!(stats.starts_with("skiplock stats  20"), "{stats}");
    assert!(stats.contains("\npayments "), "{stats}");
    assert!(stats.contains(" 1/3 "), "{stats}");
    assert!(
        stats.contains("workers: 1 alive; 1 job running, 3 slots in 1 live worker"),
        "{stats}"
    );
    assert!(stats.contains("\nhealth: "), "{stats}");
    let stats = json(&db, &["stats", "--json"]).await;
    assert_eq!(stats["workers"][0]["id"], id);
    assert!(stats["health"]["checks"].is_array());

    let started = Instant::now();
    let top = ok(&db, &["top", "--iterations", "1", "--interval", "10s"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "top waited after its last frame"
    );
    assert!(
        top.starts_with("skiplock top, every 10s (Ctrl-C quits)  20"),
        "{top}"
    );
    assert_eq!(top.matches("\npayments ").count(), 1, "one frame: {top}");
    assert!(!top.contains('\x1b'), "no escape codes in a pipe: {top}");
    let two = ok(&db, &["top", "--iterations", "2", "--interval", "100ms"]).await;
    assert_eq!(two.matches("skiplock top").count(), 2, "{two}");

    release.notify_waiters();
    worker.shutdown().await.expect("shutdown");
    let workers = ok(&db, &["workers", "list"]).await;
    assert!(workers.contains(" stopped "), "{workers}");
}

#[tokio::test]
async fn schedules_list_shows_the_latest_job_and_overdue_schedules() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let job = Charge { card: "ok".into() };
    schedule::add(
        pool,
        &Schedule::new("hourly", "0 * * * *", &job).expect("schedule"),
    )
    .await
    .expect("add");
    let id = ok(&db, &["schedules", "run-now", "hourly"]).await;
    let listed = ok(&db, &["schedules", "list"]).await;
    let header = listed.lines().next().expect("header");
    assert!(header.ends_with("last job"), "{listed}");
    let row = listed.lines().nth(1).expect("row");
    assert!(row.starts_with("hourly "), "{listed}");
    assert!(row.ends_with(&format!("{id} available")), "{listed}");

    // No scheduler ran: once the next fire time is over a minute ago, it is overdue.
    sqlx::query("UPDATE skiplock.schedules SET next_fire_at = now() - interval '5 minutes'")
        .execute(pool)
        .await
        .expect("update");
    let listed = ok(&db, &["schedules", "list"]).await;
    assert!(
        listed.lines().nth(1).expect("row").contains(" overdue "),
        "{listed}"
    );
    let listed = json(&db, &["schedules", "list", "--json"]).await;
    assert_eq!(listed[0]["overdue"], true);
    assert_eq!(listed[0]["last_job"]["id"].to_string(), id);

    let missing = skiplock(&db, &["schedules", "pause", "nope"]).await;
    assert_eq!(code(&missing), Some(3));
}

#[tokio::test]
async fn queues_pause_and_resume_and_explain_says_so() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let id: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('report', '{}', 'exports')")
        .fetch_one(pool)
        .await
        .expect("enqueue");

    let paused = ok(
        &db,
        &["queues", "pause", "exports", "--reason", "month end"],
    )
    .await;
    assert_eq!(paused, "queue \"exports\" paused");
    let again = ok(&db, &["queues", "pause", "exports"]).await;
    assert_eq!(again, "queue \"exports\" was already paused");

    let queues = ok(&db, &["queues", "list"]).await;
    let row = queues
        .lines()
        .find(|line| line.starts_with("exports "))
        .unwrap_or_else(|| panic!("no exports row in {queues}"));
    assert!(row.ends_with("ago (month end)"), "{queues}");
    let listed = json(&db, &["queues", "list", "--json"]).await;
    assert_eq!(listed[0]["paused"]["reason"], "month end");
    assert_eq!(listed[0]["paused"]["by"], "postgres");

    let explained = ok(&db, &["jobs", "explain", &id.to_string()]).await;
    assert!(
        explained.contains("queue \"exports\" is paused since")
            && explained.contains("(month end)")
            && explained.contains("skiplock queues resume exports"),
        "{explained}"
    );

    let resumed = ok(&db, &["queues", "resume", "exports"]).await;
    assert_eq!(resumed, "queue \"exports\" resumed");
    let again = ok(&db, &["queues", "resume", "exports"]).await;
    assert_eq!(again, "queue \"exports\" was not paused");
    let listed = json(&db, &["queues", "list", "--json"]).await;
    assert_eq!(listed[0]["paused"], serde_json::Value::Null);

    let refused = skiplock(&db, &["queues", "pause", ""]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("must be 1 to 128 characters"));
}

#[tokio::test]
async fn workflows_list_show_and_cancel_and_jobs_filter_by_workflow() {
    use skiplock::workflow::{Step, Workflow, chain, group};
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let step = |kind: &str| {
        Step::from(NewJob::untyped(
            kind,
            serde_json::json!({}),
            EnqueueOptions::new(),
        ))
    };
    let flow = || chain([step("fetch"), group([step("resize"), step("resize")])]);
    let first = Workflow::new("thumbnails", flow())
        .enqueue(pool)
        .await
        .expect("enqueue");
    let second = Workflow::new("second", flow())
        .enqueue(pool)
        .await
        .expect("enqueue");
    let jobs = &first.jobs;
    let id = first.id.to_string();

    // The list: newest first, as a table and as JSON.
    let table = ok(&db, &["workflows", "list"]).await;
    let rows: String = table
        .lines()
        .filter(|line| !line.ends_with("newest first"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(ids(&rows), vec![second.id, first.id], "{table}");
    assert!(
        table.contains("thumbnails") && table.contains("running"),
        "{table}"
    );
    assert!(table.ends_with("2 workflows, newest first"), "{table}");
    let page = json(&db, &["workflows", "list", "--limit", "1", "--json"]).await;
    assert_eq!(page["workflows"][0]["id"], second.id);
    assert_eq!(page["next"], second.id);
    let rest = json(
        &db,
        &[
            "workflows",
            "list",
            "--json",
            "--after",
            &second.id.to_string(),
        ],
    )
    .await;
    assert_eq!(rest["workflows"][0]["name"], "thumbnails");
    let finished = ok(&db, &["workflows", "list", "--state", "finished"]).await;
    assert_eq!(finished, "no workflows");

    // Show: the fields, and a table of jobs with what each waits for.
    let shown = ok(&db, &["workflows", "show", &id]).await;
    assert!(
        shown.starts_with(&format!("workflow {id}: \"thumbnails\"\n")),
        "{shown}"
    );
    assert!(
        shown.contains("state         running, 3 of 3 jobs unfinished"),
        "{shown}"
    );
    assert!(
        shown.contains("jobs by state pending 2, available 1"),
        "{shown}"
    );
    let rows: Vec<&str> = shown
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("id"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 3, "{shown}");
    let waits = |row: &str| row.split_whitespace().last().map(str::to_owned);
    assert!(
        rows[0].contains("available") && rows[0].contains("fetch"),
        "{shown}"
    );
    assert_eq!(waits(rows[0]), Some("-".to_owned()));
    for row in &rows[1..] {
        assert!(row.contains("pending") && row.contains("resize"), "{shown}");
        assert_eq!(waits(row), Some(jobs[0].to_string()));
    }
    let detail = json(&db, &["workflows", "show", &id, "--json"]).await;
    assert_eq!(
        detail["members"][2]["depends_on"],
        serde_json::json!([jobs[0]])
    );
    let missing = skiplock(&db, &["workflows", "show", "987654"]).await;
    assert_eq!(code(&missing), Some(3));
    assert_eq!(stderr(&missing), "error: no workflow 987654");

    // `jobs list --workflow`: only its jobs.
    let listed = ok(&db, &["jobs", "list", "--workflow", &id]).await;
    let mut newest_first = jobs.clone();
    newest_first.reverse();
    assert_eq!(ids(&listed), newest_first, "{listed}");

    // Cancel: refused without a terminal or --yes; exit 3 for no such workflow.
    let refused = skiplock(&db, &["workflows", "cancel", &id]).await;
    assert_eq!(code(&refused), Some(1));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: refusing to cancel the 3 unfinished jobs of workflow {id} (\"thumbnails\") \
             without confirmation: there is no terminal to ask on; pass --yes"
        )
    );
    for job in jobs {
        assert_ne!(state(pool, *job).await, Some(JobState::Cancelled));
    }
    let missing = skiplock(&db, &["workflows", "cancel", "987654", "--yes"]).await;
    assert_eq!(code(&missing), Some(3));
    assert_eq!(stderr(&missing), "error: no workflow 987654");
    let cancelled = ok(&db, &["workflows", "cancel", &id, "--yes"]).await;
    assert_eq!(
        cancelled,
        format!("workflow {id}: 3 jobs cancelled, 0 running asked to stop")
    );
    for job in jobs {
        assert_eq!(state(pool, *job).await, Some(JobState::Cancelled));
    }
    for job in &second.jobs {
        assert_ne!(state(pool, *job).await, Some(JobState::Cancelled));
    }
    let again = json(
        &db,
        &[
            "workflows",
            "cancel",
            &second.id.to_string(),
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(again, serde_json::json!({"cancelled": 3, "stopping": 0}));
    let shown = ok(&db, &["workflows", "show", &id]).await;
    assert!(
        shown.contains("state         cancelled, 0 of 3 jobs unfinished"),
        "{shown}"
    );
    assert!(shown.contains("cancelled     "), "{shown}");

    // Retry: refused without a terminal or --yes, then the cancelled workflow runs on.
    let refused = skiplock(&db, &["workflows", "retry", &id]).await;
    assert_eq!(code(&refused), Some(1));
    let missing = skiplock(&db, &["workflows", "retry", "987654", "--yes"]).await;
    assert_eq!(code(&missing), Some(3));
    let retried = ok(&db, &["workflows", "retry", &id, "--yes"]).await;
    assert_eq!(retried, format!("workflow {id}: 3 jobs put back"));
    assert_eq!(state(pool, jobs[0]).await, Some(JobState::Available));
    for job in &jobs[1..] {
        assert_eq!(state(pool, *job).await, Some(JobState::Pending));
    }
    let again = json(&db, &["workflows", "retry", &id, "--yes", "--json"]).await;
    assert_eq!(again, serde_json::json!({"retried": 0}));
}

#[tokio::test]
async fn limits_set_list_and_clear_refuse_without_yes_off_a_terminal_and_explain_says_so() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    assert_eq!(ok(&db, &["limits", "list"]).await, "no limits");

    // No terminal and no --yes: refused, nothing changed.
    let refused = skiplock(
        &db,
        &["limits", "set", "--queue", "exports", "--max-running", "1"],
    )
    .await;
    assert_eq!(code(&refused), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("pass --yes"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(ok(&db, &["limits", "list"]).await, "no limits");

    let set = ok(
        &db,
        &[
            "limits",
            "set",
            "--queue",
            "exports",
            "--max-running",
            "1",
            "--yes",
        ],
    )
    .await;
    assert_eq!(set, "the limit on queue exports is set");
    ok(
        &db,
        &[
            "limits",
            "set",
            "--kind",
            "charge",
            "--max-starts",
            "10",
            "--period",
            "60",
            "--yes",
        ],
    )
    .await;
    ok(
        &db,
        &[
            "limits",
            "set",
            "--kind",
            "charge",
            "--partition-key",
            "customer_id",
            "--max-running",
            "2",
            "--yes",
        ],
    )
    .await;
    let bad = skiplock(
        &db,
        &[
            "limits",
            "set",
            "--queue",
            "exports",
            "--max-running",
            "0",
            "--yes",
        ],
    )
    .await;
    assert_eq!(code(&bad), Some(1), "{}", stderr(&bad));

    let running: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('report', '{}', 'exports')")
        .fetch_one(pool)
        .await
        .expect("enqueue");
    let waiting: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('report', '{}', 'exports')")
        .fetch_one(pool)
        .await
        .expect("enqueue");
    let claimed: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM skiplock.claim('w', '{exports}', '{report}', 5)")
            .fetch_all(pool)
            .await
            .expect("claim");
    assert_eq!(claimed, [running], "the limit of 1 holds");

    let table = ok(&db, &["limits", "list"]).await;
    let row = table
        .lines()
        .find(|line| line.starts_with("queue ") && line.contains("exports"))
        .unwrap_or_else(|| panic!("no exports row in {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..5], ["queue", "exports", "-", "1", "1"], "{table}");
    assert!(table.contains("10/60s"), "{table}");
    let listed = json(&db, &["limits", "list", "--json"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert_eq!(listed[0]["scope"]["name"], "exports");
    assert_eq!(listed[0]["running"], 1);

    let explained = ok(&db, &["jobs", "explain", &waiting.to_string()]).await;
    assert!(
        explained.contains("held back by the limit on queue exports: 1 running of 1"),
        "{explained}"
    );

    let cleared = ok(&db, &["limits", "clear", "--queue", "exports", "--yes"]).await;
    assert_eq!(cleared, "the limit on queue exports is cleared");
    let missing = skiplock(&db, &["limits", "clear", "--queue", "exports", "--yes"]).await;
    assert_eq!(code(&missing), Some(3), "{}", stderr(&missing));
    ok(
        &db,
        &[
            "limits",
            "clear",
            "--kind",
            "charge",
            "--partition-key",
            "customer_id",
            "--yes",
        ],
    )
    .await;
    let listed = json(&db, &["limits", "list", "--json"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
