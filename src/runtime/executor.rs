//! The executor: runs one claimed attempt and classifies its outcome.
//!
//! Each attempt is a straight pipeline: register it as running → find the handler → decode the
//! arguments and run it (panics caught; stopped on timeout, cancellation, lease loss or
//! shutdown, and dropped if it ignores its cancellation token for the grace period) → classify
//! the outcome → hand it to the completer → unregister. The executor never writes to the
//! database itself.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::builder::TraceContextHook;
use super::completer::{Completion, Outcome};
use super::registry::{Registry, RunResult};
use super::running::{Attempt, RunningAttempts, StopReason};
use crate::db::job::Claimed;
use crate::handler::{JobContext, JobMeta};
use crate::metrics::{AttemptOutcome, WorkerMetrics};
use crate::{ErrorKind, TraceParent};

/// Runs attempts for one worker; shared by all its producers.
pub(crate) struct Executor<S> {
    pub(crate) registry: Arc<Registry<S>>,
    pub(crate) state: S,
    pub(crate) worker_id: Arc<str>,
    pub(crate) completions: mpsc::Sender<Completion>,
    pub(crate) running: Arc<RunningAttempts>,
    /// The worker's progress connections, handed to contexts for progress updates.
    pub(crate) pool: crate::handler::ProgressWriter,
    /// How long a stopped handler may take to return before it is dropped.
    pub(crate) cancel_timeout: Duration,
    /// How long a lease lasts; a handler stopped for losing it is dropped within a quarter.
    pub(crate) lease: Duration,
    /// The timeout of jobs that have none of their own.
    pub(crate) default_timeout: Option<Duration>,
    /// What attempts count, when the worker has metrics; the producers' claims count there too.
    pub(crate) metrics: Option<Arc<WorkerMetrics>>,
    /// Links each attempt's span to the trace its job carries.
    pub(crate) trace_context: Option<TraceContextHook>,
}

/// How the handler's future ended.
enum Ended {
    Returned(std::thread::Result<RunResult>),
    Dropped,
}

