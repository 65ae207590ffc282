//! The read side: the fixed statements of `skiplock::inspect` (lists and bulk actions, whose
//! filters vary, are in `job_list`).
//!
//! Counts never scan a table of millions: each is read from `jobs_state_queue_kind_idx`
//! (migration 0014) by (state, queue) prefix and stops after `cap + 1` entries, so a count of
//! `cap + 1` means "more than `cap`".

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::JobState;

/// Sets the transaction's statement and lock timeouts, turns JIT compilation off, and makes it
/// read-only when asked.
///
/// JIT: the planner prices a loose index scan by the index's whole size (it cannot know that
/// each descent reads one entry), so these cheap statements cross `jit_above_cost`, and
/// compiling them took 600 ms of a 670 ms `queues()` on 11,000,000 jobs.
pub(crate) async fn set_local_timeouts<'e>(
    executor: impl PgExecutor<'e>,
    statement_ms: i64,
    lock_ms: i64,
    read_only: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        SELECT set_config('statement_timeout', $1::bigint::text, true) AS statement_timeout,
               set_config('lock_timeout', $2::bigint::text, true) AS lock_timeout,
               set_config('jit', 'off', true) AS jit,
               CASE WHEN $3 THEN set_config('transaction_read_only', 'on', true) END AS read_only
        "#,
        statement_ms,
        lock_ms,
        read_only,
    )
    .fetch_one(executor)
    .await?;
    Ok(())
}

/// One job, every column a page can show, decoded leniently (text where a foreign writer's
/// value could fail to decode).
pub(crate) struct JobDetailRow {
    pub(crate) id: i64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) state: JobState,
    pub(crate) priority: i16,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) attempted_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) lease_expires_at: Option<DateTime<Utc>>,
    pub(crate) cancel_requested_at: Option<DateTime<Utc>>,
    pub(crate) attempted_by: Vec<String>,
    pub(crate) errors: Option<Value>,
    pub(crate) args_text: String,
    pub(crate) result_text: Option<String>,
    pub(crate) progress_text: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) timeout_secs: Option<f64>,
    pub(crate) unique_key: Option<String>,
    pub(crate) unique_states: Option<Vec<String>>,
    pub(crate) schedule: Option<String>,
    pub(crate) workflow_id: Option<i64>,
    pub(crate) worker_status: Option<String>,
    pub(crate) worker_heartbeat_at: Option<DateTime<Utc>>,
    pub(crate) worker_host: Option<String>,
    pub(crate) worker_pid: Option<i32>,
}

/// Reads one job for `inspect::job`; `None` when there is none.
pub(crate) async fn job_detail<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<JobDetailRow>, sqlx::Error> {
    sqlx::query_as!(
        JobDetailRow,
        r#"
        SELECT j.id, j.queue, j.kind, j.state AS "state: JobState", j.priority, j.attempt,
               j.max_attempts,
               CASE WHEN isfinite(j.run_at) AND j.run_at < '262000-01-01' THEN j.run_at END AS run_at,
               CASE WHEN isfinite(j.created_at) AND j.created_at < '262000-01-01' THEN j.created_at END AS created_at,
               CASE WHEN isfinite(j.attempted_at) AND j.attempted_at < '262000-01-01' THEN j.attempted_at END AS attempted_at,
               CASE WHEN isfinite(j.finished_at) AND j.finished_at < '262000-01-01' THEN j.finished_at END AS finished_at,
               CASE WHEN isfinite(j.lease_expires_at) AND j.lease_expires_at < '262000-01-01' THEN j.lease_expires_at END AS lease_expires_at,
               CASE WHEN isfinite(j.cancel_requested_at) AND j.cancel_requested_at < '262000-01-01' THEN j.cancel_requested_at END AS cancel_requested_at,
               ARRAY(SELECT w FROM unnest(j.attempted_by) AS w WHERE w IS NOT NULL) AS "attempted_by!",
               j.errors AS "errors?",
               j.args::text AS "args_text!",
               j.result::text AS result_text,
               j.progress::text AS progress_text,
               ARRAY(SELECT t FROM unnest(j.tags) AS t WHERE t IS NOT NULL) AS "tags!",
               j.timeout_secs, j.unique_key,
               j.unique_states::text[] AS unique_states,
               j.schedule, j.workflow_id,
               CASE WHEN w.id IS NULL THEN NULL
                    WHEN w.stopped_at IS NOT NULL THEN w.stop_reason
                    WHEN coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()
                    THEN 'alive' ELSE 'unresponsive' END AS worker_status,
               w.heartbeat_at AS "worker_heartbeat_at?",
               w.host AS "worker_host?",
               w.pid AS "worker_pid?"
        FROM skiplock.jobs AS j
        LEFT JOIN skiplock.workers AS w ON w.id = j.attempted_by[cardinality(j.attempted_by)]
        WHERE j.id = $1
        "#,
        id,
    )
    .fetch_optional(executor)
    .await
}

