//! What a fleet of idle workers costs the database server: starts `N` workers (distinct ids, one
//! queue each, default settings) in this process against a throwaway PostgreSQL (started with
//! `max_connections = 1000` and `pg_stat_statements`), lets them settle, then counts over
//! `SECONDS` the statements the server ran for them (`pg_stat_statements`, `BEGIN`/`COMMIT`
//! included) and the transactions it committed (`pg_stat_database.xact_commit`), and prints the
//! statements that dominate.
//!
//! ```text
//! cargo run --release --example idle_fleet -- 50 60
//! ```
//!
//! The figures are in `docs/performance.md`.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use skiplock::{Handler, Job, JobContext, JobError, Worker};
use skiplock_testing::embedded::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
}

impl Handler for Noop {
    type Output = ();

    async fn handle(self, _: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Statements and commits so far in the current database.
async fn counters(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    let counters = sqlx::query_as::<_, (i64, i64)>(
        "SELECT (SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements s
                 JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()),
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await?;
    Ok(counters)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(50), |n| n.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |n| n.parse())?;
    let server = tokio::task::spawn_blocking(|| {
        EmbeddedPostgres::builder()
            .setting("max_connections", "1000")
            .setting("shared_preload_libraries", "pg_stat_statements")
            .start()
    })
    .await?
    .context("start PostgreSQL")?;
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&server.url())
        .await?;
    sqlx::raw_sql("CREATE EXTENSION pg_stat_statements")
        .execute(&pool)
        .await?;
    skiplock::migrate(&pool).await?;
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            Worker::builder(pool.clone(), ())
                .register::<Noop>()
                .id(format!("idle-{i}"))
                .build()
                .map(Worker::start)
        })
        .collect::<Result<_, _>>()?;
    // Let every worker connect, declare and settle into its idle rhythm.
    tokio::time::sleep(Duration::from_secs(10)).await;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&pool)
        .await?;
    let (_, commits_before) = counters(&pool).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Statistics reach pg_stat_database when a backend reports them (about once a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (statements, commits_after) = counters(&pool).await?;
    let commits = commits_after - commits_before;
    let connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "{workers} idle workers over {elapsed:.1} s: {:.1} statements/s ({:.2} per worker), \
         {:.1} commits/s, {connections} connections",
        statements as f64 / elapsed,
        statements as f64 / elapsed / workers as f64,
        commits as f64 / elapsed,
    );
    let top = sqlx::query_as::<_, (i64, String)>(
        "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = current_database() ORDER BY calls DESC LIMIT 10",
    )
    .fetch_all(&pool)
    .await?;
    for (calls, query) in top {
        println!("{:8.1}/s  {query}", calls as f64 / elapsed);
    }
    for handle in handles {
        handle.shutdown().await?;
    }
    Ok(())
}