impl<S: Clone + Send + Sync + 'static> Executor<S> {
    /// Runs one attempt to its end and hands the outcome to the completer. `leased_at` is when
    /// the claim statement was sent: the lease is at least that fresh.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, the attempt's outcome is never recorded (the job stays
    /// `running` until its lease runs out). The worker never drops it.
    pub(crate) async fn execute(&self, job: Claimed, leased_at: Instant) {
        let traceparent = job.traceparent.as_deref().and_then(|value| {
            TraceParent::parse(value)
                .inspect_err(|error| {
                    tracing::debug!(job.id = job.id, %error, "ignoring the job's malformed traceparent");
                })
                .ok()
        });
        let span = tracing::info_span!(
            "skiplock.job",
            job.id = job.id,
            job.kind = %job.kind,
            job.queue = %job.queue,
            job.attempt = job.attempt,
            worker.id = %self.worker_id,
            traceparent = traceparent.as_ref().map(TraceParent::as_str),
        );
        if let (Some(link), Some(parent)) = (&self.trace_context, &traceparent) {
            // User code: a panic must not lose the attempt (it is not registered yet).
            let linked = std::panic::catch_unwind(AssertUnwindSafe(|| link(&span, parent)));
            if linked.is_err() {
                tracing::error!(job.id = job.id, "the trace_context hook panicked; ignored");
            }
        }
        // Looked up in handles made before the worker started: no allocation, no lock.
        let metrics = self
            .metrics
            .as_deref()
            .and_then(|metrics| metrics.job(&job.queue, &job.kind));
        let started = metrics.map(|metrics| {
            metrics.started(job.pickup_lag_secs);
            Instant::now()
        });
        let attempt = Arc::new(Attempt::new(job.id, job.lease_token, leased_at));
        self.running.insert(attempt.clone());
        let outcome = self.run(job, &attempt, traceparent).instrument(span).await;
        if let (Some(metrics), Some(started)) = (metrics, started) {
            metrics.ended(label(outcome.as_ref(), &attempt), started.elapsed());
        }
        let Some(outcome) = outcome else {
            self.running.remove(attempt.id, attempt.lease_token);
            return;
        };
        // The attempt stays registered, its lease renewed, until the completer has recorded the
        // outcome: a slow or retrying write must not let the job be rescued and run again.
        attempt.mark_finished();
        let completion = Completion {
            id: attempt.id,
            lease_token: attempt.lease_token,
            outcome,
        };
        // The completer stops only after every executor is gone, so this cannot fail while
        // `self` lives; if it ever does, the lease brings the job back.
        if self.completions.send(completion).await.is_err() {
            tracing::error!(
                job.id = attempt.id,
                "completer is gone; outcome not recorded"
            );
            self.running.remove(attempt.id, attempt.lease_token);
        }
    }

    /// Runs the handler; `None` when there is nothing to record.
    async fn run(
        &self,
        job: Claimed,
        attempt: &Arc<Attempt>,
        traceparent: Option<TraceParent>,
    ) -> Option<Outcome> {
        let Claimed {
            id,
            kind,
            queue,
            args,
            priority,
            attempt: number,
            max_attempts,
            created_at,
            tags,
            timeout_secs,
            ..
        } = job;
        let Some(created_at) = created_at else {
            let message =
                "created_at is outside the range of timestamps skiplock can represent".to_owned();
            tracing::error!(error = %message, "job failed permanently");
            return Some(Outcome::Failed {
                error_kind: ErrorKind::UndecodableRow,
                message,
            });
        };
        let Some(handler) = self.registry.get(&kind).cloned() else {
            // Claims only ask for registered kinds, so this is a configuration race at most.
            let message = format!("no handler for kind {kind:?} is registered in this worker");
            let backoff = || crate::Backoff::DEFAULT.delay(number);
            return Some(retry_or_fail(
                ErrorKind::UnknownKind,
                message,
                number,
                max_attempts,
                backoff,
            ));
        };
        let timeout = timeout_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .or(self.default_timeout);
        let ctx = JobContext {
            meta: Arc::new(JobMeta {
                id,
                kind: kind.clone(),
                queue,
                priority,
                attempt: number,
                max_attempts,
                created_at,
                tags,
                worker_id: self.worker_id.clone(),
                traceparent,
            }),
            state: self.state.clone(),
            attempt: attempt.clone(),
            pool: self.pool.clone(),
        };

        tracing::debug!("job started");
        let started = Instant::now();
        let ended = self
            .supervise(handler.run(args, ctx), attempt, timeout)
            .await;
        let elapsed_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        // `backoff` is user code too: a panic in it must not lose the outcome.
        let backoff = || {
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.backoff(number)))
                .unwrap_or_else(|_| crate::Backoff::DEFAULT.delay(number))
        };

        let reason = if attempt.is_lease_lost() {
            Some(StopReason::LeaseLost)
        } else {
            attempt.reason()
        };
        match (reason, ended) {
            // Stopped because its lease was in doubt (a renewal missed its deadline), but it
            // finished: the work is done, and the write is fenced by the lease token, so it
            // lands only if no other worker has the job now. Dropped, it would run again.
            (Some(StopReason::LeaseLost), Ended::Returned(Ok(RunResult::Completed(output))))
                if !attempt.completed_in_tx() =>
            {
                tracing::warn!(
                    elapsed_ms,
                    "job completed after its lease came into doubt: recorded unless it is another worker's now"
                );
                Some(Outcome::Completed(output))
            }
            (Some(StopReason::LeaseLost), _) => {
                tracing::warn!(
                    elapsed_ms,
                    "lease lost: outcome not recorded (the job is another worker's now)"
                );
                None
            }
            (_, Ended::Returned(Ok(RunResult::Completed(_)))) if attempt.completed_in_tx() => {
                tracing::info!(elapsed_ms, "job completed in its own transaction");
                None
            }
            (_, Ended::Returned(Ok(RunResult::Completed(output)))) => {
                tracing::info!(elapsed_ms, "job completed");
                Some(Outcome::Completed(output))
            }
            (Some(StopReason::Cancelled), _) => {
                tracing::info!(elapsed_ms, "job cancelled");
                Some(Outcome::Cancelled {
                    error_kind: ErrorKind::Cancelled,
                    message: "cancelled while running".to_owned(),
                })
            }
            (Some(StopReason::Shutdown), _) | (None, Ended::Dropped) => {
                tracing::warn!(
                    elapsed_ms,
                    "job interrupted by worker shutdown; it will run again"
                );
                Some(Outcome::Interrupted {
                    error_kind: ErrorKind::Interrupted,
                    message: "the worker shut down while the job was running".to_owned(),
                })
            }
            (Some(StopReason::Timeout), _) => {
                let limit = timeout.unwrap_or_default();
                let message = format!("timed out after {limit:?}");
                Some(retry_or_fail(
                    ErrorKind::Timeout,
                    message,
                    number,
                    max_attempts,
                    backoff,
                ))
            }
            (None, Ended::Returned(result)) => Some(classify(
                result,
                &kind,
                number,
                max_attempts,
                elapsed_ms,
                backoff,
            )),
        }
    }

    /// Drives the handler's future: on timeout, stops the attempt; once stopped for any reason,
    /// gives it the grace period to return and then drops it.
    async fn supervise(
        &self,
        run: futures_util::future::BoxFuture<'static, RunResult>,
        attempt: &Attempt,
        timeout: Option<Duration>,
    ) -> Ended {
        let mut run = AssertUnwindSafe(run).catch_unwind();
        let timeout = async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        let stopped = attempt.cancellation.clone();
        tokio::select! {
            result = &mut run => return Ended::Returned(result),
            () = &mut timeout => attempt.stop(StopReason::Timeout),
            () = stopped.cancelled() => {}
        }
        // Let go within the cancel timeout, and within a quarter lease once the lease is lost
        // or in doubt (even if that happens during the grace period), before the lease can
        // expire and the job run elsewhere.
        let lease_grace = self.lease / 4;
        let mut deadline = after(self.cancel_timeout);
        if attempt.is_lease_lost() {
            deadline = deadline.min(after(lease_grace));
        }
        loop {
            tokio::select! {
                result = &mut run => return Ended::Returned(result),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("handler ignored its cancellation; dropped it");
                    return Ended::Dropped;
                }
                () = attempt.lease_lost.cancelled(), if deadline > after(lease_grace) => {
                    deadline = after(lease_grace);
                }
            }
        }
    }
}

