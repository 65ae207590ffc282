//! The schema: [`migrate`] applies it, [`MIGRATIONS`] and [`script`] show it.
//!
//! Everything skiplock creates lives in the `skiplock` schema, including its own bookkeeping
//! table `skiplock.migrations`; the application's `_sqlx_migrations` (or any other migration
//! tool's table) is never touched.

use sqlx::{Connection, PgPool};

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
}

/// Creates the `skiplock` schema and the bookkeeping table; idempotent.
const BOOTSTRAP: &str = include_str!("../migrations/bootstrap.sql");

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs",
        sql: include_str!("../migrations/0001_jobs.sql"),
    },
    Migration {
        version: 2,
        name: "reliability",
        sql: include_str!("../migrations/0002_reliability.sql"),
    },
    Migration {
        version: 3,
        name: "schedules",
        sql: include_str!("../migrations/0003_schedules.sql"),
    },
    Migration {
        version: 4,
        name: "retention",
        sql: include_str!("../migrations/0004_retention.sql"),
    },
    Migration {
        version: 5,
        name: "leases",
        sql: include_str!("../migrations/0005_leases.sql"),
    },
    Migration {
        version: 6,
        name: "wake_from_enqueue",
        sql: include_str!("../migrations/0006_wake_from_enqueue.sql"),
    },
    Migration {
        version: 7,
        name: "claim_by_kind",
        sql: include_str!("../migrations/0007_claim_by_kind.sql"),
    },
];

/// The error of [`migrate`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Connecting, locking or reading the bookkeeping table failed.
    #[error("could not prepare the migration")]
    Prepare(#[source] sqlx::Error),
    /// One migration failed; nothing of this run was applied.
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
    /// Committing failed; nothing of this run was applied.
    #[error("could not commit the migration")]
    Commit(#[source] sqlx::Error),
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

/// Brings the `skiplock` schema up to date.
///
/// Idempotent, and safe when several processes call it at once: everything runs in one
/// transaction under a transaction-scoped advisory lock, so one process applies the pending
/// migrations and the others wait for it and then find nothing to do. A failing migration
/// leaves the database as it was.
///
/// # Errors
/// [`MigrateError`] when the database refuses; nothing is applied then.
///
/// # Cancel safety
/// Cancel safe: dropped midway, the transaction rolls back and nothing is applied.
pub async fn migrate(pool: &PgPool) -> Result<MigrateReport, MigrateError> {
    let mut conn = pool.acquire().await.map_err(MigrateError::Prepare)?;
    let mut tx = conn.begin().await.map_err(MigrateError::Prepare)?;
    db::migration::lock(&mut tx)
        .await
        .map_err(MigrateError::Prepare)?;
    sqlx::raw_sql(BOOTSTRAP)
        .execute(&mut *tx)
        .await
        .map_err(MigrateError::Prepare)?;
    let done = db::migration::applied_versions(&mut tx)
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
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let apply = |source| MigrateError::Apply {
            version: migration.version,
            name: migration.name,
            source,
        };
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(apply)?;
        db::migration::record(&mut tx, migration.version, migration.name)
            .await
            .map_err(apply)?;
        report.applied.push(migration.version);
    }
    tx.commit().await.map_err(MigrateError::Commit)?;

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

/// The whole schema as one SQL script, for a DBA to review or apply with `psql -1 -f` instead
/// of calling [`migrate`] (it records the versions it applies, so `migrate` later finds nothing
/// to do). `since` is the last version the database already has: 0 for a fresh database, and
/// only later migrations are included.
pub fn script(since: i32) -> String {
    let mut sql = String::from(
        "-- skiplock schema: apply in one transaction (psql -1 -f).\n\
         -- The lock keeps it from racing a concurrent `skiplock migrate`.\n\
         SELECT pg_advisory_xact_lock(8316857068446245739);\n\n",
    );
    sql.push_str(BOOTSTRAP);
    for migration in MIGRATIONS.iter().filter(|m| m.version > since) {
        sql.push_str(&format!(
            "\n-- migration {} ({})\n{}\nINSERT INTO skiplock.migrations (version, name) VALUES ({}, '{}');\n",
            migration.version, migration.name, migration.sql, migration.version, migration.name
        ));
    }
    sql
}
