//! The dynamic statements of `skiplock::inspect`: lists, counts and bulk actions over a
//! [`JobFilter`], built with `QueryBuilder` (every value bound, never formatted into the SQL).
//!
//! How a list stays fast on a table of millions (migration 0014): for scheduled, retrying and
//! finished jobs, the distinct `(state, queue, kind)` triples of the states asked for are walked
//! with a loose index scan of `jobs_state_queue_kind_idx` (one descent per triple), the triples
//! the filter wants are kept, the head of each (in id order, after the cursor) is read from the
//! same index, and the heads are merged. That index leaves out `available` and `running` rows
//! (they would cost the hot path an entry each): a list that includes those states reads the
//! primary key newest (or oldest) first, a window of ids per page. Conditions no index holds
//! (tags, arguments, schedule, times) are tested on the rows so read, within a window of ids per
//! page as well (`SCAN_WINDOW`). Counts of available jobs read the claim index, of running ones
//! the lease index. A filter on a workflow reads that workflow's jobs through
//! `jobs_workflow_idx` (migration 0021), in id order, whatever else it asks: a workflow holds
//! at most `MAX_WORKFLOW_JOBS` jobs.

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use crate::JobState;
use crate::inspect::{JobFilter, JobOrder};

/// A timestamp column as an `Option`: `NULL` when it is infinite or past what chrono holds
/// (a row written by something other than skiplock must not make a whole page unreadable).
fn safe_ts(column: &str) -> String {
    format!(
        "CASE WHEN isfinite(j.{column}) AND j.{column} < '262000-01-01' THEN j.{column} END AS {column}"
    )
}

/// The columns of a job summary; see `inspect::JobSummary`.
fn summary_columns() -> String {
    [
        "j.id".to_owned(),
        "j.queue".to_owned(),
        "j.kind".to_owned(),
        "j.state".to_owned(),
        "j.priority".to_owned(),
        "j.attempt".to_owned(),
        "j.max_attempts".to_owned(),
        safe_ts("run_at"),
        safe_ts("created_at"),
        safe_ts("attempted_at"),
        safe_ts("finished_at"),
        safe_ts("lease_expires_at"),
        safe_ts("cancel_requested_at"),
        "ARRAY(SELECT t FROM unnest(j.tags) AS t WHERE t IS NOT NULL) AS tags".to_owned(),
        "j.schedule".to_owned(),
        "j.attempted_by[cardinality(j.attempted_by)] AS worker".to_owned(),
        "CASE WHEN jsonb_typeof(j.errors) = 'array' THEN j.errors -> -1 END AS last_error"
            .to_owned(),
        "left(j.args::text, 256) AS args_preview".to_owned(),
        "octet_length(j.args::text) AS args_bytes".to_owned(),
    ]
    .join(", ")
}