/// `wait` from now, or about 30 years (as `tokio::time::sleep` does) when that is past what an
/// `Instant` holds: `cancel_timeout(Duration::MAX)`, meaning "never drop the handler", made
/// the job's task panic with the attempt still registered, its lease renewed for ever.
fn after(wait: Duration) -> Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
    let now = Instant::now();
    now.checked_add(wait).unwrap_or(now + FAR_FUTURE)
}

/// The `outcome` label of an attempt that ended with `outcome` (`None`: nothing to record).
fn label(outcome: Option<&Outcome>, attempt: &Attempt) -> AttemptOutcome {
    match outcome {
        Some(Outcome::Completed(_)) => AttemptOutcome::Completed,
        Some(Outcome::Retry { .. }) => AttemptOutcome::Retried,
        Some(Outcome::Failed { .. }) => AttemptOutcome::Failed,
        Some(Outcome::Cancelled { .. }) => AttemptOutcome::Cancelled,
        Some(Outcome::Interrupted { .. }) => AttemptOutcome::Interrupted,
        Some(Outcome::Snoozed { .. }) => AttemptOutcome::Snoozed,
        // Completed in the handler's own transaction, or given up because the lease was lost.
        None if attempt.completed_in_tx() && !attempt.is_lease_lost() => AttemptOutcome::Completed,
        None => AttemptOutcome::Lost,
    }
}

/// The outcome of a handler that returned without being stopped.
fn classify(
    result: std::thread::Result<RunResult>,
    kind: &str,
    attempt: i32,
    max_attempts: i32,
    elapsed_ms: f64,
    backoff: impl FnOnce() -> Duration,
) -> Outcome {
    match result {
        Ok(RunResult::Completed(output)) => Outcome::Completed(output),
        Ok(RunResult::Failed(error)) => {
            if let Some(after) = error.snoozed_for() {
                tracing::info!(
                    elapsed_ms,
                    snooze_ms = after.as_millis() as u64,
                    "job snoozed"
                );
                return Outcome::Snoozed { after };
            }
            let message = error.chain();
            if error.is_permanent() {
                tracing::error!(elapsed_ms, error = %message, "job failed permanently");
                return Outcome::Failed {
                    error_kind: ErrorKind::Permanent,
                    message,
                };
            }
            retry_or_fail(ErrorKind::Error, message, attempt, max_attempts, backoff)
        }
        Ok(RunResult::Undecodable(error)) => {
            // Redacted: the path and what was expected there, never the value.
            let message = format!("arguments do not decode as a {kind:?} job {error}");
            tracing::error!(error = %message, "job failed permanently");
            Outcome::Failed {
                error_kind: ErrorKind::UndecodableArgs,
                message,
            }
        }
        Ok(RunResult::UnserializableOutput(error)) => {
            let message = format!("the handler succeeded but its output is not JSON: {error}");
            tracing::error!(error = %message, "job failed permanently");
            Outcome::Failed {
                error_kind: ErrorKind::UnserializableOutput,
                message,
            }
        }
        Err(panic) => {
            let message = format!("handler panicked: {}", panic_message(&*panic));
            retry_or_fail(ErrorKind::Panic, message, attempt, max_attempts, backoff)
        }
    }
}

/// A failed attempt that may be retried: `retryable` after backoff, or `failed` when it was the
/// last attempt.
fn retry_or_fail(
    error_kind: ErrorKind,
    message: String,
    attempt: i32,
    max_attempts: i32,
    backoff: impl FnOnce() -> Duration,
) -> Outcome {
    if attempt >= max_attempts {
        tracing::error!(error = %message, %error_kind, "job failed on its last attempt");
        return Outcome::Failed {
            error_kind,
            message,
        };
    }
    let after = backoff();
    tracing::warn!(
        error = %message,
        %error_kind,
        retry_in_ms = after.as_millis() as u64,
        "job failed; will retry"
    );
    Outcome::Retry {
        error_kind,
        message,
        after,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}
