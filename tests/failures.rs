//! Failing jobs: retries with backoff, permanent errors, panics, undecodable arguments.

mod common;

use std::time::Duration;

use common::{Fail, Record, database, job, start, wait_for_state, with_worker, worker};
use serde_json::{Value, json};
use skiplock::{EnqueueOptions, JobState, NewJob};

fn error_kinds(errors: &[skiplock::AttemptError]) -> Vec<&str> {
    errors.iter().map(|entry| entry.kind.as_str()).collect()
}

#[tokio::test]
async fn retryable_errors_back_off_then_fail_after_max_attempts() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Fail>());
    let id = skiplock::enqueue(
        pool,
        &Fail {
            mode: "retryable".into(),
        },
    )
    .await
    .expect("enqueue");

    wait_for_state(pool, "failed", 1, Duration::from_secs(15)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.attempt, 3, "Fail::MAX_ATTEMPTS attempts");
    assert!(row.finished_at.is_some());
    assert_eq!(row.result, None);
    assert_eq!(error_kinds(&row.errors), ["error", "error", "error"]);
    let first = &row.errors[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(first.message, "upstream timed out");
    assert!(first.at.is_some() && first.worker.is_some());

    // Each retry waited for its backoff (300 ms) after the failure.
    let starts: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM ledger WHERE job_id = $1 ORDER BY attempt")
            .bind(id)
            .fetch_all(pool)
            .await
            .expect("ledger");
    assert_eq!(starts.len(), 3);
    for pair in starts.windows(2) {
        let gap = (pair[1] - pair[0]).to_std().unwrap_or_default();
        assert!(gap >= Duration::from_millis(300), "retried after {gap:?}");
    }
}

#[tokio::test]
async fn a_retry_that_succeeds_completes_the_job() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Fail>());
    let id = skiplock::enqueue(
        pool,
        &Fail {
            mode: "once".into(),
        },
    )
    .await
    .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.attempt, 2);
    assert_eq!(error_kinds(&row.errors), ["error"]);
    assert_eq!(row.result, Some(Value::Null));
}

#[tokio::test]
async fn permanent_error_fails_at_once() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Fail>());
    let id = skiplock::enqueue(
        pool,
        &Fail {
            mode: "permanent".into(),
        },
    )
    .await
    .expect("enqueue");
    wait_for_state(pool, "failed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.attempt, 1);
    assert_eq!(error_kinds(&row.errors), ["permanent"]);
    assert_eq!(row.errors[0].message, "bad input");
}

#[tokio::test]
async fn panics_are_recorded_and_the_worker_keeps_working() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Fail>().register::<Record>());
    let id = skiplock::enqueue_with(
        pool,
        &Fail {
            mode: "panic".into(),
        },
        EnqueueOptions::new().max_attempts(2),
    )
    .await
    .expect("enqueue");
    wait_for_state(pool, "failed", 1, Duration::from_secs(10)).await;

    // The same worker still runs jobs after two panics.
    let after = skiplock::enqueue(pool, &Record { n: 1 })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.attempt, 2);
    assert_eq!(error_kinds(&row.errors), ["panic", "panic"]);
    assert_eq!(row.errors[0].message, "handler panicked: handler blew up");
    assert_eq!(job(pool, after).await.state, JobState::Completed);
}

#[tokio::test]
async fn undecodable_args_fail_once_with_a_clear_error() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Record>());
    let id = skiplock::enqueue_new(
        pool,
        &NewJob::untyped(
            "record",
            json!({ "n": "not a number" }),
            EnqueueOptions::new(),
        ),
    )
    .await
    .expect("enqueue");
    wait_for_state(pool, "failed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.attempt, 1, "no crash loop: one attempt only");
    assert_eq!(error_kinds(&row.errors), ["undecodable_args"]);
    let message = &row.errors[0].message;
    assert!(
        message.contains("\"record\"") && message.contains("invalid type"),
        "{message}"
    );
}

#[tokio::test]
async fn kinds_a_worker_does_not_know_wait_for_one_that_does() {
    let db = database().await;
    let pool = db.pool();
    // This worker only knows `fail`: it must leave the `record` job alone, not fail it.
    let other = start(worker(pool).register::<Fail>());
    let id = skiplock::enqueue(pool, &Record { n: 4 })
        .await
        .expect("enqueue");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let row = job(pool, id).await;
    assert_eq!((row.state, row.attempt), (JobState::Available, 0));

    let knows = start(worker(pool).register::<Record>());
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    other.shutdown().await.expect("shutdown");
    knows.shutdown().await.expect("shutdown");
    assert_eq!(job(pool, id).await.result, Some(json!(8)));
}

/// Succeeds with an output PostgreSQL cannot store (jsonb has no NUL character).
#[derive(serde::Serialize, serde::Deserialize)]
struct NulOutput;

impl skiplock::Job for NulOutput {
    const KIND: &'static str = "nul_output";
}

impl skiplock::Handler<sqlx::PgPool> for NulOutput {
    type Output = String;

    async fn handle(
        self,
        _: skiplock::JobContext<sqlx::PgPool>,
    ) -> Result<String, skiplock::JobError> {
        Ok("a\0b".to_owned())
    }
}

#[tokio::test]
async fn an_outcome_the_database_cannot_store_fails_alone_without_blocking_its_batch() {
    let db = database().await;
    let pool = db.pool();
    // Enqueued before the worker starts, so that they finish together and share batches.
    let mut jobs = vec![NewJob::new(&NulOutput).expect("job")];
    jobs.extend((0..40).map(|n| NewJob::new(&Record { n }).expect("job")));
    let ids = skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
    with_worker(
        worker(pool)
            .queue("default", 41)
            .register::<NulOutput>()
            .register::<Record>(),
        async {
            wait_for_state(pool, "completed", 40, Duration::from_secs(10)).await;
            wait_for_state(pool, "failed", 1, Duration::from_secs(10)).await;
        },
    )
    .await;
    let row = job(pool, ids[0]).await;
    assert_eq!(error_kinds(&row.errors), ["unrecordable_outcome"]);
}