/// One queue's figures for `inspect::queues`; counts are capped (see the module).
pub(crate) struct QueueRow {
    pub(crate) queue: String,
    pub(crate) pending: i64,
    pub(crate) scheduled: i64,
    pub(crate) available: i64,
    pub(crate) running: i64,
    pub(crate) retryable: i64,
    pub(crate) completed: i64,
    pub(crate) failed: i64,
    pub(crate) cancelled: i64,
    pub(crate) oldest_available_at: Option<DateTime<Utc>>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) completed_last_minute: i64,
    pub(crate) failed_last_minute: i64,
    pub(crate) completed_last_hour: i64,
    pub(crate) failed_last_hour: i64,
    pub(crate) retried_last_hour: i64,
    pub(crate) workers: i64,
    pub(crate) concurrency: i64,
    pub(crate) paused_at: Option<DateTime<Utc>>,
    pub(crate) paused_by: Option<String>,
    pub(crate) pause_reason: Option<String>,
}

/// Every queue that has jobs, live workers or active schedules, with its figures, in one
/// statement. Waiting states are counted up to `waiting_cap + 1`, finished ones up to
/// `finished_cap + 1`.
pub(crate) async fn queues<'e>(
    executor: impl PgExecutor<'e>,
    waiting_cap: i64,
    finished_cap: i64,
) -> Result<Vec<QueueRow>, sqlx::Error> {
    sqlx::query_as!(
        QueueRow,
        r#"
        WITH RECURSIVE triples AS (
            -- Scheduled, retrying and finished jobs: jobs_state_queue_kind_idx (partial; its
            -- predicate is spelled out so the planner can use it).
            SELECT f.state, f.queue, f.kind
            FROM unnest('{pending,scheduled,retryable,completed,failed,cancelled}'::skiplock.job_state[]) AS s(state)
            CROSS JOIN LATERAL (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j
                                WHERE j.state = s.state AND j.state NOT IN ('available', 'running')
                                ORDER BY j.queue, j.kind LIMIT 1) AS f
            UNION ALL
            SELECT n.state, n.queue, n.kind FROM triples AS t
            CROSS JOIN LATERAL (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j
                                WHERE j.state = t.state AND j.state NOT IN ('available', 'running')
                                  AND (j.queue, j.kind) > (t.queue, t.kind)
                                ORDER BY j.queue, j.kind LIMIT 1) AS n
        ),
        -- Available jobs: the claim index, (queue, kind, priority, run_at, id).
        available_pairs AS (
            (SELECT j.queue, j.kind FROM skiplock.jobs AS j
             WHERE j.state = 'available' ORDER BY j.queue, j.kind LIMIT 1)
            UNION ALL
            SELECT n.queue, n.kind FROM available_pairs AS p
            CROSS JOIN LATERAL (SELECT j.queue, j.kind FROM skiplock.jobs AS j
                                WHERE j.state = 'available' AND (j.queue, j.kind) > (p.queue, p.kind)
                                ORDER BY j.queue, j.kind LIMIT 1) AS n
        ),
        counts AS (
            SELECT p.queue, p.state, c.n
            FROM (SELECT DISTINCT state, queue FROM triples) AS p
            CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM (
                    SELECT 1 FROM skiplock.jobs AS j
                    WHERE j.state = p.state AND j.state NOT IN ('available', 'running')
                      AND j.queue = p.queue
                    LIMIT CASE WHEN p.state IN ('completed', 'failed', 'cancelled') THEN $2::bigint
                               ELSE $1::bigint END + 1) AS x
            ) AS c
            UNION ALL
            SELECT q.queue, 'available', c.n
            FROM (SELECT DISTINCT queue FROM available_pairs) AS q
            CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM (
                    SELECT 1 FROM skiplock.jobs AS j
                    WHERE j.state = 'available' AND j.queue = q.queue LIMIT $1::bigint + 1) AS x
            ) AS c
            UNION ALL
            -- Running jobs: the lease index (only running rows have a lease); few by nature.
            SELECT j.queue, 'running', count(*)
            FROM skiplock.jobs AS j
            WHERE j.state = 'running' AND j.lease_expires_at IS NOT NULL
            GROUP BY j.queue
        ),
        -- The pickup lag of each queue: how long the job each kind would run next has been
        -- runnable, the longest of them.
        oldest AS (
            SELECT p.queue, min(h.run_at) AS run_at
            FROM available_pairs AS p
            CROSS JOIN LATERAL (SELECT j.run_at FROM skiplock.jobs AS j
                                WHERE j.state = 'available' AND j.queue = p.queue AND j.kind = p.kind
                                ORDER BY j.priority, j.run_at, j.id LIMIT 1) AS h
            GROUP BY p.queue
        ),
        recent AS (
            SELECT s.queue,
                   sum(s.jobs) FILTER (WHERE s.outcome = 'completed' AND s.minute = date_trunc('minute', now()) - interval '1 minute') AS completed_last_minute,
                   sum(s.jobs) FILTER (WHERE s.outcome = 'failed' AND s.minute = date_trunc('minute', now()) - interval '1 minute') AS failed_last_minute,
                   sum(s.jobs) FILTER (WHERE s.outcome = 'completed') AS completed_last_hour,
                   sum(s.jobs) FILTER (WHERE s.outcome = 'failed') AS failed_last_hour,
                   sum(s.jobs) FILTER (WHERE s.outcome = 'retried') AS retried_last_hour
            FROM skiplock.job_stats AS s
            WHERE s.minute >= date_trunc('minute', now()) - interval '60 minutes'
            GROUP BY s.queue
        ),
        fleet AS (
            SELECT q.queue, count(*) AS workers, sum(coalesce(q.n, 0)) AS concurrency
            FROM skiplock.workers AS w
            CROSS JOIN LATERAL unnest(w.queues, w.concurrency) AS q(queue, n)
            WHERE w.stopped_at IS NULL AND q.queue IS NOT NULL
              AND coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()
            GROUP BY q.queue
        ),
        names AS (
            SELECT queue FROM counts
            UNION SELECT queue FROM fleet
            UNION SELECT queue FROM skiplock.schedules WHERE active
            UNION SELECT name FROM skiplock.queues WHERE paused_at IS NOT NULL
        )
        SELECT n.queue AS "queue!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'pending'), 0) AS "pending!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'scheduled'), 0) AS "scheduled!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'available'), 0) AS "available!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'running'), 0) AS "running!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'retryable'), 0) AS "retryable!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'completed'), 0) AS "completed!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'failed'), 0) AS "failed!",
               coalesce((SELECT c.n FROM counts AS c WHERE c.queue = n.queue AND c.state = 'cancelled'), 0) AS "cancelled!",
               -- Within what chrono holds (a row written by hand may hold any instant): an
               -- earlier one reads as 1970, a later one as none.
               CASE WHEN o.run_at < '262000-01-01'
                    THEN greatest(o.run_at, '1970-01-01 00:00:00+00') END AS "oldest_available_at?",
               now() AS "now!",
               coalesce(r.completed_last_minute, 0)::bigint AS "completed_last_minute!",
               coalesce(r.failed_last_minute, 0)::bigint AS "failed_last_minute!",
               coalesce(r.completed_last_hour, 0)::bigint AS "completed_last_hour!",
               coalesce(r.failed_last_hour, 0)::bigint AS "failed_last_hour!",
               coalesce(r.retried_last_hour, 0)::bigint AS "retried_last_hour!",
               coalesce(f.workers, 0) AS "workers!",
               coalesce(f.concurrency, 0)::bigint AS "concurrency!",
               ctl.paused_at AS "paused_at?", ctl.paused_by AS "paused_by?",
               ctl.pause_reason AS "pause_reason?"
        FROM names AS n
        LEFT JOIN skiplock.queues AS ctl ON ctl.name = n.queue
        LEFT JOIN oldest AS o ON o.queue = n.queue
        LEFT JOIN recent AS r ON r.queue = n.queue
        LEFT JOIN fleet AS f ON f.queue = n.queue
        ORDER BY n.queue
        "#,
        waiting_cap,
        finished_cap,
    )
    .fetch_all(executor)
    .await
}

