//! Acting on jobs: cancel, retry or delete every job a filter matches, or one.

use serde::Serialize;
use sqlx::{PgPool, Postgres};

use super::{InspectError, JobFilter, begin};
use crate::JobState;
use crate::db::job_list::{self, BulkAction};

/// How many jobs one batch of a bulk action handles, each batch its own transaction: 1,000.
pub const BATCH_SIZE: i64 = 1_000;

/// What a bulk action did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BulkReport {
    /// Jobs it changed: cancelled (or, running, asked to stop), put back, or deleted.
    pub changed: u64,
    /// Transactions it took.
    pub batches: u64,
}

/// Keeps the states of `filter` that `allowed` has (all of `allowed` when it names none);
/// `None` when none is left.
fn narrow(filter: &JobFilter, allowed: &[JobState]) -> Option<JobFilter> {
    let states: Vec<JobState> = if filter.states.is_empty() {
        allowed.to_vec()
    } else {
        filter
            .states
            .iter()
            .copied()
            .filter(|state| allowed.contains(state))
            .collect()
    };
    (!states.is_empty()).then(|| JobFilter {
        states,
        ..filter.clone()
    })
}

async fn bulk(
    pool: &PgPool,
    action: BulkAction,
    filter: Option<JobFilter>,
) -> Result<BulkReport, InspectError> {
    let mut report = BulkReport::default();
    let Some(filter) = filter else {
        return Ok(report);
    };
    let mut after = None;
    loop {
        let mut tx = begin::<&PgPool>(pool, false).await?;
        let (lowest, picked, changed) =
            job_list::bulk_batch(&mut *tx, action, &filter, after, BATCH_SIZE).await?;
        tx.commit().await?;
        if picked > 0 {
            report.batches += 1;
        }
        report.changed += u64::try_from(changed).unwrap_or(0);
        match lowest {
            // A short batch was the last.
            Some(lowest) if picked == BATCH_SIZE => after = Some(lowest),
            _ => return Ok(report),
        }
    }
}

/// Cancels every waiting or running job `filter` matches, as [`cancel`](crate::cancel) does
/// one: waiting jobs become `cancelled`, running ones are asked to stop. Works through them
/// newest first in batches of [`BATCH_SIZE`], each its own transaction, so it never holds many
/// locks for long; jobs enqueued meanwhile with higher ids are not included. A job whose row
/// another transaction holds is waited for up to the lock timeout (1 s); a batch that times
/// out (a handler completing its job in a transaction held open longer) fails, and the
/// batches before it stay done.
///
/// # Errors
/// [`InspectError::Database`] when a batch fails; the batches before it stay done.
///
/// # Cancel safety
/// Not cancel safe: dropped midway, the batches already committed stay done.
pub async fn cancel_jobs(pool: &PgPool, filter: &JobFilter) -> Result<BulkReport, InspectError> {
    let waiting = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
    ];
    bulk(pool, BulkAction::Cancel, narrow(filter, &waiting)).await
}

/// Puts back every `failed` or `cancelled` job `filter` matches, as [`retry`](crate::retry)
/// does one, in batches like [`cancel_jobs`].
///
/// # Errors
/// As [`cancel_jobs`].
///
/// # Cancel safety
/// As [`cancel_jobs`].
pub async fn retry_jobs(pool: &PgPool, filter: &JobFilter) -> Result<BulkReport, InspectError> {
    bulk(
        pool,
        BulkAction::Retry,
        narrow(filter, &[JobState::Failed, JobState::Cancelled]),
    )
    .await
}

/// Deletes every finished (`completed`, `failed`, `cancelled`) job `filter` matches, in
/// batches like [`cancel_jobs`]; other jobs are never deleted, nor jobs of workflows, which
/// retention deletes with their workflow (their later jobs read their results, and a retry of
/// the workflow needs them). Rows another transaction holds locked (a retry in progress) are
/// skipped.
///
/// # Errors
/// As [`cancel_jobs`].
///
/// # Cancel safety
/// As [`cancel_jobs`].
pub async fn delete_jobs(pool: &PgPool, filter: &JobFilter) -> Result<BulkReport, InspectError> {
    let finished = [JobState::Completed, JobState::Failed, JobState::Cancelled];
    bulk(pool, BulkAction::Delete, narrow(filter, &finished)).await
}

/// Deletes job `id` if it is finished and not part of a workflow (see [`delete_jobs`]);
/// returns whether it did.
///
/// # Errors
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Not cancel safe on a pool: dropped after the statement was sent, the job may or may not
/// have been deleted.
pub async fn delete_job<'c, A>(conn: A, id: i64) -> Result<bool, InspectError>
where
    A: sqlx::Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, false).await?;
    let deleted = crate::db::inspect::delete_finished_job(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(deleted)
}
