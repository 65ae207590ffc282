//! `skiplock.workflows`, `skiplock.job_dependencies`, `skiplock.pending_jobs` (migration 0019):
//! enqueueing and cancelling workflows, reading a job's dependencies, and their upkeep.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::JobState;

/// A workflow as enqueued: its id and its jobs' ids in the order given.
pub(crate) struct Enqueued {
    pub(crate) workflow_id: i64,
    pub(crate) job_ids: Vec<i64>,
}

/// `skiplock.enqueue_workflow`: the whole workflow in one statement.
pub(crate) async fn enqueue<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
    jobs: &Value,
    on_failure: &str,
) -> Result<Enqueued, sqlx::Error> {
    sqlx::query_as!(
        Enqueued,
        r#"
        SELECT workflow_id AS "workflow_id!", job_ids AS "job_ids!"
        FROM skiplock.enqueue_workflow($1, $2, $3)
        "#,
        name,
        jobs,
        on_failure,
    )
    .fetch_one(executor)
    .await
}

/// What [`cancel`] did.
pub(crate) struct Cancelled {
    pub(crate) cancelled: Option<i32>,
    pub(crate) stopping: Option<i32>,
}

/// `skiplock.cancel_workflow`: both counts are `None` when there is no such workflow.
pub(crate) async fn cancel<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Cancelled, sqlx::Error> {
    sqlx::query_as!(
        Cancelled,
        r#"SELECT cancelled, stopping FROM skiplock.cancel_workflow($1)"#,
        id,
    )
    .fetch_one(executor)
    .await
}

/// `skiplock.retry_workflow`: how many jobs it put back; `None` when there is no such workflow.
pub(crate) async fn retry<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT skiplock.retry_workflow($1) AS "retried""#, id)
        .fetch_one(executor)
        .await
}

/// One dependency of a job, in `position` order.
pub(crate) struct Dependency {
    pub(crate) job_id: i64,
    /// The dependency's state now; `None` when its row is gone (pruned or deleted).
    pub(crate) state: Option<JobState>,
    /// Its result (`completed` jobs), as stored.
    pub(crate) result: Option<Value>,
}

/// The dependencies of job `job_id`, in position order, with their states and results.
pub(crate) async fn dependencies<'e>(
    executor: impl PgExecutor<'e>,
    job_id: i64,
) -> Result<Vec<Dependency>, sqlx::Error> {
    sqlx::query_as!(
        Dependency,
        r#"
        SELECT d.depends_on AS job_id, j.state AS "state?: JobState", j.result
        FROM skiplock.job_dependencies AS d
        LEFT JOIN skiplock.jobs AS j ON j.id = d.depends_on
        WHERE d.job_id = $1
        ORDER BY d.position
        "#,
        job_id,
    )
    .fetch_all(executor)
    .await
}

/// The dependencies job `job_id` still waits for (at most `limit`, by id), and how many it
/// waits for in all.
pub(crate) struct Awaited {
    pub(crate) ids: Vec<i64>,
    pub(crate) states: Vec<JobState>,
    pub(crate) total: i64,
}

/// What a `pending` job waits for: its unfinished dependencies.
pub(crate) async fn awaited<'e>(
    executor: impl PgExecutor<'e>,
    job_id: i64,
    limit: i64,
) -> Result<Awaited, sqlx::Error> {
    sqlx::query_as!(
        Awaited,
        r#"
        WITH open AS (
            SELECT DISTINCT d.depends_on AS id, j.state
            FROM skiplock.job_dependencies AS d
            JOIN skiplock.jobs AS j ON j.id = d.depends_on
            WHERE d.job_id = $1 AND d.outcome IS NULL
        )
        SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM open ORDER BY id LIMIT $2) AS f),
                        '{}') AS "ids!",
               coalesce((SELECT array_agg(state ORDER BY id) FROM (SELECT id, state FROM open ORDER BY id LIMIT $2) AS f),
                        '{}') AS "states!: Vec<JobState>",
               (SELECT count(*) FROM open) AS "total!"
        "#,
        job_id,
        limit,
    )
    .fetch_one(executor)
    .await
}

/// One workflow's row.
pub(crate) struct WorkflowRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) on_failure: String,
    pub(crate) jobs: i32,
    pub(crate) unfinished: i32,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) cancelled_at: Option<DateTime<Utc>>,
}

