//! Workflows: jobs that wait for other jobs. A [`chain`] runs steps one after another, a
//! [`group`] runs them side by side, a [`chord`] runs a group and then a callback that gets
//! every member's output in order; they nest.
//!
//! A workflow lives in the database (migration 0019, `docs/workflows.md`): it is enqueued in
//! one statement, in the caller's transaction if it has one; a job that waits is `pending` until
//! the last job it waits for finishes, and is then released exactly once by the transaction
//! that records that outcome, whichever worker (or SQL client) wrote it. A handler reads what
//! it waited for with [`JobContext::input`](crate::JobContext::input) and
//! [`JobContext::inputs`](crate::JobContext::inputs).
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Fetch { url: String }
//! # impl skiplock::Job for Fetch { const KIND: &'static str = "fetch"; }
//! # #[derive(Serialize, Deserialize)] struct Resize { width: u32 }
//! # impl skiplock::Job for Resize { const KIND: &'static str = "resize"; }
//! # #[derive(Serialize, Deserialize)] struct Publish;
//! # impl skiplock::Job for Publish { const KIND: &'static str = "publish"; }
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use skiplock::workflow::{Step, Workflow, chain, chord};
//!
//! // Celery: chain(fetch.s(url), chord([resize.s(w) for w in widths], publish.s()))
//! let flow = chain([
//!     Step::job(&Fetch { url: "https://example.com/a.png".into() })?,
//!     chord(
//!         [160, 320, 640].map(|width| Step::job(&Resize { width })).into_iter()
//!             .collect::<Result<Vec<_>, _>>()?,
//!         Step::job(&Publish)?,
//!     ),
//! ]);
//! let mut tx = pool.begin().await?;
//! let enqueued = Workflow::new("thumbnails", flow).enqueue(&mut *tx).await?;
//! tx.commit().await?;
//! // The publish job: wait on it with skiplock::results.
//! let publish = enqueued.last_jobs()[0];
//! # let _ = publish; Ok(()) }
//! ```

use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;

use crate::{EnqueueError, Job, NewJob, db};

/// The most jobs one workflow holds: 100,000.
pub const MAX_WORKFLOW_JOBS: usize = 100_000;

/// The most dependencies one workflow holds (a chord of N counts N; a group of N followed by
/// a group of M counts N × M): 1,000,000.
pub const MAX_WORKFLOW_DEPENDENCIES: usize = 1_000_000;

/// One step of a workflow: a job, or a [`chain`] or [`group`] of steps.
#[derive(Clone, Debug)]
pub struct Step(Node);

#[derive(Clone, Debug)]
enum Node {
    Job(Box<NewJob>),
    Chain(Vec<Step>),
    Group(Vec<Step>),
}

impl Step {
    /// A step that runs `job` with its kind's defaults.
    ///
    /// # Errors
    /// [`EnqueueError::Serialize`] when serde fails.
    pub fn job<J: Job>(job: &J) -> Result<Self, EnqueueError> {
        Ok(Self::from(NewJob::new(job)?))
    }
}

impl From<NewJob> for Step {
    /// A step that runs a prepared job (with [`EnqueueOptions`](crate::EnqueueOptions), or
    /// [`NewJob::untyped`]).
    fn from(job: NewJob) -> Self {
        Self(Node::Job(Box::new(job)))
    }
}

/// Steps that run one after another: each starts when the one before has finished (every job
/// of it, for a group), and its jobs get that step's outputs as their inputs.
///
/// Celery: `chain(a.s(), b.s())`, or `a.s() | b.s()`.
pub fn chain(steps: impl IntoIterator<Item = Step>) -> Step {
    Step(Node::Chain(steps.into_iter().collect()))
}

/// Steps that run side by side. Whatever follows a group waits for all of it and gets the
/// outputs of its last jobs, in the order the group lists them.
///
/// Celery: `group(a.s(), b.s())`.
pub fn group(steps: impl IntoIterator<Item = Step>) -> Step {
    Step(Node::Group(steps.into_iter().collect()))
}

/// A group, then `callback`, which runs once every member has finished and gets their outputs
/// in the group's order: `chain([group(header), callback])`.
///
/// Celery: `chord([a.s(), b.s()], callback.s())`. Unlike Celery's, the callback is released
/// by the database in the transaction that records the last member's outcome: exactly once,
/// whichever workers finish the members and however close together.
pub fn chord(header: impl IntoIterator<Item = Step>, callback: Step) -> Step {
    chain([group(header), callback])
}