/// The states `jobs_state_queue_kind_idx` holds.
const INDEXED: [JobState; 6] = [
    JobState::Pending,
    JobState::Scheduled,
    JobState::Retryable,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

/// The partial index's predicate, spelled out so the planner can use the index (a state bound
/// as a parameter cannot prove it).
const IN_INDEX: &str = " AND j.state NOT IN ('available', 'running')";

/// The states of `filter` that the inspection index holds.
fn indexed_states(filter: &JobFilter) -> Vec<JobState> {
    filter
        .effective_states()
        .into_iter()
        .filter(|state| INDEXED.contains(state))
        .collect()
}

/// Whether `filter` asks for `available` or `running` jobs, which the inspection index leaves
/// out: such lists read the primary key, a window at a time.
pub(crate) fn reads_primary_key(filter: &JobFilter) -> bool {
    filter
        .effective_states()
        .iter()
        .any(|state| !INDEXED.contains(state))
}

/// Whether the statements read `j` directly (the primary key, or the workflow index for a
/// workflow's jobs) rather than walking the inspection index's triples.
fn reads_directly(filter: &JobFilter) -> bool {
    filter.workflow.is_some() || reads_primary_key(filter)
}

/// `WITH RECURSIVE triples AS (...)`: the distinct (state, queue, kind) of `states` (indexed
/// states only).
fn push_triples(query: &mut QueryBuilder<Postgres>, states: Vec<JobState>) {
    query.push("WITH RECURSIVE triples AS (SELECT f.state, f.queue, f.kind FROM unnest(");
    query.push_bind(states);
    query.push(format_args!(
        "::skiplock.job_state[]) AS s(state) \
           CROSS JOIN LATERAL (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j \
                               WHERE j.state = s.state{IN_INDEX} \
                               ORDER BY j.queue, j.kind LIMIT 1) AS f \
           UNION ALL \
           SELECT n.state, n.queue, n.kind FROM triples AS t \
           CROSS JOIN LATERAL (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j \
                               WHERE j.state = t.state{IN_INDEX} \
                                 AND (j.queue, j.kind) > (t.queue, t.kind) \
                               ORDER BY j.queue, j.kind LIMIT 1) AS n) "
    ));
}

/// ` AND ...` for the queues and kinds of `filter`, on the rows (or triples) named `alias`.
fn push_queue_kind(query: &mut QueryBuilder<Postgres>, filter: &JobFilter, alias: &str) {
    if !filter.queues.is_empty() {
        query.push(format_args!(" AND {alias}.queue = ANY("));
        query.push_bind(filter.queues.clone());
        query.push(")");
    }
    if !filter.kinds.is_empty() {
        query.push(format_args!(" AND {alias}.kind = ANY("));
        query.push_bind(filter.kinds.clone());
        query.push(")");
    }
}

/// ` AND ...` for states, queues and kinds tested on `j` itself (primary-key reads).
fn push_plain_filter(
    query: &mut QueryBuilder<Postgres>,
    filter: &JobFilter,
    states: Vec<JobState>,
) {
    query.push(" AND j.state = ANY(");
    query.push_bind(states);
    query.push("::skiplock.job_state[])");
    push_queue_kind(query, filter, "j");
}

/// ` WHERE ...` for the triple-level conditions (queues, kinds), on `t`.
fn push_triple_filter(query: &mut QueryBuilder<Postgres>, filter: &JobFilter) {
    query.push(" WHERE true");
    push_queue_kind(query, filter, "t");
}

/// ` AND ...` for the row-level conditions, on `j`.
fn push_row_filter(query: &mut QueryBuilder<Postgres>, filter: &JobFilter) {
    if let Some(workflow) = filter.workflow {
        query.push(" AND j.workflow_id = ");
        query.push_bind(workflow);
    }
    if let Some(min) = filter.min_id {
        query.push(" AND j.id >= ");
        query.push_bind(min);
    }
    if let Some(max) = filter.max_id {
        query.push(" AND j.id <= ");
        query.push_bind(max);
    }
    if !filter.tags.is_empty() {
        query.push(" AND j.tags @> ");
        query.push_bind(filter.tags.clone());
    }
    if let Some(schedule) = &filter.schedule {
        query.push(" AND j.schedule = ");
        query.push_bind(schedule.clone());
    }
    if let Some(args) = &filter.args {
        query.push(" AND j.args @> ");
        query.push_bind(args.clone());
    }
    for (column, op, value) in [
        ("created_at", ">=", filter.created_after),
        ("created_at", "<", filter.created_before),
        ("run_at", ">=", filter.run_after),
        ("run_at", "<", filter.run_before),
        ("finished_at", ">=", filter.finished_after),
        ("finished_at", "<", filter.finished_before),
    ] {
        if let Some(value) = value {
            query.push(format_args!(" AND j.{column} {op} "));
            query.push_bind(value);
        }
    }
}

/// The bounds of one page's scan: ids after `after` (exclusive) in `order`, and, when the
/// filter tests rows, no further than `window_end` (inclusive).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scan {
    pub(crate) order: JobOrder,
    pub(crate) after: Option<i64>,
    pub(crate) window_end: Option<i64>,
    pub(crate) limit: i64,
}

fn push_scan(query: &mut QueryBuilder<Postgres>, scan: Scan) {
    let (before, beyond) = match scan.order {
        JobOrder::NewestFirst => ("<", ">="),
        JobOrder::OldestFirst => (">", "<="),
    };
    if let Some(after) = scan.after {
        query.push(format_args!(" AND j.id {before} "));
        query.push_bind(after);
    }
    if let Some(end) = scan.window_end {
        query.push(format_args!(" AND j.id {beyond} "));
        query.push_bind(end);
    }
}

fn direction(order: JobOrder) -> &'static str {
    match order {
        JobOrder::NewestFirst => "DESC",
        JobOrder::OldestFirst => "ASC",
    }
}

