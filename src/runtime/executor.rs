//! The executor: runs one claimed attempt and classifies its outcome.
//!
//! Each attempt is a straight pipeline: build the context → find the handler → decode the
//! arguments and run it (panics caught, dropped if the worker aborts it) → classify the outcome
//! → hand it to the completer. The executor never writes to the database itself.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::completer::{Completion, Outcome};
use super::registry::{Registry, RunResult};
use crate::db::job::Claimed;
use crate::handler::{JobContext, JobMeta};

/// What `errors[].kind` says about a failed attempt; documented in `docs/schema.md`.
pub(crate) mod error_kind {
    /// The handler returned a retryable error.
    pub(crate) const ERROR: &str = "error";
    /// The handler returned a permanent error.
    pub(crate) const PERMANENT: &str = "permanent";
    /// The handler panicked.
    pub(crate) const PANIC: &str = "panic";
    /// The stored arguments did not deserialize into the registered type.
    pub(crate) const UNDECODABLE_ARGS: &str = "undecodable_args";
    /// The handler succeeded but its output did not serialize to JSON.
    pub(crate) const UNSERIALIZABLE_OUTPUT: &str = "unserializable_output";
    /// No handler for the job's kind is registered in the worker that claimed it.
    pub(crate) const UNKNOWN_KIND: &str = "unknown_kind";
    /// The worker shut down while the attempt was running.
    pub(crate) const INTERRUPTED: &str = "interrupted";
}

/// Runs attempts for one worker; shared by all its producers.
pub(crate) struct Executor<S> {
    pub(crate) registry: Arc<Registry<S>>,
    pub(crate) state: S,
    pub(crate) worker_id: Arc<str>,
    pub(crate) completions: mpsc::Sender<Completion>,
    /// Fired at hard shutdown: every running attempt's cancellation token is a child of it.
    pub(crate) cancel: CancellationToken,
    /// Fired when the cancellation grace is over too: running handler futures are dropped.
    pub(crate) abort: CancellationToken,
}

impl<S: Clone + Send + Sync + 'static> Executor<S> {
    /// Runs one attempt to its end and hands the outcome to the completer.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, the attempt's outcome is never recorded (the job stays
    /// `running` until its lease runs out). The worker never drops it; it fires `abort` instead.
    pub(crate) async fn execute(&self, job: Claimed) {
        let span = tracing::info_span!(
            "skiplock.job",
            job.id = job.id,
            job.kind = %job.kind,
            job.queue = %job.queue,
            job.attempt = job.attempt,
        );
        let (id, attempt) = (job.id, job.attempt);
        let outcome = self.run(job).instrument(span).await;
        // The completer stops only after every executor is gone, so this send cannot fail
        // while `self` lives; if it ever does, the lease brings the job back.
        if self
            .completions
            .send(Completion {
                id,
                attempt,
                outcome,
            })
            .await
            .is_err()
        {
            tracing::error!(job.id = id, "completer is gone; outcome not recorded");
        }
    }

    async fn run(&self, job: Claimed) -> Outcome {
        let Claimed {
            id,
            kind,
            queue,
            args,
            priority,
            attempt,
            max_attempts,
            created_at,
            tags,
        } = job;
        let Some(handler) = self.registry.get(&kind).cloned() else {
            let message = format!("no handler for kind {kind:?} is registered in this worker");
            return retry_or_fail(
                error_kind::UNKNOWN_KIND,
                message,
                attempt,
                max_attempts,
                || crate::Backoff::DEFAULT.delay(attempt),
            );
        };
        let ctx = JobContext {
            meta: Arc::new(JobMeta {
                id,
                kind: kind.clone(),
                queue,
                priority,
                attempt,
                max_attempts,
                created_at,
                tags,
                worker_id: self.worker_id.clone(),
            }),
            state: self.state.clone(),
            cancellation: self.cancel.child_token(),
        };

        tracing::debug!("job started");
        let started = Instant::now();
        let run = AssertUnwindSafe(handler.run(args, ctx)).catch_unwind();
        let result = tokio::select! {
            result = run => result,
            () = self.abort.cancelled() => {
                tracing::warn!("job interrupted by worker shutdown; it will run again");
                return Outcome::Retry {
                    error_kind: error_kind::INTERRUPTED,
                    message: "the worker shut down while the job was running".to_owned(),
                    after: Duration::ZERO,
                };
            }
        };
        let elapsed_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let backoff = || handler.backoff(attempt);

        match result {
            Ok(RunResult::Completed(output)) => {
                tracing::info!(elapsed_ms, "job completed");
                Outcome::Completed(output)
            }
            Ok(RunResult::Failed(error)) if error.is_permanent() => {
                let message = error.chain();
                tracing::error!(elapsed_ms, error = %message, "job failed permanently");
                Outcome::Failed {
                    error_kind: error_kind::PERMANENT,
                    message,
                }
            }
            Ok(RunResult::Failed(error)) => {
                let message = error.chain();
                retry_or_fail(error_kind::ERROR, message, attempt, max_attempts, backoff)
            }
            Ok(RunResult::Undecodable(error)) => {
                let message = format!("arguments do not decode as a {kind:?} job: {error}");
                tracing::error!(error = %message, "job failed permanently");
                Outcome::Failed {
                    error_kind: error_kind::UNDECODABLE_ARGS,
                    message,
                }
            }
            Ok(RunResult::UnserializableOutput(error)) => {
                let message = format!("the handler succeeded but its output is not JSON: {error}");
                tracing::error!(error = %message, "job failed permanently");
                Outcome::Failed {
                    error_kind: error_kind::UNSERIALIZABLE_OUTPUT,
                    message,
                }
            }
            Err(panic) => {
                let message = format!("handler panicked: {}", panic_message(&*panic));
                retry_or_fail(error_kind::PANIC, message, attempt, max_attempts, backoff)
            }
        }
    }
}

/// A failed attempt that may be retried: `retryable` after backoff, or `failed` when it was the
/// last attempt.
fn retry_or_fail(
    error_kind: &'static str,
    message: String,
    attempt: i32,
    max_attempts: i32,
    backoff: impl FnOnce() -> Duration,
) -> Outcome {
    if attempt >= max_attempts {
        tracing::error!(error = %message, error_kind, "job failed on its last attempt");
        return Outcome::Failed {
            error_kind,
            message,
        };
    }
    let after = backoff();
    tracing::warn!(
        error = %message,
        error_kind,
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
