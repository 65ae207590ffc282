//! Reliability features in one process: timeouts, cancellation, unique jobs, snooze, retry,
//! progress, transactional completion, pool exhaustion and the workers table.
#![allow(clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Record, Sleep, database, eventually, job, start, wait_for_state, with_worker, worker,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiplock::{
    ContextError, EnqueueOptions, Handler, Job, JobContext, JobError, JobState, NewJob, Unique,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Barrier;

async fn started(pool: &PgPool, id: i64) {
    eventually(Duration::from_secs(10), "the job to start", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE job_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("ledger");
        (n > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn timeout_stops_a_handler_that_ignores_cancellation_and_frees_its_slot() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .queue("default", 1) // one slot: the next job can only run once it is freed
            .cancel_timeout(Duration::from_millis(200))
            .register::<Sleep>()
            .register::<Record>(),
    );
    let stuck = skiplock::enqueue_with(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: true,
        },
        EnqueueOptions::new()
            .timeout(Duration::from_millis(300))
            .max_attempts(1),
    )
    .await
    .expect("enqueue");
    started(pool, stuck).await;
    let next = skiplock::enqueue(pool, &Record { n: 1 })
        .await
        .expect("enqueue");

    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    running.shutdown().await.expect("shutdown");
    let row = job(pool, stuck).await;
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.errors[0].kind.as_str(), "timeout");
    assert_eq!(row.errors[0].message, "timed out after 300ms");
    assert_eq!(row.timeout, Some(Duration::from_millis(300)));
    assert_eq!(job(pool, next).await.state, JobState::Completed);
}

#[tokio::test]
async fn worker_default_timeout_applies_to_jobs_without_their_own() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .job_timeout(Duration::from_millis(200))
            .register::<Sleep>(),
    );
    let id = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: false,
        },
    )
    .await
    .expect("enqueue");
    eventually(Duration::from_secs(5), "a timeout", || async {
        (job(pool, id).await.state == JobState::Retryable).then_some(())
    })
    .await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(job(pool, id).await.errors[0].kind.as_str(), "timeout");
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_cooperative_or_not() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .cancel_timeout(Duration::from_millis(300))
            .register::<Sleep>(),
    );
    let polite = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: false,
        },
    )
    .await
    .expect("enqueue");
    let stubborn = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: true,
        },
    )
    .await
    .expect("enqueue");
    started(pool, polite).await;
    started(pool, stubborn).await;

    let begun = std::time::Instant::now();
    assert_eq!(
        skiplock::cancel(pool, polite).await.expect("cancel"),
        Some(JobState::Running)
    );
    // From SQL, as another language would.
    let state: String = sqlx::query_scalar("SELECT skiplock.cancel($1)::text")
        .bind(stubborn)
        .fetch_one(pool)
        .await
        .expect("SQL cancel");
    assert_eq!(state, "running");
    wait_for_state(pool, "cancelled", 2, Duration::from_secs(5)).await;
    // The polite one returns at once (through NOTIFY, not a heartbeat); the stubborn one is
    // dropped after the cancel timeout.
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "took {:?}",
        begun.elapsed()
    );
    running.shutdown().await.expect("shutdown");
    for id in [polite, stubborn] {
        let row = job(pool, id).await;
        assert_eq!(row.errors[0].kind.as_str(), "cancelled", "job {id}");
        assert!(row.finished_at.is_some() && row.cancel_requested_at.is_some());
    }
}

