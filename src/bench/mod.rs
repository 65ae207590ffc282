//! Benchmarks of skiplock on your own database: what `skiplock bench` runs.
//!
//! Every scenario runs in a fresh database of its own (created on the server you name, migrated,
//! and dropped afterwards; the role needs `CREATEDB`), counts what happened from the jobs table
//! rather than from in-process counters alone, and reports the database's cost per job:
//! commits, WAL bytes and the dead tuples left behind.
//!
//! - [`Scenario::Insert`]: enqueue throughput, one job per transaction or in batches.
//! - [`Scenario::Drain`]: a pre-filled queue worked to empty; timed from the first claim to the
//!   last completion, both in database time.
//! - [`Scenario::Steady`]: a fixed offered load; completion rate, backlog and enqueue-to-start
//!   latency percentiles, optionally with a long `REPEATABLE READ` reader in the middle.
//! - [`Scenario::Latency`]: an idle system; one job at a time, from its insert's commit to its
//!   handler's start.
//!
//! Benchmarks share the machine with the database: run them on an otherwise quiet server, and
//! compare figures measured in the same session, never across days.

mod cost;
mod drain;
mod insert;
mod inspect;
mod latency;
mod probe;
mod soak;
mod steady;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};

pub use self::drain::Drain;
pub use self::insert::{Insert, InsertMode};
pub use self::inspect::Inspect;
pub use self::latency::Latency;
pub use self::steady::{HoldSnapshot, Steady};

/// The queue every benchmark job goes to.
const QUEUE: &str = "bench";

/// The error of a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A statement of the benchmark itself failed.
    #[error("could not {action}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrating the fresh database failed.
    #[error("could not migrate the benchmark database")]
    Migrate(#[source] crate::MigrateError),
    /// Enqueueing failed.
    #[error("could not enqueue")]
    Enqueue(#[source] crate::EnqueueError),
    /// The worker could not be built.
    #[error("could not build the worker")]
    Worker(#[source] crate::runtime::BuildError),
    /// A benchmark worker failed.
    #[error("a benchmark worker failed")]
    WorkerFailed(#[source] crate::WorkerError),
    /// The jobs table does not hold what the run should have produced.
    #[error("{0}")]
    Incomplete(String),
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A soak's samples or chart could not be written to the file named.
    #[error("could not write {0}")]
    Output(String, #[source] std::io::Error),
    /// A sample did not serialize.
    #[error("could not serialize a sample")]
    Json(#[source] serde_json::Error),
    /// The chart could not be drawn into the file named (the message says why).
    #[error("could not draw the chart {0}: {1}")]
    Chart(String, String),
}

impl From<crate::EnqueueError> for BenchError {
    fn from(error: crate::EnqueueError) -> Self {
        Self::Enqueue(error)
    }
}

impl BenchError {
    fn database(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { action, source }
    }
}

/// What to benchmark.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Scenario {
    /// Enqueue throughput.
    Insert(Insert),
    /// Work a pre-filled queue to empty.
    Drain(Drain),
    /// A fixed offered load.
    Steady(Steady),
    /// Pickup latency on an idle system.
    Latency(Latency),
    /// How fast `skiplock::inspect` answers on a big table.
    Inspect(Inspect),
}

/// Where and how benchmarks run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server. Each scenario creates its own database there (the role needs `CREATEDB`),
    /// connecting first to the database these options name.
    pub server: PgConnectOptions,
    /// Workers commit claims and completions with `synchronous_commit = off`
    /// ([`WorkerBuilder::synchronous_commit`](crate::WorkerBuilder::synchronous_commit)).
    /// Default `false`: durable commits.
    pub async_commit: bool,
    /// Workers count their metrics ([`WorkerBuilder::metrics`](crate::WorkerBuilder::metrics),
    /// one fresh [`Metrics`](crate::metrics::Metrics) per run), and a drain encodes them once a
    /// second as a scrape would: what metrics cost. Default `false`.
    pub metrics: bool,
}

impl BenchConfig {
    /// Benchmarks on the server of `server`, with durable commits.
    pub fn new(server: PgConnectOptions) -> Self {
        Self {
            server,
            async_commit: false,
            metrics: false,
        }
    }
}

/// How far a running benchmark is, for a progress line.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// What it is doing, e.g. `"filling"` or `"draining"`.
    pub phase: &'static str,
    /// Jobs done so far in this phase.
    pub done: u64,
    /// Jobs this phase will do, when known.
    pub total: Option<u64>,
    /// Time spent in this phase.
    pub elapsed: Duration,
}

/// The result of one scenario. Serialises to the JSON line `skiplock bench --json` prints.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// `insert_single`, `insert_bulk`, `drain`, `steady` or `latency`.
    pub scenario: &'static str,
    /// Jobs counted in the database: inserted, or completed.
    pub jobs: u64,
    /// The measured span, in seconds.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub jobs_per_s: f64,
    /// Median latency in milliseconds, where latency is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 95th percentile latency in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Largest latency in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Commits in the benchmark database per job.
    pub commits_per_job: f64,
    /// WAL written by the server per job, in bytes.
    pub wal_bytes_per_job: f64,
    /// Dead tuples in `skiplock.jobs` at the end of the run.
    pub dead_tuples: i64,
    /// Whether claims and completions committed with `synchronous_commit = off`.
    pub async_commit: bool,
    /// Whether the workers counted metrics ([`BenchConfig::metrics`]).
    pub metrics: bool,
    /// The scenario's settings and its own figures (backlog, per-window rates, ...).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn new(scenario: &'static str, jobs: u64, seconds: f64) -> Self {
        Self {
            scenario,
            jobs,
            seconds,
            jobs_per_s: if seconds > 0.0 {
                jobs as f64 / seconds
            } else {
                0.0
            },
            ..Self::default()
        }
    }

    /// Adds one entry to [`details`](Self::details).
    fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Fills in the latency percentiles from `samples` (milliseconds, any order).
    fn latencies(mut self, mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return self;
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        self.p50_ms = Some(at(0.50));
        self.p95_ms = Some(at(0.95));
        self.p99_ms = Some(at(0.99));
        self.max_ms = samples.last().copied();
        self
    }
}

