//! Redacted decode errors: what a job's undecodable arguments leave in its row and in the log.
//!
//! A binary of its own: the test installs a thread-scoped `tracing` subscriber, and other tests
//! starting in the same process at the same moment can leave a callsite's interest cached
//! without it (seen as a flaky empty log).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Record, database, enqueue_sql, outcome, wait_for_state, with_worker, worker};

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn decode_errors_keep_the_path_but_never_the_value() {
    const SECRET: &str = "hunter2-s3cr3t";
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = database().await;
    let pool = db.pool();
    let wrong_type = enqueue_sql(pool, "record", &format!(r#"{{"n": "{SECRET}"}}"#)).await;
    let wrong_nested = enqueue_sql(
        pool,
        "record",
        &format!(r#"{{"n": [{{"password": "{SECRET}"}}]}}"#),
    )
    .await;
    with_worker(
        worker(pool).register::<Record>(),
        wait_for_state(pool, "failed", 2, Duration::from_secs(10)),
    )
    .await;

    let (_, _, errors) = outcome(pool, wrong_type).await;
    let message = errors[0]["message"].as_str().expect("message");
    assert_eq!(errors[0]["kind"], "undecodable_args");
    assert!(
        message.contains("at n: invalid type: string, expected i64"),
        "{message}"
    );
    let (_, _, nested) = outcome(pool, wrong_nested).await;
    let nested = nested[0]["message"].as_str().expect("message").to_owned();
    assert!(nested.contains("at n: invalid type: sequence"), "{nested}");

    let everything: String =
        sqlx::query_scalar("SELECT string_agg(errors::text, ' ') FROM skiplock.jobs")
            .fetch_one(pool)
            .await
            .expect("errors");
    assert!(!everything.contains(SECRET), "{everything}");
    let logged = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(
        logged.contains("undecodable") || logged.contains("do not decode"),
        "{logged}"
    );
    assert!(!logged.contains(SECRET), "{logged}");
}