/// What a job that did not complete does to the jobs waiting for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnFailure {
    /// They fail too (or are cancelled, when it was cancelled), and so on downstream, without
    /// running; their error has kind `dependency`. The default, as in Celery.
    #[default]
    Propagate,
    /// They run anyway; their inputs show which dependencies did not complete.
    Run,
}

impl OnFailure {
    /// The name stored in `skiplock.workflows.on_failure`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Propagate => "propagate",
            Self::Run => "run",
        }
    }
}

/// A workflow to enqueue: a name (for people: the dashboard and `SELECT` show it) and its steps.
#[derive(Clone, Debug)]
pub struct Workflow {
    name: String,
    root: Step,
    on_failure: OnFailure,
}

/// A workflow in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnqueuedWorkflow {
    /// Its id (`skiplock.workflows.id`; each job's `workflow_id`).
    pub id: i64,
    /// Its jobs' ids, in the order the steps were written (depth first).
    pub jobs: Vec<i64>,
    last: Vec<usize>,
}

impl EnqueuedWorkflow {
    /// The jobs of its last step: those no other job of it waits for, in order. Wait on these
    /// ([`crate::results`]) to learn when, and how, the workflow ended.
    pub fn last_jobs(&self) -> Vec<i64> {
        self.last.iter().map(|&i| self.jobs[i]).collect()
    }
}

/// The error of [`Workflow::enqueue`], [`cancel`] and [`retry`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The workflow, or one of its chains or groups, has no job.
    #[error("workflow {0:?} has an empty chain or group: every step needs a job")]
    Empty(String),
    /// The workflow is over [`MAX_WORKFLOW_JOBS`] or [`MAX_WORKFLOW_DEPENDENCIES`].
    #[error(
        "workflow {name:?} has {jobs} jobs and {dependencies} dependencies, over the limits of {MAX_WORKFLOW_JOBS} and {MAX_WORKFLOW_DEPENDENCIES}"
    )]
    TooLarge {
        /// The workflow's name.
        name: String,
        /// Its jobs.
        jobs: usize,
        /// Its dependencies.
        dependencies: usize,
    },
    /// The name is not 1 to 200 characters.
    #[error("a workflow's name must be 1 to 200 characters, not {0}")]
    Name(usize),
    /// A job of it could not be enqueued as it is.
    #[error(transparent)]
    Job(#[from] EnqueueError),
    /// The database refused a statement.
    #[error("workflow statement failed")]
    Database(#[from] sqlx::Error),
}

impl Workflow {
    /// A workflow named `name` (1 to 200 characters) running `root`.
    pub fn new(name: impl Into<String>, root: Step) -> Self {
        Self {
            name: name.into(),
            root,
            on_failure: OnFailure::default(),
        }
    }

    /// What a job that fails or is cancelled does to those waiting for it. Default:
    /// [`OnFailure::Propagate`].
    #[must_use]
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Enqueues every job of the workflow in one statement (one round trip, however many jobs):
    /// jobs that wait for nothing are runnable at once (or at their `run_at`), the others are
    /// `pending`. Run it in a transaction to enqueue the workflow with the application's own
    /// writes.
    ///
    /// # Errors
    /// [`WorkflowError`] for an empty step, a workflow over the limits, an invalid job (all
    /// checked before anything is sent), or a failed statement.
    ///
    /// # Cancel safety
    /// Cancel safe in a transaction: one statement, committed with the caller's transaction,
    /// so dropping the future before the commit leaves nothing. Not cancel safe on a pool:
    /// dropped after the statement was sent, the workflow may or may not exist.
    pub async fn enqueue<'e>(
        self,
        executor: impl PgExecutor<'e>,
    ) -> Result<EnqueuedWorkflow, WorkflowError> {
        let chars = self.name.chars().count();
        if !(1..=200).contains(&chars) {
            return Err(WorkflowError::Name(chars));
        }
        let mut plan = Plan::default();
        let last = plan.add(&self.root, &[], &self.name)?;
        if plan.entries.len() > MAX_WORKFLOW_JOBS || plan.dependencies > MAX_WORKFLOW_DEPENDENCIES {
            return Err(WorkflowError::TooLarge {
                name: self.name,
                jobs: plan.entries.len(),
                dependencies: plan.dependencies,
            });
        }
        let jobs = Value::Array(plan.entries);
        let enqueued =
            db::workflow::enqueue(executor, &self.name, &jobs, self.on_failure.as_str()).await?;
        Ok(EnqueuedWorkflow {
            id: enqueued.workflow_id,
            jobs: enqueued.job_ids,
            last,
        })
    }
}