/// Runs one scenario in a fresh database, calling `progress` a few times a second during its
/// longer phases.
///
/// # Errors
/// [`BenchError`] when the database cannot be created or migrated, a statement fails, or the
/// jobs table does not hold every job the run should have produced.
///
/// # Cancel safety
/// Not cancel safe: dropped midway, it leaves its `skiplock_bench_*` database behind.
pub async fn run(
    config: &BenchConfig,
    scenario: &Scenario,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Report, BenchError> {
    let database = BenchDatabase::create(&config.server).await?;
    let report = match scenario {
        Scenario::Insert(insert) => insert.run(&database, progress).await,
        Scenario::Drain(drain) => drain.run(config, &database, progress).await,
        Scenario::Steady(steady) => steady.run(config, &database, progress).await,
        Scenario::Latency(latency) => latency.run(config, &database).await,
        Scenario::Inspect(inspect) => inspect.run(&database, progress).await,
    };
    database.drop().await;
    report.map(|report| Report {
        async_commit: config.async_commit,
        metrics: config.metrics,
        ..report
    })
}

/// A fresh, migrated database, dropped by [`drop`](Self::drop).
struct BenchDatabase {
    server: PgConnectOptions,
    options: PgConnectOptions,
    name: String,
}

impl BenchDatabase {
    async fn create(server: &PgConnectOptions) -> Result<Self, BenchError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "skiplock_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = server
            .connect()
            .await
            .map_err(BenchError::database("connect to the server"))?;
        crate::db::database::create(&mut admin, &name)
            .await
            .map_err(BenchError::database("create the benchmark database"))?;
        let _ = admin.close().await;
        let database = Self {
            server: server.clone(),
            options: server.clone().database(&name),
            name,
        };
        let migrated = match database.pool(1).await {
            Ok(pool) => {
                let migrated = crate::migrate(&pool).await.map_err(BenchError::Migrate);
                pool.close().await;
                migrated
            }
            Err(error) => Err(error),
        };
        if let Err(error) = migrated {
            database.drop().await;
            return Err(error);
        }
        Ok(database)
    }

    /// A new pool of up to `connections` connections to this database.
    async fn pool(&self, connections: u32) -> Result<PgPool, BenchError> {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(self.options.clone())
            .await
            .map_err(BenchError::database("connect to the benchmark database"))
    }

    /// One connection for the benchmark's own statements.
    async fn connect(&self) -> Result<PgConnection, BenchError> {
        self.options
            .connect()
            .await
            .map_err(BenchError::database("connect to the benchmark database"))
    }

    async fn drop(self) {
        let dropped = async {
            let mut admin = self.server.connect().await?;
            crate::db::database::drop_forced(&mut admin, &self.name).await?;
            admin.close().await
        };
        if let Err(error) = dropped.await {
            tracing::warn!(%error, database = %self.name, "could not drop the benchmark database");
        }
    }
}

/// Calls `progress` every 250 ms with `done()` until `until` resolves; returns its output.
async fn reporting<T>(
    phase: &'static str,
    total: Option<u64>,
    done: impl Fn() -> u64,
    progress: &(dyn Fn(&Progress) + Sync),
    until: impl std::future::Future<Output = T>,
) -> T {
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(until);
    loop {
        tokio::select! {
            output = &mut until => return output,
            _ = ticks.tick() => progress(&Progress {
                phase,
                done: done(),
                total,
                elapsed: started.elapsed(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = (1..=100).map(f64::from).rev().collect();
        let report = Report::new("latency", 100, 2.0).latencies(samples);
        assert_eq!(report.p50_ms, Some(50.0));
        assert_eq!(report.p95_ms, Some(95.0));
        assert_eq!(report.p99_ms, Some(99.0));
        assert_eq!(report.max_ms, Some(100.0));
        assert_eq!(report.jobs_per_s, 50.0);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let report = Report::new("drain", 10, 0.5).detail("workers", 2);
        let json = serde_json::to_value(&report).expect("serialises");
        for key in [
            "scenario",
            "jobs",
            "seconds",
            "jobs_per_s",
            "commits_per_job",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert!(json.get("p50_ms").is_none(), "no latency without samples");
        assert_eq!(json["details"]["workers"], 2);
    }
}