/// One row of `skiplock.workers` with its status and running jobs, for `inspect::workers`.
pub(crate) struct WorkerInfoRow {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: Option<Vec<i32>>,
    pub(crate) kinds: Option<Vec<String>>,
    pub(crate) version: Option<String>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) heartbeat_at: DateTime<Utc>,
    pub(crate) stopped_at: Option<DateTime<Utc>>,
    pub(crate) status: String,
    pub(crate) running: i64,
}

/// Every worker row: live ones first, then those stopped or lost in the last hour.
pub(crate) async fn workers<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<WorkerInfoRow>, sqlx::Error> {
    sqlx::query_as!(
        WorkerInfoRow,
        r#"
        WITH running AS (
            SELECT j.attempted_by[cardinality(j.attempted_by)] AS worker, count(*) AS n
            FROM skiplock.jobs AS j
            WHERE j.state = 'running' AND j.lease_expires_at IS NOT NULL
            GROUP BY 1
        )
        -- The arrays as skiplock.claim() stored them from any SQL caller: NULL elements and
        -- extra dimensions are dropped (one-dimensional, from 1, as a Vec decodes), each
        -- queue keeping its concurrency.
        SELECT w.id, w.host, w.pid,
               ARRAY(SELECT u.q FROM unnest(w.queues, w.concurrency) WITH ORDINALITY AS u(q, n, i)
                     WHERE u.q IS NOT NULL ORDER BY u.i) AS "queues!",
               -- -1 where the array does not say (shorter, or NULL there): read as none.
               CASE WHEN w.concurrency IS NOT NULL
                    THEN ARRAY(SELECT coalesce(u.n, -1)
                               FROM unnest(w.queues, w.concurrency) WITH ORDINALITY AS u(q, n, i)
                               WHERE u.q IS NOT NULL ORDER BY u.i) END AS concurrency,
               CASE WHEN w.kinds IS NOT NULL
                    THEN ARRAY(SELECT u.k FROM unnest(w.kinds) WITH ORDINALITY AS u(k, i)
                               WHERE u.k IS NOT NULL ORDER BY u.i) END AS kinds,
               w.version,
               w.started_at, w.heartbeat_at, w.stopped_at,
               CASE WHEN w.stopped_at IS NOT NULL THEN w.stop_reason
                    WHEN coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()
                    THEN 'alive' ELSE 'unresponsive' END AS "status!",
               coalesce(r.n, 0) AS "running!"
        FROM skiplock.workers AS w
        LEFT JOIN running AS r ON r.worker = w.id
        ORDER BY w.stopped_at DESC NULLS FIRST, w.started_at, w.id
        "#,
    )
    .fetch_all(executor)
    .await
}

