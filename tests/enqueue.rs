//! Enqueueing: transactions, options, batches, validation and the SQL function.

mod common;

use std::time::Duration;

use common::{Record, database, job, start, wait_for_state, worker};
use serde_json::json;
use skiplock::{EnqueueError, EnqueueOptions, JobState, NewJob};
use sqlx::Row;

#[tokio::test]
async fn rolled_back_enqueue_leaves_no_job() {
    let db = database().await;
    let mut tx = db.pool().begin().await.expect("begin");
    let id = skiplock::enqueue(&mut *tx, &Record { n: 1 })
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    assert_eq!(skiplock::get_job(db.pool(), id).await.expect("get"), None);
    assert_eq!(common::count_state(db.pool(), "available").await, 0);
}

#[tokio::test]
async fn job_in_open_transaction_is_invisible_until_commit_then_runs() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Record>());

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY)")
        .execute(&mut *tx)
        .await
        .expect("application write");
    let id = skiplock::enqueue(&mut *tx, &Record { n: 21 })
        .await
        .expect("enqueue");

    // The worker polls every 200 ms and is woken by NOTIFY: give it ample chances to see the
    // uncommitted row. It must not.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("ledger");
    assert_eq!(
        seen, 0,
        "a worker ran a job from an uncommitted transaction"
    );

    tx.commit().await.expect("commit");
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    assert_eq!(row.state, JobState::Completed);
    assert_eq!(row.result, Some(json!(42)));
    assert_eq!(row.attempt, 1);
    assert!(row.finished_at.is_some());
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .expect("orders table exists");
    assert_eq!(orders, 0);
}

#[tokio::test]
async fn options_override_kind_defaults() {
    let db = database().await;
    let pool = db.pool();
    let options = EnqueueOptions::new()
        .queue("reports")
        .priority(-3)
        .max_attempts(7)
        .delay(Duration::from_secs(3600))
        .tag("nightly")
        .tag("finance");
    let id = skiplock::enqueue_with(pool, &Record { n: 1 }, options)
        .await
        .expect("enqueue");

    let row = job(pool, id).await;
    assert_eq!(row.kind, "record");
    assert_eq!(row.queue, "reports");
    assert_eq!(row.priority, -3);
    assert_eq!(row.max_attempts, 7);
    assert_eq!(row.state, JobState::Scheduled);
    assert_eq!(row.tags, vec!["nightly".to_owned(), "finance".to_owned()]);
    assert_eq!(row.args, json!({ "n": 1 }));
    let delay = (row.run_at - row.created_at).num_seconds();
    assert_eq!(delay, 3600, "run_at is created_at + delay in database time");

    let defaults = job(
        pool,
        skiplock::enqueue(pool, &Record { n: 2 })
            .await
            .expect("enqueue"),
    )
    .await;
    assert_eq!(defaults.queue, skiplock::DEFAULT_QUEUE);
    assert_eq!(defaults.priority, 0);
    assert_eq!(defaults.max_attempts, skiplock::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(defaults.state, JobState::Available);
    assert!(defaults.tags.is_empty());
}

#[tokio::test]
async fn invalid_options_are_refused_before_reaching_the_database() {
    let db = database().await;
    for options in [
        EnqueueOptions::new().queue(""),
        EnqueueOptions::new().queue("q".repeat(129)),
        EnqueueOptions::new().max_attempts(0),
    ] {
        let error = skiplock::enqueue_with(db.pool(), &Record { n: 1 }, options)
            .await
            .expect_err("invalid options");
        assert!(matches!(error, EnqueueError::Invalid(_)), "{error:?}");
    }
    let error = skiplock::enqueue_many(
        db.pool(),
        [
            NewJob::new(&Record { n: 1 }).expect("job"),
            NewJob::untyped("", json!({}), EnqueueOptions::new()),
        ],
    )
    .await
    .expect_err("empty kind");
    assert!(matches!(error, EnqueueError::Invalid(_)), "{error:?}");
    assert_eq!(
        common::count_state(db.pool(), "available").await,
        0,
        "all or nothing"
    );
}

#[tokio::test]
async fn enqueue_many_inserts_ten_thousand_jobs_in_one_call_in_order() {
    let db = database().await;
    let pool = db.pool();
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|n| {
            let options = match n % 3 {
                0 => EnqueueOptions::new(),
                1 => EnqueueOptions::new()
                    .queue("other")
                    .priority(5)
                    .tag("t1")
                    .tag("t2"),
                _ => EnqueueOptions::new().delay(Duration::from_secs(60)),
            };
            NewJob::with_options(&Record { n }, options)
        })
        .collect::<Result<_, _>>()
        .expect("serialize");

    let ids = skiplock::enqueue_many(pool, jobs)
        .await
        .expect("enqueue_many");
    assert_eq!(ids.len(), 10_000);

    // Every id maps to the job at the same position of the input.
    let rows = sqlx::query(
        "SELECT id, (args->>'n')::bigint AS n, queue, priority, state::text AS state, tags,
                run_at > created_at AS delayed
         FROM skiplock.jobs ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 10_000);
    for (position, (row, id)) in rows.iter().zip(&ids).enumerate() {
        let n = position as i64;
        assert_eq!(row.get::<i64, _>("id"), *id);
        assert_eq!(row.get::<i64, _>("n"), n);
        let (queue, priority, state, tags, delayed) = match n % 3 {
            0 => ("default", 0, "available", vec![], false),
            1 => (
                "other",
                5,
                "available",
                vec!["t1".to_owned(), "t2".to_owned()],
                false,
            ),
            _ => ("default", 0, "scheduled", vec![], true),
        };
        assert_eq!(row.get::<String, _>("queue"), queue);
        assert_eq!(row.get::<i16, _>("priority"), priority);
        assert_eq!(row.get::<String, _>("state"), state);
        assert_eq!(row.get::<Vec<String>, _>("tags"), tags);
        assert_eq!(row.get::<bool, _>("delayed"), delayed);
    }

    assert!(
        skiplock::enqueue_many(pool, [])
            .await
            .expect("empty batch")
            .is_empty()
    );
}

