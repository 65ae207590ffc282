//! The heartbeat: renews the leases of the worker's running attempts, records that the worker
//! is alive, passes on cancel requests, and fences attempts whose lease it cannot vouch for.
//!
//! Leases are renewed every `interval` (a third of the lease by default) on the worker's keeper
//! connections, which nothing a handler calls can use (progress goes to other connections). A job missing from a renewal's answer is no
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
use super::stats::OutcomeStats;
use crate::db;
use crate::metrics::WorkerMetrics;

/// The share of the lease after which an attempt without a renewal is stopped.
pub(crate) const FENCE_AFTER: f64 = 0.5;

/// How many times one renewal tries rows that another statement holds locked (a progress write
/// in flight, usually), [`BUSY_RETRY_DELAY`] × the pass number apart. A renewal that skipped a
/// row once would leave it two intervals (two thirds of a lease) unrenewed: past the fence.
const BUSY_PASSES: u32 = 4;

/// See [`BUSY_PASSES`].
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(5);

/// Configuration of the [`Heartbeat`].
#[derive(Clone, Debug)]
pub(crate) struct HeartbeatConfig {
    /// How long a lease lasts from its claim or last renewal.
    pub(crate) lease: Duration,
    /// How often leases are renewed.
    pub(crate) interval: Duration,
    /// The deadline of one renewal statement.
    pub(crate) timeout: Duration,
    /// The deadline of getting a connection for it, which may mean opening one: longer than
    /// `timeout`, so that a slow connect is not abandoned (and started again) every interval.
    pub(crate) connect_timeout: Duration,
}

/// Who this worker is, for `skiplock.workers`.
#[derive(Clone, Debug)]
pub(crate) struct WorkerIdentity {
    pub(crate) id: Arc<str>,
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) queues: Vec<String>,
    /// How many jobs it runs at once in each of `queues`.
    pub(crate) concurrency: Vec<i32>,
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
    /// Attempts whose row stayed locked by another statement: neither renewed nor lost.
    pub(crate) busy: usize,
    /// Attempts not renewed because their outcome was recorded meanwhile.
    pub(crate) finished: usize,
}

pub(crate) struct Heartbeat {
    pool: PgPool,
    config: HeartbeatConfig,
    running: Arc<RunningAttempts>,
    identity: WorkerIdentity,
    /// Outcome counts, written to `skiplock.job_stats` after each renewal, on the worker's
    /// internal pool (the keeper pool is for renewals alone).
    stats: Arc<OutcomeStats>,
    stats_pool: PgPool,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl Heartbeat {
    pub(crate) fn new(
        pool: PgPool,
        config: HeartbeatConfig,
        running: Arc<RunningAttempts>,
        identity: WorkerIdentity,
        stats: Arc<OutcomeStats>,
        stats_pool: PgPool,
    ) -> Self {
        Self {
            pool,
            config,
            running,
            identity,
            stats,
            stats_pool,
            metrics: None,
        }
    }

    /// Counts failed renewals in `metrics` (`skiplock_lease_renewals_failed_total`).
    pub(crate) fn with_metrics(mut self, metrics: Option<Arc<WorkerMetrics>>) -> Self {
        self.metrics = metrics;
        self
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
                    if let Some(metrics) = &self.metrics {
                        metrics.renewal_failed();
                    }
                    tracing::warn!(%error, "could not renew leases; retrying");
                }
            }
        };
        // Outcome counts go out on their own schedule and connections: a slow write of them
        // must never delay a renewal (leases would lapse and jobs run twice).
        let stats = async {
            let mut flush = tokio::time::interval(self.config.interval);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = flush.tick() => {}
                }
                self.flush_stats().await;
            }
        };
        tokio::join!(fence, renewals, stats);
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
        let mut attempts = self.running.snapshot();
        let mut conn = deadline(self.config.connect_timeout, self.pool.acquire()).await?;
        let worker = db::job::WorkerRow {
            id: &self.identity.id,
            host: &self.identity.host,
            pid: self.identity.pid,
            queues: &self.identity.queues,
            kinds: &self.identity.kinds,
            concurrency: &self.identity.concurrency,
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut report = HeartbeatReport::default();
        for pass in 1..=BUSY_PASSES {
            let ids: Vec<i64> = attempts.iter().map(|a| a.id).collect();
            let tokens: Vec<i64> = attempts.iter().map(|a| a.lease_token).collect();
            let started = Instant::now();
            let renewed = deadline(
                self.config.timeout,
                db::job::heartbeat(
                    &mut *conn,
                    &ids,
                    &tokens,
                    self.config.lease.as_secs_f64(),
                    &worker,
                ),
            )
            .await?;
            let renewed: std::collections::HashMap<i64, db::job::Renewed> =
                renewed.into_iter().map(|row| (row.id, row)).collect();
            let mut busy = Vec::new();
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
                    // Completed in the handler's own transaction, which still holds the row:
                    // the lock keeps the job from being rescued or claimed until that
                    // transaction ends (committed: completed; rolled back: running under our
                    // token again, renewed next time). The lock vouches for the lease, so the
                    // attempt is not fenced however long the transaction stays open.
                    Some(row) if row.busy && attempt.completed_in_tx() => {
                        attempt.renewed(started);
                    }
                    // Locked by another statement (most often this attempt's own progress
                    // write, for a millisecond): still ours, tried again shortly.
                    Some(row) if row.busy => busy.push(attempt),
                    // Completed in the handler's own transaction: not running, and not lost.
                    _ if attempt.completed_in_tx() => {}
                    // Its outcome went to the completer, whose batch committed between the
                    // snapshot above and this statement (the completer forgets an attempt only
                    // after its commit). Not lost: and were the lease really gone, the
                    // completer's fenced write would say so. At thousands of jobs a second
                    // this race is common; reporting it as lost flooded the log with false
                    // warnings.
                    _ if attempt.finished() => report.finished += 1,
                    _ => {
                        report.lost += 1;
                        tracing::warn!(job.id = attempt.id, "job is no longer ours; stopping it");
                        attempt.stop(StopReason::LeaseLost);
                    }
                }
            }
            if busy.is_empty() || pass == BUSY_PASSES {
                report.busy = busy.len();
                break;
            }
            attempts = busy;
            tokio::time::sleep(BUSY_RETRY_DELAY * pass).await;
        }
        Ok(report)
    }

    /// Writes the outcome counts gathered since the last flush (kept for the next one when
    /// the write fails).
    pub(crate) async fn flush_stats(&self) {
        let write = self.stats.flush(&self.stats_pool);
        if let Err(error) = deadline(self.config.timeout, write).await {
            tracing::debug!(%error, "could not write outcome counts; trying again next interval");
        }
    }

    /// Writes the last outcome counts and marks the worker's row as stopped when it stops
    /// cleanly.
    pub(crate) async fn unregister(&self) {
        self.flush_stats().await;
        let call = db::job::stop_worker(&self.pool, &self.identity.id);
        if let Err(error) = deadline(self.config.timeout, call).await {
            tracing::warn!(%error, "could not mark this worker stopped in skiplock.workers");
        }
    }
}

