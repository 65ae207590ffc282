//! Session settings of the worker's own connections.

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection};

/// Sets this session's `statement_timeout` and, when `synchronous_commit_off`, turns
/// `synchronous_commit` off. Run right after connecting instead of as startup `options`, which
/// connection poolers such as PgBouncer refuse.
///
/// One simple-protocol round trip (a parameterized statement would take two, on every new
/// connection). `SET` takes no parameters, so the values are spliced in; both are generated
/// here (an integer and a keyword), never taken from input.
pub(crate) async fn configure(
    conn: &mut PgConnection,
    statement_timeout: Duration,
    synchronous_commit_off: bool,
) -> Result<(), sqlx::Error> {
    let mut statement = format!(
        "SET statement_timeout = {}",
        statement_timeout.as_millis().max(1)
    );
    if synchronous_commit_off {
        statement.push_str("; SET synchronous_commit = off");
    }
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(conn)
        .await?;
    Ok(())
}

/// The role this session logged in as (`session_user`, which `SET ROLE` does not change).
pub(crate) async fn session_user(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT session_user::text AS "user!""#)
        .fetch_one(conn)
        .await
}