/// One page of job summaries (rows as `inspect::JobSummary` decodes them).
pub(crate) async fn list<'e>(
    executor: impl PgExecutor<'e>,
    filter: &JobFilter,
    scan: Scan,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let dir = direction(scan.order);
    let mut query = QueryBuilder::new("");
    if reads_directly(filter) {
        query.push(format_args!(
            "SELECT {columns} FROM skiplock.jobs AS j WHERE true",
            columns = summary_columns(),
        ));
        push_plain_filter(&mut query, filter, filter.effective_states());
        push_scan(&mut query, scan);
        push_row_filter(&mut query, filter);
    } else {
        push_triples(&mut query, indexed_states(filter));
        query.push(format_args!(
            "SELECT {columns} FROM triples AS t CROSS JOIN LATERAL ( \
               SELECT * FROM skiplock.jobs AS j \
               WHERE j.state = t.state AND j.queue = t.queue AND j.kind = t.kind{IN_INDEX}",
            columns = summary_columns(),
        ));
        push_scan(&mut query, scan);
        push_row_filter(&mut query, filter);
        query.push(format_args!(" ORDER BY j.id {dir} LIMIT "));
        query.push_bind(scan.limit);
        query.push(") AS j");
        push_triple_filter(&mut query, filter);
    }
    query.push(format_args!(" ORDER BY j.id {dir} LIMIT "));
    query.push_bind(scan.limit);
    query.build().fetch_all(executor).await
}

/// Counts the jobs `filter` matches, reading at most `cap + 1` of them: `cap + 1` means more.
/// With `index_only`, the row-level conditions are left out (what the index alone answers).
pub(crate) async fn count_capped<'e>(
    executor: impl PgExecutor<'e>,
    filter: &JobFilter,
    index_only: bool,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    let ids_only = JobFilter {
        min_id: filter.min_id,
        max_id: filter.max_id,
        ..JobFilter::default()
    };
    let rows = if index_only { &ids_only } else { filter };
    let states = filter.effective_states();
    if let Some(workflow) = filter.workflow {
        // The workflow's own index, whatever the states: its jobs are few enough to test.
        let mut query = QueryBuilder::new(
            "SELECT count(*) FROM (SELECT 1 FROM skiplock.jobs AS j WHERE j.workflow_id = ",
        );
        query.push_bind(workflow);
        push_plain_filter(&mut query, filter, states);
        push_row_filter(&mut query, rows);
        query.push(" LIMIT ");
        query.push_bind(cap + 1);
        query.push(") AS c");
        return query.build_query_scalar::<i64>().fetch_one(executor).await;
    }
    let indexed = indexed_states(filter);
    let has_indexed = !indexed.is_empty();
    let mut query = QueryBuilder::new("");
    push_triples(&mut query, indexed);
    query.push("SELECT 0::bigint");
    if has_indexed {
        query.push(format_args!(
            " + (SELECT count(*) FROM (SELECT 1 FROM triples AS t CROSS JOIN LATERAL ( \
               SELECT 1 FROM skiplock.jobs AS j \
               WHERE j.state = t.state AND j.queue = t.queue AND j.kind = t.kind{IN_INDEX}"
        ));
        push_row_filter(&mut query, rows);
        query.push(" LIMIT ");
        query.push_bind(cap + 1);
        query.push(") AS j");
        push_triple_filter(&mut query, filter);
        query.push(" LIMIT ");
        query.push_bind(cap + 1);
        query.push(") AS c)");
    }
    // Available jobs through the claim index, running ones through the lease index (whose
    // predicate is `lease_expires_at IS NOT NULL`: only running rows have a lease).
    for (state, index_term) in [
        (JobState::Available, ""),
        (JobState::Running, " AND j.lease_expires_at IS NOT NULL"),
    ] {
        if !states.contains(&state) {
            continue;
        }
        query.push(" + (SELECT count(*) FROM (SELECT 1 FROM skiplock.jobs AS j WHERE true");
        push_plain_filter(&mut query, filter, vec![state]);
        query.push(index_term);
        push_row_filter(&mut query, rows);
        query.push(" LIMIT ");
        query.push_bind(cap + 1);
        query.push(") AS c)");
    }
    query.build_query_scalar::<i64>().fetch_one(executor).await
}