#[tokio::test]
async fn sql_enqueue_in_a_plain_transaction_wakes_an_idle_worker_at_once() {
    let db = database().await;
    let pool = db.pool();
    // Polling every 30 s (the first, empty claim happens at start): only a NOTIFY can explain
    // a pickup within 2 s. (The start is stamped by the handler's ledger insert, which may wait
    // for a new connection of the test's pool on a loaded machine: a 100 ms bound failed 3 runs
    // in 8 there while proving nothing more.)
    let running = start(
        worker(pool)
            .poll_interval(Duration::from_secs(30))
            .register::<Record>(),
    );
    // Wait until the worker LISTENs, and a little more for its first (empty) claim.
    common::eventually(Duration::from_secs(10), "the worker to LISTEN", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE '%LISTEN%skiplock_wake%'
               AND pid <> pg_backend_pid()",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        (listening > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    let id: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', '{\"n\": 5}', queue => 'default', priority => 1)",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("SQL enqueue");
    let committed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *conn)
            .await
            .expect("now");
    sqlx::raw_sql("COMMIT")
        .execute(&mut *conn)
        .await
        .expect("commit");

    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    running.shutdown().await.expect("shutdown");
    let started_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM ledger WHERE job_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("ledger");
    let pickup = (started_at - committed_at).to_std().unwrap_or_default();
    assert!(
        pickup < Duration::from_secs(2),
        "picked up after {pickup:?}"
    );

    let row = job(pool, id).await;
    assert_eq!(row.priority, 1);
    assert_eq!(row.result, Some(json!(10)));
}