#[tokio::test]
async fn a_cancel_request_without_notify_is_picked_up_by_the_heartbeat() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .lease(Duration::from_secs(3))
            .heartbeat_interval(Duration::from_millis(300))
            .register::<Sleep>(),
    );
    let id = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 60_000,
            stubborn: false,
        },
    )
    .await
    .expect("enqueue");
    started(pool, id).await;
    // What skiplock.cancel() does, minus the notification (lost, say, behind PgBouncer).
    sqlx::query("UPDATE skiplock.jobs SET cancel_requested_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .expect("request cancel");
    wait_for_state(pool, "cancelled", 1, Duration::from_secs(3)).await;
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn cancelled_waiting_jobs_never_run_and_retry_puts_them_back() {
    let db = database().await;
    let pool = db.pool();
    let scheduled = skiplock::enqueue_with(
        pool,
        &Record { n: 1 },
        EnqueueOptions::new().delay(Duration::from_millis(300)),
    )
    .await
    .expect("enqueue");
    let available = skiplock::enqueue(pool, &Record { n: 2 })
        .await
        .expect("enqueue");
    for id in [scheduled, available] {
        assert_eq!(
            skiplock::cancel(pool, id).await.expect("cancel"),
            Some(JobState::Cancelled)
        );
    }
    assert_eq!(skiplock::cancel(pool, 999_999).await.expect("cancel"), None);

    let running = start(worker(pool).register::<Record>());
    // A sentinel enqueued after them: once it has run, the worker has passed them by.
    let sentinel = skiplock::enqueue(pool, &Record { n: 3 })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::count_state(pool, "cancelled").await, 2);
    let ran: Vec<i64> = common::runs_per_job(pool)
        .await
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ran, [sentinel], "a cancelled job ran");

    // Back in the queue: one from Rust, one from SQL.
    assert!(skiplock::retry(pool, scheduled).await.expect("retry"));
    let retried: bool = sqlx::query_scalar("SELECT skiplock.retry($1)")
        .bind(available)
        .fetch_one(pool)
        .await
        .expect("SQL retry");
    assert!(retried);
    assert!(
        !skiplock::retry(pool, available).await.expect("retry"),
        "not failed or cancelled"
    );
    wait_for_state(pool, "completed", 3, Duration::from_secs(5)).await;
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_enqueuers_of_one_unique_key_make_one_job() {
    let db = database().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(db.connect_options().clone())
        .await
        .expect("pool");
    let barrier = Arc::new(Barrier::new(8));
    let enqueuers: Vec<_> = (0..8)
        .map(|n| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.expect("begin");
                barrier.wait().await;
                let options = EnqueueOptions::new().unique(Unique::key("report:2026-11-24"));
                let id = skiplock::enqueue_with(&mut *tx, &Record { n }, options)
                    .await
                    .expect("enqueue");
                // Hold the transaction a little so that the others pile up behind it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.commit().await.expect("commit");
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for enqueuer in enqueuers {
        ids.push(enqueuer.await.expect("task"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all enqueuers got the same job: {ids:?}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(jobs, 1);
}

#[tokio::test]
async fn unique_by_args_and_its_states() {
    let db = database().await;
    let pool = db.pool();
    let by_args = || EnqueueOptions::new().unique(Unique::by_args());
    let first = skiplock::enqueue_with(pool, &Record { n: 1 }, by_args())
        .await
        .expect("enqueue");
    let again = skiplock::enqueue_with(pool, &Record { n: 1 }, by_args())
        .await
        .expect("enqueue");
    let other = skiplock::enqueue_with(pool, &Record { n: 2 }, by_args())
        .await
        .expect("enqueue");
    // Unique among completed jobs too: it keeps blocking duplicates after it has run.
    let forever = || {
        let states = [JobState::Available, JobState::Running, JobState::Completed];
        EnqueueOptions::new().unique(Unique::by_args().states(states))
    };
    let once = skiplock::enqueue_with(pool, &Record { n: 7 }, forever())
        .await
        .expect("enqueue");
    assert_eq!(first, again);
    assert_ne!(first, other);
    let key = job(pool, first).await.unique_key.expect("a key");
    assert!(key.starts_with("record:"), "{key}");

    // Once finished, the job no longer blocks a new one (the default states are unfinished).
    with_worker(
        worker(pool).register::<Record>(),
        wait_for_state(pool, "completed", 3, Duration::from_secs(5)),
    )
    .await;
    let later = skiplock::enqueue_with(pool, &Record { n: 1 }, by_args())
        .await
        .expect("enqueue");
    assert_ne!(later, first);
    let blocked = skiplock::enqueue_with(pool, &Record { n: 7 }, forever())
        .await
        .expect("enqueue");
    assert_eq!(blocked, once);

    let error = skiplock::enqueue_many(
        pool,
        [NewJob::with_options(&Record { n: 3 }, by_args()).expect("job")],
    )
    .await
    .expect_err("unique jobs are refused in batches");
    assert!(error.to_string().contains("one at a time"), "{error}");

    // States a claim could not keep: unique while running but not while waiting (two waiting
    // duplicates claimed together would fail the claim), or none at all. Refused from Rust
    // and from SQL alike.
    let running_only = EnqueueOptions::new().unique(Unique::key("r").states([JobState::Running]));
    let error = skiplock::enqueue_with(pool, &Record { n: 8 }, running_only)
        .await
        .expect_err("unique while running only");
    assert!(error.to_string().contains("available too"), "{error}");
    for states in ["{running}", "{running,completed}", "{running,NULL}", "{}"] {
        let refused = sqlx::query(
            "SELECT skiplock.enqueue('record', '{\"n\": 8}', unique_key => 'r',
                                     unique_states => $1::skiplock.job_state[])",
        )
        .bind(states)
        .execute(pool)
        .await
        .expect_err(states);
        assert!(refused.to_string().contains("unique_states"), "{refused}");
    }
    let kept: i64 = sqlx::query_scalar(
        "SELECT skiplock.enqueue('record', '{\"n\": 8}', unique_key => 'r',
                                 unique_states => '{available,running}')",
    )
    .fetch_one(pool)
    .await
    .expect("unique while available and running");
    assert!(kept > 0);
}

/// Snoozes once without using up an attempt, then completes.
#[derive(Serialize, Deserialize)]
struct SnoozeOnce;

impl Job for SnoozeOnce {
    const KIND: &'static str = "snooze_once";
    const MAX_ATTEMPTS: i32 = 1;
}

impl Handler<PgPool> for SnoozeOnce {
    type Output = i32;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<i32, JobError> {
        let runs: i64 = sqlx::query_scalar(
            "INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, 'snooze_once', $2, '')
             RETURNING (SELECT count(*) + 1 FROM ledger WHERE job_id = $1)",
        )
        .bind(ctx.id())
        .bind(ctx.attempt())
        .fetch_one(ctx.state())
        .await?;
        if runs == 1 {
            return Err(JobError::snooze(Duration::from_millis(400)));
        }
        ctx.set_progress(&json!({"step": "done"})).await?;
        Ok(ctx.attempt())
    }
}

#[tokio::test]
async fn snooze_runs_again_later_without_using_an_attempt() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<SnoozeOnce>());
    let id = skiplock::enqueue(pool, &SnoozeOnce).await.expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, id).await;
    // max_attempts is 1, yet it ran twice: the snoozed run did not count.
    assert_eq!((row.attempt, row.result), (1, Some(json!(1))));
    assert!(row.errors.is_empty());
    assert_eq!(row.progress, Some(json!({"step": "done"})));
    let starts: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM ledger WHERE job_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(pool)
            .await
            .expect("ledger");
    assert_eq!(starts.len(), 2);
    let gap = (starts[1] - starts[0]).to_std().unwrap_or_default();
    assert!(gap >= Duration::from_millis(400), "snoozed only {gap:?}");
}

