//! Cluster-wide concurrency and rate limits (`skiplock::limits`, migration 0020): held across
//! four worker processes as seen by a sampler reading the jobs table every 10 ms and by the
//! handlers' own gauges; per partition; rates over 60 s; the SQL worker protocol's claim; the
//! API, its validation and `explain`.
#![allow(clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use common::child::{self, ChildWorker};
use common::{count_state, database, eventually, with_worker, worker};
use serde::{Deserialize, Serialize};
use skiplock::inspect::{self, Reason};
use skiplock::limits::{self, Limit, LimitError, Scope};
use skiplock::{Handler, Job, JobContext, JobError, NewJob, Worker};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const CHILD_ENV: &str = "SKIPLOCK_THROTTLE_CHILD";

/// The tests that start four worker processes run one at a time: together they would need
/// more connections than a stock server allows (100).
static PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const QUEUE: &str = "limited";

/// Holds a slot for `millis`, counting itself in the `gauges` table while it runs: row `all`
/// and row `c:<customer_id>`, each with the current and the highest count.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    customer_id: i64,
    millis: u64,
}

impl Job for Hold {
    const KIND: &'static str = "hold";
    const QUEUE: &'static str = QUEUE;
}

impl Handler<PgPool> for Hold {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        let pool = ctx.state();
        let keys = vec!["all".to_owned(), format!("c:{}", self.customer_id)];
        // One row per statement, each its own transaction: two handlers never hold two gauge
        // rows at once, so they cannot deadlock (a failed decrement would skew the peak).
        for key in &keys {
            sqlx::query(
                "INSERT INTO gauges AS g (key, cur, peak) VALUES ($1, 1, 1)
                 ON CONFLICT (key) DO UPDATE SET cur = g.cur + 1, peak = greatest(g.peak, g.cur + 1)",
            )
            .bind(key)
            .execute(pool)
            .await?;
        }
        sqlx::query("INSERT INTO starts (job_id) VALUES ($1)")
            .bind(ctx.id())
            .execute(pool)
            .await?;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        for key in &keys {
            sqlx::query("UPDATE gauges SET cur = cur - 1 WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

async fn tables(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE gauges (key text PRIMARY KEY, cur int NOT NULL, peak int NOT NULL);
         CREATE TABLE starts (job_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .execute(pool)
    .await
    .expect("tables");
}

async fn peak(pool: &PgPool, key: &str) -> i32 {
    sqlx::query_scalar("SELECT coalesce((SELECT peak FROM gauges WHERE key = $1), 0)")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("peak")
}

async fn enqueue_holds(pool: &PgPool, customers: i64, per_customer: i64, millis: u64) {
    let jobs = (0..per_customer).flat_map(|_| {
        (0..customers).map(move |customer_id| {
            NewJob::new(&Hold {
                customer_id,
                millis,
            })
            .expect("job")
        })
    });
    skiplock::enqueue_many(pool, jobs).await.expect("enqueue");
}

/// The worker process of the tests below; does nothing unless one of them started it.
#[test]
#[ignore = "entry point of the worker processes the limit tests start"]
fn child_worker() {
    child::run(CHILD_ENV, |url| {
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .connect_lazy(&url)
            .expect("url");
        Worker::builder(pool.clone(), pool)
            .queue(QUEUE, 10)
            .poll_interval(Duration::from_millis(500))
            .shutdown_timeout(Duration::from_secs(5))
            .register::<Hold>()
    });
}

async fn four_workers(pool: &PgPool, url: &str) -> Vec<ChildWorker> {
    child::start_live(pool, 4, "child_worker", CHILD_ENV, url).await
}

/// Samples, every 10 ms until stopped, the most running jobs of the queue and the most running
/// of one customer, straight from `skiplock.jobs`.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(i64, i64)>,
}

impl Sampler {
    fn start(pool: &PgPool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pool = pool.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (total_max, customer_max) = (AtomicI64::new(0), AtomicI64::new(0));
            while !flag.load(Ordering::Relaxed) {
                let (total, customer): (i64, i64) = sqlx::query_as(
                    "SELECT coalesce(sum(n), 0)::bigint, coalesce(max(n), 0)
                     FROM (SELECT count(*) AS n FROM skiplock.jobs
                           WHERE state = 'running' AND queue = $1
                           GROUP BY args -> 'customer_id') AS c",
                )
                .bind(QUEUE)
                .fetch_one(&pool)
                .await
                .expect("sample");
                total_max.fetch_max(total, Ordering::Relaxed);
                customer_max.fetch_max(customer, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (total_max.into_inner(), customer_max.into_inner())
        });
        Self { stop, task }
    }

    async fn finish(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

async fn wait_all_completed(pool: &PgPool, n: i64) {
    eventually(Duration::from_secs(120), "every job completed", || async {
        (count_state(pool, "completed").await == n).then_some(())
    })
    .await;
    let retried: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT errors FROM skiplock.jobs WHERE attempt <> 1")
            .fetch_all(pool)
            .await
            .expect("attempts");
    assert!(
        retried.is_empty(),
        "every job ran once, its gauges counted exactly: {retried:?}"
    );
}

/// The test: 4 worker processes of 10 slots each, a queue limit of 3: neither the table
/// sampled every 10 ms nor the handlers' own gauge ever shows more than 3 running, and 3 is
/// reached.
#[tokio::test]
async fn a_queue_limit_holds_across_four_worker_processes() {
    let _one_at_a_time = PROCESSES.lock().await;
    let db = database().await;
    let pool = db.pool();
    tables(pool).await;
    limits::set(pool, &Limit::queue(QUEUE).max_running(3))
        .await
        .expect("limit");
    let _children = four_workers(pool, &db.url()).await;
    let sampler = Sampler::start(pool);
    enqueue_holds(pool, 8, 20, 15).await;
    wait_all_completed(pool, 160).await;
    let (sampled, _) = sampler.finish().await;
    let handled = peak(pool, "all").await;
    eprintln!("limit 3: sampled at most {sampled} running, handlers counted at most {handled}");
    assert_eq!(
        sampled, 3,
        "the table never shows more than 3 running, and 3 is reached"
    );
    assert_eq!(
        handled, 3,
        "the handlers never count more than 3, and 3 is reached"
    );
}

/// At most one running per customer_id, across 4 processes, while different customers run at
/// the same time.
#[tokio::test]
async fn a_per_partition_limit_holds_per_customer_across_four_worker_processes() {
    let _one_at_a_time = PROCESSES.lock().await;
    let db = database().await;
    let pool = db.pool();
    tables(pool).await;
    limits::set(
        pool,
        &Limit::queue(QUEUE)
            .partition_by("customer_id")
            .max_running(1),
    )
    .await
    .expect("limit");
    let _children = four_workers(pool, &db.url()).await;
    let sampler = Sampler::start(pool);
    enqueue_holds(pool, 6, 15, 20).await;
    wait_all_completed(pool, 90).await;
    let (sampled_total, sampled_customer) = sampler.finish().await;
    let mut customer_peaks = Vec::new();
    for customer in 0..6 {
        customer_peaks.push(peak(pool, &format!("c:{customer}")).await);
    }
    let all = peak(pool, "all").await;
    eprintln!(
        "per customer: sampled {sampled_customer} (total {sampled_total}), handlers {customer_peaks:?}, all {all}"
    );
    assert_eq!(sampled_customer, 1, "never two running for one customer");
    assert!(customer_peaks.iter().all(|&p| p == 1), "{customer_peaks:?}");
    assert!(all >= 2, "different customers ran at the same time: {all}");
}

/// The test: a rate of 5 starts a second for a kind, 4 worker processes, 60 s: the
/// starts are within ±10% of 300 (the bucket starts full, so up to 5 more may start at once).
#[tokio::test]
async fn a_rate_limit_holds_within_ten_percent_over_sixty_seconds_on_four_processes() {
    let _one_at_a_time = PROCESSES.lock().await;
    const RATE: i64 = 5;
    const SECS: i64 = 60;
    let db = database().await;
    let pool = db.pool();
    tables(pool).await;
    let _children = four_workers(pool, &db.url()).await;
    limits::set(
        pool,
        &Limit::kind(Hold::KIND).rate(RATE as u32, Duration::from_secs(1)),
    )
    .await
    .expect("limit");
    enqueue_holds(pool, 1, RATE * SECS * 2, 1).await;
    // The window opens at the first start.
    let first: chrono::DateTime<chrono::Utc> =
        eventually(Duration::from_secs(30), "a first start", || async {
            sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "SELECT min(at) FROM starts",
            )
            .fetch_one(pool)
            .await
            .expect("first")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(SECS as u64 + 2)).await;
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM starts WHERE at < $1::timestamptz + make_interval(secs => $2)",
    )
    .bind(first)
    .bind(SECS as f64)
    .fetch_one(pool)
    .await
    .expect("starts");
    let expected = RATE * SECS;
    eprintln!("rate {RATE}/s over {SECS} s on 4 processes: {started} starts (nominal {expected})");
    assert!(
        (started - expected).abs() * 10 <= expected,
        "{started} starts, not within 10% of {expected}"
    );
}

async fn sql_claim(pool: &PgPool, n: i32) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT id, lease_token FROM skiplock.claim('sql-1', $1, '{hold}', $2)")
        .bind(vec![QUEUE])
        .bind(n)
        .fetch_all(pool)
        .await
        .expect("claim")
}

/// The SQL worker protocol's claim honours concurrency limits (queue and per partition) and
/// rates, and a completion frees the slot.
#[tokio::test]
async fn the_sql_claim_honours_limits() {
    let db = database().await;
    let pool = db.pool();
    enqueue_holds(pool, 2, 5, 1).await;
    sqlx::query("SELECT skiplock.set_limit(queue => $1, max_running => 3)")
        .bind(QUEUE)
        .execute(pool)
        .await
        .expect("set");
    let first = sql_claim(pool, 10).await;
    assert_eq!(first.len(), 3);
    assert!(sql_claim(pool, 10).await.is_empty(), "the limit is reached");
    let (id, token) = first[0];
    let done: bool = sqlx::query_scalar("SELECT skiplock.complete($1, $2)")
        .bind(id)
        .bind(token)
        .fetch_one(pool)
        .await
        .expect("complete");
    assert!(done);
    assert_eq!(
        sql_claim(pool, 10).await.len(),
        1,
        "a completion frees its slot"
    );

    // Per customer: 3 running over 2 customers already; at most 1 per customer allows none.
    sqlx::query("SELECT skiplock.clear_limit(queue => $1)")
        .bind(QUEUE)
        .execute(pool)
        .await
        .expect("clear");
    sqlx::query(
        "SELECT skiplock.set_limit(queue => $1, max_running => 1, partition_key => 'customer_id')",
    )
    .bind(QUEUE)
    .execute(pool)
    .await
    .expect("set");
    assert!(
        sql_claim(pool, 10).await.is_empty(),
        "both customers are busy"
    );
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'completed', finished_at = now(), lease_token = NULL,
                lease_expires_at = NULL WHERE state = 'running'",
    )
    .execute(pool)
    .await
    .expect("finish");
    let claimed = sql_claim(pool, 10).await;
    assert_eq!(claimed.len(), 2, "one per customer");
    let customers: Vec<i64> = sqlx::query_scalar(
        "SELECT (args ->> 'customer_id')::bigint FROM skiplock.jobs WHERE state = 'running' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("customers");
    assert_eq!(customers, [0, 1]);

    // A rate: 2 starts a minute.
    sqlx::query("SELECT skiplock.clear_limit(queue => $1, partition_key => 'customer_id')")
        .bind(QUEUE)
        .execute(pool)
        .await
        .expect("clear");
    sqlx::query("SELECT skiplock.set_limit(kind => 'hold', max_starts => 2, period_secs => 60)")
        .execute(pool)
        .await
        .expect("set");
    assert_eq!(sql_claim(pool, 10).await.len(), 2);
    assert!(sql_claim(pool, 10).await.is_empty(), "the rate is spent");
    let wait: f64 = sqlx::query_scalar("SELECT skiplock.throttle_wait($1, '{hold}')")
        .bind(QUEUE)
        .fetch_one(pool)
        .await
        .expect("wait");
    assert!(wait > 20.0 && wait <= 30.0, "next start in {wait} s");

    // Counting under a lock needs a fresh snapshot per statement: other isolation levels are
    // refused rather than over-claimed.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .expect("isolation");
    let refused = sqlx::query("SELECT * FROM skiplock.claim('sql-1', $1, '{hold}', 1)")
        .bind(vec![QUEUE])
        .fetch_all(&mut *tx)
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("READ COMMITTED"), "{refused}");
}

/// Limits set, listed with running counts, replaced and cleared; invalid ones refused before
/// the database; CHECKs refuse them from SQL too.
#[tokio::test]
async fn limits_are_set_listed_and_cleared() {
    let db = database().await;
    let pool = db.pool();
    let id = limits::set(pool, &Limit::queue("mail").max_running(3))
        .await
        .expect("set");
    let again = limits::set(
        pool,
        &Limit::queue("mail")
            .max_running(4)
            .rate(10, Duration::from_secs(60)),
    )
    .await
    .expect("replace");
    assert_eq!(id, again, "one limit per scope and key");
    limits::set(
        pool,
        &Limit::kind("charge")
            .partition_by("customer_id")
            .max_running(1),
    )
    .await
    .expect("set");
    let listed = limits::list(pool).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].scope, Scope::Queue("mail".into()));
    assert_eq!(listed[0].max_running, Some(4));
    assert_eq!(listed[0].rate.map(|r| r.max_starts), Some(10));
    assert_eq!(listed[0].running, 0);
    assert_eq!(listed[1].partition_key.as_deref(), Some("customer_id"));

