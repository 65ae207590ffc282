//! Stopping a worker: the shutdown sequence, the stop signals, and the `run_until` of the roles
//! that can also run on their own.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::builder::Config;
use super::heartbeat::Heartbeat;
use super::running::{RunningAttempts, StopReason};

/// The tasks of a running worker, for the shutdown sequence.
pub(super) struct Running {
    pub(super) claimers: TaskTracker,
    pub(super) keepers: TaskTracker,
    pub(super) keep: CancellationToken,
    pub(super) jobs: TaskTracker,
    pub(super) running: Arc<RunningAttempts>,
    pub(super) completer: JoinHandle<()>,
    pub(super) heartbeat: Arc<Heartbeat>,
}

impl Running {
    /// After `stop` fired: waits for the claimers, then for running jobs (stopping them once
    /// the shutdown timeout passes; each is dropped if it ignores that for the cancel timeout),
    /// then for the last outcomes to be recorded, and finally stops renewing and unregisters.
    pub(super) async fn finish(self, config: &Config) {
        self.claimers.wait().await;
        self.jobs.close();
        if tokio::time::timeout(config.shutdown_timeout, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.running.len(),
                "jobs still running after the shutdown timeout; cancelling them"
            );
            self.running.stop_all(StopReason::Shutdown);
            self.jobs.wait().await;
        }
        // Every executor is gone now, so the completion channel closes once drained.
        if let Err(error) = self.completer.await {
            tracing::error!(%error, "completer task failed");
        }
        self.keep.cancel();
        self.keepers.wait().await;
        self.heartbeat.unregister().await;
    }
}

/// Runs `role` with a stop token that fires when `shutdown` completes: the `run_until` of the
/// roles that can also run on their own ([`Scheduler`](super::Scheduler), [`Pruner`](super::Pruner)).
pub(super) async fn run_until<F: Future<Output = ()>>(
    shutdown: impl Future<Output = ()>,
    role: impl FnOnce(CancellationToken) -> F,
) {
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::join!(role(stop), async move {
        shutdown.await;
        signal.cancel();
    });
}

/// SIGINT or SIGTERM on Unix; Ctrl-C elsewhere.
#[cfg(unix)]
pub(super) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

/// SIGINT or SIGTERM on Unix; Ctrl-C elsewhere.
#[cfg(not(unix))]
pub(super) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("received Ctrl-C"),
            // Without a handler there is nothing to wait for: run until stopped another way.
            Err(error) => {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    })
}