/// Writes its effect and completes in one transaction; `stale` first loses its lease.
#[derive(Serialize, Deserialize)]
struct Effect {
    stale: bool,
}

impl Job for Effect {
    const KIND: &'static str = "effect";
}

impl Handler<PgPool> for Effect {
    type Output = &'static str;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<&'static str, JobError> {
        let mut tx = ctx.state().begin().await?;
        sqlx::query("INSERT INTO effects (job_id) VALUES ($1)")
            .bind(ctx.id())
            .execute(&mut *tx)
            .await?;
        if self.stale {
            // Somebody else took the job meanwhile (a rescuer would do this).
            sqlx::query("UPDATE skiplock.jobs SET lease_token = lease_token + 1000 WHERE id = $1")
                .bind(ctx.id())
                .execute(ctx.state())
                .await?;
        }
        match ctx.complete_in(&mut tx, &"done").await {
            Ok(()) => {}
            Err(ContextError::LeaseLost(lost)) => {
                assert!(ctx.is_cancelled(), "lease loss fires the token");
                tx.rollback().await?;
                return Err(JobError::permanent(lost));
            }
            Err(error) => return Err(error.into()),
        }
        tx.commit().await?;
        Ok("done")
    }
}

#[tokio::test]
async fn transactional_completion_commits_effect_and_completion_together_and_is_fenced() {
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql("CREATE TABLE effects (job_id bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("effects table");
    let running = start(worker(pool).register::<Effect>());
    let good = skiplock::enqueue(pool, &Effect { stale: false })
        .await
        .expect("enqueue");
    let stale = skiplock::enqueue(pool, &Effect { stale: true })
        .await
        .expect("enqueue");
    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await.expect("shutdown");

    let row = job(pool, good).await;
    assert_eq!(
        (row.state, row.result),
        (JobState::Completed, Some(json!("done")))
    );
    assert!(row.errors.is_empty());
    let effects: Vec<i64> = sqlx::query_scalar("SELECT job_id FROM effects ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("effects");
    assert_eq!(
        effects,
        vec![good],
        "the stale attempt's effect rolled back"
    );
    // The stale attempt changed nothing: the job is still running under the other lease.
    let row = job(pool, stale).await;
    assert_eq!(row.state, JobState::Running);
}

/// Holds a connection of the application's pool for `millis`.
#[derive(Serialize, Deserialize)]
struct HoldConnection {
    millis: u64,
}

impl Job for HoldConnection {
    const KIND: &'static str = "hold_connection";
}

impl Handler<PgPool> for HoldConnection {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        let mut conn = ctx.state().acquire().await?;
        sqlx::query("SELECT pg_sleep($1)")
            .bind(self.millis as f64 / 1000.0)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn handlers_exhausting_the_pool_do_not_cost_leases() {
    let db = database().await;
    // The application's pool: 2 connections for 6 handlers that each hold one for 5 s: the last
    // ones wait 15 s, five leases, for a connection.
    let app_pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(db.connect_options().clone())
        .await
        .expect("pool");
    let running = worker(&app_pool)
        .lease(Duration::from_secs(3))
        .heartbeat_interval(Duration::from_millis(750))
        .rescue_interval(Duration::from_millis(200))
        .queue("default", 6)
        .register::<HoldConnection>()
        .build()
        .expect("worker")
        .start();
    let jobs = (0..6)
        .map(|_| NewJob::new(&HoldConnection { millis: 5_000 }))
        .collect::<Result<Vec<_>, _>>()
        .expect("jobs");
    skiplock::enqueue_many(db.pool(), jobs)
        .await
        .expect("enqueue");
    wait_for_state(db.pool(), "completed", 6, Duration::from_secs(30)).await;
    running.shutdown().await.expect("shutdown");

    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM skiplock.jobs WHERE attempt <> 1 OR errors <> '[]'",
    )
    .fetch_one(db.pool())
    .await
    .expect("count");
    assert_eq!(
        lost, 0,
        "a lease was lost while handlers held the application's pool"
    );
}

#[tokio::test]
async fn workers_register_heartbeat_and_unregister() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .id("worker-under-test")
            .queue("default", 2)
            .queue("mail", 1)
            .register::<Record>(),
    );
    let row: (String, i32, Vec<String>) = eventually(Duration::from_secs(5), "a row", || async {
        sqlx::query_as(
            "SELECT host, pid, queues FROM skiplock.workers WHERE id = 'worker-under-test'",
        )
        .fetch_optional(pool)
        .await
        .expect("workers")
    })
    .await;
    assert_eq!(row.1, i32::try_from(std::process::id()).expect("pid"));
    assert_eq!(row.2, vec!["default".to_owned(), "mail".to_owned()]);
    // A worker whose heartbeat stopped is marked lost by a live worker's rescuer; the row of
    // one stopped or lost over an hour ago is deleted.
    sqlx::raw_sql(
        "INSERT INTO skiplock.workers (id, host, pid, queues, heartbeat_at)
         VALUES ('dead', 'h', 1, '{}', now() - interval '5 minutes');
         INSERT INTO skiplock.workers (id, host, pid, queues, heartbeat_at, stopped_at, stop_reason)
         VALUES ('long-gone', 'h', 2, '{}', now() - interval '2 hours',
                 now() - interval '61 minutes', 'lost')",
    )
    .execute(pool)
    .await
    .expect("dead workers");
    eventually(
        Duration::from_secs(10),
        "the dead worker to be marked lost and the old one forgotten",
        || async {
            let (lost, gone): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE id = 'dead' AND stop_reason = 'lost'),
                        count(*) FILTER (WHERE id = 'long-gone')
                 FROM skiplock.workers",
            )
            .fetch_one(pool)
            .await
            .expect("count");
            (lost == 1 && gone == 0).then_some(())
        },
    )
    .await;

    running.shutdown().await.expect("shutdown");
    let (reason, stopped): (Option<String>, bool) = sqlx::query_as(
        "SELECT stop_reason, stopped_at IS NOT NULL FROM skiplock.workers
         WHERE id = 'worker-under-test'",
    )
    .fetch_one(pool)
    .await
    .expect("row");
    assert_eq!(
        (reason.as_deref(), stopped),
        (Some("shutdown"), true),
        "a clean shutdown marks the worker's row stopped"
    );
}

