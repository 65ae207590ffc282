//! Size limits and the range of `run_at`, enforced by the Rust enqueue before sending and by the
//! database whatever inserts the job.

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use skiplock::{EnqueueError, EnqueueOptions, Limit, Limits, NewJob, Unique};
use sqlx::PgPool;

/// Args whose text form (`args::text`) is exactly `bytes` long: `{"a": "xxx…"}`.
fn args_of(bytes: usize) -> Value {
    json!({ "a": "x".repeat(bytes - 9) })
}

fn job(args: Value, options: EnqueueOptions) -> NewJob {
    NewJob::untyped("limited", args, options)
}

fn assert_too_large(
    result: Result<impl std::fmt::Debug, EnqueueError>,
    limit: Limit,
    value: usize,
) {
    match result {
        Err(
            ref error @ EnqueueError::TooLarge {
                limit: got,
                value: got_value,
                max,
                ref kind,
            },
        ) => {
            assert_eq!((got, got_value, kind.as_str()), (limit, value, "limited"));
            let message = error.to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(
                message.contains(&value.to_string()) && message.contains(&max.to_string()),
                "{message}"
            );
        }
        other => panic!("expected TooLarge {limit:?}, got {other:?}"),
    }
}

/// The SQLSTATE and constraint of a refused statement.
fn check_violation(result: Result<impl std::fmt::Debug, sqlx::Error>) -> String {
    let error = result.expect_err("the database refuses");
    let db = error.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
    db.constraint().expect("a constraint").to_owned()
}

