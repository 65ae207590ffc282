//! The attempts a worker is running, shared by the executor (which adds and removes them), the
//! heartbeat (which renews their leases and fences them) and the listener (which delivers
//! cancel requests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why an attempt was asked to stop. The first reason given wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Somebody cancelled the job (`skiplock::cancel`, `skiplock.cancel()`).
    Cancelled,
    /// Its lease was lost or could not be renewed in time: another worker may run it now.
    LeaseLost,
    /// It ran longer than its timeout.
    Timeout,
    /// The worker is shutting down and the grace period is over.
    Shutdown,
}

/// One running attempt.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) id: i64,
    pub(crate) lease_token: i64,
    /// The handler's cancellation token.
    pub(crate) cancellation: CancellationToken,
    /// Fired when the lease is lost or in doubt, whatever stopped the attempt first: the
    /// handler must then be let go within a quarter lease.
    pub(crate) lease_lost: CancellationToken,
    reason: OnceLock<StopReason>,
    /// When the lease was last known good: taken *before* the claim or renewal statement was
    /// sent, so it never overestimates how long the lease has left.
    renewed_at: Mutex<Instant>,
    /// The handler completed the job in its own transaction.
    completed_in_tx: AtomicBool,
    /// The handler is done and its outcome handed to the completer, which may record it at
    /// any moment.
    finished: AtomicBool,
}

impl Attempt {
    pub(crate) fn new(id: i64, lease_token: i64, leased_at: Instant) -> Self {
        Self {
            id,
            lease_token,
            cancellation: CancellationToken::new(),
            lease_lost: CancellationToken::new(),
            reason: OnceLock::new(),
            renewed_at: Mutex::new(leased_at),
            completed_in_tx: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    /// Asks the handler to stop (its cancellation token fires); the first reason sticks, but a
    /// lost lease is always recorded.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        if reason == StopReason::LeaseLost {
            self.lease_lost.cancel();
        }
        self.cancellation.cancel();
    }

    /// Whether the lease was lost, whatever else stopped the attempt.
    pub(crate) fn is_lease_lost(&self) -> bool {
        self.lease_lost.is_cancelled()
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    pub(crate) fn renewed_at(&self) -> Instant {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn renewed(&self, at: Instant) {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = at;
    }

    pub(crate) fn mark_completed_in_tx(&self) {
        self.completed_in_tx.store(true, Ordering::Release);
    }

    pub(crate) fn completed_in_tx(&self) -> bool {
        self.completed_in_tx.load(Ordering::Acquire)
    }

    /// Marks the handler done: its outcome goes to the completer next.
    pub(crate) fn mark_finished(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// Whether the handler is done and its outcome on its way to the completer.
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// The running attempts, by job id.
#[derive(Debug, Default)]
pub(crate) struct RunningAttempts {
    attempts: Mutex<HashMap<i64, Arc<Attempt>>>,
    /// Set by [`stop_all`](Self::stop_all): attempts registered afterwards stop at once.
    stopped: OnceLock<StopReason>,
}

impl RunningAttempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Attempt>>> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, attempt: Arc<Attempt>) {
        self.lock().insert(attempt.id, attempt.clone());
        // After the insert: a stop_all that took its snapshot before it had set this first.
        if let Some(reason) = self.stopped.get() {
            attempt.stop(*reason);
        }
    }

    /// Removes the attempt of `id` holding `lease_token`; a newer attempt of the same job (it
    /// was rescued and claimed again by this worker) is left alone.
    pub(crate) fn remove(&self, id: i64, lease_token: i64) {
        let mut attempts = self.lock();
        if attempts
            .get(&id)
            .is_some_and(|a| a.lease_token == lease_token)
        {
            attempts.remove(&id);
        }
    }

    pub(crate) fn get(&self, id: i64) -> Option<Arc<Attempt>> {
        self.lock().get(&id).cloned()
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<Attempt>> {
        self.lock().values().cloned().collect()
    }

    /// Stops every attempt, and every attempt registered from now on: a job task spawned
    /// before the claimers stopped may register after this call (with `shutdown_timeout` of
    /// zero, before it was ever polled), and would otherwise run on, holding up the shutdown.
    /// For the shutdown sequence, once.
    pub(crate) fn stop_all(&self, reason: StopReason) {
        let _ = self.stopped.set(reason);
        for attempt in self.snapshot() {
            attempt.stop(reason);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt registered after `stop_all` (its task was spawned before, and polled after)
    /// is stopped too; one registered before is stopped by the call itself.
    #[test]
    fn attempts_registered_after_stop_all_stop_at_once() {
        let running = RunningAttempts::default();
        let before = Arc::new(Attempt::new(1, 1, Instant::now()));
        running.insert(before.clone());
        running.stop_all(StopReason::Shutdown);
        let after = Arc::new(Attempt::new(2, 2, Instant::now()));
        running.insert(after.clone());
        for attempt in [before, after] {
            assert_eq!(attempt.reason(), Some(StopReason::Shutdown));
            assert!(attempt.cancellation.is_cancelled());
        }
    }
}
