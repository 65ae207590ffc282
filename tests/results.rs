//! Waiting on jobs and watching them (`skiplock::results`) against a real database and worker.

mod common;

use std::time::Duration;

use common::{Fail, Record, Sleep, database, enqueue_records, eventually, start, worker};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use skiplock::results::{Outcome, Results, ResultsConfig, WaitError};
use skiplock::{Handler, Job, JobContext, JobError, JobState};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// Polling slowed to a minute: whatever arrives within a test's few seconds was pushed.
fn pushed_only(pool: &PgPool) -> Results {
    let mut config = ResultsConfig::default();
    config.poll_interval = Duration::from_secs(60);
    Results::with_config(pool.clone(), config)
}

/// Reports progress 1..=steps, `pause_ms` apart, then returns the step count.
#[derive(Debug, Serialize, Deserialize)]
struct Steps {
    steps: u32,
    pause_ms: u64,
}

impl Job for Steps {
    const KIND: &'static str = "steps";
}

impl Handler<PgPool> for Steps {
    type Output = u32;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<u32, JobError> {
        for done in 1..=self.steps {
            tokio::time::sleep(Duration::from_millis(self.pause_ms)).await;
            ctx.set_progress(&serde_json::json!({"done": done, "total": self.steps}))
                .await?;
        }
        Ok(self.steps)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_typed_output_or_how_the_job_ended() {
    let db = database().await;
    let pool = db.pool();
    let results = pushed_only(pool);
    let running = start(
        worker(pool)
            .queue("default", 4)
            .register::<Record>()
            .register::<Fail>(),
    );
    let doubled = skiplock::enqueue(pool, &Record { n: 21 })
        .await
        .expect("enqueue");
    let outcome = results
        .wait_for::<Record, PgPool>(doubled, Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(outcome, Outcome::Completed(42));

    let failing = skiplock::enqueue(
        pool,
        &Fail {
            mode: "permanent".into(),
        },
    )
    .await
    .expect("enqueue");
    match results.wait::<()>(failing, Duration::from_secs(10)).await {
        Ok(Outcome::Failed(Some(error))) => {
            assert!(error.message.contains("bad input"), "{error:?}")
        }
        other => panic!("{other:?}"),
    }

    // Many at once, in order, one deadline.
    let ids = enqueue_records(pool, "default", 50).await;
    let outcomes = results
        .wait_many::<i64>(&ids, Duration::from_secs(20))
        .await
        .expect("wait many");
    let expected: Vec<Outcome<i64>> = (0..50).map(|n| Outcome::Completed(n * 2)).collect();
    assert_eq!(outcomes, expected);

    // A result that is not the awaited type.
    let decoded = results
        .wait::<String>(doubled, Duration::from_secs(5))
        .await;
    assert!(
        matches!(decoded, Err(WaitError::Decode { id, .. }) if id == doubled),
        "{decoded:?}"
    );
    running.shutdown().await.expect("shutdown");

    // Registrations go once nobody waits.
    common::eventually(Duration::from_secs(10), "registrations removed", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM skiplock.job_waiters")
            .fetch_one(pool)
            .await
            .expect("count");
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn wait_times_out_and_knows_missing_and_cancelled_jobs() {
    let db = database().await;
    let pool = db.pool();
    let results = Results::new(pool.clone());
    let waiting = skiplock::enqueue(pool, &Record { n: 1 })
        .await
        .expect("enqueue");
    // Long enough for a loaded machine to read the job once (else the state is None).
    let timed_out = results
        .wait::<i64>(waiting, Duration::from_millis(1500))
        .await;
    assert!(
        matches!(timed_out, Err(WaitError::TimedOut { id, state: Some(JobState::Available), .. }) if id == waiting),
        "{timed_out:?}"
    );
    // Duration::MAX means no deadline; an unknown job answers at once.
    let missing = results.wait::<i64>(i64::MAX, Duration::MAX).await;
    assert!(
        matches!(missing, Err(WaitError::NotFound(id)) if id == i64::MAX),
        "{missing:?}"
    );

    // Cancelled by SQL while awaited: no notification, the poll finds it.
    let waiter = {
        let results = results.clone();
        tokio::spawn(async move { results.wait::<i64>(waiting, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("SELECT skiplock.cancel($1)")
        .bind(waiting)
        .execute(pool)
        .await
        .expect("cancel");
    let outcome = waiter.await.expect("join").expect("wait");
    assert!(matches!(outcome, Outcome::Cancelled(_)), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_progress_as_the_handler_reports_it() {
    let db = database().await;
    let pool = db.pool();
    let results = pushed_only(pool);
    let id = skiplock::enqueue(
        pool,
        &Steps {
            steps: 5,
            pause_ms: 300,
        },
    )
    .await
    .expect("enqueue");
    let mut updates = Box::pin(results.watch(id));
    let first = updates
        .next()
        .await
        .expect("a first update")
        .expect("update");
    assert_eq!(first.state, JobState::Available);
    // Nothing changed: nothing more comes (the update seen is not sent again and again).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), updates.next())
            .await
            .is_err(),
        "an update while nothing changed"
    );

    let running = start(worker(pool).queue("default", 1).register::<Steps>());
    let mut percents = Vec::new();
    let mut last = first;
    while let Some(update) = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("an update within 10 s (pushed: polling is once a minute)")
    {
        let update = update.expect("update");
        if let Some(percent) = update.percent() {
            percents.push(percent);
        }
        last = update;
    }
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        last.state,
        JobState::Completed,
        "the stream ends on the finish"
    );
    assert_eq!(last.result, Some(serde_json::json!(5)));
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert!(
        percents.len() >= 3,
        "intermediate progress was pushed: {percents:?}"
    );
    assert_eq!(percents.last(), Some(&100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_waiters_share_one_listening_connection() {
    let db = database().await;
    let pool = db.pool();
    let results = pushed_only(pool);
    let ids = enqueue_records(pool, "default", 100).await;
    let waits: Vec<_> = ids
        .iter()
        .map(|&id| {
            let results = results.clone();
            tokio::spawn(async move { results.wait::<i64>(id, Duration::from_secs(30)).await })
        })
        .collect();
    common::eventually(Duration::from_secs(10), "every wait registered", || async {
        let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM skiplock.job_waiters")
            .fetch_one(pool)
            .await
            .expect("count");
        (registered == 100).then_some(())
    })
    .await;
    // The listener may connect after the registrations (a loaded machine): wait for it.
    let listening = common::eventually(Duration::from_secs(10), "the listener", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%skiplock_job%'",
        )
        .fetch_one(pool)
        .await
        .expect("sessions");
        (listening > 0).then_some(listening)
    })
    .await;
    assert_eq!(listening, 1, "one LISTEN connection for every waiter");

    let running = start(worker(pool).queue("default", 8).register::<Record>());
    for (n, wait) in waits.into_iter().enumerate() {
        let outcome = wait.await.expect("join").expect("wait");
        assert_eq!(
            outcome,
            Outcome::Completed(i64::try_from(n).expect("n") * 2)
        );
    }
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_awaited_jobs_notify_and_forged_notifications_change_nothing() {
    let db = database().await;
    let pool = db.pool();
    let mut listener = PgListener::connect_with(pool).await.expect("listener");
    listener.listen("skiplock_job").await.expect("listen");

    // Nobody waits: a hundred completions send nothing.
    let ids = enqueue_records(pool, "default", 100).await;
    let running = start(worker(pool).queue("default", 8).register::<Record>());
    common::wait_for_state(pool, "completed", 100, Duration::from_secs(30)).await;
    running.shutdown().await.expect("shutdown");
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        heard.is_err(),
        "a job nobody awaits notified: {heard:?} ({} jobs)",
        ids.len()
    );

    // Forged notifications (any role may NOTIFY) about an awaited job: it is read, not believed.
    let results = pushed_only(pool);
    let waiting = skiplock::enqueue(pool, &Record { n: 3 })
        .await
        .expect("enqueue");
    let wait = {
        let results = results.clone();
        tokio::spawn(async move { results.wait::<i64>(waiting, Duration::from_secs(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for payload in [
        waiting.to_string(),
        "not a number".to_owned(),
        "-1".to_owned(),
    ] {
        sqlx::query("SELECT pg_notify('skiplock_job', $1)")
            .bind(payload)
            .execute(pool)
            .await
            .expect("notify");
    }
    let outcome = wait.await.expect("join");
    assert!(
        matches!(
            outcome,
            Err(WaitError::TimedOut {
                state: Some(JobState::Available),
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// Whether a statement recording an outcome waits for a row lock (the test's blocker).
async fn completion_blocked(pool: &PgPool) -> Option<()> {
    let blocked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%WITH done AS%'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity");
    (blocked > 0).then_some(())
}

async fn waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.job_waiters")
        .fetch_one(pool)
        .await
        .expect("count waiters")
}

/// The completer's statement began (and waits behind a row lock) before the waiter registered
/// and read the job as running: it looks for waiters after its update, in a fresh snapshot, and
/// notifies. With polling once a minute, only that notification ends the wait in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_registering_while_its_job_is_being_finished_is_notified() {
    let db = database().await;
    let pool = db.pool();
    let results = pushed_only(pool);
    let running = start(worker(pool).queue("default", 1).register::<Sleep>());
    let id = skiplock::enqueue(
        pool,
        &Sleep {
            millis: 500,
            stubborn: true,
        },
    )
    .await
    .expect("enqueue");
    eventually(Duration::from_secs(10), "the job running", || async {
        let state: String =
            sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("state");
        (state == "running").then_some(())
    })
    .await;
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("SELECT FROM skiplock.jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .expect("lock the row");
    eventually(Duration::from_secs(10), "the completion blocked", || {
        completion_blocked(pool)
    })
    .await;

    let waiting = tokio::spawn({
        let results = results.clone();
        async move { results.wait::<()>(id, Duration::from_secs(15)).await }
    });
    eventually(Duration::from_secs(10), "the waiter registered", || async {
        (waiters(pool).await > 0).then_some(())
    })
    .await;
    // Its first read (the job still running) is done by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the job cannot have finished yet");
    blocker.commit().await.expect("release the row");
    let outcome = waiting
        .await
        .expect("join")
        .expect("notified, not timed out");
    assert_eq!(outcome, Outcome::Completed(()));
    running.shutdown().await.expect("shutdown");
}

/// A waiter registering while a transaction that finished its job has looked for waiters but
/// not yet committed waits for that commit, then reads the outcome: neither side misses the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_registering_before_a_finish_commits_reads_the_outcome() {
    let db = database().await;
    let pool = db.pool();
    let results = pushed_only(pool);
    let id = skiplock::enqueue(pool, &Record { n: 1 })
        .await
        .expect("enqueue");
    let mut finishing = pool.begin().await.expect("begin");
    sqlx::query("UPDATE skiplock.jobs SET state = 'cancelled', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *finishing)
        .await
        .expect("cancel by hand");
    let notified: i64 = sqlx::query_scalar("SELECT skiplock.notify_waiters(ARRAY[$1::bigint])")
        .bind(id)
        .fetch_one(&mut *finishing)
        .await
        .expect("look for waiters");
    assert_eq!(notified, 0, "nobody waits yet");

    let waiting = tokio::spawn({
        let results = results.clone();
        async move { results.wait::<i64>(id, Duration::from_secs(15)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiters(pool).await,
        0,
        "the registration waits for the finish"
    );
    assert!(!waiting.is_finished());
    finishing.commit().await.expect("commit");
    let outcome = waiting.await.expect("join").expect("read, not timed out");
    assert_eq!(outcome, Outcome::Cancelled(None));
}

/// Polling every 200 ms: a cancel made in SQL, which notifies nobody, shows within a test.
fn polling(pool: &PgPool) -> Results {
    let mut config = ResultsConfig::default();
    config.poll_interval = Duration::from_millis(200);
    Results::with_config(pool.clone(), config)
}

/// Runs `work` on a runtime of its own, which then ends (as a request's or a test's does).
fn on_a_runtime_that_ends(work: impl Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(work);
    })
    .join()
    .expect("the other runtime");
}

/// Watches job `id` through `results`: first available; then, once cancelled in SQL
/// (through `pool`), cancelled within 5 s.
async fn watch_a_cancel(results: &Results, pool: &PgPool, id: i64) {
    let mut updates = Box::pin(results.watch(id));
    let first = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("the first update within 10 s")
        .expect("an update")
        .expect("update");
    assert_eq!(first.state, JobState::Available);
    sqlx::query("SELECT skiplock.cancel($1)")
        .bind(id)
        .execute(pool)
        .await
        .expect("cancel");
    let next = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .expect("an update within 5 s: a listener polls again")
        .expect("an update")
        .expect("update");
    assert_eq!(next.state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_died_with_its_runtime_is_started_again() {
    let db = database().await;
    let pool = db.pool();
    let results = polling(pool);
    let id = enqueue_records(pool, "default", 1).await[0];
    // A watch on a runtime of its own starts the listener there; that runtime ends, and the
    // listener with it.
    on_a_runtime_that_ends({
        let results = results.clone();
        async move {
            let mut updates = Box::pin(results.watch(id));
            let first = updates.next().await.expect("an update").expect("update");
            assert_eq!(first.state, JobState::Available);
        }
    });
    // The same Results, on this runtime: its watches still see changes.
    watch_a_cancel(&results, pool, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_full_of_connections_broken_with_their_runtime_fails_no_wait() {
    let db = database().await;
    let id = enqueue_records(db.pool(), "default", 1).await[0];
    // A pool that hands out idle connections without a ping first (sqlx's advice where
    // latency matters): a broken one fails the statement it is given. Even with the ping a
    // broken connection can answer it, when the server's reply is already buffered.
    let size = 30;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .connect_lazy_with(db.connect_options().clone());
    let results = polling(&pool);
    // Every connection the pool can hold is opened on a runtime that then ends, and breaks
    // with it.
    on_a_runtime_that_ends({
        let pool = pool.clone();
        async move {
            let mut held = Vec::new();
            for _ in 0..size {
                let mut conn = pool.acquire().await.expect("a connection");
                sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .expect("select");
                held.push(conn);
            }
            drop(held);
            // The pool takes each connection back in a task of this runtime.
            common::eventually(Duration::from_secs(10), "every connection idle", || {
                let idle = pool.num_idle();
                async move { (idle == size as usize).then_some(()) }
            })
            .await;
        }
    });
    assert_eq!(pool.num_idle(), size as usize, "every connection idle");
    watch_a_cancel(&results, db.pool(), id).await;
}