    assert!(matches!(
        limits::set(pool, &Limit::queue("mail")).await,
        Err(LimitError::NoLimit)
    ));
    assert!(matches!(
        limits::set(pool, &Limit::queue("").max_running(1)).await,
        Err(LimitError::InvalidName(_))
    ));
    assert!(matches!(
        limits::set(pool, &Limit::queue("q").max_running(0)).await,
        Err(LimitError::OutOfRange)
    ));
    assert!(matches!(
        limits::set(pool, &Limit::queue("q").rate(1, Duration::from_millis(10))).await,
        Err(LimitError::OutOfRange)
    ));
    assert!(matches!(
        limits::set(
            pool,
            &Limit::queue("q")
                .partition_by("k")
                .rate(1, Duration::from_secs(1))
        )
        .await,
        Err(LimitError::PartitionedRate)
    ));
    for bad in [
        "SELECT skiplock.set_limit(queue => 'q')",
        "SELECT skiplock.set_limit(queue => 'q', kind => 'k', max_running => 1)",
        "SELECT skiplock.set_limit(queue => 'q', max_running => -1)",
        "SELECT skiplock.set_limit(queue => 'q', max_starts => 1, period_secs => 0.5)",
        "SELECT skiplock.set_limit(queue => 'q', max_starts => 1, period_secs => 100000)",
        "SELECT skiplock.set_limit(queue => 'q', max_starts => 1)",
    ] {
        assert!(sqlx::query(bad).execute(pool).await.is_err(), "{bad}");
    }

