//! Enqueue throughput: `skiplock bench insert`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::probe::{KIND, Noop};
use super::{BenchDatabase, BenchError, Progress, Report, cost, reporting};
use crate::db;
use crate::{NewJob, enqueue, enqueue_many};

/// Enqueue throughput: `jobs` jobs enqueued by the public API, timed in the client, counted in
/// the database.
#[derive(Clone, Debug)]
pub struct Insert {
    /// How many jobs to enqueue. Default 20,000.
    pub jobs: u64,
    /// How they are enqueued.
    pub mode: InsertMode,
    /// Concurrent connections enqueueing. Default 1.
    pub clients: u32,
}

impl Default for Insert {
    fn default() -> Self {
        Self {
            jobs: 20_000,
            mode: InsertMode::Single,
            clients: 1,
        }
    }
}

/// How [`Insert`] enqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertMode {
    /// One [`enqueue`] per job, each its own transaction: a durable commit per job.
    Single,
    /// [`enqueue_many`] with this many jobs per call (one statement and one commit each).
    Bulk {
        /// Jobs per call.
        batch: u32,
    },
}

impl Insert {
    pub(super) async fn run(
        &self,
        database: &BenchDatabase,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Report, BenchError> {
        if self.clients == 0 || matches!(self.mode, InsertMode::Bulk { batch: 0 }) {
            return Err(BenchError::Invalid(
                "clients and batch must be at least 1".into(),
            ));
        }
        let mut conn = database.connect().await?;
        let pool = database.pool(self.clients).await?;
        // Every client holds one connection for the whole run (opened before the clock starts),
        // as a request handler holds one for its transaction: the figure is the enqueue's own
        // cost, not the pool's (whose `test_before_acquire` adds a round trip per checkout).
        let connections =
            futures_util::future::try_join_all((0..self.clients).map(|_| pool.acquire()))
                .await
                .map_err(BenchError::database("connect the clients"))?;
        let before = cost::Before::read(&mut conn).await?;

        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let clients = connections.into_iter().map(|mut conn| {
            let (next, mode, total) = (next.clone(), self.mode, self.jobs);
            async move {
                let step = match mode {
                    InsertMode::Single => 1,
                    InsertMode::Bulk { batch } => u64::from(batch),
                };
                loop {
                    let first = next.fetch_add(step, Ordering::Relaxed);
                    if first >= total {
                        return Ok::<_, BenchError>(());
                    }
                    let count = step.min(total - first);
                    match mode {
                        InsertMode::Single => {
                            enqueue(&mut *conn, &Noop::new(first as i64)).await?;
                        }
                        InsertMode::Bulk { .. } => {
                            let jobs = (first..first + count)
                                .map(|n| NewJob::new(&Noop::new(n as i64)))
                                .collect::<Result<Vec<_>, _>>()?;
                            enqueue_many(&mut *conn, jobs).await?;
                        }
                    }
                }
            }
        });
        let done = || next.load(Ordering::Relaxed).min(self.jobs);
        reporting(
            "inserting",
            Some(self.jobs),
            done,
            progress,
            futures_util::future::try_join_all(clients),
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        pool.close().await;

        let inserted = db::bench::count_kind(&mut conn, KIND)
            .await
            .map_err(BenchError::database("count the jobs"))?;
        if inserted as u64 != self.jobs {
            return Err(BenchError::Incomplete(format!(
                "{inserted} jobs in the table, {} enqueued",
                self.jobs
            )));
        }
        let (scenario, batch) = match self.mode {
            InsertMode::Single => ("insert_single", 1),
            InsertMode::Bulk { batch } => ("insert_bulk", batch),
        };
        let report = Report::new(scenario, inserted as u64, seconds)
            .detail("clients", self.clients)
            .detail("batch", batch);
        before.finish(&mut conn, report).await
    }
}
