//! The worker's own connections: four small pools, connected with the application pool's
//! *current* connect options and configured after connecting.
//!
//! - `claims`: the producers' claims and limit probes, one connection per queue, and the
//!   followers' tries of the maintenance election (`runtime::leader`). Its sessions
//!   run with `plan_cache_mode = force_generic_plan` (and `enable_seqscan`, `jit` off, so
//!   that plan is the same index-driven one whenever it was made; see
//!   `db::session::configure`): the claim is planned once per connection instead of at every
//!   execution, which was most of its server time on an idle queue. Only statements whose best
//!   plan does not depend on their parameters run here; everything else keeps the server's
//!   choice. Not for workers without LISTEN (behind a transaction-mode pooler, a session
//!   setting would be left on a server connection the application uses next).
//! - `internal`: completions (the completer keeps one connection while it has outcomes to
//!   write), promotion, rescue, pruning, the scheduler, and the LISTEN connection.
//! - `keeper`: lease renewals and cancel checks only. Nothing a handler calls can take its
//!   connections, so handler work cannot delay a renewal (and make a lease lapse).
//! - `progress`: [`JobContext::set_progress`](crate::JobContext::set_progress), the one worker
//!   write that handlers drive. Handlers writing progress in a loop queue for these
//!   connections, not for the others.
//!
//! Session settings (`statement_timeout`, `synchronous_commit` when turned off, and the claims'
//! plan settings) are `SET` after each connect rather than sent as startup `options`, which
//! PgBouncer refuses.
//!
//! The application may replace its pool's connect options at any time
//! ([`Pool::set_connect_options`](sqlx::Pool::set_connect_options), for a credential refresh):
//! the worker's pools follow. sqlx 0.9 has no hook before a connection is opened, so each pool
//! compares the application's options with those it copied whenever it hands out, takes back
//! or opens a connection, and copies a changed set to all three pools. A connection that turns
//! out to have been opened with replaced options is closed at once and opened again with the
//! new ones, so every connection the worker uses was opened with the application's options of
//! that moment. (The one gap: a connect that *fails* with replaced credentials before any
//! connection was handed out or returned; its role retries, and the retry uses the new ones.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::APPLICATION_NAME;
use crate::db;

/// The internal pool: completions, the LISTEN connection, and the maintenance roles.
const INTERNAL_CONNECTIONS: u32 = 5;

/// The lease renewals' pool: one connection renews, one answers cancel checks.
const KEEPER_CONNECTIONS: u32 = 2;

/// The progress writes' pool.
const PROGRESS_CONNECTIONS: u32 = 2;

/// The session settings of every worker connection.
#[derive(Clone, Debug)]
pub(crate) struct SessionSettings {
    /// The deadline of each database call, also the connections' `statement_timeout`.
    pub(crate) db_timeout: Duration,
    /// `false` runs the connections with `synchronous_commit = off`.
    pub(crate) synchronous_commit: bool,
    /// Whether the claims' connections run with `plan_cache_mode = force_generic_plan`.
    pub(crate) generic_claim_plans: bool,
}

/// The worker's pools; see the [module docs](self).
pub(crate) struct WorkerPools {
    pub(crate) claims: PgPool,
    pub(crate) internal: PgPool,
    pub(crate) keeper: PgPool,
    pub(crate) progress: PgPool,
    /// Lets go of the pools' references to each other when the worker is dropped.
    _follow: FollowGuard,
}

impl WorkerPools {
    /// Lazily connected pools for a worker with `queues` queues, following `app`'s connect
    /// options.
    pub(crate) fn new(app: &PgPool, settings: &SessionSettings, queues: usize) -> Self {
        let follow = Arc::new(Follow {
            seen: Mutex::new(app.connect_options()),
            app: app.clone(),
            pools: Mutex::new(Vec::new()),
            replaced_users: Mutex::new(Vec::new()),
        });
        let claims_size = u32::try_from(queues.max(1)).unwrap_or(u32::MAX);
        let claims = pool(&follow, settings, claims_size, settings.generic_claim_plans);
        let internal = pool(&follow, settings, INTERNAL_CONNECTIONS, false);
        let keeper = pool(&follow, settings, KEEPER_CONNECTIONS, false);
        let progress = pool(&follow, settings, PROGRESS_CONNECTIONS, false);
        *lock(&follow.pools) = vec![
            claims.clone(),
            internal.clone(),
            keeper.clone(),
            progress.clone(),
        ];
        Self {
            claims,
            internal,
            keeper,
            progress,
            _follow: FollowGuard(follow),
        }
    }

