//! The SQL worker protocol (migration 0018), driven from SQL alone as a worker in another
//! language would, and side by side with a Rust worker.

mod common;

use std::time::Duration;

use common::{Record, database, start, worker};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// One claimed job: id, lease token.
type Claimed = (i64, i64);

async fn claim(pool: &PgPool, worker: &str, max: i32, lease_secs: f64) -> Vec<Claimed> {
    sqlx::query_as(
        "SELECT id, lease_token FROM skiplock.claim($1, '{default}', '{record}', $2, $3) ORDER BY id",
    )
    .bind(worker)
    .bind(max)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
    .expect("claim")
}

async fn row(pool: &PgPool, id: i64) -> (String, i32, Value, Option<Value>, Option<Value>, f64) {
    sqlx::query_as(
        "SELECT state::text, attempt, errors, progress, result,
                extract(epoch FROM run_at - now())::float8
         FROM skiplock.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("row")
}

async fn enqueue(pool: &PgPool, n: i64) -> i64 {
    sqlx::query_scalar("SELECT skiplock.enqueue('record', jsonb_build_object('n', $1::bigint))")
        .bind(n)
        .fetch_one(pool)
        .await
        .expect("enqueue")
}

#[tokio::test]
async fn claim_complete_fail_snooze_and_progress_from_sql() {
    let db = database().await;
    let pool = db.pool();
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(enqueue(pool, n).await);
        }
        ids
    };
    let claimed = claim(pool, "py-1", 4, 30.0).await;
    assert_eq!(claimed.iter().map(|c| c.0).collect::<Vec<_>>(), ids[..4]);

    // Heartbeat: every lease extended, no cancel requested.
    let (job_ids, tokens): (Vec<i64>, Vec<i64>) = claimed.iter().copied().unzip();
    let beats: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT id, cancel_requested FROM skiplock.heartbeat('py-1', $1, $2, 60) ORDER BY id",
    )
    .bind(&job_ids)
    .bind(&tokens)
    .fetch_all(pool)
    .await
    .expect("heartbeat");
    assert_eq!(
        beats,
        job_ids.iter().map(|&id| (id, false)).collect::<Vec<_>>()
    );

    let call = |sql: &'static str, (id, token): Claimed| async move {
        sqlx::query_scalar::<_, Option<String>>(sql)
            .bind(id)
            .bind(token)
            .fetch_one(pool)
            .await
            .expect(sql)
    };
    // Progress, then a result.
    assert_eq!(
        call(
            "SELECT skiplock.set_progress($1, $2, '{\"done\": 1, \"total\": 2}')::text",
            claimed[0]
        )
        .await,
        Some("true".to_owned())
    );
    assert_eq!(
        call("SELECT skiplock.complete($1, $2, '42')::text", claimed[0]).await,
        Some("true".to_owned())
    );
    let (state, attempt, _, progress, result, _) = row(pool, claimed[0].0).await;
    assert_eq!((state.as_str(), attempt), ("completed", 1));
    assert_eq!(progress, Some(json!({"done": 1, "total": 2})));
    assert_eq!(result, Some(json!(42)));

    // A failure with attempts left is retried after the default backoff (2 s ± 20%).
    assert_eq!(
        call(
            "SELECT skiplock.fail($1, $2, 'upstream timed out')::text",
            claimed[1]
        )
        .await,
        Some("retryable".to_owned())
    );
    let (state, _, errors, _, _, wait) = row(pool, claimed[1].0).await;
    assert_eq!(state, "retryable");
    assert!((1.5..=2.5).contains(&wait), "backoff {wait} s");
    assert_eq!(errors[0]["message"], "upstream timed out");
    assert_eq!(errors[0]["kind"], "error");
    assert_eq!(errors[0]["worker"], "py-1");

    // A permanent failure ends it; a snooze gives the attempt back.
    assert_eq!(
        call(
            "SELECT skiplock.fail($1, $2, 'bad input', permanent => true)::text",
            claimed[2]
        )
        .await,
        Some("failed".to_owned())
    );
    assert_eq!(row(pool, claimed[2].0).await.0, "failed");
    assert_eq!(
        call("SELECT skiplock.snooze($1, $2, 60)::text", claimed[3]).await,
        Some("true".to_owned())
    );
    let (state, attempt, _, _, _, wait) = row(pool, claimed[3].0).await;
    assert_eq!((state.as_str(), attempt), ("scheduled", 0));
    assert!(wait > 50.0, "snoozed for {wait} s");

    // The worker is visible like a Rust one, and its outcomes are counted.
    let workers = skiplock::inspect::workers(pool).await.expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "py-1");
    let stats: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, sum(jobs)::bigint FROM skiplock.job_stats GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("stats");
    assert_eq!(
        stats,
        [
            ("completed".to_owned(), 1),
            ("failed".to_owned(), 1),
            ("retried".to_owned(), 1)
        ]
    );

    // A paused queue gives nothing; the last job waits for the resume.
    sqlx::query("SELECT skiplock.pause_queue('default')")
        .execute(pool)
        .await
        .expect("pause");
    assert!(claim(pool, "py-1", 10, 30.0).await.is_empty());
    sqlx::query("SELECT skiplock.resume_queue('default')")
        .execute(pool)
        .await
        .expect("resume");
    assert_eq!(claim(pool, "py-1", 10, 30.0).await.len(), 1);

    // Arguments out of range are refused, not clamped.
    for bad in [
        "SELECT * FROM skiplock.claim('', '{default}', '{record}')",
        "SELECT * FROM skiplock.claim('w', '{default}', '{record}', 0)",
        "SELECT * FROM skiplock.claim('w', '{default}', '{record}', 1, 0)",
        "SELECT * FROM skiplock.claim('w', '{default}', NULL)",
    ] {
        assert!(sqlx::query(bad).execute(pool).await.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_stale_lease_token_changes_nothing() {
    let db = database().await;
    let pool = db.pool();
    let id = enqueue(pool, 1).await;
    let first = claim(pool, "py-a", 1, 30.0).await;
    assert_eq!(first.len(), 1);
    // Its lease runs out and the job is taken back, as the rescuer does.
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'available', lease_token = NULL, lease_expires_at = NULL
         WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .expect("take back");
    let second = claim(pool, "py-b", 1, 30.0).await;
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].1, second[0].1, "a fresh token per claim");

    let stale = first[0].1;
    let checks: (bool, bool, bool, Option<String>, i64) = sqlx::query_as(
        "SELECT skiplock.complete($1, $2, '\"stale\"'),
                skiplock.set_progress($1, $2, '{\"percent\": 99}'),
                skiplock.snooze($1, $2, 10),
                skiplock.fail($1, $2, 'stale')::text,
                (SELECT count(*) FROM skiplock.heartbeat('py-a', ARRAY[$1::bigint], ARRAY[$2::bigint]))",
    )
    .bind(id)
    .bind(stale)
    .fetch_one(pool)
    .await
    .expect("stale calls");
    assert_eq!(checks, (false, false, false, None, 0));
    let (state, attempt, errors, progress, result, _) = row(pool, id).await;
    assert_eq!((state.as_str(), attempt), ("running", 2));
    assert_eq!((errors, progress, result), (json!([]), None, None));

    let done: bool = sqlx::query_scalar("SELECT skiplock.complete($1, $2)")
        .bind(id)
        .bind(second[0].1)
        .fetch_one(pool)
        .await
        .expect("complete");
    assert!(done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_worker_and_a_rust_worker_share_a_queue_and_run_each_job_once() {
    let db = database().await;
    let pool = db.pool();
    let ids = common::enqueue_records(pool, "default", 2_000).await;
    let results = skiplock::results::Results::new(pool.clone());
    let last = *ids.last().expect("ids");
    let awaited = {
        let results = results.clone();
        tokio::spawn(async move { results.wait::<i64>(last, Duration::from_secs(120)).await })
    };

    let rust = start(
        worker(pool)
            .id("rust")
            .queue("default", 8)
            .register::<Record>(),
    );
    // The "other language": claim 20 at a time, record the run, complete with the same output.
    let sql_worker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ran = 0_usize;
            loop {
                let batch: Vec<(i64, i64, Value)> = sqlx::query_as(
                    "SELECT id, lease_token, args FROM skiplock.claim('sql', '{default}', '{record}', 20, 30)",
                )
                .fetch_all(&pool)
                .await
                .expect("claim");
                if batch.is_empty() {
                    let left: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM skiplock.jobs WHERE state IN ('available', 'running')",
                    )
                    .fetch_one(&pool)
                    .await
                    .expect("left");
                    if left == 0 {
                        return ran;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                for (id, token, args) in batch {
                    sqlx::query(
                        "INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, 'record', 1, 'sql')",
                    )
                    .bind(id)
                    .execute(&pool)
                    .await
                    .expect("ledger");
                    let n = args["n"].as_i64().expect("n");
                    let done: bool = sqlx::query_scalar("SELECT skiplock.complete($1, $2, $3)")
                        .bind(id)
                        .bind(token)
                        .bind(json!(n * 2))
                        .fetch_one(&pool)
                        .await
                        .expect("complete");
                    assert!(done, "job {id} was taken from the SQL worker");
                    ran += 1;
                }
            }
        })
    };
    let by_sql = sql_worker.await.expect("sql worker");
    common::wait_for_state(pool, "completed", 2_000, Duration::from_secs(120)).await;
    rust.shutdown().await.expect("shutdown");

    let runs = common::runs_per_job(pool).await;
    assert_eq!(runs.len(), 2_000, "every job ran");
    assert!(runs.iter().all(|(_, n)| *n == 1), "a job ran twice");
    assert!(
        by_sql > 0 && by_sql < 2_000,
        "the work was shared: {by_sql} by SQL"
    );
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM skiplock.jobs WHERE result <> to_jsonb((args->>'n')::bigint * 2)",
    )
    .fetch_one(pool)
    .await
    .expect("results");
    assert_eq!(wrong, 0);
    let outcome = awaited.await.expect("join").expect("wait");
    assert!(matches!(outcome, skiplock::results::Outcome::Completed(_)));
}

