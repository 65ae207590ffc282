//! One workflow and its jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Acquire, Postgres};

use super::{InspectError, begin};
use crate::{JobState, db};

/// The most jobs one call of [`workflow`] lists: 1,000 (the first, by id; `after` pages on).
pub const WORKFLOW_JOBS_PAGE: i64 = 1_000;

/// Where a workflow stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkflowState {
    /// Some jobs have not finished.
    Running,
    /// Every job finished, all of them completed.
    Completed,
    /// Every job finished, some failed.
    Failed,
    /// Every job finished, some cancelled and none failed.
    Cancelled,
}

/// A workflow, its figures and (a page of) its jobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkflowInfo {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: WorkflowState,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its last job finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When somebody cancelled it.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// What a failed job does to those waiting for it: `propagate` or `run`.
    pub on_failure: String,
    /// How many jobs it has.
    pub jobs: u64,
    /// How many of them have not finished.
    pub unfinished: u64,
    /// How many of its jobs are in each state (states with none left out), in state order.
    pub states: Vec<(JobState, u64)>,
    /// Its jobs by id, from the one after `after`, at most [`WORKFLOW_JOBS_PAGE`].
    pub members: Vec<WorkflowJob>,
}

/// One job of a workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkflowJob {
    /// Its id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: JobState,
    /// Attempts so far.
    pub attempt: i32,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The jobs it waits (or waited) for, in the order of its inputs.
    pub depends_on: Vec<i64>,
}

/// Workflow `id` with its jobs of id greater than `after` (0 for the first page); `None` when
/// there is no such workflow (or it was pruned). Four statements in one read-only transaction.
///
/// # Errors
/// [`InspectError::Database`] when a statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn workflow<'c, A>(
    conn: A,
    id: i64,
    after: i64,
) -> Result<Option<WorkflowInfo>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let Some(row) = db::workflow::get(&mut *tx, id).await? else {
        return Ok(None);
    };
    let states = db::workflow::state_counts(&mut *tx, id).await?;
    let members = db::workflow::members(&mut *tx, id, after, WORKFLOW_JOBS_PAGE).await?;
    tx.commit().await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let states: Vec<(JobState, u64)> = states
        .into_iter()
        .map(|(state, n)| (state, count(n)))
        .collect();
    let has = |wanted: JobState| states.iter().any(|(state, n)| *state == wanted && *n > 0);
    let state = if row.unfinished > 0 {
        WorkflowState::Running
    } else if has(JobState::Failed) {
        WorkflowState::Failed
    } else if has(JobState::Cancelled) {
        WorkflowState::Cancelled
    } else {
        WorkflowState::Completed
    };
    Ok(Some(WorkflowInfo {
        id: row.id,
        name: row.name,
        state,
        created_at: row.created_at,
        finished_at: row.finished_at,
        cancelled_at: row.cancelled_at,
        on_failure: row.on_failure,
        jobs: count(row.jobs.into()),
        unfinished: count(row.unfinished.into()),
        states,
        members: members
            .into_iter()
            .map(|m| WorkflowJob {
                id: m.id,
                kind: m.kind,
                queue: m.queue,
                state: m.state,
                attempt: m.attempt,
                finished_at: m.finished_at,
                depends_on: m.depends_on,
            })
            .collect(),
    }))
}