/// The last job a schedule made, for `inspect::schedules`.
pub(crate) struct ScheduleLastJob {
    pub(crate) name: String,
    pub(crate) job_id: Option<i64>,
    pub(crate) job_state: Option<JobState>,
    pub(crate) job_finished_at: Option<DateTime<Utc>>,
    pub(crate) overdue: bool,
}

/// For each schedule: its latest job (by fire time) and whether it is overdue (due over a
/// minute ago, active and not paused: no scheduler is running).
pub(crate) async fn schedule_last_jobs<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<ScheduleLastJob>, sqlx::Error> {
    sqlx::query_as!(
        ScheduleLastJob,
        r#"
        SELECT s.name,
               l.id AS "job_id?", l.state AS "job_state?: JobState",
               l.finished_at AS "job_finished_at?",
               -- Overdue: due over a minute ago, or never given a fire time in the minute since
               -- it was created or changed (no scheduler has run since).
               (s.active AND NOT s.paused
                AND coalesce(s.next_fire_at, s.updated_at) < now() - interval '1 minute') AS "overdue!"
        FROM skiplock.schedules AS s
        LEFT JOIN LATERAL (SELECT j.id, j.state, j.finished_at FROM skiplock.jobs AS j
                           WHERE j.schedule = s.name ORDER BY j.run_at DESC LIMIT 1) AS l ON true
        ORDER BY s.name
        "#,
    )
    .fetch_all(executor)
    .await
}

/// What `inspect::explain` weighs, about one job and the fleet that could run it.
pub(crate) struct ExplainFacts {
    pub(crate) now: DateTime<Utc>,
    /// Its queue's pause, if paused: when, by whom, why.
    pub(crate) paused_at: Option<DateTime<Utc>>,
    pub(crate) paused_by: Option<String>,
    pub(crate) pause_reason: Option<String>,
    /// Whether its unique key is held by another job in one of that job's unique states.
    pub(crate) unique_holder: Option<i64>,
    /// Live workers that work its queue.
    pub(crate) queue_workers: i64,
    /// Live workers that work its queue and run its kind.
    pub(crate) kind_workers: i64,
    /// Their slots in its queue.
    pub(crate) slots: i64,
    /// Jobs of its queue running now (capped).
    pub(crate) running: i64,
    /// Available jobs of its queue and kind that will be claimed before it (capped).
    pub(crate) ahead: i64,
    /// Whether any live worker has run maintenance recently: promoting due jobs needs one.
    pub(crate) any_live_worker: bool,
}