#[tokio::test]
async fn fail_and_snooze_honour_cancel_requests_and_unique_keys_like_the_rust_worker() {
    let db = database().await;
    let pool = db.pool();
    let cancelled = enqueue(pool, 1).await;
    let unique: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', '{\"n\": 2}', unique_key => 'sync:7',
                                 unique_states => '{available,scheduled,retryable}')",
    )
    .fetch_one(pool)
    .await
    .expect("unique enqueue");
    let snoozed = enqueue(pool, 3).await;
    let claimed = claim(pool, "py-1", 3, 30.0).await;
    assert_eq!(claimed.len(), 3);
    let token = |id: i64| claimed.iter().find(|c| c.0 == id).expect("claimed").1;

    // Asked to cancel while running: a failure is recorded as the cancel, not a retry.
    sqlx::query("SELECT skiplock.cancel($1)")
        .bind(cancelled)
        .execute(pool)
        .await
        .expect("cancel");
    let state: String = sqlx::query_scalar("SELECT skiplock.fail($1, $2, 'stopped')::text")
        .bind(cancelled)
        .bind(token(cancelled))
        .fetch_one(pool)
        .await
        .expect("fail");
    assert_eq!(state, "cancelled");

    // A duplicate took the unique key while it ran: it cannot go back to retrying.
    let duplicate: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', '{\"n\": 2}', unique_key => 'sync:7',
                                 unique_states => '{available,scheduled,retryable}')",
    )
    .fetch_one(pool)
    .await
    .expect("duplicate");
    assert_ne!(duplicate, unique);
    let state: String = sqlx::query_scalar("SELECT skiplock.fail($1, $2, 'flaky')::text")
        .bind(unique)
        .bind(token(unique))
        .fetch_one(pool)
        .await
        .expect("fail a superseded job");
    assert_eq!(state, "cancelled");
    let (_, _, errors, _, _, _) = row(pool, unique).await;
    assert_eq!(errors[0]["kind"], "superseded");

    // A snooze of zero makes the job available at once (and wakes its workers).
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .expect("listener");
    listener.listen("skiplock_wake").await.expect("listen");
    let done: bool = sqlx::query_scalar("SELECT skiplock.snooze($1, $2, 0)")
        .bind(snoozed)
        .bind(token(snoozed))
        .fetch_one(pool)
        .await
        .expect("snooze");
    assert!(done);
    assert_eq!(row(pool, snoozed).await.0, "available");
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a wake-up")
        .expect("notification");
    assert_eq!(woken.payload(), "default");

    // A heartbeat cannot push a lease years ahead.
    let reclaimed = claim(pool, "py-1", 1, 30.0).await;
    let beat: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM skiplock.heartbeat('py-1', ARRAY[$1::bigint], ARRAY[$2::bigint], 1e9)",
    )
    .bind(reclaimed[0].0)
    .bind(reclaimed[0].1)
    .fetch_one(pool)
    .await
    .expect("heartbeat");
    assert_eq!(beat, 1);
    let lease_days: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_expires_at - now())::float8 / 86400 FROM skiplock.jobs WHERE id = $1",
    )
    .bind(reclaimed[0].0)
    .fetch_one(pool)
    .await
    .expect("lease");
    assert!(lease_days <= 1.0, "lease {lease_days} days");
}

