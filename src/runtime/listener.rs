//! The listener: one dedicated connection per worker LISTENing for wake-ups, fanned out to the
//! producers of the queues they name, and for cancel requests, passed to the running attempt
//! they name.
//!
//! A notification is only a hint: any role that can connect may send one, on either channel,
//! with any payload. Producers also poll, and after every (re)connect the listener wakes all of
//! them once, because notifications sent while it was disconnected are lost. A wake-up only
//! makes a producer claim sooner (wake-ups coalesce: a flood of them costs at most one extra
//! claim per producer at a time). A cancel notification only makes the listener *ask the
//! database* whether a cancel was really requested for that job and for the attempt running
//! here (`cancel_requested_at` set, lease token unchanged); the attempt is stopped only then.
//! Ids not running here cost a map lookup; the rest are gathered into one check at a time, so a
//! flood of notifications costs at most one small read in flight, whatever it names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deadline::deadline;
use super::running::{RunningAttempts, StopReason};
use crate::db::{self, CANCEL_CHANNEL, WAKE_CHANNEL};

const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

pub(crate) struct Listener {
    /// Where the LISTEN connection comes from.
    pool: PgPool,
    /// Where cancel requests are checked: the worker's keeper connections.
    keeper: PgPool,
    /// The deadline of one check.
    timeout: Duration,
    /// Each queue's producer wake-up.
    wakers: HashMap<String, Arc<Notify>>,
    running: Arc<RunningAttempts>,
    /// Ids of running jobs named by cancel notifications, not checked yet.
    to_check: Mutex<HashSet<i64>>,
    check: Notify,
}

impl Listener {
    pub(crate) fn new(
        pool: PgPool,
        keeper: PgPool,
        timeout: Duration,
        wakers: HashMap<String, Arc<Notify>>,
        running: Arc<RunningAttempts>,
    ) -> Self {
        Self {
            pool,
            keeper,
            timeout,
            wakers,
            running,
            to_check: Mutex::new(HashSet::new()),
            check: Notify::new(),
        }
    }

    /// Listens until `stop` fires, reconnecting with backoff whenever the connection is lost,
    /// and checks the cancel requests it hears of.
    pub(crate) async fn run(self, stop: CancellationToken) {
        tokio::join!(self.listen(stop.clone()), self.check_cancels(stop));
    }

    async fn listen(&self, stop: CancellationToken) {
        let mut delay = FIRST_RECONNECT_DELAY;
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.connect() => connected,
            };
            let mut listener = match connected {
                Ok(listener) => {
                    delay = FIRST_RECONNECT_DELAY;
                    // Anything sent while we were not listening is lost: poll once.
                    self.wake_all();
                    listener
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "could not LISTEN for wake-ups; producers keep polling");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    continue;
                }
            };
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) if notification.channel() == CANCEL_CHANNEL => {
                        self.cancel_hint(notification.payload());
                    }
                    Ok(Some(notification)) => {
                        if let Some(wake) = self.wakers.get(notification.payload()) {
                            wake.notify_one();
                        }
                    }
                    Ok(None) => {
                        tracing::info!("wake-up connection lost; reconnecting");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "wake-up connection failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([WAKE_CHANNEL, CANCEL_CHANNEL]).await?;
        Ok(listener)
    }

    /// Queues a check of the job `payload` names, if it runs here.
    fn cancel_hint(&self, payload: &str) {
        let Ok(id) = payload.parse::<i64>() else {
            return;
        };
        if self.running.get(id).is_none() {
            return;
        }
        let queued = self
            .to_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        if queued {
            self.check.notify_one();
        }
    }

    /// Asks the database about the queued cancel hints, one check at a time, and stops the
    /// attempts whose cancel it confirms.
    async fn check_cancels(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.check.notified() => {}
            }
            let ids =
                std::mem::take(&mut *self.to_check.lock().unwrap_or_else(PoisonError::into_inner));
            let attempts: Vec<_> = ids
                .into_iter()
                .filter_map(|id| self.running.get(id))
                .collect();
            if attempts.is_empty() {
                continue;
            }
            let ids: Vec<i64> = attempts.iter().map(|a| a.id).collect();
            let tokens: Vec<i64> = attempts.iter().map(|a| a.lease_token).collect();
            let call = db::job::cancel_requested(&self.keeper, &ids, &tokens);
            let confirmed = tokio::select! {
                () = stop.cancelled() => return,
                confirmed = deadline(self.timeout, call) => confirmed,
            };
            let confirmed = match confirmed {
                Ok(confirmed) => confirmed,
                Err(error) => {
                    // The next lease renewal reports cancel requests too.
                    tracing::warn!(%error, "could not check cancel requests; the heartbeat will");
                    continue;
                }
            };
            for attempt in attempts {
                if confirmed.contains(&attempt.id) {
                    tracing::info!(job.id = attempt.id, "cancel requested");
                    attempt.stop(StopReason::Cancelled);
                } else {
                    tracing::debug!(
                        job.id = attempt.id,
                        "cancel notification without a cancel request for this attempt; ignored"
                    );
                }
            }
        }
    }

    fn wake_all(&self) {
        for wake in self.wakers.values() {
            wake.notify_one();
        }
    }
}
