//! The maintenance leader: of the workers of one database, one at a time runs the maintenance
//! roles (promoter, rescuer, pruner, scheduler), so that a fleet of idle workers costs the server
//! a few statements per second instead of a few per worker per second (`docs/performance.md`).
//!
//! ```text
//!             try the lock every interval               holds() fails or times out,
//!   follower ─────────────────────────────▶ leader ─────────────────────────────────▶ follower
//!      ▲      pg_try_advisory_lock = true     │      or stop: close the connection      (new
//!      └──────────────────────────────────────┘                                    connection)
//! ```
//!
//! Leadership is a session-level advisory lock (key `"sl-leadr"`, per database; see
//! [`KEY_WITHOUT_SCHEDULER`] for workers that do not run the scheduler) on one dedicated
//! connection per worker. A follower tries to take it every interval (the worker's rescue
//! interval, 5 s by default); the leader checks every interval that its session still holds
//! it, and runs maintenance until a check fails or times out (`db_timeout`), then drops the
//! connection, which frees the lock. The lock is freed by the server when:
//! - the leader stops or its process dies: at once (its connection closes), so a follower
//!   takes over within one interval;
//! - the leader hangs or loses the network: its session was set to end after three idle
//!   intervals (`idle_session_timeout`, PostgreSQL 14+), so within four intervals.
//!
//! Leadership is only an economy, never needed for correctness: every maintenance role is safe
//! with several instances at once (rows locked and skipped, an advisory lock for the pruner, a
//! unique index per fire time for the scheduler), so the short overlap when a partitioned leader
//! has not yet noticed is harmless.
//!
//! Election needs a real session, as LISTEN does: a worker built with `listen(false)` (for
//! PgBouncer in transaction mode, where a session lock would stay on a server connection that
//! other clients get) does not elect and runs maintenance itself.

use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::deadline::{DbCallError, deadline};
use super::service::RoleMonitor;
use crate::db;

/// The advisory lock key of the leadership among workers that run the scheduler: the ASCII
/// bytes of "sl-leadr" read as a big-endian integer (the pruner's is "sl-prune", the
/// migrations' "skiplock").
pub(crate) const KEY: i64 = i64::from_be_bytes(*b"sl-leadr");

/// The key among workers built with `run_scheduler(false)`: a fleet that mixes both kinds has
/// two leaders, both running promoter, rescuer and pruner (harmless, and rare: usually every
/// worker runs the scheduler, or none does because `skiplock scheduler` runs on its own), and
/// the scheduler still runs in one of the workers that asked to run it.
pub(crate) const KEY_WITHOUT_SCHEDULER: i64 = i64::from_be_bytes(*b"sl-leadn");

/// The server ends a leader's session after this many idle intervals.
const IDLE_INTERVALS: u32 = 3;

pub(crate) struct Leader {
    pool: PgPool,
    key: i64,
    /// How often a follower tries to take the lock, and the leader checks it still has it.
    interval: Duration,
    /// The deadline of each statement.
    timeout: Duration,
}

impl Leader {
    pub(crate) fn new(pool: PgPool, key: i64, interval: Duration, timeout: Duration) -> Self {
        Self {
            pool,
            key,
            interval,
            timeout,
        }
    }

    /// Until `stop` fires: whenever this worker holds the leadership, runs `work` with a token
    /// that fires when it ends (`work` must return soon after); `leading` says which.
    pub(crate) async fn run<F, Fut>(
        &self,
        stop: &CancellationToken,
        health: &RoleMonitor,
        leading: impl Fn(bool),
        mut work: F,
    ) where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut session: Option<PgConnection> = None;
        loop {
            let attempt = tokio::select! {
                () = stop.cancelled() => break,
                attempt = self.try_lead(&mut session) => attempt,
            };
            match attempt {
                Ok(true) => {
                    health.succeeded();
                    tracing::info!("this worker now runs the maintenance roles");
                    leading(true);
                    let term = stop.child_token();
                    let held = async {
                        self.hold(&mut session, &term, health).await;
                        term.cancel();
                    };
                    tokio::join!(work(term.clone()), held);
                    leading(false);
                    if !stop.is_cancelled() {
                        tracing::warn!(
                            "lost the maintenance leadership; another worker takes over"
                        );
                    }
                }
                Ok(false) => health.succeeded(),
                Err(error) => {
                    // Whatever the state of the connection, dropping it frees any lock.
                    session = None;
                    health.failed(error.to_string(), false);
                    tracing::warn!(%error, "could not take part in the maintenance election; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.jittered()) => {}
            }
        }
        if let Some(session) = session {
            // Closing ends the session, which frees the lock.
            let _ = tokio::time::timeout(self.timeout, session.close()).await;
        }
    }

    /// Tries to take the lock, opening the dedicated connection first if needed.
    async fn try_lead(&self, session: &mut Option<PgConnection>) -> Result<bool, DbCallError> {
        if session.is_none() {
            let acquire = async { self.pool.acquire().await.map(PoolConnection::detach) };
            let mut conn: PgConnection = deadline(self.timeout, acquire).await?;
            let idle = self.interval.saturating_mul(IDLE_INTERVALS).as_millis();
            let idle = i64::try_from(idle).unwrap_or(i64::MAX);
            if let Err(error) =
                deadline(self.timeout, db::leader::end_when_idle(&mut conn, idle)).await
            {
                // Before PostgreSQL 14: a hung leader's lock stays until the server notices the
                // dead connection.
                tracing::debug!(%error, "idle_session_timeout not available");
            }
            *session = Some(conn);
        }
        let Some(conn) = session.as_mut() else {
            return Ok(false);
        };
        deadline(self.timeout, db::leader::try_lock(conn, self.key)).await
    }

    /// While leading: checks every interval that the session still holds the lock; returns
    /// when it does not, a check fails, or `term` fires. Drops the session in the first two
    /// cases.
    async fn hold(
        &self,
        session: &mut Option<PgConnection>,
        term: &CancellationToken,
        health: &RoleMonitor,
    ) {
        loop {
            tokio::select! {
                () = term.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            let Some(conn) = session.as_mut() else { return };
            let checked = tokio::select! {
                () = term.cancelled() => return,
                checked = deadline(self.timeout, db::leader::holds(conn, self.key)) => checked,
            };
            match checked {
                Ok(true) => health.succeeded(),
                Ok(false) => {
                    *session = None;
                    return;
                }
                Err(error) => {
                    health.failed(error.to_string(), false);
                    tracing::warn!(%error, "could not confirm the maintenance leadership");
                    *session = None;
                    return;
                }
            }
        }
    }

    /// The interval ± 10 %, so that followers started together do not ask together.
    fn jittered(&self) -> Duration {
        self.interval.mul_f64(0.9 + fastrand::f64() * 0.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_its_name() {
        assert_eq!(KEY.to_be_bytes(), *b"sl-leadr");
        assert_eq!(KEY_WITHOUT_SCHEDULER.to_be_bytes(), *b"sl-leadn");
    }
}