/// Reads the facts about job `id` (the caller has read the job itself).
pub(crate) async fn explain_facts<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    cap: i64,
) -> Result<Option<ExplainFacts>, sqlx::Error> {
    sqlx::query_as!(
        ExplainFacts,
        r#"
        WITH live AS (
            SELECT w.* FROM skiplock.workers AS w
            WHERE w.stopped_at IS NULL
              AND coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()
        )
        SELECT now() AS "now!",
               ctl.paused_at AS "paused_at?", ctl.paused_by AS "paused_by?",
               ctl.pause_reason AS "pause_reason?",
               (SELECT o.id FROM skiplock.jobs AS o
                WHERE j.unique_key IS NOT NULL AND o.unique_key = j.unique_key AND o.id <> j.id
                  AND o.state = ANY (o.unique_states)
                LIMIT 1) AS "unique_holder?",
               (SELECT count(*) FROM live AS w WHERE j.queue = ANY (w.queues)) AS "queue_workers!",
               (SELECT count(*) FROM live AS w
                WHERE j.queue = ANY (w.queues) AND (w.kinds IS NULL OR j.kind = ANY (w.kinds))) AS "kind_workers!",
               (SELECT coalesce(sum(q.n), 0) FROM live AS w
                CROSS JOIN LATERAL unnest(w.queues, w.concurrency) AS q(queue, n)
                WHERE q.queue = j.queue)::bigint AS "slots!",
               (SELECT count(*) FROM (SELECT 1 FROM skiplock.jobs AS r
                                      WHERE r.state = 'running' AND r.lease_expires_at IS NOT NULL
                                        AND r.queue = j.queue
                                      LIMIT $2::bigint + 1) AS x) AS "running!",
               (SELECT count(*) FROM (SELECT 1 FROM skiplock.jobs AS a
                                      WHERE a.state = 'available' AND a.queue = j.queue AND a.kind = j.kind
                                        AND (a.priority, a.run_at, a.id) < (j.priority, j.run_at, j.id)
                                      LIMIT $2::bigint + 1) AS x) AS "ahead!",
               EXISTS (SELECT 1 FROM live) AS "any_live_worker!"
        FROM skiplock.jobs AS j
        LEFT JOIN skiplock.queues AS ctl ON ctl.name = j.queue AND ctl.paused_at IS NOT NULL
        WHERE j.id = $1
        "#,
        id,
        cap,
    )
    .fetch_optional(executor)
    .await
}

/// The session holding back the xmin horizon the longest, for `inspect::health`.
pub(crate) struct HorizonHolder {
    /// `transaction`, `prepared transaction` or `replication slot`.
    pub(crate) holder: String,
    pub(crate) pid: Option<i32>,
    /// The application name (sessions), the global id (prepared) or slot name (slots).
    pub(crate) name: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) age_secs: Option<f64>,
    pub(crate) xid_age: Option<i32>,
    pub(crate) state: Option<String>,
    pub(crate) query: Option<String>,
}

/// The oldest holder of this database's xmin horizon: a session's snapshot (other than this
/// one), a prepared transaction, or a replication slot; ordered by transaction id age.
pub(crate) async fn horizon_holder<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Option<HorizonHolder>, sqlx::Error> {
    sqlx::query_as!(
        HorizonHolder,
        r#"
        SELECT h.holder AS "holder!", h.pid, h.name, h.client, h.age_secs, h.xid_age, h.state, h.query
        FROM (
            SELECT 'transaction' AS holder, a.pid, a.application_name AS name,
                   host(a.client_addr) AS client,
                   extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS age_secs,
                   greatest(age(a.backend_xmin), age(a.backend_xid)) AS xid_age, a.state,
                   left(a.query, 200) AS query
            FROM pg_stat_activity AS a
            -- A snapshot (backend_xmin) or a transaction id of its own (backend_xid: it wrote,
            -- or asked for one) holds the horizon back.
            WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
              AND a.pid <> pg_backend_pid()
              AND (a.datname = current_database() OR a.backend_type = 'walsender')
            UNION ALL
            SELECT 'prepared transaction', NULL, p.gid, NULL,
                   extract(epoch FROM now() - p.prepared)::float8, age(p.transaction), NULL, NULL
            FROM pg_prepared_xacts AS p
            WHERE p.database = current_database()
            UNION ALL
            SELECT 'replication slot', s.active_pid, s.slot_name::text, NULL, NULL,
                   greatest(age(s.xmin), age(s.catalog_xmin)),
                   CASE WHEN s.active THEN 'active' ELSE 'inactive' END, NULL
            FROM pg_replication_slots AS s
            WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL
        ) AS h
        ORDER BY h.xid_age DESC NULLS LAST, h.age_secs DESC NULLS LAST
        LIMIT 1
        "#,
    )
    .fetch_optional(executor)
    .await
}

