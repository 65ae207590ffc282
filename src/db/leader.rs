//! The maintenance leadership: a session-level advisory lock, asked for on a borrowed pooled
//! connection and held on the leader's own session (see `runtime::leader`).

use sqlx::PgConnection;

/// Takes the session-level advisory lock `key` if nobody holds it; whether this session holds
/// it now (taking it again in the session that holds it also says `true`).
pub(crate) async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(conn)
        .await
}

/// Whether this session holds the advisory lock `key` (a 64-bit key is stored as `classid`,
/// its high half, and `objid`, its low half, with `objsubid` 1).
pub(crate) async fn holds(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT EXISTS (
            SELECT 1 FROM pg_locks
            WHERE locktype = 'advisory' AND objsubid = 1 AND granted
              AND pid = pg_backend_pid()
              AND classid::int8 = ($1::int8 >> 32) & 4294967295
              AND objid::int8 = $1::int8 & 4294967295
        ) AS "held!"
        "#,
        key
    )
    .fetch_one(conn)
    .await
}

/// Makes the server end this session once it has been idle for `millis` (PostgreSQL 14+), so
/// that the lock of a leader that hangs or lost its network is released.
pub(crate) async fn end_when_idle(conn: &mut PgConnection, millis: i64) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT set_config('idle_session_timeout', $1::int8::text, false) AS "set!""#,
        millis
    )
    .fetch_one(conn)
    .await
    .map(drop)
}
