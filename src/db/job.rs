//! Statements on `skiplock.jobs`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

/// One row to insert. `run_at` wins over `delay_secs`; with neither the job is runnable now.
pub(crate) struct InsertRow<'a> {
    pub(crate) kind: &'a str,
    pub(crate) args: &'a Value,
    pub(crate) queue: &'a str,
    pub(crate) priority: i16,
    pub(crate) max_attempts: i32,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) delay_secs: Option<f64>,
    pub(crate) tags: &'a [String],
}

/// Inserts one job; returns its id.
pub(crate) async fn insert<'e>(
    executor: impl PgExecutor<'e>,
    row: InsertRow<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, run_at, tags, state)
        SELECT $1, $2, $3, $4, $5, t.run_at, $8,
               CASE WHEN t.run_at > now() THEN 'scheduled' ELSE 'available' END::skiplock.job_state
        FROM (SELECT coalesce($6, now() + make_interval(secs => coalesce($7::float8, 0))) AS run_at) AS t
        RETURNING id
        "#,
        row.kind,
        row.args,
        row.queue,
        row.priority,
        row.max_attempts,
        row.run_at,
        row.delay_secs,
        row.tags,
    )
    .fetch_one(executor)
    .await
}

/// Column arrays for [`insert_many`]: element `i` of every vector describes job `i`.
#[derive(Default)]
pub(crate) struct InsertColumns {
    pub(crate) kinds: Vec<String>,
    pub(crate) args: Vec<Value>,
    pub(crate) queues: Vec<String>,
    pub(crate) priorities: Vec<i16>,
    pub(crate) max_attempts: Vec<i32>,
    pub(crate) run_ats: Vec<Option<DateTime<Utc>>>,
    pub(crate) delay_secs: Vec<Option<f64>>,
    /// Each job's tags as a JSON array of strings: PostgreSQL arrays must be rectangular, so a
    /// `text[][]` parameter cannot carry tag lists of different lengths.
    pub(crate) tags: Vec<Value>,
}

/// Inserts many jobs in one statement (one round trip, no parameter-count limit: every column
/// travels as one array); returns their ids in input order.
pub(crate) async fn insert_many<'e>(
    executor: impl PgExecutor<'e>,
    columns: &InsertColumns,
) -> Result<Vec<i64>, sqlx::Error> {
    // Rows are inserted in `ord` order and identity values are drawn in that order, so sorting
    // the returned ids restores input order even if RETURNING ever yields them differently.
    let mut ids = sqlx::query_scalar!(
        r#"
        INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, run_at, tags, state)
        SELECT t.kind, t.args, t.queue, t.priority, t.max_attempts, r.run_at,
               ARRAY(SELECT jsonb_array_elements_text(t.tags)),
               CASE WHEN r.run_at > now() THEN 'scheduled' ELSE 'available' END::skiplock.job_state
        FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::smallint[], $5::int[],
                    $6::timestamptz[], $7::float8[], $8::jsonb[])
             WITH ORDINALITY AS t(kind, args, queue, priority, max_attempts, run_at, delay_secs, tags, ord)
        CROSS JOIN LATERAL
             (SELECT coalesce(t.run_at, now() + make_interval(secs => coalesce(t.delay_secs, 0))) AS run_at) AS r
        ORDER BY t.ord
        RETURNING id
        "#,
        &columns.kinds,
        &columns.args,
        &columns.queues,
        &columns.priorities,
        &columns.max_attempts,
        &columns.run_ats as &[Option<DateTime<Utc>>],
        &columns.delay_secs as &[Option<f64>],
        &columns.tags,
    )
    .fetch_all(executor)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// A job as claimed by a producer.
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) args: Value,
    pub(crate) priority: i16,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) tags: Vec<String>,
}

/// Claims up to `limit` available jobs of `queue` for `worker_id`, in claim order.
///
/// Why the statement looks like this:
/// - The inner SELECT reads the partial index `jobs_claim_idx` in its own order
///   (`priority, run_at, id`): only `available` rows live in that index, so finished, scheduled
///   and retrying rows never lengthen the scan.
/// - `FOR UPDATE SKIP LOCKED` makes concurrent producers (other processes, other hosts) pass over
///   rows another transaction is claiming instead of queueing behind its lock: each job goes to
///   exactly one claimer, and nobody waits.
/// - The CTE is `MATERIALIZED` so that it is a fence: the LIMIT and the row locks are taken once,
///   in the inner scan, before the UPDATE joins against the result. Inlined, the planner may turn
///   it into a join that re-evaluates the subquery and locks rows the UPDATE then skips.
/// - One statement claims the whole batch (as many jobs as the producer has free slots): one
///   round trip and one commit for N jobs instead of N.
/// - `attempt` is bumped here: `(id, attempt)` is the fencing token every later write matches.
pub(crate) async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    limit: i64,
    worker_id: &str,
    lease_secs: f64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"
        WITH picked AS MATERIALIZED (
            SELECT id
            FROM skiplock.jobs
            WHERE state = 'available' AND queue = $1
            ORDER BY priority, run_at, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE skiplock.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            attempted_at = now(),
            attempted_by = array_append(j.attempted_by, $3),
            lease_expires_at = now() + make_interval(secs => $4)
        FROM picked
        WHERE j.id = picked.id
        RETURNING j.id, j.kind, j.queue, j.args, j.priority, j.attempt, j.max_attempts,
                  j.created_at, j.tags
        "#,
        queue,
        limit,
        worker_id,
        lease_secs,
    )
    .fetch_all(executor)
    .await
}