/// One of skiplock's tables, for `inspect::health`.
pub(crate) struct TableRow {
    pub(crate) name: String,
    pub(crate) live_rows: i64,
    pub(crate) dead_rows: i64,
    pub(crate) last_vacuum: Option<DateTime<Utc>>,
    pub(crate) last_autovacuum: Option<DateTime<Utc>>,
    /// Seconds since the last vacuum of it finished, by hand or by autovacuum (`None`: never).
    pub(crate) vacuumed_secs_ago: Option<f64>,
    pub(crate) autovacuum_count: i64,
    pub(crate) table_bytes: i64,
    pub(crate) index_bytes: i64,
    /// The average row width in bytes from the planner's statistics (`None` before ANALYZE).
    pub(crate) row_width: Option<i64>,
    pub(crate) autovacuum_disabled: bool,
    pub(crate) fillfactor: i32,
}

/// The statistics of every table in the `skiplock` schema.
pub(crate) async fn tables<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<TableRow>, sqlx::Error> {
    sqlx::query_as!(
        TableRow,
        r#"
        SELECT c.relname::text AS "name!",
               coalesce(s.n_live_tup, 0) AS "live_rows!",
               coalesce(s.n_dead_tup, 0) AS "dead_rows!",
               s.last_vacuum, s.last_autovacuum,
               extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum))::float8
                   AS vacuumed_secs_ago,
               coalesce(s.autovacuum_count, 0) AS "autovacuum_count!",
               pg_relation_size(c.oid) AS "table_bytes!",
               pg_indexes_size(c.oid) AS "index_bytes!",
               (SELECT sum(st.avg_width)::bigint FROM pg_stats AS st
                WHERE st.schemaname = 'skiplock' AND st.tablename = c.relname) AS row_width,
               coalesce('autovacuum_enabled=false' = ANY (c.reloptions), false) AS "autovacuum_disabled!",
               coalesce((SELECT substr(o, 12)::int FROM unnest(c.reloptions) AS o
                         WHERE o LIKE 'fillfactor=%'), 100) AS "fillfactor!"
        FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
        WHERE n.nspname = 'skiplock' AND c.relkind = 'r'
        ORDER BY c.relname
        "#,
    )
    .fetch_all(executor)
    .await
}

/// One of skiplock's B-tree indexes, for `inspect::health`.
pub(crate) struct IndexRow {
    pub(crate) name: String,
    /// `skiplock.name`, quoted where SQL needs it: for statements a person copies.
    pub(crate) qualified: String,
    pub(crate) bytes: i64,
    /// Its entries at the last VACUUM, ANALYZE or CREATE INDEX (`None` before any).
    pub(crate) entries: Option<i64>,
    /// Its table's dead rows: their entries stay until vacuum removes them.
    pub(crate) dead_rows: i64,
    /// The sum of its columns' average widths in bytes from the planner's statistics (`None`
    /// when a column has none, or for an expression).
    pub(crate) key_width: Option<i64>,
    pub(crate) fillfactor: i32,
}

/// Every valid B-tree index on the tables in the `skiplock` schema, largest first (one being
/// built, or left invalid by a failed concurrent build, is not what a rebuild is for).
pub(crate) async fn indexes<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<IndexRow>, sqlx::Error> {
    // An expression column has attnum 0 and no statistics: the count of widths then falls
    // short of the count of columns, and the width is NULL.
    sqlx::query_as!(
        IndexRow,
        r#"
        SELECT ic.relname::text AS "name!",
               format('%I.%I', n.nspname, ic.relname) AS "qualified!",
               pg_relation_size(ic.oid) AS "bytes!",
               CASE WHEN ic.reltuples >= 0 THEN ic.reltuples::bigint END AS entries,
               coalesce(s.n_dead_tup, 0) AS "dead_rows!",
               (SELECT CASE WHEN count(st.avg_width) = count(*) THEN sum(st.avg_width)::bigint END
                FROM unnest(i.indkey::int2[]) AS k(attnum)
                LEFT JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                LEFT JOIN pg_stats AS st ON st.schemaname = 'skiplock'
                                        AND st.tablename = tc.relname AND st.attname = a.attname
               ) AS key_width,
               coalesce((SELECT substr(o, 12)::int FROM unnest(ic.reloptions) AS o
                         WHERE o LIKE 'fillfactor=%'), 90) AS "fillfactor!"
        FROM pg_index AS i
        JOIN pg_class AS ic ON ic.oid = i.indexrelid
        JOIN pg_class AS tc ON tc.oid = i.indrelid
        JOIN pg_namespace AS n ON n.oid = tc.relnamespace
        JOIN pg_am AS am ON am.oid = ic.relam
        LEFT JOIN pg_stat_user_tables AS s ON s.relid = tc.oid
        WHERE n.nspname = 'skiplock' AND am.amname = 'btree' AND i.indisvalid
        ORDER BY 3 DESC, 1
        "#,
    )
    .fetch_all(executor)
    .await
}

