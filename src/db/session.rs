//! Session settings of the worker's own connections.

use sqlx::PgConnection;

/// Sets this session's `statement_timeout` (a PostgreSQL duration such as `10000ms`) and, when
/// `synchronous_commit` is `Some`, its `synchronous_commit`. Run right after connecting instead
/// of as startup `options`, which connection poolers such as PgBouncer refuse.
pub(crate) async fn configure(
    conn: &mut PgConnection,
    statement_timeout: &str,
    synchronous_commit: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        SELECT set_config('statement_timeout', $1, false) AS "statement_timeout!",
               CASE WHEN $2::text IS NOT NULL
                    THEN set_config('synchronous_commit', $2, false) END AS "synchronous_commit"
        "#,
        statement_timeout,
        synchronous_commit,
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}