async fn count_jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn rust_enqueue_refuses_jobs_over_the_limits_before_sending_them() {
    let db = common::database().await;
    let pool = db.pool();
    let max = skiplock::DEFAULT_MAX_ARGS_BYTES;
    assert_eq!(Limits::DEFAULT.args_bytes, 1_048_576);

    // At the limit: accepted by Rust and by the database, which measure the same bytes.
    let id = skiplock::enqueue_new(pool, &job(args_of(max), EnqueueOptions::new()))
        .await
        .expect("args at the limit");
    let stored: i32 =
        sqlx::query_scalar("SELECT octet_length(args::text) FROM skiplock.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("size");
    assert_eq!(stored as usize, max);

    // One byte over, on every path: single, unique (through skiplock.enqueue) and batch.
    let over = || job(args_of(max + 1), EnqueueOptions::new());
    assert_too_large(
        skiplock::enqueue_new(pool, &over()).await,
        Limit::ArgsBytes,
        max + 1,
    );
    let unique = job(
        args_of(max + 1),
        EnqueueOptions::new().unique(Unique::by_args()),
    );
    assert_too_large(
        skiplock::enqueue_new(pool, &unique).await,
        Limit::ArgsBytes,
        max + 1,
    );
    let batch = vec![job(json!({}), EnqueueOptions::new()), over()];
    assert_too_large(
        skiplock::enqueue_many(pool, batch).await,
        Limit::ArgsBytes,
        max + 1,
    );

    // Tags: count and length.
    let tags = (0..101).fold(EnqueueOptions::new(), |o, n| o.tag(format!("t{n}")));
    assert_too_large(
        skiplock::enqueue_new(pool, &job(json!({}), tags)).await,
        Limit::Tags,
        101,
    );
    let long = EnqueueOptions::new().tag("ok").tag("é".repeat(201));
    assert_too_large(
        skiplock::enqueue_many(pool, [job(json!({}), long)]).await,
        Limit::TagChars,
        201,
    );
    let at_limit = (0..100).fold(EnqueueOptions::new(), |o, _| o.tag("é".repeat(200)));
    skiplock::enqueue_many(pool, [job(json!({}), at_limit)])
        .await
        .expect("100 tags of 200 characters");

    assert_eq!(
        count_jobs(pool).await,
        2,
        "nothing over a limit was inserted"
    );
}

#[tokio::test]
async fn the_database_refuses_jobs_over_its_limits_from_every_path() {
    let db = common::database().await;
    let pool = db.pool();
    let max = skiplock::DEFAULT_MAX_ARGS_BYTES;
    // Rust's own check out of the way: the database alone must refuse.
    let lax = || {
        EnqueueOptions::new().limits(Limits {
            args_bytes: usize::MAX,
            tags: usize::MAX,
            tag_chars: usize::MAX,
        })
    };
    let refused = |r: Result<Vec<i64>, EnqueueError>| match r {
        Err(EnqueueError::Database(e)) => check_violation(Err::<(), _>(e)),
        other => panic!("expected a database refusal, got {other:?}"),
    };
    assert_eq!(
        refused(skiplock::enqueue_many(pool, [job(args_of(max + 1), lax())]).await),
        "jobs_args_max_bytes"
    );
    let single = skiplock::enqueue_new(pool, &job(json!({}), lax().tag("x".repeat(201)))).await;
    assert_eq!(refused(single.map(|id| vec![id])), "jobs_tag_max_chars");
    let unique = NewJob::untyped(
        "limited",
        json!({}),
        (0..101)
            .fold(lax(), |o, n| o.tag(n.to_string()))
            .unique(Unique::key("k")),
    );
    let unique = skiplock::enqueue_new(pool, &unique).await;
    assert_eq!(refused(unique.map(|id| vec![id])), "jobs_tags_max_count");

    // SQL: skiplock.enqueue and a plain INSERT.
    let sql_enqueue =
        sqlx::query("SELECT skiplock.enqueue('k', jsonb_build_object('a', repeat('x', 1048576)))")
            .execute(pool)
            .await;
    assert_eq!(check_violation(sql_enqueue), "jobs_args_max_bytes");
    let plain = sqlx::query("INSERT INTO skiplock.jobs (kind, tags) SELECT 'k', array_agg(n::text) FROM generate_series(1, 101) n")
        .execute(pool)
        .await;
    assert_eq!(check_violation(plain), "jobs_tags_max_count");
    let plain =
        sqlx::query("INSERT INTO skiplock.jobs (kind, tags) VALUES ('k', ARRAY[repeat('x', 201)])")
            .execute(pool)
            .await;
    assert_eq!(check_violation(plain), "jobs_tag_max_chars");
    assert_eq!(count_jobs(pool).await, 0);
}

#[tokio::test]
async fn set_limits_changes_the_bounds_and_spares_the_rows_already_there() {
    let db = common::database().await;
    let pool = db.pool();
    let big = skiplock::enqueue_new(
        pool,
        &job(args_of(1000), EnqueueOptions::new().tag("abcdef")),
    )
    .await
    .expect("enqueue");

    sqlx::query("SELECT skiplock.set_limits(args_bytes => 100, tags => 1, tag_chars => 5)")
        .execute(pool)
        .await
        .expect("lower the limits");
    let refused =
        sqlx::query("SELECT skiplock.enqueue('k', jsonb_build_object('a', repeat('x', 100)))")
            .execute(pool)
            .await;
    assert_eq!(check_violation(refused), "jobs_args_max_bytes");
    let refused = sqlx::query("SELECT skiplock.enqueue('k', '{}', tags => ARRAY['abcdef'])")
        .execute(pool)
        .await;
    assert_eq!(check_violation(refused), "jobs_tag_max_chars");
    // The job enqueued under the old limits can still be cancelled and retried.
    let state: Option<String> = sqlx::query_scalar("SELECT skiplock.cancel($1)::text")
        .bind(big)
        .fetch_one(pool)
        .await
        .expect("cancel an old job over the new limits");
    assert_eq!(state.as_deref(), Some("cancelled"));
    let retried: bool = sqlx::query_scalar("SELECT skiplock.retry($1)")
        .bind(big)
        .fetch_one(pool)
        .await
        .expect("retry it");
    assert!(retried);

    sqlx::query("SELECT skiplock.set_limits(args_bytes => 2000000)")
        .execute(pool)
        .await
        .expect("raise the limits");
    let raised = Limits {
        args_bytes: 2_000_000,
        ..Limits::DEFAULT
    };
    skiplock::enqueue_new(
        pool,
        &job(args_of(1_500_000), EnqueueOptions::new().limits(raised)),
    )
    .await
    .expect("within the raised limit");
    let bad = sqlx::query("SELECT skiplock.set_limits(args_bytes => 0)")
        .execute(pool)
        .await
        .expect_err("a limit must be positive");
    assert!(bad.to_string().contains("at least"), "{bad}");
}

#[tokio::test]
async fn run_at_must_be_a_real_instant_between_1970_and_9999() {
    let db = common::database().await;
    let pool = db.pool();

    // Rust: refused before sending, with a typed error.
    let year_10000 = Utc
        .with_ymd_and_hms(10_000, 1, 1, 0, 0, 0)
        .single()
        .expect("a date");
    let year_1969 = Utc
        .with_ymd_and_hms(1969, 12, 31, 23, 59, 59)
        .single()
        .expect("a date");
    for run_at in [year_10000, year_1969] {
        let result =
            skiplock::enqueue_new(pool, &job(json!({}), EnqueueOptions::new().run_at(run_at)))
                .await;
        assert!(
            matches!(result, Err(EnqueueError::RunAtOutOfRange { .. })),
            "{run_at}: {result:?}"
        );
    }
    let forever = job(json!({}), EnqueueOptions::new().delay(Duration::MAX));
    let result = skiplock::enqueue_many(pool, [forever]).await;
    let message = result.expect_err("an endless delay").to_string();
    assert!(
        message.contains("outside 1970-01-01 to 9999-12-31"),
        "{message}"
    );
    skiplock::enqueue_new(
        pool,
        &job(
            json!({}),
            EnqueueOptions::new().run_at(skiplock::MAX_RUN_AT),
        ),
    )
    .await
    .expect("the last instant of 9999");

    // SQL: skiplock.enqueue and a plain INSERT.
    for run_at in [
        "infinity",
        "-infinity",
        "10000-01-01 00:00:00+00",
        "1969-12-31 23:59:59+00",
    ] {
        let result = sqlx::query("SELECT skiplock.enqueue('k', '{}', run_at => $1::timestamptz)")
            .bind(run_at)
            .execute(pool)
            .await;
        assert_eq!(check_violation(result), "jobs_run_at_range", "{run_at}");
        let result = sqlx::query("INSERT INTO skiplock.jobs (kind, run_at, state) VALUES ('k', $1::timestamptz, 'scheduled')")
            .bind(run_at)
            .execute(pool)
            .await;
        assert_eq!(check_violation(result), "jobs_run_at_range", "{run_at}");
    }
    assert_eq!(count_jobs(pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_the_limits_still_run_and_infinite_waits_are_pulled_back() {
    let db = common::database().await;
    let pool = db.pool();
    // The schema as the previous release left it, with rows 0008 would refuse.
    common::schema_at(pool, 6).await;
    let big: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', jsonb_build_object('n', 1, 'pad', repeat('x', 2000000)),
                                 tags => array_fill('t'::text, ARRAY[150]))",
    )
    .fetch_one(pool)
    .await
    .expect("an old big job");
    let never: i64 =
        sqlx::query_scalar("SELECT skiplock.enqueue('record', '{\"n\": 2}', run_at => 'infinity')")
            .fetch_one(pool)
            .await
            .expect("an old job that never runs");

    skiplock::migrate(pool).await.expect("migrate");

    let run_at: String = sqlx::query_scalar("SELECT run_at::text FROM skiplock.jobs WHERE id = $1")
        .bind(never)
        .fetch_one(pool)
        .await
        .expect("run_at");
    assert_eq!(run_at, "9999-12-31 23:59:59+00");
    // The big job is claimed, run and completed (every one an UPDATE the limits would refuse),
    // and the far one can be cancelled.
    common::with_worker(
        common::worker(pool)
            .queue("default", 2)
            .register::<common::Record>(),
        common::wait_for_state(pool, "completed", 1, Duration::from_secs(30)),
    )
    .await;
    assert_eq!(
        common::job(pool, big).await.state,
        skiplock::JobState::Completed
    );
    let state = skiplock::cancel(pool, never).await.expect("cancel");
    assert_eq!(state, Some(skiplock::JobState::Cancelled));
}
