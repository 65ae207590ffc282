//! The maintenance leader: of the workers of one database, one at a time runs the maintenance
//! roles (promoter, rescuer, pruner, scheduler), so that a fleet of idle workers costs the server
//! a few statements per second instead of a few per worker per second (`docs/performance.md`).
//!
//! ```text
//!             try the lock every interval               holds() fails or times out,
//!   follower ─────────────────────────────▶ leader ─────────────────────────────────▶ follower
//!      ▲      pg_try_advisory_lock = true     │      or stop: close the connection
//!      └──────────────────────────────────────┘
//! ```
//!
//! Leadership is a session-level advisory lock (key `"sl-leadr"`, per database; see
//! [`KEY_WITHOUT_SCHEDULER`] for workers that do not run the scheduler). A follower tries to
//! take it every interval (the worker's rescue interval, 5 s by default) on a connection
//! borrowed from the worker's claims pool, which it gives back when another worker holds the
//! lock: followers open no connection for the election (with 16 workers on a stock server's
//! 100 connections, one per worker mattered). The claims pool's connections are open anyway,
//! and a claim waits for one at most one short statement (up to 5 s after an ask that failed:
//! sqlx keeps the slot while it closes that connection, which may hold the lock). The worker
//! that takes the lock keeps that connection as its own session; it checks every interval that
//! the session still holds the lock, and runs maintenance until a check fails or times out
//! (`db_timeout`), then closes the connection, which frees the lock. The lock is freed by the server when:
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
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
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
                attempt = self.try_lead() => attempt,
            };
            match attempt {
                Ok(Some(won)) => {
                    session = Some(won);
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
                Ok(None) => health.succeeded(),
                Err(error) => {
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

    /// Tries to take the lock on a connection borrowed from the pool; returns it, as this
    /// worker's session, when it did. When another worker holds the lock the connection goes
    /// back to the pool, so that only the leader keeps a connection for the election.
    async fn try_lead(&self) -> Result<Option<PgConnection>, DbCallError> {
        let idle = self.interval.saturating_mul(IDLE_INTERVALS).as_millis();
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let mut borrowed = Borrowed(Some(deadline(self.timeout, self.pool.acquire()).await?));
        let Some(conn) = borrowed.0.as_mut() else {
            return Ok(None);
        };
        if !deadline(self.timeout, db::leader::try_lock(conn, self.key, idle)).await? {
            // Not taken: the connection holds nothing and goes back to the pool.
            borrowed.give_back();
            return Ok(None);
        }
        Ok(borrowed.0.take().map(PoolConnection::detach))
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

/// A pooled connection asking for the lock. Unless given back after a refusal, it is closed
/// when dropped (a failed or timed-out call, or the election abandoned mid-call): it may hold
/// the lock, and a pooled connection holding it would keep the leadership from every worker
/// while running nothing.
struct Borrowed(Option<PoolConnection<Postgres>>);

impl Borrowed {
    fn give_back(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use skiplock_testing::TestDatabase;
    use sqlx::postgres::PgPoolOptions;

    use super::*;
    use crate::runtime::service::Monitor;

    /// Two workers' elections on one database: the leader keeps one session; the follower asks
    /// every interval on a borrowed connection, gives it back each time, and takes over when
    /// the leader stops.
    #[tokio::test]
    async fn only_the_leader_keeps_a_session() {
        let db = TestDatabase::new().await.expect("database");
        let options = (*db.pool().connect_options()).clone();
        // One connection each: a follower that kept its own would show as a pool of 0.
        let pool = || {
            PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options.clone())
        };
        let (first_pool, second_pool) = (pool(), pool());
        let interval = Duration::from_millis(40);
        let timeout = Duration::from_secs(10);
        let first = Leader::new(first_pool.clone(), KEY, interval, timeout);
        let second = Leader::new(second_pool.clone(), KEY, interval, timeout);
        let monitor = Monitor::new(None);
        let (first_leads, second_leads) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
        let run = |leader: Leader, stop: CancellationToken, leads: Arc<AtomicBool>| {
            let health = monitor.role("leader");
            async move {
                leader
                    .run(
                        &stop,
                        &health,
                        |now| leads.store(now, Ordering::SeqCst),
                        |term| async move {
                            term.cancelled().await;
                        },
                    )
                    .await;
            }
        };
        let first_task = tokio::spawn(run(first, first_stop.clone(), first_leads.clone()));
        wait_until(|| first_leads.load(Ordering::SeqCst)).await;
        let second_task = tokio::spawn(run(second, second_stop.clone(), second_leads.clone()));
        // Many intervals: the follower asks again and again and is refused each time.
        tokio::time::sleep(interval * 15).await;
        assert!(!second_leads.load(Ordering::SeqCst), "two leaders at once");
        // The leader's session was taken out of its pool; the follower's connection was
        // given back every time: it is idle in its pool, not kept aside.
        assert_eq!(first_pool.size(), 0, "the leader's session is its own");
        assert_eq!(
            second_pool.size(),
            1,
            "the follower borrowed one connection"
        );
        // And gives it back (between two asks).
        wait_until(|| second_pool.num_idle() == 1).await;
        let sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::int8 = ($1::int8 >> 32) & 4294967295 AND objid::int8 = $1::int8 & 4294967295",
        )
        .bind(KEY)
        .fetch_one(db.pool())
        .await
        .expect("locks");
        assert_eq!(sessions, 1, "one session holds the lock");
        first_stop.cancel();
        first_task.await.expect("first election");
        wait_until(|| second_leads.load(Ordering::SeqCst)).await;
        assert_eq!(second_pool.size(), 0, "the new leader keeps its session");
        second_stop.cancel();
        second_task.await.expect("second election");
    }

    async fn wait_until(done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("waited 20 s");
    }

    #[test]
    fn the_key_is_its_name() {
        assert_eq!(KEY.to_be_bytes(), *b"sl-leadr");
        assert_eq!(KEY_WITHOUT_SCHEDULER.to_be_bytes(), *b"sl-leadn");
    }
}