#[tokio::test]
async fn a_unique_job_blocked_by_its_duplicate_does_not_stall_promotion_of_others() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<common::Fail>().register::<Record>());
    // Unique only while waiting: a duplicate may be enqueued while this one is retrying.
    let unique = || {
        let states = [JobState::Scheduled, JobState::Available];
        EnqueueOptions::new().unique(Unique::key("k").states(states))
    };
    let first = skiplock::enqueue_with(
        pool,
        &common::Fail {
            mode: "once".into(),
        },
        unique(),
    )
    .await
    .expect("enqueue");
    eventually(
        Duration::from_secs(5),
        "the first attempt to fail",
        || async { (job(pool, first).await.state == JobState::Retryable).then_some(()) },
    )
    .await;
    // The duplicate waits in a queue nobody works, so it holds the key.
    let options = unique().queue("nobody");
    let duplicate = skiplock::enqueue_with(
        pool,
        &common::Fail {
            mode: "once".into(),
        },
        options,
    )
    .await
    .expect("enqueue");
    assert_ne!(duplicate, first);
    let other = skiplock::enqueue_with(
        pool,
        &Record { n: 1 },
        EnqueueOptions::new().delay(Duration::from_millis(500)),
    )
    .await
    .expect("enqueue");

    wait_for_state(pool, "completed", 1, Duration::from_secs(5)).await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(job(pool, other).await.state, JobState::Completed);
    assert_eq!(
        job(pool, first).await.state,
        JobState::Retryable,
        "waits for its duplicate"
    );
}