/// The planner's estimate of how many jobs `filter` matches (`EXPLAIN`, nothing read).
pub(crate) async fn count_estimate<'e>(
    executor: impl PgExecutor<'e>,
    filter: &JobFilter,
) -> Result<i64, sqlx::Error> {
    let mut query =
        QueryBuilder::new("EXPLAIN (FORMAT JSON) SELECT 1 FROM skiplock.jobs AS j WHERE true");
    push_plain_filter(&mut query, filter, filter.effective_states());
    push_row_filter(&mut query, filter);
    let plan: Value = query.build_query_scalar().fetch_one(executor).await?;
    let rows = plan
        .pointer("/0/Plan/Plan Rows")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    Ok(rows.max(0.0).round() as i64)
}

/// The lowest and highest job ids (`None` for an empty table).
pub(crate) async fn id_bounds<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<(Option<i64>, Option<i64>), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT (SELECT min(id) FROM skiplock.jobs) AS lowest,
                  (SELECT max(id) FROM skiplock.jobs) AS highest"#
    )
    .fetch_one(executor)
    .await?;
    Ok((row.lowest, row.highest))
}

/// What a bulk action does to each job it picks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BulkAction {
    /// `skiplock.cancel(id)`.
    Cancel,
    /// `skiplock.retry(id)`.
    Retry,
    /// Delete it, when it is finished.
    Delete,
}

/// One batch of a bulk action: picks up to `limit` jobs `filter` matches after `after` (ids
/// descending), and acts on them. Returns the lowest id it looked at (the next batch's
/// `after`; `None` when none was left), how many it looked at, and how many jobs it changed.
pub(crate) async fn bulk_batch<'e>(
    executor: impl PgExecutor<'e>,
    action: BulkAction,
    filter: &JobFilter,
    after: Option<i64>,
    limit: i64,
) -> Result<(Option<i64>, i64, i64), sqlx::Error> {
    let scan = Scan {
        order: JobOrder::NewestFirst,
        after,
        window_end: None,
        limit,
    };
    let mut query = QueryBuilder::new("");
    if reads_directly(filter) {
        query.push("WITH picked AS MATERIALIZED (SELECT j.id FROM skiplock.jobs AS j WHERE true");
        push_plain_filter(&mut query, filter, filter.effective_states());
        push_scan(&mut query, scan);
        push_row_filter(&mut query, filter);
    } else {
        push_triples(&mut query, indexed_states(filter));
        query.push(format_args!(
            ", picked AS MATERIALIZED (SELECT j.id FROM triples AS t CROSS JOIN LATERAL ( \
               SELECT j.id FROM skiplock.jobs AS j \
               WHERE j.state = t.state AND j.queue = t.queue AND j.kind = t.kind{IN_INDEX}"
        ));
        push_scan(&mut query, scan);
        push_row_filter(&mut query, filter);
        query.push(" ORDER BY j.id DESC LIMIT ");
        query.push_bind(limit);
        query.push(") AS j");
        push_triple_filter(&mut query, filter);
    }
    query.push(" ORDER BY j.id DESC LIMIT ");
    query.push_bind(limit);
    query.push("), ");
    // The rows themselves are locked by the action (the functions lock what they change, and
    // wait for rows others hold, up to the lock timeout: a cancel must not pass over a job
    // that is being claimed at that moment); `picked` only bounds the batch.
    match action {
        // The caller keeps the filter to waiting and running states: cancelled, or asked to
        // stop.
        BulkAction::Cancel => query.push(
            "acted AS (SELECT p.id FROM picked AS p \
               WHERE skiplock.cancel(p.id) IN ('cancelled', 'running')) ",
        ),
        BulkAction::Retry => {
            query.push("acted AS (SELECT p.id FROM picked AS p WHERE skiplock.retry(p.id)) ")
        }
        // Jobs of workflows are deleted with their workflow (retention): the jobs after one
        // read its result, and a retry of the workflow, finished or not, needs it.
        BulkAction::Delete => query.push(
            "locked AS (SELECT j.id FROM skiplock.jobs AS j JOIN picked AS p ON p.id = j.id \
               WHERE j.finished_at IS NOT NULL AND j.workflow_id IS NULL \
               ORDER BY j.id FOR UPDATE OF j SKIP LOCKED), \
             acted AS (DELETE FROM skiplock.jobs AS j USING locked AS l WHERE j.id = l.id \
               AND j.finished_at IS NOT NULL RETURNING j.id) ",
        ),
    };
    query.push(
        "SELECT (SELECT min(id) FROM picked) AS lowest, (SELECT count(*) FROM picked) AS picked, \
                (SELECT count(*) FROM acted) AS changed",
    );
    query.build_query_as().fetch_one(executor).await
}