/// Server settings the health checks read.
pub(crate) struct ServerSettings {
    pub(crate) autovacuum: bool,
    pub(crate) track_counts: bool,
    /// Whether this role can see other sessions' queries (`pg_read_all_stats`).
    pub(crate) sees_all_sessions: bool,
    /// The least time between two autovacuum passes over one database, in seconds.
    pub(crate) autovacuum_naptime_s: f64,
}

/// Reads [`ServerSettings`].
pub(crate) async fn server_settings<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<ServerSettings, sqlx::Error> {
    sqlx::query_as!(
        ServerSettings,
        r#"
        SELECT current_setting('autovacuum')::bool AS "autovacuum!",
               current_setting('track_counts')::bool AS "track_counts!",
               pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS "sees_all_sessions!",
               extract(epoch FROM current_setting('autovacuum_naptime')::interval)::float8
                   AS "autovacuum_naptime_s!"
        "#,
    )
    .fetch_one(executor)
    .await
}

/// Running jobs whose lease ran out more than `grace_secs` ago: nobody rescued them.
pub(crate) struct Stuck {
    pub(crate) jobs: i64,
    pub(crate) oldest_lease: Option<DateTime<Utc>>,
}

/// Counts [`Stuck`] jobs (through the lease index; capped).
pub(crate) async fn stuck_running<'e>(
    executor: impl PgExecutor<'e>,
    grace_secs: f64,
    cap: i64,
) -> Result<Stuck, sqlx::Error> {
    sqlx::query_as!(
        Stuck,
        r#"
        -- A lease written by hand as -infinity reads as 1970: decoded as it is, it failed the
        -- whole health report just when a job was stuck.
        SELECT count(*) AS "jobs!",
               min(greatest(lease_expires_at, '1970-01-01 00:00:00+00')) AS oldest_lease
        FROM (SELECT j.lease_expires_at FROM skiplock.jobs AS j
              WHERE j.lease_expires_at < now() - make_interval(secs => $1)
              ORDER BY j.lease_expires_at LIMIT $2::bigint + 1) AS x
        "#,
        grace_secs,
        cap,
    )
    .fetch_one(executor)
    .await
}

/// Available jobs of one queue and kind no live worker runs.
pub(crate) struct Orphaned {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) jobs: i64,
}

/// Every (queue, kind) with available jobs that no live worker runs (counts capped).
pub(crate) async fn orphaned<'e>(
    executor: impl PgExecutor<'e>,
    cap: i64,
) -> Result<Vec<Orphaned>, sqlx::Error> {
    sqlx::query_as!(
        Orphaned,
        r#"
        WITH RECURSIVE pairs AS (
            (SELECT j.queue, j.kind FROM skiplock.jobs AS j
             WHERE j.state = 'available' ORDER BY j.queue, j.kind LIMIT 1)
            UNION ALL
            SELECT n.queue, n.kind FROM pairs AS p
            CROSS JOIN LATERAL (SELECT j.queue, j.kind FROM skiplock.jobs AS j
                                WHERE j.state = 'available' AND (j.queue, j.kind) > (p.queue, p.kind)
                                ORDER BY j.queue, j.kind LIMIT 1) AS n
        )
        SELECT p.queue AS "queue!", p.kind AS "kind!", c.n AS "jobs!"
        FROM pairs AS p
        CROSS JOIN LATERAL (SELECT count(*) AS n FROM (
            SELECT 1 FROM skiplock.jobs AS j
            WHERE j.state = 'available' AND j.queue = p.queue AND j.kind = p.kind
            LIMIT $1::bigint + 1) AS x) AS c
        WHERE NOT EXISTS (
            SELECT 1 FROM skiplock.workers AS w
            WHERE w.stopped_at IS NULL
              AND coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()
              AND p.queue = ANY (w.queues) AND (w.kinds IS NULL OR p.kind = ANY (w.kinds)))
        ORDER BY p.queue, p.kind
        "#,
        cap,
    )
    .fetch_all(executor)
    .await
}

