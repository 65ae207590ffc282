//! Statements of the migration runner (the migrations themselves live in `migrations/`).

use sqlx::PgConnection;

/// Serialises concurrent migrators for the rest of the transaction. The key is the ASCII bytes
/// of "skiplock" read as a big-endian integer, shared by every skiplock version.
pub(crate) async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock(8316857068446245739)")
        .execute(conn)
        .await?;
    Ok(())
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
