//! Waiting on jobs and watching them (`skiplock::results`) against a real database and worker.

mod common;

use std::time::Duration;

use common::{Fail, Record, database, enqueue_records, start, worker};
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
    let timed_out = results
        .wait::<i64>(waiting, Duration::from_millis(300))
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
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%skiplock_job%'",
    )
    .fetch_one(pool)
    .await
    .expect("sessions");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_died_with_its_runtime_is_started_again() {
    let db = database().await;
    let pool = db.pool();
    let mut config = ResultsConfig::default();
    config.poll_interval = Duration::from_millis(200);
    let results = Results::with_config(pool.clone(), config);
    let id = enqueue_records(pool, "default", 1).await[0];
    // A watch on a runtime of its own starts the listener there; that runtime ends (as a
    // request's or a test's does), and the listener with it.
    std::thread::spawn({
        let results = results.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut updates = Box::pin(results.watch(id));
                let first = updates.next().await.expect("an update").expect("update");
                assert_eq!(first.state, JobState::Available);
            });
        }
    })
    .join()
    .expect("the other runtime");
    // The same Results, on this runtime: its watches still see changes (the poll finds a
    // cancel made in SQL, which notifies nobody).
    let mut updates = Box::pin(results.watch(id));
    let first = updates.next().await.expect("an update").expect("update");
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