    /// Closes every pool, waiting for their connections to be returned.
    pub(crate) async fn close(&self) {
        tokio::join!(
            self.claims.close(),
            self.internal.close(),
            self.keeper.close(),
            self.progress.close()
        );
    }
}

/// One pool of `size` connections with the worker's session settings and followed options;
/// `generic_plans` for the claims' pool.
fn pool(
    follow: &Arc<Follow>,
    settings: &SessionSettings,
    size: u32,
    generic_plans: bool,
) -> PgPool {
    let statement_timeout = settings.db_timeout;
    // Only when the user opted in (`WorkerBuilder::synchronous_commit`); otherwise the
    // server's own setting stands.
    let synchronous_commit_off = !settings.synchronous_commit;
    let on_connect = follow.clone();
    let on_acquire = follow.clone();
    let on_release = follow.clone();
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(settings.db_timeout)
        .after_connect(move |conn, _| {
            // Opened with options the application has replaced since: the pool closes it and
            // connects again with the new ones.
            let stale = on_connect.sync();
            let replaced_users = on_connect.replaced_users();
            Box::pin(async move {
                if stale {
                    return Err(sqlx::Error::Configuration(
                        "the application's connect options changed; connecting again".into(),
                    ));
                }
                // A connect that began before the options were replaced and ended after
                // another connection copied them is not caught above; its login role tells.
                // (Only a role that was replaced counts: behind a pooler that maps users, the
                // role may legitimately differ from the one asked for.)
                if !replaced_users.is_empty() {
                    let user = db::session::session_user(&mut *conn).await?;
                    if replaced_users.contains(&user) {
                        return Err(sqlx::Error::Configuration(
                            "connected with replaced credentials; connecting again".into(),
                        ));
                    }
                }
                db::session::configure(
                    conn,
                    statement_timeout,
                    synchronous_commit_off,
                    generic_plans,
                )
                .await
            })
        })
        .before_acquire(move |_, _| {
            on_acquire.sync();
            Box::pin(async { Ok(true) })
        })
        .after_release(move |_, _| {
            on_release.sync();
            Box::pin(async { Ok(true) })
        })
        .connect_lazy_with(worker_options(&follow.seen_options()))
}

/// The worker's connect options derived from the application's.
fn worker_options(app: &PgConnectOptions) -> PgConnectOptions {
    app.clone().application_name(APPLICATION_NAME)
}

/// Copies the application pool's connect options to the worker's pools when they change.
struct Follow {
    app: PgPool,
    /// The application's options as last copied (compared by pointer: `set_connect_options`
    /// always stores a new `Arc`).
    seen: Mutex<Arc<PgConnectOptions>>,
    pools: Mutex<Vec<PgPool>>,
    /// User names of replaced options that differ from the current one.
    replaced_users: Mutex<Vec<String>>,
}

impl Follow {
    fn seen_options(&self) -> Arc<PgConnectOptions> {
        lock(&self.seen).clone()
    }

    fn replaced_users(&self) -> Vec<String> {
        lock(&self.replaced_users).clone()
    }

    /// Copies the application's options if they changed since the last call; returns whether
    /// they did.
    fn sync(&self) -> bool {
        let current = self.app.connect_options();
        let mut seen = lock(&self.seen);
        if Arc::ptr_eq(&current, &seen) {
            return false;
        }
        let options = worker_options(&current);
        for pool in lock(&self.pools).iter() {
            pool.set_connect_options(options.clone());
        }
        tracing::debug!("the application's connect options changed; worker connections follow");
        let mut replaced = lock(&self.replaced_users);
        let user = current.get_username().to_owned();
        replaced.retain(|old| *old != user);
        let old = seen.get_username();
        if old != user && !replaced.iter().any(|known| known == old) {
            replaced.push(old.to_owned());
        }
        drop(replaced);
        *seen = current;
        true
    }
}

/// The pools' hooks hold the [`Follow`], which holds the pools: this breaks the cycle.
struct FollowGuard(Arc<Follow>);

impl Drop for FollowGuard {
    fn drop(&mut self) {
        lock(&self.0.pools).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