/// An outcome recorded in SQL frees a slot of a concurrency limit at once: complete, fail and
/// snooze wake the limited queue's workers (`skiplock_wake`), as the Rust completer's batches
/// do, rather than leave them to their next poll. Outcomes in an unlimited queue wake nobody.
#[tokio::test]
async fn sql_outcomes_in_a_limited_queue_wake_its_workers() {
    let db = database().await;
    let pool = db.pool();
    for n in 0..4 {
        enqueue(pool, n).await;
    }
    let claimed = claim(pool, "py-1", 4, 30.0).await;
    assert_eq!(claimed.len(), 4);
    let mut listener = PgListener::connect_with(pool).await.expect("listener");
    listener.listen("skiplock_wake").await.expect("listen");
    let (id, token) = claimed[0];
    sqlx::query("SELECT skiplock.complete($1, $2)")
        .bind(id)
        .bind(token)
        .execute(pool)
        .await
        .expect("complete");
    assert_eq!(woken(&mut listener).await, None, "no limit, no wake-up");

    sqlx::query("SELECT skiplock.set_limit(queue => 'default', max_running => 2)")
        .execute(pool)
        .await
        .expect("set limit");
    let (id, token) = claimed[1];
    sqlx::query("SELECT skiplock.complete($1, $2)")
        .bind(id)
        .bind(token)
        .execute(pool)
        .await
        .expect("complete");
    assert_eq!(woken(&mut listener).await.as_deref(), Some("default"));
    let (id, token) = claimed[2];
    sqlx::query("SELECT skiplock.fail($1, $2, 'boom')")
        .bind(id)
        .bind(token)
        .execute(pool)
        .await
        .expect("fail");
    assert_eq!(woken(&mut listener).await.as_deref(), Some("default"));
    let (id, token) = claimed[3];
    sqlx::query("SELECT skiplock.snooze($1, $2, 60)")
        .bind(id)
        .bind(token)
        .execute(pool)
        .await
        .expect("snooze");
    assert_eq!(woken(&mut listener).await.as_deref(), Some("default"));
}

/// The payload of the next notification within 1.5 s, if one comes.
async fn woken(listener: &mut PgListener) -> Option<String> {
    let next = tokio::time::timeout(Duration::from_millis(1500), listener.recv()).await;
    next.ok()
        .map(|received| received.expect("notification").payload().to_owned())
}
