//! Pickup latency on an idle system: `skiplock bench latency`.

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio::sync::mpsc;

use super::probe::{KIND, Noop, Probe};
use super::{BenchConfig, BenchDatabase, BenchError, QUEUE, Report};
use crate::{Worker, db, enqueue};

/// How long one job may take to start before the run is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `samples` jobs enqueued one at a time, each once the previous one has started, on an
/// otherwise idle worker. Latency runs from the moment the insert's commit returns to the
/// client until the job's handler starts.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Jobs to time. Default 1,000.
    pub samples: u32,
    /// Whether the worker listens for wake-ups (LISTEN/NOTIFY). Without, it finds jobs by
    /// polling, and latency is bounded by `poll_interval`. Default `true`.
    pub notify: bool,
    /// The worker's poll interval. Default 1 s, the worker's default.
    pub poll_interval: Duration,
    /// A pause after each job starts, so the next one finds the worker idle again (its
    /// completion written). Default 5 ms.
    pub pause: Duration,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            samples: 1_000,
            notify: true,
            poll_interval: crate::runtime::DEFAULT_POLL_INTERVAL,
            pause: Duration::from_millis(5),
        }
    }
}

impl Latency {
    pub(super) async fn run(
        &self,
        config: &BenchConfig,
        database: &BenchDatabase,
    ) -> Result<Report, BenchError> {
        let mut conn = database.connect().await?;
        // Enqueues go through a connection of their own, closed before the counters are read:
        // a backend reports its commits to pg_stat only now and then, and on exit.
        let mut enqueuer = database.connect().await?;
        let pool = database.pool(2).await?;
        let (signal, mut starts) = mpsc::unbounded_channel();
        let probe = Probe::signalling(signal);
        let worker = Worker::builder(pool.clone(), probe)
            .register::<Noop>()
            .queue(QUEUE, 10)
            .poll_interval(self.poll_interval)
            .listen(self.notify)
            .synchronous_commit(!config.async_commit)
            .run_scheduler(false)
            .build()
            .map_err(BenchError::Worker)?
            .start();
        // Let the worker connect and start listening before the first sample.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = super::cost::Before::read(&mut conn).await?;

        let mut samples = Vec::with_capacity(self.samples as usize);
        let started = Instant::now();
        let measured = async {
            for n in 0..self.samples {
                let id = enqueue(&mut enqueuer, &Noop::new(i64::from(n))).await?;
                let committed = Instant::now();
                let began = loop {
                    let next = tokio::time::timeout(START_TIMEOUT, starts.recv()).await;
                    match next {
                        Ok(Some((started_id, at))) if started_id == id => break at,
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => {
                            return Err(BenchError::Incomplete(format!(
                                "job {id} did not start within {START_TIMEOUT:?}"
                            )));
                        }
                    }
                };
                // A handler can start before the client has read its commit's reply.
                let latency = began.saturating_duration_since(committed);
                samples.push(latency.as_secs_f64() * 1_000.0);
                tokio::time::sleep(self.pause).await;
            }
            Ok(())
        };
        let outcome = measured.await;
        let seconds = started.elapsed().as_secs_f64();
        let stopped = worker.shutdown().await;
        pool.close().await;
        let _ = enqueuer.close().await;
        outcome?;
        stopped.map_err(BenchError::WorkerFailed)?;

        let completed = db::bench::completed(&mut conn, KIND)
            .await
            .map_err(BenchError::database("count completed jobs"))?;
        if completed.count != i64::from(self.samples) {
            return Err(BenchError::Incomplete(format!(
                "{} of {} jobs completed",
                completed.count, self.samples
            )));
        }
        let report = Report::new("latency", completed.count as u64, seconds)
            .latencies(samples)
            .detail("notify", self.notify)
            .detail("poll_interval_ms", self.poll_interval.as_millis() as u64);
        before.finish(&mut conn, report).await
    }
}
