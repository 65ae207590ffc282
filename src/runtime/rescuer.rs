//! The rescuer: takes back jobs whose worker stopped renewing their lease — it died, hung, or
//! lost the database — and forgets workers that stopped sending heartbeats.
//!
//! A rescued job runs again after `min(2^(attempt-1) - 1, 600)` seconds: at once after a first
//! attempt (keeping its place at the head of its queue), later and later when a job keeps losing its workers (so that a job that kills its
//! worker every time cannot crash-loop a fleet). On its last attempt it becomes `failed`, and
//! `cancelled` if a cancel was pending; each gets a `worker_lost` entry in `errors`. Every
//! worker runs a rescuer; concurrent rescuers skip each other's rows. A job's lease expires at
//! most `lease` after its worker's last renewal, and a rescuer looks every `interval`, so a job
//! whose worker died is runnable again within `lease + interval` (plus its backoff).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::deadline::{DbCallError, deadline};
use crate::db;

/// How many jobs one statement rescues; more take several.
const BATCH: i64 = 1_000;

/// Configuration of the [`Rescuer`].
#[derive(Clone, Debug)]
pub(crate) struct RescuerConfig {
    /// How often to look for expired leases.
    pub(crate) interval: Duration,
    /// How old a worker's last heartbeat may be before its `skiplock.workers` row is removed.
    pub(crate) worker_ttl: Duration,
    /// The deadline of one statement.
    pub(crate) timeout: Duration,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RescuerReport {
    /// Jobs taken back, with the state they got.
    pub(crate) rescued: Vec<(i64, String)>,
    /// Workers forgotten.
    pub(crate) reaped_workers: Vec<String>,
}

pub(crate) struct Rescuer {
    pool: PgPool,
    config: RescuerConfig,
}

impl Rescuer {
    pub(crate) fn new(pool: PgPool, config: RescuerConfig) -> Self {
        Self { pool, config }
    }

    /// Rescues every interval until `stop` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(error) = self.run_once().await {
                tracing::warn!(%error, "could not rescue jobs; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// Rescues every job whose lease has expired, then forgets dead workers.
    pub(crate) async fn run_once(&self) -> Result<RescuerReport, DbCallError> {
        let mut report = RescuerReport::default();
        loop {
            let batch = deadline(
                self.config.timeout,
                db::job::rescue_expired(&self.pool, BATCH),
            )
            .await?;
            let full = batch.len() as i64 == BATCH;
            for job in batch {
                tracing::warn!(job.id = job.id, state = %job.state, "rescued a job whose worker was lost");
                report.rescued.push((job.id, job.state));
            }
            if !full {
                break;
            }
        }
        report.reaped_workers = deadline(
            self.config.timeout,
            db::job::delete_dead_workers(&self.pool, self.config.worker_ttl.as_secs_f64()),
        )
        .await?;
        for worker in &report.reaped_workers {
            tracing::info!(worker.id = %worker, "forgot a worker that stopped sending heartbeats");
        }
        Ok(report)
    }
}