/// Overdue schedules: active, not paused, due more than a minute ago.
pub(crate) struct Overdue {
    pub(crate) name: String,
    pub(crate) next_fire_at: DateTime<Utc>,
}

/// Lists [`Overdue`] schedules, most overdue first (at most 100).
pub(crate) async fn overdue_schedules<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<Overdue>, sqlx::Error> {
    sqlx::query_as!(
        Overdue,
        r#"
        -- A next fire time chrono cannot hold (written by hand): its last change instead.
        SELECT s.name,
               CASE WHEN isfinite(s.next_fire_at) AND s.next_fire_at < '262000-01-01'
                    THEN s.next_fire_at ELSE s.updated_at END AS "next_fire_at!"
        FROM skiplock.schedules AS s
        WHERE s.active AND NOT s.paused
          AND coalesce(s.next_fire_at, s.updated_at) < now() - interval '1 minute'
        ORDER BY 2
        LIMIT 100
        "#,
    )
    .fetch_all(executor)
    .await
}

/// Deletes job `id` when it is finished and not part of a workflow (deleted with its workflow:
/// its later jobs read its result, and a retry of the workflow needs it); returns whether it
/// did.
pub(crate) async fn delete_finished_job<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"
        DELETE FROM skiplock.jobs AS j
        WHERE j.id = $1 AND j.finished_at IS NOT NULL AND j.workflow_id IS NULL
        "#,
        id
    )
    .execute(executor)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Attempt outcomes of one bucket of `skiplock.job_stats`, for `inspect::throughput`.
pub(crate) struct ThroughputRow {
    pub(crate) start: DateTime<Utc>,
    pub(crate) completed: i64,
    pub(crate) failed: i64,
    pub(crate) retried: i64,
    pub(crate) cancelled: i64,
    pub(crate) lost: i64,
}

/// Outcomes over all queues and kinds in `buckets` buckets of `step_minutes` minutes, the
/// last one holding the current minute, oldest first; empty buckets count zeros. Reads a range
/// of `job_stats`' primary key (minute first).
pub(crate) async fn throughput<'e>(
    executor: impl PgExecutor<'e>,
    buckets: i32,
    step_minutes: i32,
) -> Result<Vec<ThroughputRow>, sqlx::Error> {
    sqlx::query_as!(
        ThroughputRow,
        r#"
        WITH bounds AS (
            SELECT date_trunc('minute', now())
                   - make_interval(mins => ($1::int - 1) * $2::int) AS first,
                   make_interval(mins => $2::int) AS step
        ),
        buckets AS (
            SELECT b.first + b.step * n AS start, b.step
            FROM bounds AS b, generate_series(0, $1::int - 1) AS n
        )
        SELECT k.start AS "start!",
               coalesce(sum(s.jobs) FILTER (WHERE s.outcome = 'completed'), 0)::bigint AS "completed!",
               coalesce(sum(s.jobs) FILTER (WHERE s.outcome = 'failed'), 0)::bigint AS "failed!",
               coalesce(sum(s.jobs) FILTER (WHERE s.outcome = 'retried'), 0)::bigint AS "retried!",
               coalesce(sum(s.jobs) FILTER (WHERE s.outcome = 'cancelled'), 0)::bigint AS "cancelled!",
               coalesce(sum(s.jobs) FILTER (WHERE s.outcome = 'lost'), 0)::bigint AS "lost!"
        FROM buckets AS k
        LEFT JOIN skiplock.job_stats AS s
               ON s.minute >= k.start AND s.minute < k.start + k.step
        GROUP BY k.start
        ORDER BY k.start
        "#,
        buckets,
        step_minutes,
    )
    .fetch_all(executor)
    .await
}

/// The state and progress of a job, for `inspect::job_progress`.
pub(crate) struct JobProgressRow {
    pub(crate) id: i64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) state: JobState,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    /// As text: a row written by another language may hold what `serde_json` cannot read.
    pub(crate) progress_text: Option<String>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

/// State and progress of the jobs `ids` that exist, by primary key.
pub(crate) async fn job_progress<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[i64],
) -> Result<Vec<JobProgressRow>, sqlx::Error> {
    sqlx::query_as!(
        JobProgressRow,
        r#"
        SELECT id, queue, kind, state AS "state: JobState", attempt, max_attempts,
               progress::text AS progress_text, finished_at
        FROM skiplock.jobs
        WHERE id = ANY($1::bigint[])
        ORDER BY id
        "#,
        ids,
    )
    .fetch_all(executor)
    .await
}
