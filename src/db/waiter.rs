//! `skiplock.job_waiters`, and the reads of whoever waits on jobs.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::JobState;

/// Registers `waiter` for `ids` until `now() + ttl_secs`, renewing existing registrations and
/// restoring lost ones.
///
/// Holds the waiters' lock (0023) exclusively until it commits: a statement finishing one of
/// the jobs either sees the registration or has committed before it, so the read that follows
/// sees its outcome. No notification is lost to that race.
pub(crate) async fn register<'e>(
    executor: impl PgExecutor<'e>,
    waiter: &str,
    ids: &[i64],
    ttl_secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        WITH handshake AS (SELECT pg_advisory_xact_lock(1936419956, -1))
        INSERT INTO skiplock.job_waiters (job_id, waiter, expires_at)
        SELECT DISTINCT id, $1, now() + make_interval(secs => $3)
        FROM unnest($2::bigint[]) AS id, handshake
        ON CONFLICT (job_id, waiter) DO UPDATE SET expires_at = excluded.expires_at
        "#,
        waiter,
        ids,
        ttl_secs,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Removes `waiter`'s registrations for `ids`.
pub(crate) async fn unregister<'e>(
    executor: impl PgExecutor<'e>,
    waiter: &str,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM skiplock.job_waiters WHERE waiter = $1 AND job_id = ANY ($2)",
        waiter,
        ids,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes registrations that expired (their waiter died); how many.
pub(crate) async fn delete_expired<'e>(executor: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM skiplock.job_waiters WHERE expires_at < now()")
            .execute(executor)
            .await?
            .rows_affected(),
    )
}

/// What a waiter sees of one job. JSON columns come as text, parsed by the caller: a row
/// written by another language may hold JSON `serde_json` refuses, and one such row must not
/// make the whole read fail.
pub(crate) struct JobSnapshot {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) state: JobState,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) progress: Option<String>,
    /// Only once the job finished.
    pub(crate) result: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

/// The jobs of `ids` that exist.
pub(crate) async fn snapshots<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[i64],
) -> Result<Vec<JobSnapshot>, sqlx::Error> {
    sqlx::query_as!(
        JobSnapshot,
        r#"
        SELECT j.id, j.kind, j.queue, j.state AS "state: JobState", j.attempt, j.max_attempts,
               j.progress::text AS progress,
               CASE WHEN j.state IN ('completed', 'failed', 'cancelled') THEN j.result::text END
                   AS result,
               (j.errors -> -1)::text AS last_error,
               CASE WHEN isfinite(j.finished_at) AND j.finished_at < '262000-01-01'
                    THEN j.finished_at END AS finished_at
        FROM skiplock.jobs AS j
        WHERE j.id = ANY ($1)
        "#,
        ids,
    )
    .fetch_all(executor)
    .await
}
