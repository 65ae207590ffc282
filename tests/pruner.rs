//! Retention: the pruner deletes finished jobs past their state's age, never anything else,
//! in batches, without waiting for locked rows; workers run it by themselves.

mod common;

use std::time::Duration;

use common::{Record, database, eventually};
use skiplock::runtime::BuildError;
use skiplock::{EnqueueOptions, JobState, Pruner, PrunerConfig, Retention};
use sqlx::PgPool;

const HOUR: Duration = Duration::from_secs(60 * 60);

/// A job put in `state` as if it got there `age` ago (a PostgreSQL interval, e.g. '25 hours'):
/// finished ones get that `finished_at`, and every job gets that `created_at`, `run_at` and
/// (but for scheduled and available ones) `attempted_at`. In queue "nobody", which no worker
/// works.
async fn job_in(pool: &PgPool, state: &str, age: &str) -> i64 {
    let id = skiplock::enqueue_with(
        pool,
        &Record { n: 1 },
        EnqueueOptions::new().queue("nobody"),
    )
    .await
    .expect("enqueue");
    if state == "cancelled" {
        // Finished the way users finish it.
        let after = skiplock::cancel(pool, id).await.expect("cancel");
        assert_eq!(after, Some(JobState::Cancelled));
    }
    sqlx::query(
        "UPDATE skiplock.jobs
         SET state = $2::skiplock.job_state,
             finished_at = CASE WHEN $2 IN ('completed', 'failed', 'cancelled')
                                THEN now() - $3::interval END,
             created_at = now() - $3::interval,
             run_at = now() - $3::interval,
             attempt = CASE WHEN $2 IN ('scheduled', 'available') THEN 0 ELSE 1 END,
             attempted_at = CASE WHEN $2 IN ('scheduled', 'available') THEN NULL
                                 ELSE now() - $3::interval END,
             -- A running row holds a lease (the jobs_lease_iff_running CHECK).
             lease_token = CASE WHEN $2 = 'running' THEN nextval('skiplock.lease_token_seq') END,
             lease_expires_at = CASE WHEN $2 = 'running' THEN now() + interval '1 hour' END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(age)
    .execute(pool)
    .await
    .expect("age the job");
    id
}

/// The ids of the jobs left, ascending.
async fn left(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM skiplock.jobs ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("ids")
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs")
        .fetch_one(pool)
        .await
        .expect("count")
}

fn pruner(pool: &PgPool, retention: Retention) -> Pruner {
    Pruner::new(
        pool.clone(),
        PrunerConfig {
            retention,
            ..PrunerConfig::default()
        },
    )
}

/// Every final state after `age`.
fn all_after(age: Duration) -> Retention {
    Retention {
        completed: Some(age),
        failed: Some(age),
        cancelled: Some(age),
    }
}

#[tokio::test]
async fn by_default_completed_jobs_go_after_a_day_failed_and_cancelled_after_a_week() {
    let db = database().await;
    let pool = db.pool();
    let _old_completed = job_in(pool, "completed", "25 hours").await;
    let young_completed = job_in(pool, "completed", "23 hours").await;
    // Older than a day, younger than a week: kept, although completed jobs as old are not.
    let failed_2d = job_in(pool, "failed", "2 days").await;
    let cancelled_2d = job_in(pool, "cancelled", "2 days").await;
    let _failed_8d = job_in(pool, "failed", "8 days").await;
    let _cancelled_8d = job_in(pool, "cancelled", "8 days").await;
    let failed_6d = job_in(pool, "failed", "6 days 23 hours").await;

    let report = pruner(pool, Retention::default())
        .run_once()
        .await
        .expect("prune");
    assert_eq!(
        (report.completed, report.failed, report.cancelled),
        (1, 1, 1)
    );
    assert_eq!(report.total(), 3);
    assert_eq!(
        left(pool).await,
        [young_completed, failed_2d, cancelled_2d, failed_6d]
    );

    // Nothing left to do.
    let again = pruner(pool, Retention::default())
        .run_once()
        .await
        .expect("prune");
    assert_eq!(again.total(), 0);
}

#[tokio::test]
async fn each_state_is_kept_for_its_own_age() {
    let db = database().await;
    let pool = db.pool();
    let retention = Retention {
        completed: Some(HOUR),
        failed: Some(3 * HOUR),
        cancelled: Some(2 * HOUR),
    };
    // 2.5 hours old: past completed's and cancelled's age, within failed's.
    let _completed = job_in(pool, "completed", "150 minutes").await;
    let failed = job_in(pool, "failed", "150 minutes").await;
    let _cancelled = job_in(pool, "cancelled", "150 minutes").await;
    // 3.5 hours old: past every age.
    let _old_failed = job_in(pool, "failed", "210 minutes").await;
    // Just finished: within every age.
    let fresh: Vec<i64> = vec![
        job_in(pool, "completed", "0 seconds").await,
        job_in(pool, "failed", "0 seconds").await,
        job_in(pool, "cancelled", "0 seconds").await,
    ];

    let report = pruner(pool, retention).run_once().await.expect("prune");
    assert_eq!(
        (report.completed, report.failed, report.cancelled),
        (1, 1, 1)
    );
    let mut kept = vec![failed];
    kept.extend(fresh);
    assert_eq!(left(pool).await, kept);
}

#[tokio::test]
async fn a_state_kept_forever_is_never_deleted() {
    let db = database().await;
    let pool = db.pool();
    let completed = job_in(pool, "completed", "10 years").await;
    let _failed = job_in(pool, "failed", "10 years").await;
    let cancelled = job_in(pool, "cancelled", "10 years").await;

    // Failed jobs go at once; completed and cancelled ones stay forever.
    let retention = Retention {
        completed: None,
        cancelled: None,
        ..all_after(Duration::ZERO)
    };
    let report = pruner(pool, retention).run_once().await.expect("prune");
    assert_eq!(
        (report.completed, report.failed, report.cancelled),
        (0, 1, 0)
    );
    assert_eq!(left(pool).await, [completed, cancelled]);

    // Nothing at all.
    let report = pruner(pool, Retention::keep_forever())
        .run_once()
        .await
        .expect("prune");
    assert_eq!(report.total(), 0);
    assert_eq!(left(pool).await, [completed, cancelled]);

    // An age beyond any interval PostgreSQL can hold is forever too, not an error.
    let report = pruner(pool, all_after(Duration::MAX))
        .run_once()
        .await
        .expect("prune");
    assert_eq!(report.total(), 0);
    assert_eq!(left(pool).await, [completed, cancelled]);
}

#[tokio::test]
async fn unfinished_jobs_are_never_deleted_whatever_their_age() {
    let db = database().await;
    let pool = db.pool();
    let mut unfinished = Vec::new();
    for state in ["scheduled", "available", "running", "retryable"] {
        unfinished.push(job_in(pool, state, "10 years").await);
    }
    let finished = job_in(pool, "completed", "10 years").await;

    let report = pruner(pool, all_after(Duration::ZERO))
        .run_once()
        .await
        .expect("prune");
    assert_eq!(report.total(), 1, "only the finished job");
    assert_eq!(left(pool).await, unfinished);
    assert!(!unfinished.contains(&finished));
}

/// A pruner of everything older than an hour, ten jobs per statement.
fn in_batches_of_ten(pool: &PgPool) -> Pruner {
    Pruner::new(
        pool.clone(),
        PrunerConfig {
            retention: all_after(HOUR),
            batch_size: 10,
            ..PrunerConfig::default()
        },
    )
}

#[tokio::test]
async fn a_full_batch_is_followed_by_another_until_nothing_old_is_left() {
    let db = database().await;
    let pool = db.pool();
    for _ in 0..25 {
        job_in(pool, "completed", "2 hours").await;
    }
    let mut young = Vec::new();
    for _ in 0..3 {
        young.push(job_in(pool, "completed", "10 minutes").await);
    }
    let pruner = in_batches_of_ten(pool);

    let report = pruner.run_once().await.expect("prune");
    assert_eq!(report.completed, 25, "batches of 10, 10 and 5");
    assert_eq!(left(pool).await, young);
}

/// A round goes on in each (queue, kind) from where its last batch there ended, and a
/// (queue, kind) whose old rows all come after another's still gets its turn in the same round,
/// whether their ids alternate or not, in every state; a young row below a position waits.
#[tokio::test]
async fn a_round_prunes_every_queue_and_kind_however_their_ids_fall() {
    let db = database().await;
    let pool = db.pool();
    // Below the old rows of its own queue and kind. The completed jobs follow: their first
    // batch is all 'early', and 'late' deletes nothing in it.
    let young: i64 = sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, queue, state, attempt, finished_at)
         VALUES ('odd', 'mixed', 'failed', 1, now() - interval '10 minutes') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("young job");
    sqlx::raw_sql(
        "INSERT INTO skiplock.jobs (kind, queue, state, attempt, finished_at)
         SELECT 'early', 'default', 'completed', 1, now() - interval '2 hours'
         FROM generate_series(1, 15);
         INSERT INTO skiplock.jobs (kind, queue, state, attempt, finished_at)
         SELECT 'late', 'other', 'completed', 1, now() - interval '2 hours'
         FROM generate_series(1, 17);
         INSERT INTO skiplock.jobs (kind, queue, state, attempt, finished_at)
         SELECT CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END, 'mixed', 'failed', 1,
                now() - interval '2 hours'
         FROM generate_series(1, 23) AS i;",
    )
    .execute(pool)
    .await
    .expect("old jobs");
    let pruner = in_batches_of_ten(pool);

    let report = pruner.run_once().await.expect("prune");
    assert_eq!((report.completed, report.failed), (32, 23));
    assert_eq!(left(pool).await, [young]);
}