/// Waits for its cancellation and records when it came.
#[derive(Serialize, Deserialize)]
struct AwaitStop;

impl Job for AwaitStop {
    const KIND: &'static str = "await_stop";
}

impl Handler<PgPool> for AwaitStop {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        sqlx::query(
            "INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, 'await_stop', $2, '')",
        )
        .bind(ctx.id())
        .bind(ctx.attempt())
        .execute(ctx.state())
        .await?;
        tokio::select! {
            () = ctx.cancellation().cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => return Ok(()),
        }
        sqlx::query("INSERT INTO stops (job_id, attempt) VALUES ($1, $2)")
            .bind(ctx.id())
            .bind(ctx.attempt())
            .execute(ctx.state())
            .await?;
        Err("stopped".into())
    }
}

#[tokio::test]
async fn a_worker_that_cannot_renew_a_lease_stops_the_job_before_it_expires() {
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql(
        "CREATE TABLE stops (job_id bigint, attempt int, at timestamptz DEFAULT clock_timestamp())",
    )
    .execute(pool)
    .await
    .expect("stops table");
    let running = start(
        worker(pool)
            .lease(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(400))
            .rescue_interval(Duration::from_millis(200))
            .shutdown_timeout(Duration::from_millis(100))
            .register::<AwaitStop>(),
    );
    let id = skiplock::enqueue(pool, &AwaitStop).await.expect("enqueue");
    started(pool, id).await;

    // Hold the job's row: the heartbeat's renewal blocks on it and misses its deadline, as it
    // would with the database unreachable.
    let mut blocker = pool.begin().await.expect("begin");
    let expires_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT lease_expires_at FROM skiplock.jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *blocker)
            .await
            .expect("lock");
    let stopped_at: chrono::DateTime<chrono::Utc> = eventually(
        Duration::from_secs(5),
        "the handler to be stopped",
        || async {
            sqlx::query_scalar("SELECT at FROM stops WHERE job_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .expect("stops")
        },
    )
    .await;
    let margin = (expires_at - stopped_at).to_std().unwrap_or_default();
    assert!(
        stopped_at < expires_at,
        "stopped at {stopped_at}, after the lease expired at {expires_at}"
    );
    blocker.rollback().await.expect("release");

    // The lease then runs out and the job is rescued and run again.
    eventually(Duration::from_secs(10), "a second attempt", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE job_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("ledger");
        (n >= 2).then_some(())
    })
    .await;
    running.shutdown().await.expect("shutdown");
    let row = job(pool, id).await;
    assert_eq!(row.errors[0].kind.as_str(), "worker_lost");
    eprintln!("self-fencing: handler stopped {margin:?} before its 2 s lease expired");
}

