//! Statements of the migration runner (the migrations themselves live in `migrations/`).

use std::time::Duration;

use sqlx::PgConnection;

/// Tries to take the lock that serialises concurrent migrators until this session ends or
/// unlocks; `false` when another session holds it. Session-level rather than transaction-level:
/// a run applies each migration in a transaction of its own (and builds indexes outside any).
/// The key is the ASCII bytes of "skiplock" read as a big-endian integer, shared by every
/// skiplock version.
///
/// A try, never a wait: a session waiting in `pg_advisory_lock` sits in a transaction, and
/// `CREATE INDEX CONCURRENTLY` in the session holding the lock waits for every transaction to
/// end, so the two would deadlock.
pub(crate) async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock(8316857068446245739) AS "locked!""#)
        .fetch_one(conn)
        .await
}

/// Sets `lock_timeout` for the rest of the current transaction.
pub(crate) async fn set_local_lock_timeout(
    conn: &mut PgConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let millis = format!("{}ms", timeout.as_millis().max(1));
    sqlx::query_scalar!("SELECT set_config('lock_timeout', $1, true)", millis)
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// Whether index `skiplock.<name>` is valid; `None` when there is no such index. An index whose
/// `CREATE INDEX CONCURRENTLY` was interrupted exists but is invalid.
pub(crate) async fn index_is_valid(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT i.indisvalid AS "valid!"
        FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'skiplock' AND c.relname = $1
        "#,
        name,
    )
    .fetch_optional(conn)
    .await
}

/// Who owns the `skiplock` schema and its migrations table, if they exist, and whether that
/// is the current role (or a role it is a member of; a superuser counts only as itself).
pub(crate) struct Owners {
    pub(crate) current_user: String,
    pub(crate) schema_owner: Option<String>,
    pub(crate) schema_ours: bool,
    pub(crate) table_owner: Option<String>,
    pub(crate) table_ours: bool,
}

/// Reads [`Owners`] from the catalog; needs no privilege.
pub(crate) async fn owners(conn: &mut PgConnection) -> Result<Owners, sqlx::Error> {
    sqlx::query_as!(
        Owners,
        r#"
        WITH me AS (
            SELECT r.oid, r.rolname, r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user
        ),
        objects AS (
            SELECT (SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'skiplock') AS schema_owner,
                   (SELECT c.relowner FROM pg_class AS c
                    JOIN pg_namespace AS n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'skiplock' AND c.relname = 'migrations') AS table_owner
        )
        SELECT me.rolname::text AS "current_user!",
               o.schema_owner::regrole::text AS schema_owner,
               coalesce(o.schema_owner = me.oid
                        OR (NOT me.rolsuper AND pg_has_role(o.schema_owner, 'USAGE')), false)
                   AS "schema_ours!",
               o.table_owner::regrole::text AS table_owner,
               coalesce(o.table_owner = me.oid
                        OR (NOT me.rolsuper AND pg_has_role(o.table_owner, 'USAGE')), false)
                   AS "table_ours!"
        FROM me, objects AS o
        "#
    )
    .fetch_one(conn)
    .await
}

/// Whether `skiplock.migrations` exists (the schema was ever migrated).
pub(crate) async fn bookkeeping_exists(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT to_regclass('skiplock.migrations') IS NOT NULL AS "exists!""#)
        .fetch_one(conn)
        .await
}

/// Versions already applied, ascending.
pub(crate) async fn applied_versions(conn: &mut PgConnection) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar!("SELECT version FROM skiplock.migrations ORDER BY version")
        .fetch_all(conn)
        .await
}

/// Records that `version` has been applied.
pub(crate) async fn record(
    conn: &mut PgConnection,
    version: i32,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO skiplock.migrations (version, name) VALUES ($1, $2)",
        version,
        name
    )
    .execute(conn)
    .await?;
    Ok(())
}