#[tokio::test]
async fn rows_locked_by_others_are_skipped_not_waited_for() {
    let db = database().await;
    let pool = db.pool();
    let locked = job_in(pool, "failed", "2 hours").await;
    let free = job_in(pool, "failed", "2 hours").await;

    // Another transaction holds the row, as `skiplock.retry` would while it puts it back.
    let mut other = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM skiplock.jobs WHERE id = $1 FOR UPDATE")
        .bind(locked)
        .execute(&mut *other)
        .await
        .expect("lock");
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        pruner(pool, all_after(HOUR)).run_once(),
    )
    .await
    .expect("the pruner waited for a locked row")
    .expect("prune");
    assert_eq!(report.failed, 1);
    assert_eq!(left(pool).await, [locked]);
    assert!(!left(pool).await.contains(&free));

    other.rollback().await.expect("release");
    let report = pruner(pool, all_after(HOUR))
        .run_once()
        .await
        .expect("prune");
    assert_eq!(report.failed, 1);
    assert!(left(pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pruners_do_not_conflict() {
    let db = database().await;
    let pool = db.pool();
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, queue, state, attempt, finished_at)
         SELECT 'record', 'nobody', 'completed', 1, now() - interval '2 hours'
         FROM generate_series(1, 2000)",
    )
    .execute(pool)
    .await
    .expect("old jobs");
    let config = PrunerConfig {
        retention: all_after(HOUR),
        batch_size: 100,
        ..PrunerConfig::default()
    };
    let pruners: Vec<_> = (0..4)
        .map(|_| {
            let pruner = Pruner::new(pool.clone(), config.clone());
            tokio::spawn(async move { pruner.run_once().await })
        })
        .collect();
    let mut deleted = 0;
    for pruner in pruners {
        deleted += pruner.await.expect("task").expect("prune").completed;
    }
    // Each row was deleted once; a pruner that finds another at work leaves the rest to it
    // or to its next round.
    let remaining = u64::try_from(count(pool).await).expect("count");
    assert_eq!(deleted + remaining, 2000);
    let report = Pruner::new(pool.clone(), config)
        .run_once()
        .await
        .expect("prune");
    assert_eq!(report.completed, remaining);
    assert_eq!(count(pool).await, 0);
}

