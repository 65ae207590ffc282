//! The maintenance leadership: a session-level advisory lock, asked for on a borrowed pooled
//! connection and held on the leader's own session (see `runtime::leader`).

use sqlx::PgConnection;

/// Takes the session-level advisory lock `key` if nobody holds it; whether this session holds
/// it now (taking it again in the session that holds it also says `true`). In the same
/// statement, a session that takes it is set to end once idle for `idle_millis` (PostgreSQL 14+;
/// `idle_session_timeout`), so that the lock of a leader that hangs or lost its network is
/// released: set after the lock in a second statement, a break between the two would leave the
/// lock on a session the server keeps until TCP notices, minutes to hours.
pub(crate) async fn try_lock(
    conn: &mut PgConnection,
    key: i64,
    idle_millis: i64,
) -> Result<bool, sqlx::Error> {
    // CASE evaluates in order: `set_config` runs only once the lock is taken, and only on a
    // server that knows the setting (before 14 it would be an error).
    sqlx::query_scalar!(
        r#"
        SELECT CASE
            WHEN NOT pg_try_advisory_lock($1) THEN false
            WHEN current_setting('server_version_num')::int < 140000 THEN true
            ELSE set_config('idle_session_timeout', $2::int8::text, false) IS NOT NULL
        END AS "locked!"
        "#,
        key,
        idle_millis
    )
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
