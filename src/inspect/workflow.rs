//! Workflows: the recent ones, and one with its jobs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Acquire, Postgres};

use super::{InspectError, begin};
use crate::{JobState, db};

/// The most jobs one call of [`workflow`] lists: 1,000 (the first, by id; `after` pages on).
pub const WORKFLOW_JOBS_PAGE: i64 = 1_000;

/// The most workflows one [`workflows`] page holds: 200.
pub const MAX_WORKFLOWS_PAGE: u32 = 200;

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

impl WorkflowState {
    /// Its name: `running`, `completed`, `failed` or `cancelled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether every job of the workflow finished.
    pub const fn is_finished(self) -> bool {
        !matches!(self, Self::Running)
    }

    /// Running while some job is unfinished; once none is, failed if one failed, else
    /// cancelled if one was cancelled, else completed.
    fn derive(unfinished: i64, any_failed: bool, any_cancelled: bool) -> Self {
        if unfinished > 0 {
            Self::Running
        } else if any_failed {
            Self::Failed
        } else if any_cancelled {
            Self::Cancelled
        } else {
            Self::Completed
        }
    }
}

impl std::fmt::Display for WorkflowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which workflows [`workflows`] lists, by where they stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkflowPhase {
    /// Those with a job that has not finished ([`WorkflowState::Running`]).
    Running,
    /// Those whose every job finished (completed, failed or cancelled).
    Finished,
}

/// One page of the workflows list: which, from where, how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkflowQuery {
    /// Only running, or only finished, workflows; all when `None` (the default).
    #[serde(default)]
    pub phase: Option<WorkflowPhase>,
    /// Start after this workflow id (exclusive): the [`next`](WorkflowPage::next) of the page
    /// before. Newest first, so the page holds lower ids.
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many workflows, 1 to [`MAX_WORKFLOWS_PAGE`]. Default: 50.
    #[serde(default = "default_workflows_limit")]
    pub limit: u32,
}

fn default_workflows_limit() -> u32 {
    WorkflowQuery::DEFAULT_LIMIT
}

impl Default for WorkflowQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkflowQuery {
    /// The page size when none is given: 50.
    pub const DEFAULT_LIMIT: u32 = 50;

    /// The first page of every workflow, newest first, 50 of them.
    pub fn new() -> Self {
        Self {
            phase: None,
            after: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Only workflows in `phase`.
    pub fn phase(mut self, phase: WorkflowPhase) -> Self {
        self.phase = Some(phase);
        self
    }

    /// Continues after this id (a page's [`next`](WorkflowPage::next)).
    pub fn after(mut self, id: i64) -> Self {
        self.after = Some(id);
        self
    }

    /// Sets the page size (1 to [`MAX_WORKFLOWS_PAGE`]).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}

/// A workflow as a list shows it: its figures, without its jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkflowSummary {
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
}

/// One page of workflows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkflowPage {
    /// The workflows, newest (highest id) first.
    pub workflows: Vec<WorkflowSummary>,
    /// Where the next page starts ([`WorkflowQuery::after`]); `None` when there is no more.
    pub next: Option<i64>,
}

/// One page of the workflows `query` asks for, newest first (keyset pages on the id: a page
/// costs the same however many workflows came before). One statement in a read-only
/// transaction: it walks the workflows' primary key, and reads the jobs of each finished
/// workflow on the page (through their index) to tell completed from failed and cancelled.
///
/// # Errors
/// [`InspectError::Invalid`] for a limit of 0 or over [`MAX_WORKFLOWS_PAGE`];
/// [`InspectError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn workflows<'c, A>(conn: A, query: &WorkflowQuery) -> Result<WorkflowPage, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    if query.limit == 0 || query.limit > MAX_WORKFLOWS_PAGE {
        return Err(InspectError::Invalid(format!(
            "a page holds 1 to {MAX_WORKFLOWS_PAGE} workflows, not {}",
            query.limit
        )));
    }
    let running = query.phase.map(|phase| phase == WorkflowPhase::Running);
    let mut tx = begin(conn, true).await?;
    let rows = db::workflow::list(&mut *tx, query.after, running, i64::from(query.limit)).await?;
    tx.commit().await?;
    let count = |n: i32| u64::try_from(n).unwrap_or(0);
    let workflows: Vec<WorkflowSummary> = rows
        .into_iter()
        .map(|row| WorkflowSummary {
            id: row.id,
            state: WorkflowState::derive(row.unfinished.into(), row.any_failed, row.any_cancelled),
            name: row.name,
            created_at: row.created_at,
            finished_at: row.finished_at,
            cancelled_at: row.cancelled_at,
            on_failure: row.on_failure,
            jobs: count(row.jobs),
            unfinished: count(row.unfinished),
        })
        .collect();
    let next = (workflows.len() == query.limit as usize)
        .then(|| workflows.last().map(|w| w.id))
        .flatten();
    Ok(WorkflowPage { workflows, next })
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
    let state = WorkflowState::derive(
        row.unfinished.into(),
        has(JobState::Failed),
        has(JobState::Cancelled),
    );
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
