//! A fresh database with the skiplock schema for every test.
//!
//! [`TestDatabase::new`] creates a new database per call, so tests run in parallel without
//! seeing each other's jobs. The server is the one `DATABASE_URL` names (the role needs
//! `CREATEDB`), or, when it is unset, a throwaway server started once per test process with
//! [`EmbeddedPostgres`] and removed when the process exits. Each database is created and
//! migrated in tens of milliseconds, and dropped when the [`TestDatabase`] is.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = skiplock_testing::TestDatabase::new().await?;
//! let id = skiplock::enqueue_new(db.pool(), &skiplock::NewJob::untyped(
//!     "noop",
//!     serde_json::json!({}),
//!     skiplock::EnqueueOptions::new(),
//! )).await?;
//! assert!(skiplock::get_job(db.pool(), id).await?.is_some());
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use crate::embedded::{EmbeddedError, EmbeddedPostgres};

/// The error of [`TestDatabase::new`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDatabaseError {
    /// `DATABASE_URL` does not parse.
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    InvalidUrl(#[source] sqlx::Error),
    /// No `DATABASE_URL`, and the throwaway server did not start.
    #[error("DATABASE_URL is unset and a throwaway PostgreSQL could not be started")]
    Embedded(#[source] EmbeddedError),
    /// Creating, migrating or connecting to the database failed.
    #[error("could not {action}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrating the test database failed.
    #[error("could not migrate the test database")]
    Migrate(#[source] skiplock::MigrateError),
    /// An earlier call in this process failed to set up the server.
    #[error("test database setup failed earlier in this process: {0}")]
    SetupFailed(String),
}

/// The server shared by every test of the process.
struct Shared {
    /// Connect options for the server's maintenance database.
    admin: PgConnectOptions,
    /// Kept alive for the whole process; its reaper removes it when the process exits.
    _embedded: Option<EmbeddedPostgres>,
}

static SHARED: OnceCell<Result<Shared, String>> = OnceCell::const_new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh database with the skiplock schema, dropped when this value is.
///
/// Its `Debug` output names the database, server and user, never the password.
pub struct TestDatabase {
    pool: PgPool,
    options: PgConnectOptions,
    admin: PgConnectOptions,
    name: String,
}

impl TestDatabase {
    /// Creates a fresh database and connects a pool of up to 10 connections to it.
    ///
    /// The first call of a process may start a server (1 to 3 s); later calls take tens of
    /// milliseconds.
    ///
    /// # Errors
    /// [`TestDatabaseError`] when no server can be reached or started, or the database cannot be
    /// created.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, it may leave an empty `skiplock_test_*` database behind.
    pub async fn new() -> Result<Self, TestDatabaseError> {
        Self::with_pool_options(PgPoolOptions::new().max_connections(10)).await
    }

    /// As [`new`](Self::new), with the given pool options.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub async fn with_pool_options(pool: PgPoolOptions) -> Result<Self, TestDatabaseError> {
        let shared = SHARED
            .get_or_init(|| async { setup().await.map_err(|error| error_chain(&error)) })
            .await
            .as_ref()
            .map_err(|error| TestDatabaseError::SetupFailed(error.clone()))?;
        let name = format!(
            "skiplock_test_{}_{}_{:04x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        let mut admin = connect(&shared.admin, "connect to the server").await?;
        crate::database::create(&mut admin, &name)
            .await
            .map_err(|source| TestDatabaseError::Database {
                action: "create the test database",
                source,
            })?;
        let _ = admin.close().await;
        let options = shared.admin.clone().database(&name);
        let pool = pool.connect_with(options.clone()).await.map_err(|source| {
            TestDatabaseError::Database {
                action: "connect to the test database",
                source,
            }
        })?;
        let database = Self {
            pool,
            options,
            admin: shared.admin.clone(),
            name,
        };
        skiplock::migrate(&database.pool)
            .await
            .map_err(TestDatabaseError::Migrate)?;
        Ok(database)
    }

    /// The pool connected to this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The connect options of this database, e.g. to build another pool.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// This database's URL, e.g. for a child process's `DATABASE_URL`.
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// This database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `PgConnectOptions`'s derived `Debug` prints the password: name the parts one by one.
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("username", &self.options.get_username())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: drop the database from
        // a thread with its own small runtime, and wait for it so nothing is left behind.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let drop = async move {
                let mut conn = admin.connect().await.ok()?;
                crate::database::drop_forced(&mut conn, &name).await.ok()?;
                conn.close().await.ok()
            };
            // Never hang a test run on an unreachable server.
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), drop)
                    .await
                    .ok()?
            })
        });
        if dropper.join().ok().flatten().is_none() {
            tracing::warn!(database = %self.name, "could not drop test database");
        }
    }
}

async fn setup() -> Result<Shared, TestDatabaseError> {
    let (admin, embedded) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let admin: PgConnectOptions = url.parse().map_err(TestDatabaseError::InvalidUrl)?;
            (admin, None)
        }
        Err(_) => {
            let embedded = tokio::task::spawn_blocking(|| {
                EmbeddedPostgres::builder()
                    // Test data is thrown away: durability only costs time here.
                    .setting("fsync", "off")
                    .setting("synchronous_commit", "off")
                    .setting("full_page_writes", "off")
                    .setting("max_connections", "300")
                    .start()
            })
            .await
            .map_err(|error| {
                TestDatabaseError::SetupFailed(format!("server start panicked: {error}"))
            })?
            .map_err(TestDatabaseError::Embedded)?;
            let admin: PgConnectOptions = embedded
                .url()
                .parse()
                .map_err(TestDatabaseError::InvalidUrl)?;
            (admin, Some(embedded))
        }
    };
    Ok(Shared {
        admin,
        _embedded: embedded,
    })
}

async fn connect(
    options: &PgConnectOptions,
    action: &'static str,
) -> Result<PgConnection, TestDatabaseError> {
    options
        .connect()
        .await
        .map_err(|source| TestDatabaseError::Database { action, source })
}

/// Renders an error and its sources as `outer: inner: root`.
fn error_chain(error: &TestDatabaseError) -> String {
    let mut rendered = error.to_string();
    let mut next = std::error::Error::source(error);
    while let Some(source) = next {
        rendered.push_str(": ");
        rendered.push_str(&source.to_string());
        next = source.source();
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_never_prints_the_password() {
        let options: PgConnectOptions = "postgres://ada:s3cret-pw@127.0.0.1:1/skiplock_test_x"
            .parse()
            .expect("url");
        let database = TestDatabase {
            pool: PgPoolOptions::new().connect_lazy_with(options.clone()),
            options: options.clone(),
            admin: options,
            name: "skiplock_test_x".to_owned(),
        };
        let debug = format!("{database:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(
            debug.contains("skiplock_test_x") && debug.contains("ada"),
            "{debug}"
        );
        // Dropping it tries to drop the database on a port where nothing listens: skip that.
        std::mem::forget(database);
    }
}