#[tokio::test]
async fn a_worker_prunes_by_itself() {
    let db = database().await;
    let pool = db.pool();
    let old = [
        job_in(pool, "completed", "2 hours").await,
        job_in(pool, "failed", "2 hours").await,
        job_in(pool, "cancelled", "2 hours").await,
    ];
    let young = job_in(pool, "completed", "10 minutes").await;
    let waiting = job_in(pool, "scheduled", "1 year").await;

    let running = common::start(
        common::worker(pool)
            .register::<Record>()
            .retention(all_after(HOUR))
            .prune_interval(Duration::from_millis(100)),
    );
    eventually(Duration::from_secs(10), "the old jobs to go", || async {
        (count(pool).await == 2).then_some(())
    })
    .await;
    // A job the worker completes now is young: its rounds keep it.
    let id = skiplock::enqueue(pool, &Record { n: 2 })
        .await
        .expect("enqueue");
    common::wait_for_state(pool, "completed", 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.shutdown().await.expect("shutdown");

    let mut kept = vec![young, waiting, id];
    kept.sort_unstable();
    assert_eq!(left(pool).await, kept);
    assert!(old.iter().all(|id| !kept.contains(id)));
}

#[tokio::test]
async fn a_worker_that_keeps_everything_deletes_nothing() {
    let db = database().await;
    let pool = db.pool();
    let old = job_in(pool, "completed", "10 years").await;
    let running = common::start(
        common::worker(pool)
            .register::<Record>()
            .retention(Retention::keep_forever())
            .prune_interval(Duration::from_millis(50)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await.expect("shutdown");
    assert_eq!(left(pool).await, [old]);
}

#[tokio::test]
async fn a_zero_prune_interval_is_refused() {
    let pool = PgPool::connect_lazy("postgres://localhost/unused").expect("lazy pool");
    let error = skiplock::Worker::builder(pool.clone(), ())
        .prune_interval(Duration::ZERO)
        .register::<Noop>()
        .build()
        .err()
        .expect("refused");
    assert!(
        matches!(error, BuildError::ZeroDuration("prune_interval")),
        "{error:?}"
    );
}

/// Does nothing; for a worker that needs no state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Noop;

impl skiplock::Job for Noop {
    const KIND: &'static str = "noop";
}

impl skiplock::Handler<()> for Noop {
    type Output = ();

    async fn handle(self, _: skiplock::JobContext<()>) -> Result<(), skiplock::JobError> {
        Ok(())
    }
}