/// Records its start, waits for its cancellation, and then succeeds.
#[derive(Serialize, Deserialize)]
struct SucceedWhenStopped;

impl Job for SucceedWhenStopped {
    const KIND: &'static str = "succeed_when_stopped";
}

impl Handler<PgPool> for SucceedWhenStopped {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        sqlx::query(
            "INSERT INTO ledger (job_id, kind, attempt, worker) VALUES ($1, 'succeed', $2, '')",
        )
        .bind(ctx.id())
        .bind(ctx.attempt())
        .execute(ctx.state())
        .await?;
        ctx.cancellation().cancelled().await;
        Ok(())
    }
}

/// A job stopped because its lease came into doubt, which then finishes, is recorded
/// completed (the write is fenced by its lease token): dropping its outcome left it running
/// until the lease ran out, and the rescuer ran it again.
#[tokio::test]
async fn a_job_that_finishes_after_its_lease_came_into_doubt_is_not_run_again() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .lease(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(400))
            .rescue_interval(Duration::from_millis(200))
            .register::<SucceedWhenStopped>(),
    );
    let id = skiplock::enqueue(pool, &SucceedWhenStopped)
        .await
        .expect("enqueue");
    started(pool, id).await;
    // The heartbeat's renewal blocks on the held row and misses its deadline.
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM skiplock.jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .expect("lock");
    // Until the completion waits for the row too.
    eventually(Duration::from_secs(5), "the completion to wait", || async {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity
                            WHERE datname = current_database() AND wait_event_type = 'Lock'
                              AND query LIKE '%WITH done AS%')",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        waiting.then_some(())
    })
    .await;
    blocker.rollback().await.expect("release");

    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE job_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("ledger");
    assert_eq!(runs, 1);
    assert!(job(pool, id).await.errors.is_empty());
}

/// `cancel_timeout(Duration::MAX)` waits for the handler as long as it takes: the deadline
/// overflowed an `Instant`, the job's task panicked, and the job stayed running for as long as
/// the worker did.
#[tokio::test]
async fn a_cancel_timeout_of_duration_max_waits_for_the_handler() {
    let db = database().await;
    let pool = db.pool();
    let running = start(
        worker(pool)
            .cancel_timeout(Duration::MAX)
            .register::<Sleep>(),
    );
    let stubborn = Sleep {
        millis: 1_000,
        stubborn: true,
    };
    let id = skiplock::enqueue(pool, &stubborn).await.expect("enqueue");
    started(pool, id).await;
    let state = skiplock::cancel(pool, id).await.expect("cancel");
    assert_eq!(state, Some(JobState::Running));
    // It ignores the cancel and succeeds a second later: recorded as it ended.
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");
}
