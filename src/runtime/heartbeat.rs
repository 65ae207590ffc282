//! The heartbeat: renews the leases of the worker's running attempts, records that the worker
//! is alive, passes on cancel requests, and fences attempts whose lease it cannot vouch for.
//!
//! Leases are renewed every `interval` (a third of the lease by default) on the worker's own
//! connections, which handlers cannot exhaust. A job missing from a renewal's answer is no
//! longer this worker's (it was rescued or re-claimed): its handler is stopped at once. When
//! renewals fail (the database is down or unreachable), every attempt whose lease was last
//! renewed more than half a lease ago is stopped, and dropped a quarter lease later if it does
//! not return: the worker lets go of a job before its lease can expire and the job run
//! elsewhere. That is self-fencing; stale writes are refused by the lease token in any case.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadline::deadline;
use super::running::{RunningAttempts, StopReason};
use crate::db;

/// The share of the lease after which an attempt without a renewal is stopped.
pub(crate) const FENCE_AFTER: f64 = 0.5;

/// Configuration of the [`Heartbeat`].
#[derive(Clone, Debug)]
pub(crate) struct HeartbeatConfig {
    /// How long a lease lasts from its claim or last renewal.
    pub(crate) lease: Duration,
    /// How often leases are renewed.
    pub(crate) interval: Duration,
    /// The deadline of one renewal.
    pub(crate) timeout: Duration,
}

/// Who this worker is, for `skiplock.workers`.
#[derive(Clone, Debug)]
pub(crate) struct WorkerIdentity {
    pub(crate) id: Arc<str>,
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) queues: Vec<String>,
    /// The kinds it has handlers for.
    pub(crate) kinds: Vec<String>,
}

/// What one renewal did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HeartbeatReport {
    pub(crate) renewed: usize,
    /// Attempts whose job is no longer this worker's.
    pub(crate) lost: usize,
    /// Attempts somebody asked to cancel.
    pub(crate) cancel_requested: usize,
}

pub(crate) struct Heartbeat {
    pool: PgPool,
    config: HeartbeatConfig,
    running: Arc<RunningAttempts>,
    identity: WorkerIdentity,
}

impl Heartbeat {
    pub(crate) fn new(
        pool: PgPool,
        config: HeartbeatConfig,
        running: Arc<RunningAttempts>,
        identity: WorkerIdentity,
    ) -> Self {
        Self {
            pool,
            config,
            running,
            identity,
        }
    }

    /// Renews leases every interval until `stop` fires, fencing attempts whose lease is in
    /// doubt in between.
    pub(crate) async fn run_loop(&self, stop: CancellationToken) {
        let mut renew = tokio::time::interval(self.config.interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fence = self.fence_loop(stop.clone());
        let renewals = async {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = renew.tick() => {}
                }
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "could not renew leases; retrying");
                }
            }
        };
        tokio::join!(fence, renewals);
    }

    /// Stops every attempt whose lease was last renewed more than [`FENCE_AFTER`] of a lease
    /// ago. Runs on its own, so a hanging renewal cannot delay it.
    async fn fence_loop(&self, stop: CancellationToken) {
        let limit = self.config.lease.mul_f64(FENCE_AFTER);
        let mut check = tokio::time::interval(self.config.lease / 10);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = check.tick() => {}
            }
            for attempt in self.running.snapshot() {
                if attempt.renewed_at().elapsed() > limit && !attempt.is_lease_lost() {
                    tracing::warn!(
                        job.id = attempt.id,
                        "lease not renewed in time; stopping the job before another worker may take it"
                    );
                    attempt.stop(StopReason::LeaseLost);
                }
            }
        }
    }

    /// Renews the leases of every running attempt once.
    pub(crate) async fn run_once(&self) -> Result<HeartbeatReport, super::deadline::DbCallError> {
        let attempts = self.running.snapshot();
        let ids: Vec<i64> = attempts.iter().map(|a| a.id).collect();
        let tokens: Vec<i64> = attempts.iter().map(|a| a.lease_token).collect();
        let started = Instant::now();
        let worker = db::job::WorkerRow {
            id: &self.identity.id,
            host: &self.identity.host,
            pid: self.identity.pid,
            queues: &self.identity.queues,
            kinds: &self.identity.kinds,
        };
        let renewed = deadline(
            self.config.timeout,
            db::job::heartbeat(
                &self.pool,
                &ids,
                &tokens,
                self.config.lease.as_secs_f64(),
                &worker,
            ),
        )
        .await?;

        let renewed: std::collections::HashMap<i64, db::job::Renewed> =
            renewed.into_iter().map(|row| (row.id, row)).collect();
        let mut report = HeartbeatReport::default();
        for attempt in attempts {
            match renewed.get(&attempt.id) {
                Some(row) if row.renewed => {
                    attempt.renewed(started);
                    report.renewed += 1;
                    if row.cancel_requested {
                        report.cancel_requested += 1;
                        attempt.stop(StopReason::Cancelled);
                    }
                }
                // Locked by another transaction: still ours, renewed next time.
                Some(row) if row.busy => {}
                // Completed in the handler's own transaction: not running, and not lost.
                _ if attempt.completed_in_tx() => {}
                _ => {
                    report.lost += 1;
                    tracing::warn!(job.id = attempt.id, "job is no longer ours; stopping it");
                    attempt.stop(StopReason::LeaseLost);
                }
            }
        }
        Ok(report)
    }

    /// Removes the worker's row when it stops cleanly.
    pub(crate) async fn unregister(&self) {
        let call = db::job::delete_worker(&self.pool, &self.identity.id);
        if let Err(error) = deadline(self.config.timeout, call).await {
            tracing::warn!(%error, "could not remove this worker from skiplock.workers");
        }
    }
}

/// The worker's identity for this process.
pub(crate) fn identity(id: Arc<str>, queues: Vec<String>, kinds: Vec<String>) -> WorkerIdentity {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    WorkerIdentity {
        id,
        host,
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        queues,
        kinds,
    }
}