/// Column arrays for [`complete_many`]: element `i` of every vector describes one finished attempt.
#[derive(Default)]
pub(crate) struct Outcomes {
    pub(crate) ids: Vec<i64>,
    pub(crate) attempts: Vec<i32>,
    /// The new state's name: `completed`, `failed`, `retryable` or `available`.
    pub(crate) states: Vec<String>,
    pub(crate) results: Vec<Option<Value>>,
    pub(crate) error_kinds: Vec<Option<String>>,
    pub(crate) error_messages: Vec<Option<String>>,
    /// Seconds from now until a `retryable` or `available` job may run again.
    pub(crate) retry_in_secs: Vec<f64>,
}

impl Outcomes {
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Records the outcome of many attempts in one statement; returns the ids it changed.
///
/// Fenced: a row changes only while it is still `running` the very attempt that finished. A
/// stale write (the job was rescued, cancelled or re-claimed meanwhile) changes nothing, and its
/// id is missing from the result.
pub(crate) async fn complete_many<'e>(
    executor: impl PgExecutor<'e>,
    outcomes: &Outcomes,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        UPDATE skiplock.jobs AS j
        SET state = o.state::skiplock.job_state,
            result = o.result,
            errors = CASE WHEN o.error_kind IS NULL THEN j.errors
                          ELSE j.errors || jsonb_build_array(jsonb_build_object(
                                 'attempt', o.attempt,
                                 'at', now(),
                                 'kind', o.error_kind,
                                 'message', o.error_message,
                                 'worker', j.attempted_by[cardinality(j.attempted_by)]))
                     END,
            finished_at = CASE WHEN o.state IN ('completed', 'failed') THEN now() END,
            run_at = CASE WHEN o.state IN ('retryable', 'available')
                          THEN now() + make_interval(secs => o.retry_in_secs)
                          ELSE j.run_at END,
            lease_expires_at = NULL
        FROM unnest($1::bigint[], $2::int[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
                    $7::float8[])
             AS o(id, attempt, state, result, error_kind, error_message, retry_in_secs)
        WHERE j.id = o.id AND j.attempt = o.attempt AND j.state = 'running'
        RETURNING j.id
        "#,
        &outcomes.ids,
        &outcomes.attempts,
        &outcomes.states,
        &outcomes.results as &[Option<Value>],
        &outcomes.error_kinds as &[Option<String>],
        &outcomes.error_messages as &[Option<String>],
        &outcomes.retry_in_secs,
    )
    .fetch_all(executor)
    .await
}

/// Makes up to `limit` scheduled or retryable jobs whose `run_at` has passed `available`, and
/// wakes the workers of their queues; returns how many it promoted.
pub(crate) async fn promote_due<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        r#"
        WITH due AS MATERIALIZED (
            SELECT id
            FROM skiplock.jobs
            WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ),
        promoted AS (
            UPDATE skiplock.jobs AS j
            SET state = 'available'
            FROM due
            WHERE j.id = due.id
            RETURNING j.queue
        )
        SELECT count(*) AS "promoted!", skiplock.wake(array_agg(queue)) AS "woken!"
        FROM promoted
        "#,
        limit,
    )
    .fetch_one(executor)
    .await
    .map(|row| row.promoted)
}

/// Seconds until the earliest scheduled or retryable job becomes due (negative when one is
/// overdue), or `None` when there is none.
pub(crate) async fn seconds_until_next_due<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT extract(epoch FROM min(run_at) - now())::float8 AS "seconds"
        FROM skiplock.jobs
        WHERE state IN ('scheduled', 'retryable')
        "#
    )
    .fetch_one(executor)
    .await
}

/// A full row of `skiplock.jobs`, as [`crate::JobRow`] exposes it.
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) args: Value,
    pub(crate) state: String,
    pub(crate) priority: i16,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) run_at: DateTime<Utc>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) attempted_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) lease_expires_at: Option<DateTime<Utc>>,
    pub(crate) attempted_by: Vec<String>,
    pub(crate) errors: Value,
    pub(crate) result: Option<Value>,
    pub(crate) tags: Vec<String>,
}

/// Reads one job by id.
pub(crate) async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as!(
        Row,
        r#"
        SELECT id, queue, kind, args, state::text AS "state!", priority, attempt, max_attempts,
               run_at, created_at, attempted_at, finished_at, lease_expires_at, attempted_by,
               errors, result, tags
        FROM skiplock.jobs
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(executor)
    .await
}