    assert!(
        limits::clear(pool, &Scope::Queue("mail".into()), None)
            .await
            .expect("clear")
    );
    assert!(
        !limits::clear(pool, &Scope::Queue("mail".into()), None)
            .await
            .expect("clear")
    );
    assert!(
        !limits::clear(pool, &Scope::Kind("charge".into()), None)
            .await
            .expect("clear"),
        "the per-customer limit is another limit"
    );
    assert!(
        limits::clear(pool, &Scope::Kind("charge".into()), Some("customer_id"))
            .await
            .expect("clear")
    );
    assert!(limits::list(pool).await.expect("list").is_empty());
}

/// A worker already running picks a limit up (and its removal) without a restart, and explain
/// names the limit holding a job back.
#[tokio::test]
async fn a_running_worker_follows_limits_and_explain_names_them() {
    let db = database().await;
    let pool = db.pool();
    tables(pool).await;
    let builder = worker(pool).queue(QUEUE, 10).register::<Hold>();
    with_worker(builder, async {
        // Unlimited first: the worker is on the plain claim.
        enqueue_holds(pool, 1, 2, 1).await;
        wait_all_completed(pool, 2).await;
        limits::set(pool, &Limit::queue(QUEUE).max_running(1))
            .await
            .expect("limit");
        enqueue_holds(pool, 1, 3, 60_000).await;
        eventually(Duration::from_secs(10), "one running", || async {
            (count_state(pool, "running").await == 1).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count_state(pool, "running").await, 1, "the limit holds");
        let waiting: i64 = sqlx::query_scalar(
            "SELECT min(id) FROM skiplock.jobs WHERE state = 'available'",
        )
        .fetch_one(pool)
        .await
        .expect("a waiting job");
        let explained = inspect::explain(pool, waiting)
            .await
            .expect("explain")
            .expect("the job");
        let throttled = explained
            .reasons
            .iter()
            .find(|reason| matches!(reason, Reason::Throttled { .. }))
            .expect("a throttled reason");
        assert!(
            matches!(throttled, Reason::Throttled { scope: Scope::Queue(q), running: 1, max_running: Some(1), .. } if q == QUEUE),
            "{throttled:?}"
        );
        assert!(throttled.to_string().contains("1 running of 1"), "{throttled}");

        // Cleared: the worker is woken and runs the rest at once.
        limits::clear(pool, &Scope::Queue(QUEUE.into()), None)
            .await
            .expect("clear");
        eventually(Duration::from_secs(5), "three running", || async {
            (count_state(pool, "running").await == 3).then_some(())
        })
        .await;
        sqlx::query("SELECT skiplock.cancel(id) FROM skiplock.jobs WHERE state = 'running'")
            .execute(pool)
            .await
            .expect("cancel");
    })
    .await;
}
