//! `skiplock.queues`: per-queue control (pause and resume).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Pauses `queue`; whether this call paused it (false: it was paused already).
pub(crate) async fn pause<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT skiplock.pause_queue($1, $2) AS "paused!""#,
        queue,
        reason
    )
    .fetch_one(executor)
    .await
}

/// Resumes `queue` and wakes its workers at commit; whether it was paused.
pub(crate) async fn resume<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT skiplock.resume_queue($1) AS "resumed!""#, queue)
        .fetch_one(executor)
        .await
}

/// One paused queue.
pub(crate) struct Paused {
    pub(crate) name: String,
    pub(crate) paused_at: DateTime<Utc>,
    pub(crate) paused_by: Option<String>,
    pub(crate) reason: Option<String>,
}

/// Every paused queue, by name.
pub(crate) async fn paused<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<Paused>, sqlx::Error> {
    sqlx::query_as!(
        Paused,
        r#"
        SELECT name, paused_at AS "paused_at!", paused_by, pause_reason AS reason
        FROM skiplock.queues
        WHERE paused_at IS NOT NULL
        ORDER BY name
        "#
    )
    .fetch_all(executor)
    .await
}
