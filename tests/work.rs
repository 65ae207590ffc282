//! Working jobs: exactly-once delivery across workers, scheduling, priorities, queues.

mod common;

use std::time::Duration;

use common::{Record, database, job, runs_per_job, start, wait_for_state, with_worker, worker};
use skiplock::{EnqueueOptions, JobState, NewJob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_run_ten_thousand_jobs_exactly_once() {
    let db = database().await;
    let pool = db.pool();
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|n| NewJob::new(&Record { n }))
        .collect::<Result<_, _>>()
        .expect("serialize");
    let ids = skiplock::enqueue_many(pool, jobs).await.expect("enqueue");

    let workers: Vec<_> = (0..4)
        .map(|i| {
            start(
                worker(pool)
                    .id(format!("worker-{i}"))
                    .queue("default", 8)
                    .register::<Record>(),
            )
        })
        .collect();
    wait_for_state(pool, "completed", 10_000, Duration::from_secs(120)).await;
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }

    let runs = runs_per_job(pool).await;
    assert_eq!(runs.len(), 10_000, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    let ran: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
    assert_eq!(ran, ids);

    // The work was shared, and each job records the one worker that ran it.
    let per_worker: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM ledger GROUP BY worker ORDER BY worker")
            .fetch_all(pool)
            .await
            .expect("per worker");
    assert!(
        per_worker.len() >= 2,
        "one worker did everything: {per_worker:?}"
    );
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM skiplock.jobs j JOIN ledger l ON l.job_id = j.id
         WHERE j.attempted_by <> ARRAY[l.worker] OR j.attempt <> 1 OR j.result <> to_jsonb((j.args->>'n')::bigint * 2)",
    )
    .fetch_one(pool)
    .await
    .expect("check rows");
    assert_eq!(mismatched, 0);
}

#[tokio::test]
async fn scheduled_job_does_not_run_before_run_at() {
    let db = database().await;
    let pool = db.pool();
    let running = start(worker(pool).register::<Record>());

    let delayed = skiplock::enqueue_with(
        pool,
        &Record { n: 1 },
        EnqueueOptions::new().delay(Duration::from_millis(1500)),
    )
    .await
    .expect("enqueue");
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    let absolute = skiplock::enqueue_with(pool, &Record { n: 2 }, EnqueueOptions::new().run_at(at))
        .await
        .expect("enqueue");
    assert_eq!(job(pool, delayed).await.state, JobState::Scheduled);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(common::count_state(pool, "completed").await, 0, "ran early");

    wait_for_state(pool, "completed", 2, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");
    for id in [delayed, absolute] {
        let row = job(pool, id).await;
        let started_at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT started_at FROM ledger WHERE job_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("ledger");
        assert!(
            started_at >= row.run_at,
            "job {id} started {started_at} before {}",
            row.run_at
        );
        // Promotion sleeps until the next known run_at: the job starts promptly once due.
        let late = (started_at - row.run_at).to_std().unwrap_or_default();
        assert!(
            late < Duration::from_millis(500),
            "job {id} started {late:?} late"
        );
    }
}

#[tokio::test]
async fn priorities_are_honoured_within_a_queue() {
    let db = database().await;
    let pool = db.pool();
    // Enqueue before any worker runs, in an order unrelated to priority.
    let priorities: [i16; 8] = [5, -2, 3, 0, -2, 9, 1, 3];
    for (n, priority) in priorities.iter().enumerate() {
        skiplock::enqueue_with(
            pool,
            &Record { n: n as i64 },
            EnqueueOptions::new().priority(*priority),
        )
        .await
        .expect("enqueue");
    }
    with_worker(
        worker(pool).queue("default", 1).register::<Record>(),
        wait_for_state(pool, "completed", 8, Duration::from_secs(10)),
    )
    .await;

    let order: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT j.priority, j.id FROM ledger l JOIN skiplock.jobs j ON j.id = l.job_id ORDER BY l.seq",
    )
    .fetch_all(pool)
    .await
    .expect("order");
    let mut expected = order.clone();
    expected.sort();
    assert_eq!(order, expected, "ran in (priority, id) order");
}

#[tokio::test]
async fn a_worker_only_claims_from_its_own_queues() {
    let db = database().await;
    let pool = db.pool();
    let mine = skiplock::enqueue_with(pool, &Record { n: 1 }, EnqueueOptions::new().queue("mine"))
        .await
        .expect("enqueue");
    let theirs = skiplock::enqueue_with(
        pool,
        &Record { n: 2 },
        EnqueueOptions::new().queue("theirs"),
    )
    .await
    .expect("enqueue");
    let running = start(worker(pool).queue("mine", 2).register::<Record>());
    wait_for_state(pool, "completed", 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(job(pool, mine).await.state, JobState::Completed);
    assert_eq!(job(pool, theirs).await.state, JobState::Available);
}

#[tokio::test]
async fn builder_refuses_invalid_configuration() {
    let db = database().await;
    let pool = db.pool();
    let error = |builder: skiplock::WorkerBuilder<sqlx::PgPool>| match builder.build() {
        Ok(_) => panic!("built an invalid worker"),
        Err(error) => error.to_string(),
    };
    assert!(error(worker(pool)).contains("no job kinds"));
    assert!(error(worker(pool).register::<Record>().register::<Record>()).contains("twice"));
    assert!(error(worker(pool).register::<Record>().queue("q", 0)).contains("zero"));
    assert!(
        error(
            worker(pool)
                .register::<Record>()
                .queue("q", 1)
                .queue("q", 2)
        )
        .contains("twice")
    );
    assert!(error(worker(pool).register::<Record>().queue("", 1)).contains("1 to 128"));
    assert!(
        error(
            worker(pool)
                .register::<Record>()
                .poll_interval(Duration::ZERO)
        )
        .contains("zero")
    );

    let built = worker(pool).register::<Record>().build().expect("valid");
    assert_eq!(
        built.queues(),
        &[("default".to_owned(), skiplock::runtime::DEFAULT_CONCURRENCY)]
    );
}