/// Workflow `id`.
pub(crate) async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<WorkflowRow>, sqlx::Error> {
    sqlx::query_as!(
        WorkflowRow,
        r#"
        SELECT id, name, created_at, on_failure, jobs, unfinished, finished_at, cancelled_at
        FROM skiplock.workflows
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(executor)
    .await
}

/// One job of a workflow, with what it depends on.
pub(crate) struct MemberRow {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) state: JobState,
    pub(crate) attempt: i32,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) depends_on: Vec<i64>,
}

/// The jobs of workflow `id` by id, at most `limit` of them from id `after` on
/// (`jobs_workflow_idx`).
pub(crate) async fn members<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as!(
        MemberRow,
        r#"
        SELECT j.id, j.kind, j.queue, j.state AS "state: JobState", j.attempt,
               CASE WHEN isfinite(j.finished_at) THEN j.finished_at END AS "finished_at?",
               ARRAY(SELECT d.depends_on FROM skiplock.job_dependencies AS d
                     WHERE d.job_id = j.id ORDER BY d.position) AS "depends_on!"
        FROM skiplock.jobs AS j
        WHERE j.workflow_id = $1 AND j.id > $2
        ORDER BY j.id
        LIMIT $3
        "#,
        id,
        after,
        limit,
    )
    .fetch_all(executor)
    .await
}

/// How many jobs of workflow `id` are in each state.
pub(crate) async fn state_counts<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT state AS "state!: JobState", count(*) AS "n!"
        FROM skiplock.jobs
        WHERE workflow_id = $1
        GROUP BY state
        ORDER BY state
        "#,
        id,
    )
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(|row| (row.state, row.n)).collect())
}

/// `skiplock.repair_workflows`: recounts up to `max` workflows with dependencies whose end was
/// missed; how many dependency rows it corrected.
pub(crate) async fn repair<'e>(
    executor: impl PgExecutor<'e>,
    max: i32,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT skiplock.repair_workflows($1) AS "repaired!""#,
        max
    )
    .fetch_one(executor)
    .await
}

/// `skiplock.prune_workflows`: deletes up to `max` workflows finished more than
/// `older_than_secs` ago, oldest first, with their jobs; how many it deleted.
pub(crate) async fn prune<'e>(
    executor: impl PgExecutor<'e>,
    older_than_secs: f64,
    max: i32,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT skiplock.prune_workflows($1, $2) AS "pruned!""#,
        older_than_secs,
        max
    )
    .fetch_one(executor)
    .await
}

/// One workflow of a list, with what its finished jobs ended as.
pub(crate) struct WorkflowListRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) on_failure: String,
    pub(crate) jobs: i32,
    pub(crate) unfinished: i32,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) cancelled_at: Option<DateTime<Utc>>,
    /// Some job failed (read for finished workflows only: `false` while running).
    pub(crate) any_failed: bool,
    /// Some job was cancelled (likewise).
    pub(crate) any_cancelled: bool,
}

/// Workflows newest first, of id below `before` (all when `None`), at most `limit`; with
/// `running`, only those with unfinished jobs (`true`) or only finished ones (`false`). Walks
/// the primary key backwards; a finished workflow's jobs are read (`jobs_workflow_idx`) to
/// tell completed from failed or cancelled, a running one's are not.
pub(crate) async fn list<'e>(
    executor: impl PgExecutor<'e>,
    before: Option<i64>,
    running: Option<bool>,
    limit: i64,
) -> Result<Vec<WorkflowListRow>, sqlx::Error> {
    sqlx::query_as!(
        WorkflowListRow,
        r#"
        SELECT w.id, w.name, w.created_at, w.on_failure, w.jobs, w.unfinished,
               CASE WHEN isfinite(w.finished_at) THEN w.finished_at END AS "finished_at?",
               CASE WHEN isfinite(w.cancelled_at) THEN w.cancelled_at END AS "cancelled_at?",
               coalesce(o.any_failed, false) AS "any_failed!",
               coalesce(o.any_cancelled, false) AS "any_cancelled!"
        FROM skiplock.workflows AS w
        LEFT JOIN LATERAL (
            SELECT bool_or(j.state = 'failed') AS any_failed,
                   bool_or(j.state = 'cancelled') AS any_cancelled
            FROM skiplock.jobs AS j
            WHERE j.workflow_id = w.id AND w.unfinished = 0
        ) AS o ON true
        WHERE ($1::bigint IS NULL OR w.id < $1)
          AND ($2::boolean IS NULL OR (w.unfinished > 0) = $2)
        ORDER BY w.id DESC
        LIMIT $3
        "#,
        before,
        running,
        limit,
    )
    .fetch_all(executor)
    .await
}