/// The workflow flattened into `skiplock.enqueue_workflow`'s array.
#[derive(Default)]
struct Plan {
    entries: Vec<Value>,
    dependencies: usize,
}

impl Plan {
    /// Adds `step`, whose first jobs wait for the entries `after`; returns the entries of its
    /// last jobs (what the next step waits for).
    fn add(
        &mut self,
        step: &Step,
        after: &[usize],
        name: &str,
    ) -> Result<Vec<usize>, WorkflowError> {
        match &step.0 {
            Node::Job(job) => {
                self.entries.push(job.workflow_entry(after)?);
                self.dependencies += after.len();
                Ok(vec![self.entries.len() - 1])
            }
            Node::Chain(steps) => {
                if steps.is_empty() {
                    return Err(WorkflowError::Empty(name.to_owned()));
                }
                let mut last = after.to_vec();
                for step in steps {
                    last = self.add(step, &last, name)?;
                }
                Ok(last)
            }
            Node::Group(steps) => {
                if steps.is_empty() {
                    return Err(WorkflowError::Empty(name.to_owned()));
                }
                let mut last = Vec::new();
                for step in steps {
                    last.extend(self.add(step, after, name)?);
                }
                Ok(last)
            }
        }
    }
}

/// What [`cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Cancelled {
    /// Jobs cancelled at once (pending, scheduled, available, retrying).
    pub cancelled: u64,
    /// Running jobs asked to stop (they end `cancelled` when their handler returns).
    pub stopping: u64,
}

/// Cancels every unfinished job of workflow `id`, as [`crate::cancel`] does one; `None` when
/// there is no such workflow. Also `SELECT * FROM skiplock.cancel_workflow(id)`.
///
/// # Errors
/// [`WorkflowError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: one statement.
pub async fn cancel<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<Cancelled>, WorkflowError> {
    let done = db::workflow::cancel(executor, id).await?;
    let count = |n: i32| u64::try_from(n).unwrap_or(0);
    Ok(done
        .cancelled
        .zip(done.stopping)
        .map(|(cancelled, stopping)| Cancelled {
            cancelled: count(cancelled),
            stopping: count(stopping),
        }))
}

/// Puts workflow `id`'s failed and cancelled jobs back, so it runs on from where it stopped:
/// those whose dependencies all completed become runnable (with one more attempt if they had
/// used them all, as [`crate::retry`] does), the jobs that failed or were cancelled because of
/// them wait again. Completed jobs keep their results and do not run again. Returns how many
/// jobs it put back; `None` when there is no such workflow. Also
/// `SELECT skiplock.retry_workflow(id)`.
///
/// # Errors
/// [`WorkflowError::Database`] when the statement fails.
///
/// # Cancel safety
/// Cancel safe: one statement.
pub async fn retry<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<u64>, WorkflowError> {
    let retried = db::workflow::retry(executor, id).await?;
    Ok(retried.map(|n| u64::try_from(n).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EnqueueOptions;

    fn step(kind: &str) -> Step {
        Step::from(NewJob::untyped(kind, Value::Null, EnqueueOptions::new()))
    }

    fn depends_on(plan: &Plan) -> Vec<Vec<u64>> {
        plan.entries
            .iter()
            .map(|entry| {
                entry["depends_on"]
                    .as_array()
                    .map(|deps| deps.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn nested_steps_flatten_into_dependencies_in_order() {
        // a, then b and (c then d) side by side, then e waiting for b and d.
        let flow = chain([
            step("a"),
            group([step("b"), chain([step("c"), step("d")])]),
            step("e"),
        ]);
        let mut plan = Plan::default();
        let last = plan.add(&flow, &[], "t").expect("plan");
        assert_eq!(last, vec![4]);
        assert_eq!(
            depends_on(&plan),
            vec![vec![], vec![0], vec![0], vec![2], vec![1, 3]]
        );
        assert_eq!(plan.dependencies, 5);
    }

    #[test]
    fn a_chord_callback_waits_for_every_member() {
        let flow = chord([step("a"), step("b"), step("c")], step("cb"));
        let mut plan = Plan::default();
        plan.add(&flow, &[], "t").expect("plan");
        assert_eq!(depends_on(&plan)[3], vec![0, 1, 2]);
    }

    #[test]
    fn empty_steps_are_refused() {
        let mut plan = Plan::default();
        assert!(matches!(
            plan.add(&chain([step("a"), group([])]), &[], "t"),
            Err(WorkflowError::Empty(_))
        ));
    }
}
