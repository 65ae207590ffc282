//! The listener: one dedicated connection per worker LISTENing for wake-ups, fanned out to the
//! producers of the queues they name, and for cancel requests, passed to the running attempt
//! they name.
//!
//! A notification is only a hint. Producers also poll, and after every (re)connect the listener
//! wakes all of them once, because notifications sent while it was disconnected are lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::running::{RunningAttempts, StopReason};
use crate::db::{CANCEL_CHANNEL, WAKE_CHANNEL};

const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

pub(crate) struct Listener {
    pool: PgPool,
    /// Each queue's producer wake-up.
    wakers: HashMap<String, Arc<Notify>>,
    running: Arc<RunningAttempts>,
}

impl Listener {
    pub(crate) fn new(
        pool: PgPool,
        wakers: HashMap<String, Arc<Notify>>,
        running: Arc<RunningAttempts>,
    ) -> Self {
        Self {
            pool,
            wakers,
            running,
        }
    }

    /// Listens until `stop` fires, reconnecting with backoff whenever the connection is lost.
    pub(crate) async fn run(self, stop: CancellationToken) {
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
                        let id = notification.payload().parse::<i64>().ok();
                        if let Some(attempt) = id.and_then(|id| self.running.get(id)) {
                            tracing::info!(job.id = attempt.id, "cancel requested");
                            attempt.stop(StopReason::Cancelled);
                        }
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

    fn wake_all(&self) {
        for wake in self.wakers.values() {
            wake.notify_one();
        }
    }
}
