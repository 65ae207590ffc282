//! The schema: [`migrate`] applies it, [`MIGRATIONS`] and [`script`] show it.
//!
//! Everything skiplock creates lives in the `skiplock` schema, including its own bookkeeping
//! table `skiplock.migrations`; the application's `_sqlx_migrations` (or any other migration
//! tool's table) is never touched.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::db;

/// One schema migration, embedded from `migrations/`.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version; migrations apply in ascending order.
    pub version: i32,
    /// Its name.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
    /// How [`migrate`] applies it.
    pub kind: MigrationKind,
}

/// How [`migrate`] applies a [`Migration`] to a live database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationKind {
    /// In a transaction of its own, together with its record in `skiplock.migrations`. Its
    /// statements wait at most [`LOCK_TIMEOUT`] for each table lock; when one is not granted in
    /// time the whole migration is rolled back and tried again after a pause, so a migration
    /// never queues the workers' statements behind it for longer than that. Written so that no
    /// statement holds a lock that blocks writes while it scans a big table (constraints are
    /// added `NOT VALID`, columns without volatile defaults, indexes through
    /// [`ConcurrentIndex`](Self::ConcurrentIndex)).
    Transaction,
    /// One `CREATE INDEX IF NOT EXISTS <name> ...` statement, which [`migrate`] runs as
    /// `CREATE INDEX CONCURRENTLY`, outside any transaction: writes go on while the index is
    /// built. An invalid index left by an interrupted build is dropped and built again.
    ConcurrentIndex {
        /// The index's name, in schema `skiplock`.
        name: &'static str,
    },
}

/// How long each statement of a migration waits for a table lock before the migration is
/// rolled back and tried again: 500 ms. Workers' statements that queue behind the waiting
/// migration wait at most about as long.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(500);

/// How many times [`migrate`] tries a migration whose locks were not granted in time before
/// it gives up: 60, with pauses growing from 100 ms to 2 s (about two minutes in all).
pub const LOCK_ATTEMPTS: u32 = 60;