/// This machine's host name, or `unknown-host` when the system gives none (portable: `whoami`,
/// which sqlx already depends on, asks the operating system).
pub(crate) fn host_name() -> String {
    whoami::hostname().unwrap_or_else(|_| "unknown-host".to_owned())
}

/// The worker's identity for this process.
pub(crate) fn identity(
    id: Arc<str>,
    queues: &[(String, usize)],
    kinds: Vec<String>,
) -> WorkerIdentity {
    WorkerIdentity {
        id,
        host: host_name(),
        pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        queues: queues.iter().map(|(queue, _)| queue.clone()).collect(),
        concurrency: queues
            .iter()
            .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect(),
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use skiplock_testing::TestDatabase;

    use super::*;
    use crate::runtime::running::Attempt;
    use crate::{EnqueueOptions, NewJob};

    /// One claimed job, its attempt registered, its outcome committed as the completer would
    /// between the heartbeat's snapshot and its statement: lost only if the handler was not
    /// done.
    async fn renew_after_completion(finished: bool) -> HeartbeatReport {
        let db = TestDatabase::new().await.expect("database");
        let job = NewJob::untyped("noop", json!(null), EnqueueOptions::new());
        crate::enqueue_many(db.pool(), [job])
            .await
            .expect("enqueue");
        let (id, token): (i64, i64) = sqlx::query_as(
            "SELECT id, lease_token FROM skiplock.claim('w', ARRAY['default'], ARRAY['noop'])",
        )
        .fetch_one(db.pool())
        .await
        .expect("claim");
        let running = Arc::new(RunningAttempts::default());
        let attempt = Arc::new(Attempt::new(id, token, Instant::now()));
        if finished {
            attempt.mark_finished();
        }
        running.insert(attempt.clone());
        let completed: bool = sqlx::query_scalar("SELECT skiplock.complete($1, $2)")
            .bind(id)
            .bind(token)
            .fetch_one(db.pool())
            .await
            .expect("complete");
        assert!(completed);

        let heartbeat = Heartbeat::new(
            db.pool().clone(),
            HeartbeatConfig {
                lease: Duration::from_secs(30),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
            },
            running,
            WorkerIdentity {
                id: "w".into(),
                host: "test".into(),
                pid: 1,
                queues: vec!["default".into()],
                concurrency: vec![1],
                kinds: vec!["noop".into()],
            },
            Arc::default(),
            db.pool().clone(),
        );
        let report = heartbeat.run_once().await.expect("renew");
        assert_eq!(attempt.is_lease_lost(), !finished);
        report
    }

    #[tokio::test]
    async fn an_outcome_recorded_during_a_renewal_is_not_a_lost_lease() {
        let report = renew_after_completion(true).await;
        assert_eq!(
            report,
            HeartbeatReport {
                finished: 1,
                ..HeartbeatReport::default()
            }
        );
    }

    #[tokio::test]
    async fn a_running_attempt_whose_job_moved_on_is_lost() {
        let report = renew_after_completion(false).await;
        assert_eq!(
            report,
            HeartbeatReport {
                lost: 1,
                ..HeartbeatReport::default()
            }
        );
    }
}