#[tokio::test]
async fn sql_enqueue_defaults_and_rollback() {
    let db = database().await;
    let pool = db.pool();
    let id: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('record', '{\"n\": 1}')")
        .fetch_one(pool)
        .await
        .expect("SQL enqueue");
    let row = job(pool, id).await;
    assert_eq!((row.queue.as_str(), row.priority), ("default", 0));
    assert_eq!(
        row.max_attempts,
        skiplock::DEFAULT_MAX_ATTEMPTS,
        "SQL and Rust defaults agree"
    );
    assert_eq!(row.state, JobState::Available);

    let scheduled: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', '{}', run_at => now() + interval '1 day', tags => '{a}')",
    )
    .fetch_one(pool)
    .await
    .expect("SQL enqueue");
    let row = job(pool, scheduled).await;
    assert_eq!(row.state, JobState::Scheduled);
    assert_eq!(row.tags, vec!["a".to_owned()]);

    let mut tx = pool.begin().await.expect("begin");
    let gone: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('record', '{}')")
        .fetch_one(&mut *tx)
        .await
        .expect("SQL enqueue");
    tx.rollback().await.expect("rollback");
    assert!(skiplock::get_job(pool, gone).await.expect("get").is_none());
}

#[tokio::test]
async fn one_wake_up_per_transaction_and_queue_carrying_only_the_queue_name() {
    let db = database().await;
    let pool = db.pool();
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .expect("listener");
    listener.listen("skiplock_wake").await.expect("listen");

    let mut tx = pool.begin().await.expect("begin");
    let many = (0..1_000).map(|n| {
        let queue = if n % 2 == 0 { "a" } else { "b" };
        NewJob::with_options(&Record { n }, EnqueueOptions::new().queue(queue)).expect("job")
    });
    skiplock::enqueue_many(&mut *tx, many)
        .await
        .expect("enqueue_many");
    for n in 0..10 {
        skiplock::enqueue_with(&mut *tx, &Record { n }, EnqueueOptions::new().queue("a"))
            .await
            .expect("enqueue");
    }
    sqlx::query("SELECT skiplock.enqueue('record', '{}', queue => 'b')")
        .execute(&mut *tx)
        .await
        .expect("SQL enqueue");
    // Scheduled jobs are not runnable yet: no wake-up for queue c.
    skiplock::enqueue_with(
        &mut *tx,
        &Record { n: 0 },
        EnqueueOptions::new()
            .queue("c")
            .delay(Duration::from_secs(60)),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");

    let mut payloads = Vec::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
    {
        payloads.push(notification.payload().to_owned());
    }
    payloads.sort();
    assert_eq!(payloads, ["a", "b"]);
}

#[tokio::test]
async fn every_way_to_enqueue_wakes_the_queue_it_enqueued_on() {
    let db = database().await;
    let pool = db.pool();
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .expect("listener");
    listener.listen("skiplock_wake").await.expect("listen");

    // Each in its own transaction and queue, so each payload proves one path sent it.
    skiplock::enqueue_with(
        pool,
        &Record { n: 1 },
        EnqueueOptions::new().queue("single"),
    )
    .await
    .expect("enqueue");
    let job =
        NewJob::with_options(&Record { n: 2 }, EnqueueOptions::new().queue("many")).expect("job");
    skiplock::enqueue_many(pool, [job])
        .await
        .expect("enqueue_many");
    sqlx::query("SELECT skiplock.enqueue('record', '{}', queue => 'sql')")
        .execute(pool)
        .await
        .expect("SQL enqueue");
    let unique = EnqueueOptions::new()
        .queue("unique")
        .unique(skiplock::Unique::key("only-one"));
    skiplock::enqueue_with(pool, &Record { n: 3 }, unique)
        .await
        .expect("unique enqueue");

    let mut payloads = Vec::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
    {
        payloads.push(notification.payload().to_owned());
    }
    payloads.sort();
    assert_eq!(payloads, ["many", "single", "sql", "unique"]);
}
