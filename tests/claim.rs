//! The claim: per-job decoding, `attempted_by`'s bound, and jobs nobody can run (redacted
//! decode errors are in `claim_logs.rs`, a binary of their own: they read the log).

mod common;

use std::time::Duration;

use common::{
    Record, database, enqueue_sql, eventually, outcome, start, wait_for_state, with_worker, worker,
};

#[tokio::test]
async fn an_undecodable_job_fails_alone_and_its_batch_runs_once() {
    let db = database().await;
    let pool = db.pool();
    let mut good = Vec::new();
    for n in 0..5 {
        good.push(enqueue_sql(pool, "record", &format!(r#"{{"n": {n}}}"#)).await);
    }
    // Valid jsonb, but not JSON serde_json reads: deeper than its recursion limit, a number
    // beyond f64, a 400-digit integer.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let huge = format!(r#"{{"n": 1{}}}"#, "0".repeat(399));
    let bad_args = [
        enqueue_sql(pool, "record", &deep).await,
        enqueue_sql(pool, "record", r#"{"n": 1e400}"#).await,
        enqueue_sql(pool, "record", &huge).await,
    ];
    // Other columns a foreign writer can make unreadable.
    let infinite: i64 = sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, args, created_at) VALUES ('record', '{\"n\": 7}', 'infinity')
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("insert");
    let null_tag: i64 = sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, args, tags) VALUES ('record', '{\"n\": 8}', '{{a,NULL},{b,c}}')
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("insert");

    // All ten in one claim.
    with_worker(
        worker(pool).register::<Record>().queue("default", 20),
        async {
            wait_for_state(pool, "completed", 6, Duration::from_secs(10)).await;
            wait_for_state(pool, "failed", 4, Duration::from_secs(10)).await;
        },
    )
    .await;

    for id in good.iter().copied().chain([null_tag]) {
        let (state, attempt, errors) = outcome(pool, id).await;
        assert_eq!((state.as_str(), attempt), ("completed", 1), "job {id}");
        assert_eq!(errors, serde_json::json!([]), "job {id}");
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("ledger");
    assert_eq!(runs, 6, "each good job ran exactly once");
    for id in bad_args {
        let (state, attempt, errors) = outcome(pool, id).await;
        assert_eq!((state.as_str(), attempt), ("failed", 1), "job {id}");
        assert_eq!(errors[0]["kind"], "undecodable_args", "job {id}");
        let message = errors[0]["message"].as_str().expect("message");
        assert!(
            message.contains("arguments do not decode as a \"record\" job at "),
            "{message}"
        );
    }
    let (state, attempt, errors) = outcome(pool, infinite).await;
    assert_eq!((state.as_str(), attempt), ("failed", 1));
    assert_eq!(errors[0]["kind"], "undecodable_row");
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("created_at")
    );
}

#[tokio::test]
async fn attempted_by_keeps_the_last_hundred_workers() {
    let db = database().await;
    let pool = db.pool();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, args, attempted_by)
         VALUES ('record', '{\"n\": 1}', ARRAY(SELECT 'w' || i FROM generate_series(1, 150) AS i))
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("insert");
    with_worker(
        worker(pool).register::<Record>().id("the-claimer"),
        wait_for_state(pool, "completed", 1, Duration::from_secs(10)),
    )
    .await;

    let row = common::job(pool, id).await;
    assert_eq!(row.attempted_by.len(), 100);
    assert_eq!(row.attempted_by[0], "w52");
    assert_eq!(row.attempted_by[98], "w150");
    assert_eq!(row.attempted_by[99], "the-claimer");
    // The worker of the attempt is still the last element, as `errors[].worker` reads it.
    let last: String = sqlx::query_scalar(
        "SELECT attempted_by[cardinality(attempted_by)] FROM skiplock.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("last");
    assert_eq!(last, "the-claimer");
}

#[tokio::test]
async fn jobs_no_live_worker_runs_are_reported() {
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql(
        "INSERT INTO skiplock.jobs (kind, queue, run_at)
         SELECT 'ghost', 'default', now() - interval '1 hour' FROM generate_series(1, 3);
         -- Too young to count.
         INSERT INTO skiplock.jobs (kind, queue, run_at) VALUES ('young_ghost', 'default', now());
         -- A queue nobody serves.
         INSERT INTO skiplock.jobs (kind, queue, args, run_at)
         VALUES ('record', 'nobody_serves', '{\"n\": 1}', now() - interval '2 hours');",
    )
    .execute(pool)
    .await
    .expect("insert");
    // A worker of `default` registers its kinds with its first heartbeat.
    let running = start(worker(pool).register::<Record>());
    let kinds: Vec<String> = eventually(Duration::from_secs(10), "a worker row", || async {
        sqlx::query_scalar("SELECT kinds FROM skiplock.workers")
            .fetch_optional(pool)
            .await
            .expect("workers")
            .flatten()
    })
    .await;
    assert_eq!(kinds, ["record"]);
    // `record` jobs in `default` are runnable, whatever their age.
    enqueue_sql(pool, "record", r#"{"n": 2}"#).await;

    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT queue, kind, jobs FROM skiplock.unrunnable_jobs()")
            .fetch_all(pool)
            .await
            .expect("unrunnable");
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        rows,
        [
            ("default".to_owned(), "ghost".to_owned(), 3),
            ("nobody_serves".to_owned(), "record".to_owned(), 1),
        ]
    );
    // With no worker left and no grace, the young job counts too.
    let all: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT queue, kind, jobs FROM skiplock.unrunnable_jobs(interval '0')")
            .fetch_all(pool)
            .await
            .expect("unrunnable");
    assert!(
        all.contains(&("default".to_owned(), "young_ghost".to_owned(), 1)),
        "{all:?}"
    );
}
