//! The `skiplock` command line, run as a real process.

use std::process::{Command, Output};

use skiplock::JobState;
use skiplock_testing::TestDatabase;

fn skiplock(database_url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiplock"));
    command.args(args).env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run skiplock")
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
    assert!(
        message.starts_with("error: invalid cron expression \"99 * * * *\""),
        "{message}"
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
