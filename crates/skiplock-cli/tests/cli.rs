//! The `skiplock` command line, run as a real process.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use skiplock::JobState;
use skiplock_testing::TestDatabase;

fn command(database_url: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiplock"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command
}

fn skiplock(database_url: Option<&str>, args: &[&str]) -> Output {
    command(database_url, args).output().expect("run skiplock")
}

/// Asserts a failure whose stderr is exactly `expected`, on one line.
fn fails_with(output: &Output, expected: &str) {
    assert!(!output.status.success(), "{}", stdout(output));
    assert_eq!(stderr(output), expected);
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

#[tokio::test]
async fn migrate_then_enqueue_prints_the_new_id() {
    let db = TestDatabase::new().await.expect("database");
    let url = db.url();
    let migrated = skiplock(Some(&url), &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    assert_eq!(stdout(&migrated), "schema is up to date");

    let output = skiplock(
        Some(&url),
        &[
            "enqueue",
            "send_email",
            r#"{"to": "ada@example.com"}"#,
            "--queue",
            "mail",
            "--priority",
            "-5",
            "--delay",
            "10m",
            "--max-attempts",
            "3",
            "--timeout",
            "90s",
            "--tag",
            "cli",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let id: i64 = stdout(&output).parse().expect("an id");
    let row = skiplock::get_job(db.pool(), id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(row.kind, "send_email");
    assert_eq!(row.args, serde_json::json!({ "to": "ada@example.com" }));
    assert_eq!(
        (row.queue.as_str(), row.priority, row.max_attempts),
        ("mail", -5, 3)
    );
    assert_eq!(row.state, JobState::Scheduled);
    assert_eq!((row.run_at - row.created_at).num_seconds(), 600);
    assert_eq!(row.tags, vec!["cli".to_owned()]);
    let timeout: Option<f64> =
        sqlx::query_scalar("SELECT timeout_secs FROM skiplock.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .expect("timeout");
    assert_eq!(timeout, Some(90.0));

    let at = skiplock(
        Some(&url),
        &[
            "enqueue",
            "report",
            "{}",
            "--run-at",
            "2030-01-01T06:00:00Z",
        ],
    );
    assert!(at.status.success(), "{}", stderr(&at));
    let row = skiplock::get_job(db.pool(), stdout(&at).parse().expect("id"))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(row.run_at.to_rfc3339(), "2030-01-01T06:00:00+00:00");
}

#[test]
fn errors_are_one_line_with_a_failing_exit_code() {
    let no_database = skiplock(None, &["enqueue", "k", "{}"]);
    assert!(!no_database.status.success());
    assert_eq!(
        stderr(&no_database),
        "error: no database given: set DATABASE_URL or pass --database-url"
    );

    let bad_json = skiplock(
        Some("postgres://127.0.0.1:1/none"),
        &["enqueue", "k", "{oops"],
    );
    assert!(!bad_json.status.success());
    let message = stderr(&bad_json);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("error: "), "{message}");

    let unreachable = skiplock(Some("postgres://postgres@127.0.0.1:1/none"), &["migrate"]);
    assert!(!unreachable.status.success());
    let message = stderr(&unreachable);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("error: could not connect to the database"),
        "{message}"
    );

    let bad_cron = skiplock(
        Some("postgres://127.0.0.1:1/never-reached"),
        &[
            "schedules",
            "add",
            "bad",
            "--cron",
            "99 * * * *",
            "--kind",
            "report",
        ],
    );
    assert!(!bad_cron.status.success());
    let message = stderr(&bad_cron);
    assert_eq!(
        message,
        "error: invalid cron expression \"99 * * * *\": minute field: 99 is out of range 0-59"
    );
}

#[test]
fn print_sql_needs_no_database() {
    let output = skiplock(None, &["migrate", "--print-sql"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let sql = stdout(&output);
    assert!(sql.contains("CREATE TABLE skiplock.jobs"));
    assert!(sql.contains("CREATE FUNCTION skiplock.enqueue"));
    assert_eq!(sql, skiplock::script(0).trim());
}

#[tokio::test]
async fn database_errors_are_the_servers_message_once_without_source_lines() {
    let db = TestDatabase::new().await.expect("database");
    sqlx::raw_sql("DROP SCHEMA skiplock CASCADE")
        .execute(db.pool())
        .await
        .expect("drop the schema");
    let output = skiplock(Some(&db.url()), &["enqueue", "k", "{}"]);
    // sqlx's own rendering said the message twice, each with "at line N" (a line of
    // PostgreSQL's C source).
    fails_with(
        &output,
        r#"error: could not insert the job: relation "skiplock.jobs" does not exist"#,
    );

    let unreachable = skiplock(Some("postgres://postgres@127.0.0.1:1/none"), &["migrate"]);
    let message = stderr(&unreachable);
    assert_eq!(
        message.matches("Connection refused").count(),
        1,
        "{message}"
    );
}

#[tokio::test]
async fn arguments_must_be_a_json_object_unless_any_json_is_given() {
    let unreachable = Some("postgres://postgres@127.0.0.1:1/none");
    fails_with(
        &skiplock(unreachable, &["enqueue", "k", "[1, 2]"]),
        "error: the job's arguments must be a JSON object, not an array (pass --any-json if its \
         handler takes another JSON value)",
    );
    let schedule = [
        "schedules",
        "add",
        "s",
        "--cron",
        "0 * * * *",
        "--kind",
        "k",
        "--args",
        "42",
    ];
    fails_with(
        &skiplock(unreachable, &schedule),
        "error: the job's arguments must be a JSON object, not a number (pass --any-json if its \
         handler takes another JSON value)",
    );

    let db = TestDatabase::new().await.expect("database");
    let output = skiplock(Some(&db.url()), &["enqueue", "k", "[1, 2]", "--any-json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let row = skiplock::get_job(db.pool(), stdout(&output).parse().expect("id"))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(row.args, serde_json::json!([1, 2]));
    let output = skiplock(Some(&db.url()), &[&schedule[..], &["--any-json"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn enqueue_reads_arguments_over_the_command_line_limit_from_stdin_or_a_file() {
    let db = TestDatabase::new().await.expect("database");
    // Linux refuses a single command-line argument over 128 KiB.
    let args = serde_json::json!({ "blob": "x".repeat(140 * 1024) });
    let text = args.to_string();

    let mut child = command(Some(&db.url()), &["enqueue", "k", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiplock");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write stdin");
    let from_stdin = child.wait_with_output().expect("wait");
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));

    let path = std::env::temp_dir().join(format!("{}.json", db.name()));
    std::fs::write(&path, &text).expect("write the file");
    let at_path = format!("@{}", path.display());
    let from_file = skiplock(Some(&db.url()), &["enqueue", "k", &at_path]);
    let _ = std::fs::remove_file(&path);
    assert!(from_file.status.success(), "{}", stderr(&from_file));

    for output in [from_stdin, from_file] {
        let row = skiplock::get_job(db.pool(), stdout(&output).parse().expect("id"))
            .await
            .expect("get")
            .expect("job");
        assert_eq!(row.args, args);
    }
    fails_with(
        &skiplock(
            Some(&db.url()),
            &["enqueue", "k", "@/nonexistent/args.json"],
        ),
        "error: could not read the job's arguments from \"/nonexistent/args.json\": No such file \
         or directory (os error 2)",
    );
}

#[tokio::test]
async fn schedule_commands_confirm_what_they_did() {
    let db = TestDatabase::new().await.expect("database");
    let url = Some(db.url());
    let run = |args: &[&str]| {
        let output = skiplock(url.as_deref(), args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let add = [
        "schedules",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--kind",
        "k",
    ];
    assert_eq!(run(&add), r#"schedule "nightly" saved"#);
    assert_eq!(
        run(&["schedules", "pause", "nightly"]),
        r#"schedule "nightly" paused"#
    );
    assert_eq!(
        run(&["schedules", "resume", "nightly"]),
        r#"schedule "nightly" resumed"#
    );
    assert_eq!(
        run(&["schedules", "remove", "nightly"]),
        r#"schedule "nightly" removed"#
    );
    fails_with(
        &skiplock(url.as_deref(), &["schedules", "pause", "nightly"]),
        r#"error: no schedule named "nightly""#,
    );
}

#[tokio::test]
async fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let db = TestDatabase::new().await.expect("database");
    let output = command(Some(&db.url()), &["schedules", "list"])
        .env("RUST_LOG", "sqlx=debug")
        .output()
        .expect("run skiplock");
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("sqlx::query"), "statements are logged: {log}");
    assert!(!log.contains('\x1b'), "colour codes in a pipe: {log}");
}

#[tokio::test]
async fn bench_output_is_not_interleaved_with_statement_logs() {
    let db = TestDatabase::new().await.expect("database");
    let args = ["bench", "insert", "--single", "--jobs", "20"];
    let output = command(Some(&db.url()), &args)
        // Everything sqlx logs, slow-statement warnings included, would show at debug level.
        .env("RUST_LOG", "sqlx=debug")
        .output()
        .expect("run skiplock");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("insert_single: 20 jobs in "));
    let log = stderr(&output);
    assert!(!log.contains("sqlx::query"), "statement logs: {log}");
}

#[test]
fn metrics_refuses_an_address_other_machines_reach_without_allow_public() {
    let output = skiplock(None, &["metrics", "--listen", "0.0.0.0:9187"]);
    fails_with(
        &output,
        "error: refusing to serve metrics on 0.0.0.0:9187, which other machines can reach: pass \
         --allow-public to mean it (/metrics has no authentication)",
    );
}

#[tokio::test]
async fn metrics_serves_the_database_gauges_until_sigterm() {
    use std::io::{BufRead as _, BufReader, Read as _};

    let db = TestDatabase::new().await.expect("database");
    skiplock::enqueue_new(
        db.pool(),
        &skiplock::NewJob::untyped("k", serde_json::json!({}), skiplock::EnqueueOptions::new()),
    )
    .await
    .expect("enqueue");
    let mut child = command(Some(&db.url()), &["metrics", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the exporter");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the address");
    let address = line
        .trim()
        .strip_prefix("serving metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for sample in [
        "skiplock_db_up 1",
        "skiplock_db_jobs{queue=\"default\",state=\"available\"} 1",
    ] {
        assert!(
            response.contains(sample),
            "{sample} missing from {response}"
        );
    }
    assert!(
        !response.contains("skiplock_jobs_started"),
        "no worker metrics without a worker"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(
        child.wait().expect("wait").success(),
        "stops cleanly on SIGTERM"
    );
}
