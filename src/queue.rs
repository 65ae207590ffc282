//! Queue control: pause and resume a queue across every worker.
//!
//! A paused queue keeps its jobs (and takes new ones); no worker claims from it until it is
//! resumed. Jobs already running finish. The pause lives in the database
//! (`skiplock.queues`), so it holds on every worker from its next claim on, survives restarts of
//! workers and of the database, and is visible with `SELECT`. The same from SQL:
//! `SELECT skiplock.pause_queue('emails', 'provider outage')` and
//! `SELECT skiplock.resume_queue('emails')`; from a shell: `skiplock queues pause emails`.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), skiplock::queue::QueueError> {
//! skiplock::queue::pause(&pool, "emails", Some("provider outage")).await?;
//! // ... later
//! skiplock::queue::resume(&pool, "emails").await?;
//! # Ok(())
//! # }
//! ```

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::db;

/// The longest pause reason stored: 1,000 characters.
pub const MAX_PAUSE_REASON: usize = 1_000;

/// The error of a queue control call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue name is empty or longer than 128 characters.
    #[error("queue name {0:?} must be 1 to 128 characters")]
    InvalidName(String),
    /// The reason is longer than [`MAX_PAUSE_REASON`] characters.
    #[error("a pause reason must be at most {MAX_PAUSE_REASON} characters")]
    ReasonTooLong,
    /// The query failed (or the role may not change queues: see docs/security.md).
    #[error("queue control query failed")]
    Database(#[from] sqlx::Error),
}

/// A paused queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PausedQueue {
    /// The queue.
    pub name: String,
    /// When it was paused (database time).
    pub paused_at: DateTime<Utc>,
    /// The database role that paused it.
    pub paused_by: Option<String>,
    /// Why, as given to [`pause`].
    pub reason: Option<String>,
}

fn check_name(queue: &str) -> Result<(), QueueError> {
    if (1..=128).contains(&queue.chars().count()) {
        Ok(())
    } else {
        Err(QueueError::InvalidName(queue.to_owned()))
    }
}

/// Pauses `queue` on every worker: from their next claim on, none takes its jobs. Returns
/// whether this call paused it (`false`: it was paused already, and keeps its first pause's
/// time and reason). A queue need not have jobs or workers to be paused.
///
/// Transactional: run it in a transaction and the pause holds from that transaction's commit.
///
/// # Errors
/// [`QueueError::InvalidName`], [`QueueError::ReasonTooLong`], or [`QueueError::Database`]
/// when the query fails.
pub async fn pause<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    reason: Option<&str>,
) -> Result<bool, QueueError> {
    check_name(queue)?;
    if reason.is_some_and(|r| r.chars().count() > MAX_PAUSE_REASON) {
        return Err(QueueError::ReasonTooLong);
    }
    Ok(db::queue::pause(executor, queue, reason).await?)
}

/// Resumes a paused `queue` and wakes its idle workers at commit (workers that miss the
/// notification find the queue at their next poll). Returns whether it was paused.
///
/// # Errors
/// [`QueueError::InvalidName`], or [`QueueError::Database`] when the query fails.
pub async fn resume<'e>(executor: impl PgExecutor<'e>, queue: &str) -> Result<bool, QueueError> {
    check_name(queue)?;
    Ok(db::queue::resume(executor, queue).await?)
}

/// Every paused queue, by name.
///
/// # Errors
/// [`QueueError::Database`] when the query fails.
pub async fn paused<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<PausedQueue>, QueueError> {
    Ok(db::queue::paused(executor)
        .await?
        .into_iter()
        .map(|row| PausedQueue {
            name: row.name,
            paused_at: row.paused_at,
            paused_by: row.paused_by,
            reason: row.reason,
        })
        .collect())
}