/// Creates the `skiplock` schema and the bookkeeping table; idempotent.
const BOOTSTRAP: &str = include_str!("../migrations/bootstrap.sql");

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs",
        sql: include_str!("../migrations/0001_jobs.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 2,
        name: "reliability",
        sql: include_str!("../migrations/0002_reliability.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 3,
        name: "schedules",
        sql: include_str!("../migrations/0003_schedules.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 4,
        name: "retention",
        sql: include_str!("../migrations/0004_retention.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 5,
        name: "leases",
        sql: include_str!("../migrations/0005_leases.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 6,
        name: "wake_from_enqueue",
        sql: include_str!("../migrations/0006_wake_from_enqueue.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 7,
        name: "claim_kind_index",
        sql: include_str!("../migrations/0007_claim_kind_index.sql"),
        kind: MigrationKind::ConcurrentIndex {
            name: "jobs_claim_kind_idx",
        },
    },
    Migration {
        version: 8,
        name: "limits_and_privileges",
        sql: include_str!("../migrations/0008_limits_and_privileges.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 9,
        name: "schedule_owners",
        sql: include_str!("../migrations/0009_schedule_owners.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 10,
        name: "claim_by_kind",
        sql: include_str!("../migrations/0010_claim_by_kind.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 11,
        name: "initial_state",
        sql: include_str!("../migrations/0011_initial_state.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 12,
        name: "inspection",
        sql: include_str!("../migrations/0012_inspection.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 13,
        name: "job_metadata",
        sql: include_str!("../migrations/0013_job_metadata.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 14,
        name: "inspection_index",
        sql: include_str!("../migrations/0014_inspection_index.sql"),
        kind: MigrationKind::ConcurrentIndex {
            name: "jobs_state_queue_kind_idx",
        },
    },
    Migration {
        version: 15,
        name: "drop_finished_index",
        sql: include_str!("../migrations/0015_drop_finished_index.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 16,
        name: "queue_pause",
        sql: include_str!("../migrations/0016_queue_pause.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 17,
        name: "job_waiters",
        sql: include_str!("../migrations/0017_job_waiters.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 18,
        name: "sql_worker",
        sql: include_str!("../migrations/0018_sql_worker.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 19,
        name: "workflows",
        sql: include_str!("../migrations/0019_workflows.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 20,
        name: "limits",
        sql: include_str!("../migrations/0020_limits.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 21,
        name: "workflow_index",
        sql: include_str!("../migrations/0021_workflow_index.sql"),
        kind: MigrationKind::ConcurrentIndex {
            name: "jobs_workflow_idx",
        },
    },
    Migration {
        version: 22,
        name: "workflow_settling",
        sql: include_str!("../migrations/0022_workflow_settling.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 23,
        name: "waiter_handshake",
        sql: include_str!("../migrations/0023_waiter_handshake.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 24,
        name: "throttle_running_count",
        sql: include_str!("../migrations/0024_throttle_running_count.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 25,
        name: "workflow_wake",
        sql: include_str!("../migrations/0025_workflow_wake.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 26,
        name: "unique_states",
        sql: include_str!("../migrations/0026_unique_states.sql"),
        kind: MigrationKind::Transaction,
    },
    Migration {
        version: 27,
        name: "retry_unique",
        sql: include_str!("../migrations/0027_retry_unique.sql"),
        kind: MigrationKind::Transaction,
    },
];

/// The error of [`migrate`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Connecting, locking or reading the bookkeeping table failed.
    #[error("could not prepare the migration")]
    Prepare(#[source] sqlx::Error),
    /// The `skiplock` schema or its `skiplock.migrations` table belongs to a role other than
    /// the one migrating (and one it is not a member of); nothing was read from or applied to
    /// it. Whoever owns the schema controls the functions every skiplock user calls: run
    /// `migrate` as that owner, or find out who created it.
    #[error(
        "refusing to migrate: {object} is owned by role {owner}, not by {user}; run migrate as {owner}"
    )]
    ForeignOwner {
        /// `schema skiplock` or `table skiplock.migrations`.
        object: &'static str,
        /// The role that owns it.
        owner: String,
        /// The role that ran `migrate`.
        user: String,
    },
    /// One migration failed; it was rolled back, and the ones before it stay applied.
    #[error("migration {version} ({name}) failed")]
    Apply {
        /// The failing migration's version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration's table locks were not granted within [`LOCK_TIMEOUT`] in any of
    /// [`LOCK_ATTEMPTS`] tries: something holds locks on skiplock's tables for minutes (look
    /// for long transactions in `pg_stat_activity`). Nothing of that migration was applied.
    #[error(
        "migration {version} ({name}) could not take its locks in {attempts} tries; look for long transactions on skiplock's tables"
    )]
    LockTimeout {
        /// The migration's version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// The last lock timeout.
        #[source]
        source: sqlx::Error,
    },
}

/// What [`migrate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateReport {
    /// Versions this call applied, ascending; empty when the schema was current.
    pub applied: Vec<i32>,
    /// Versions the database has that this version of skiplock does not know (a newer
    /// skiplock migrated it); they are left alone.
    pub unknown: Vec<i32>,
}

/// Brings the `skiplock` schema up to date, on a live database.
///
/// Idempotent, and safe when several processes call it at once: the run holds an advisory
/// lock, so one process applies the pending migrations and the others wait for it and then
/// find nothing to do.
///
/// Safe while workers run: each migration is applied in a transaction of its own whose
/// statements wait at most [`LOCK_TIMEOUT`] for a table lock (and are retried after a pause
/// when that is not enough), indexes on `skiplock.jobs` are built `CONCURRENTLY`, and no
/// statement holds a write-blocking lock while it scans the table; see [`MigrationKind`].
///
/// Run it as the role that owns the schema (docs/security.md): it refuses a `skiplock` schema
/// or `skiplock.migrations` table owned by any other role, so a schema somebody else planted
/// is never adopted (a superuser too must be the owner itself, not merely able to act as it).
/// When the schema is current it changes nothing and needs no privilege beyond reading the
/// catalog and the migrations table: no `CREATE` on the database.
///
/// # Errors
/// [`MigrateError::ForeignOwner`] for a schema or migrations table of another role; otherwise
/// [`MigrateError`] when the database refuses. The failing migration is rolled back; those
/// before it stay applied, and the next call resumes from there.
///
/// # Cancel safety
/// Cancel safe: the run has a connection of its own, which is closed when the future is
/// dropped; the migration in progress is rolled back (an interrupted index build is dropped
/// and built again by the next call) and the advisory lock released.
pub async fn migrate(pool: &PgPool) -> Result<MigrateReport, MigrateError> {
    migrate_to(pool, i32::MAX).await
}

/// Like [`migrate`], but applies pending migrations only up to and including `version`: to
/// stage a deployment, or to test an upgrade from an earlier release.
///
/// # Errors
/// As [`migrate`].
///
/// # Cancel safety
/// Cancel safe, as [`migrate`].
pub async fn migrate_to(pool: &PgPool, version: i32) -> Result<MigrateReport, MigrateError> {
    // Detached from the pool: the session-level advisory lock goes with this connection, so a
    // dropped future closes it (releasing the lock) instead of handing a locked connection back.
    let mut conn = pool
        .acquire()
        .await
        .map_err(MigrateError::Prepare)?
        .detach();
    let result = run(&mut conn, version).await;
    // Closing releases the lock; the server releases it as well if the close fails.
    let _ = conn.close().await;
    let report = result?;
    if !report.applied.is_empty() {
        tracing::info!(applied = ?report.applied, "skiplock schema migrated");
    }
    if !report.unknown.is_empty() {
        tracing::warn!(
            unknown = ?report.unknown,
            "the database has skiplock migrations this version does not know; a newer skiplock migrated it"
        );
    }
    Ok(report)
}

async fn run(conn: &mut PgConnection, target: i32) -> Result<MigrateReport, MigrateError> {
    // Another migrator holds the lock: wait outside any transaction (see `try_lock`).
    let mut pause = Duration::from_millis(50);
    while !db::migration::try_lock(conn)
        .await
        .map_err(MigrateError::Prepare)?
    {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    let owners = db::migration::owners(conn)
        .await
        .map_err(MigrateError::Prepare)?;
    let foreign = |object, owner: &String| MigrateError::ForeignOwner {
        object,
        owner: owner.clone(),
        user: owners.current_user.clone(),
    };
    if let (Some(owner), false) = (&owners.schema_owner, owners.schema_ours) {
        return Err(foreign("schema skiplock", owner));
    }
    if let (Some(owner), false) = (&owners.table_owner, owners.table_ours) {
        return Err(foreign("table skiplock.migrations", owner));
    }
    if owners.table_owner.is_none() {
        // CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database before it
        // looks for the schema: only run it when something is missing.
        let mut tx = conn.begin().await.map_err(MigrateError::Prepare)?;
        sqlx::raw_sql(BOOTSTRAP)
            .execute(&mut *tx)
            .await
            .map_err(MigrateError::Prepare)?;
        tx.commit().await.map_err(MigrateError::Prepare)?;
    }
    let done = db::migration::applied_versions(conn)
        .await
        .map_err(MigrateError::Prepare)?;

    let mut report = MigrateReport {
        unknown: done
            .iter()
            .copied()
            .filter(|version| !MIGRATIONS.iter().any(|m| m.version == *version))
            .collect(),
        ..MigrateReport::default()
    };
    let pending = MIGRATIONS
        .iter()
        .filter(|m| m.version <= target && !done.contains(&m.version));
    for migration in pending {
        apply(conn, migration).await?;
        report.applied.push(migration.version);
    }
    Ok(report)
}

/// Applies one migration, trying again after a pause while its locks are not granted in time.
async fn apply(conn: &mut PgConnection, migration: &Migration) -> Result<(), MigrateError> {
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let applied = match migration.kind {
            MigrationKind::Transaction => apply_in_transaction(conn, migration).await,
            MigrationKind::ConcurrentIndex { name } => build_index(conn, migration, name).await,
        };
        let error = match applied {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if !is_lock_timeout(&error) {
            return Err(MigrateError::Apply {
                version: migration.version,
                name: migration.name,
                source: error,
            });
        }
        if attempt == LOCK_ATTEMPTS {
            return Err(MigrateError::LockTimeout {
                version: migration.version,
                name: migration.name,
                attempts: attempt,
                source: error,
            });
        }
        tracing::info!(
            version = migration.version,
            attempt,
            "migration waited too long for a table lock; rolled back, trying again"
        );
        // Jitter: concurrent migrators of several databases should not retry in step.
        tokio::time::sleep(pause.mul_f64(1.0 + fastrand::f64() / 2.0)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}

async fn apply_in_transaction(
    conn: &mut PgConnection,
    migration: &Migration,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    db::migration::set_local_lock_timeout(&mut tx, LOCK_TIMEOUT).await?;
    sqlx::raw_sql(migration.sql).execute(&mut *tx).await?;
    db::migration::record(&mut tx, migration.version, migration.name).await?;
    tx.commit().await
}

/// Builds a [`MigrationKind::ConcurrentIndex`] migration's index without blocking writes.
/// `CREATE INDEX CONCURRENTLY` cannot run in a transaction, so the build and the record are two
/// statements: a build interrupted before its record leaves an index that is either valid
/// (found here and kept) or invalid (dropped here and built again).
async fn build_index(
    conn: &mut PgConnection,
    migration: &Migration,
    name: &'static str,
) -> Result<(), sqlx::Error> {
    match db::migration::index_is_valid(&mut *conn, name).await? {
        Some(true) => {}
        found => {
            if found == Some(false) {
                tracing::info!(
                    index = name,
                    "dropping an index whose build was interrupted"
                );
                let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS skiplock.{name}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(concurrently(migration.sql)))
                .execute(&mut *conn)
                .await?;
        }
    }
    db::migration::record(conn, migration.version, migration.name).await
}

/// `CREATE INDEX ...` as `CREATE INDEX CONCURRENTLY ...`; every concurrent-index migration
/// starts with `CREATE INDEX IF NOT EXISTS` (a test checks it).
fn concurrently(sql: &str) -> String {
    sql.replacen("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
}

fn is_lock_timeout(error: &sqlx::Error) -> bool {
    // 55P03 lock_not_available: `lock_timeout` expired.
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "55P03")
}

/// The whole schema as one SQL script, for a DBA to review or apply with `psql -1 -f` instead
/// of calling [`migrate`] (it records the versions it applies, so `migrate` later finds nothing
/// to do). `since` is the last version the database already has: 0 for a fresh database, and
/// only later migrations are included.
///
/// Applied in one transaction, the script builds indexes without `CONCURRENTLY` (which a
/// transaction does not allow), blocking writes to the table while they are built; on a large
/// live table, build them first with the `CREATE INDEX CONCURRENTLY` statement printed next to
/// each, or use [`migrate`], which does.
pub fn script(since: i32) -> String {
    let mut sql = String::from(
        "-- skiplock schema: apply in one transaction (psql -1 -f).\n\
         -- The lock keeps it from racing a concurrent `skiplock migrate`.\n\
         SELECT pg_advisory_xact_lock(8316857068446245739);\n\n",
    );
    sql.push_str(BOOTSTRAP);
    for migration in MIGRATIONS.iter().filter(|m| m.version > since) {
        sql.push_str(&format!(
            "\n-- migration {} ({})\n",
            migration.version, migration.name
        ));
        if let MigrationKind::ConcurrentIndex { .. } = migration.kind {
            sql.push_str(&format!(
                "-- Blocks writes while it builds; on a large live table run this first, outside a transaction:\n-- {}\n",
                concurrently(migration.sql).trim().replace('\n', "\n-- ")
            ));
        }
        sql.push_str(&format!(
            "{}\nINSERT INTO skiplock.migrations (version, name) VALUES ({}, '{}');\n",
            migration.sql, migration.version, migration.name
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_index_migrations_are_single_create_index_statements() {
        for migration in MIGRATIONS {
            if let MigrationKind::ConcurrentIndex { name } = migration.kind {
                let body: String = migration
                    .sql
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let prefix = format!("CREATE INDEX IF NOT EXISTS {name} ON skiplock.");
                assert!(body.trim_start().starts_with(&prefix), "{}", migration.name);
                assert_eq!(body.matches(';').count(), 1, "{}", migration.name);
                assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            }
        }
    }

    #[test]
    fn versions_ascend() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }
}
