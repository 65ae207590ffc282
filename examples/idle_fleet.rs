//! What a fleet of idle workers costs the database server: starts `N` workers (distinct ids, one
//! queue each, default settings) in this process on a fresh database, lets them settle, then
//! counts the transactions the server committed in that database over `SECONDS`
//! (`pg_stat_database.xact_commit`; each autocommit statement is one transaction).
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run --release --example idle_fleet -- 50 60
//! ```
//!
//! The figures are in `docs/performance.md`.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use skiplock::testing::TestDatabase;
use skiplock::{Handler, Job, JobContext, JobError, Worker};

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

async fn commits(db: &TestDatabase) -> anyhow::Result<i64> {
    // Statistics reach pg_stat_database when a backend reports them (about once a second).
    let commits = sqlx::query_scalar::<_, i64>(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(commits)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(50), |n| n.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |n| n.parse())?;
    let db = TestDatabase::new().await.context("test database")?;
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            Worker::builder(db.pool().clone(), ())
                .register::<Noop>()
                .id(format!("idle-{i}"))
                .build()
                .map(Worker::start)
        })
        .collect::<Result<_, _>>()?;
    // Let every worker connect, declare and settle into its idle rhythm.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = commits(&db).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Let the last second's statistics arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = commits(&db).await?;
    let elapsed = started.elapsed().as_secs_f64() - 1.5;
    let per_second = (after - before) as f64 / elapsed;
    println!(
        "{workers} idle workers: {} transactions in {elapsed:.1} s = {per_second:.1}/s ({:.2}/s per worker)",
        after - before,
        per_second / workers as f64,
    );
    for handle in handles {
        handle.shutdown().await?;
    }
    Ok(())
}
