//! The one statement behind the database-derived metrics (`skiplock::metrics`).

use sqlx::{PgConnection, PgExecutor};

/// One sample: `metric` (the name after `skiplock_db_`), up to two label values (`""` when the
/// metric has fewer labels; which labels a metric has is `skiplock::metrics`' business), and its
/// value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GaugeRow {
    pub(crate) metric: String,
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) value: f64,
}

/// Limits this transaction's statements: `statement_timeout` and `lock_timeout`, in
/// milliseconds, and turns JIT compilation off. `SET LOCAL`: they end with the transaction.
pub(crate) async fn limit_transaction(
    conn: &mut PgConnection,
    statement_timeout_ms: i64,
    lock_timeout_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        SELECT set_config('statement_timeout', $1::bigint::text, true) AS "statement_timeout!",
               set_config('lock_timeout', $2::bigint::text, true) AS "lock_timeout!",
               -- As for inspection (src/db/inspect.rs): the planner overprices the loose index
               -- scans below, and compiling them would cost more than running them.
               set_config('jit', 'off', true) AS "jit!"
        "#,
        statement_timeout_ms,
        lock_timeout_ms,
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Every database-derived gauge, in one statement that reads only small things, however many
/// finished jobs the table keeps:
///
/// - waiting jobs by queue and state: `available` from the claim index
///   (`jobs_claim_kind_idx`, partial on `available`: an index-only scan of the waiting rows,
///   grouped by its leading column), `scheduled` and `retryable` through
///   `jobs_state_queue_kind_idx` (index only: it holds the queue), `running` through the rescuer's
///   `jobs_lease_expiry_idx` (partial on a lease being held), which also gives the leases that
///   expired and wait for the rescuer. Finished rows are in none of these indexes.
/// - the age of the oldest `available` job per queue (now minus its `run_at`);
/// - attempts that ended `completed`, `failed` or `cancelled` in this minute and the one
///   before, per state, as workers recorded them in `skiplock.job_stats` (every heartbeat
///   interval); and the age of the newest
///   completion (the newest completed job of each queue and kind, by id, through
///   `jobs_state_queue_kind_idx`);
/// - worker processes alive and late (`skiplock.workers`, stopped ones left out);
/// - the xmin horizon: how many transactions the oldest snapshot or transaction id still held
///   by a session of this database (or a WAL sender), a prepared transaction of this database
///   or a replication slot lags behind, and how long the oldest such session or prepared
///   transaction has been open (`pg_stat_activity` shows when other roles' transactions
///   started only to members of `pg_read_all_stats`, such as `pg_monitor`);
/// - dead and live tuples (the statistics collector's estimates) and total size on disk of
///   each skiplock table.
///
/// Never a `GROUP BY` over the whole table: with 10,000,000 finished jobs that is a
/// multi-second scan. Ages are in seconds, counts are jobs or tuples, sizes are bytes.
pub(crate) async fn gauges<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<GaugeRow>, sqlx::Error> {
    sqlx::query_as!(
        GaugeRow,
        r#"
        WITH RECURSIVE available AS (
            SELECT queue, count(*) AS jobs, min(run_at) AS oldest
            FROM skiplock.jobs
            WHERE state = 'available'
            GROUP BY queue
        ),
        due AS (
            -- The literal NOT IN lets the planner read jobs_state_queue_kind_idx (0014) index
            -- only, which holds the queue; jobs_due_idx would mean a heap read per row.
            SELECT queue, state, count(*) AS jobs
            FROM skiplock.jobs
            WHERE state IN ('scheduled', 'retryable') AND state NOT IN ('available', 'running')
            GROUP BY queue, state
        ),
        leased AS (
            SELECT queue, count(*) AS jobs,
                   count(*) FILTER (WHERE lease_expires_at < now()) AS expired
            FROM skiplock.jobs
            WHERE lease_expires_at IS NOT NULL
            GROUP BY queue
        ),
        -- Outcomes the workers recorded in this minute and the one before (skiplock.job_stats,
        -- 0012; they write every heartbeat interval): finished rows have no index by finish
        -- time since 0015.
        finished AS (
            SELECT f.state,
                   (SELECT coalesce(sum(s.jobs), 0) FROM skiplock.job_stats AS s
                    WHERE s.outcome = f.state
                      AND s.minute >= date_trunc('minute', now()) - interval '1 minute') AS jobs
            FROM unnest('{completed,failed,cancelled}'::text[]) AS f(state)
        ),
        -- The newest completed job of each queue and kind (by id, through 0014's index). The
        -- state travels as a column: with the literal 'completed' (most rows) the planner
        -- would walk the primary key backwards past every newer row of other states instead.
        completed_kinds AS (
            (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j
             WHERE j.state = 'completed' AND j.state NOT IN ('available', 'running')
             ORDER BY j.queue, j.kind LIMIT 1)
            UNION ALL
            SELECT n.state, n.queue, n.kind FROM completed_kinds AS p
            CROSS JOIN LATERAL (SELECT j.state, j.queue, j.kind FROM skiplock.jobs AS j
                                WHERE j.state = p.state AND j.state NOT IN ('available', 'running')
                                  AND (j.queue, j.kind) > (p.queue, p.kind)
                                ORDER BY j.queue, j.kind LIMIT 1) AS n
        ),
        last_completed AS (
            SELECT max(h.finished_at) AS at
            FROM completed_kinds AS p
            CROSS JOIN LATERAL (SELECT j.finished_at FROM skiplock.jobs AS j
                                WHERE j.state = p.state AND j.state NOT IN ('available', 'running')
                                  AND j.queue = p.queue AND j.kind = p.kind
                                ORDER BY j.id DESC LIMIT 1) AS h
        ),
        -- Workers that have not stopped, alive or late (0012's columns).
        fleet AS (
            SELECT count(*) FILTER (WHERE coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') > now()) AS alive,
                   count(*) FILTER (WHERE coalesce(w.alive_until, w.heartbeat_at + interval '60 seconds') <= now()) AS late
            FROM skiplock.workers AS w
            WHERE w.stopped_at IS NULL
        ),
        sessions AS (
            SELECT max(greatest(age(a.backend_xmin), age(a.backend_xid))) AS xids,
                   extract(epoch FROM max(now() - a.xact_start)) AS seconds
            FROM pg_stat_activity AS a
            WHERE a.pid <> pg_backend_pid()
              AND (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
              AND (a.datname = current_database() OR a.backend_type = 'walsender')
        ),
        prepared AS (
            SELECT max(age(p.transaction)) AS xids,
                   extract(epoch FROM max(now() - p.prepared)) AS seconds
            FROM pg_prepared_xacts AS p
            WHERE p.database = current_database()
        ),
        slots AS (
            SELECT max(age(s.xmin)) AS xids FROM pg_replication_slots AS s WHERE s.xmin IS NOT NULL
        ),
        tables AS (
            SELECT t.relname::text AS name, t.n_dead_tup AS dead, t.n_live_tup AS live,
                   pg_total_relation_size(t.relid) AS bytes
            FROM pg_stat_user_tables AS t
            WHERE t.schemaname = 'skiplock'
        )
        SELECT g.metric AS "metric!", g.a AS "a!", g.b AS "b!", g.value AS "value!"
        FROM (
            SELECT 'jobs' AS metric, queue AS a, 'available' AS b, jobs::float8 AS value
            FROM available
            UNION ALL
            -- Epochs rather than `now() - oldest`, which fails for an infinite instant (a row
            -- written by hand) on PostgreSQL 15, and with it every gauge; capped at ~31 years.
            SELECT 'oldest_available_age_seconds', queue, '',
                   least(greatest(extract(epoch FROM now()) - extract(epoch FROM oldest), 0), 1e9)::float8
            FROM available
            UNION ALL
            SELECT 'jobs', queue, state::text, jobs::float8 FROM due
            UNION ALL
            SELECT 'jobs', queue, 'running', jobs::float8 FROM leased
            UNION ALL
            SELECT 'expired_leases', queue, '', expired::float8 FROM leased
            UNION ALL
            SELECT 'jobs_finished_last_minute', state::text, '', jobs::float8 FROM finished
            UNION ALL
            SELECT 'last_completed_age_seconds', '', '',
                   least(greatest(extract(epoch FROM now()) - extract(epoch FROM at), 0), 1e9)::float8
            FROM last_completed
            WHERE at IS NOT NULL
            UNION ALL
            SELECT 'workers', 'alive', '', alive::float8 FROM fleet
            UNION ALL
            SELECT 'workers', 'unresponsive', '', late::float8 FROM fleet
            UNION ALL
            SELECT 'xmin_horizon_age_transactions', 'session', '', coalesce(xids, 0)::float8
            FROM sessions
            UNION ALL
            SELECT 'xmin_horizon_age_transactions', 'prepared_transaction', '',
                   coalesce(xids, 0)::float8
            FROM prepared
            UNION ALL
            SELECT 'xmin_horizon_age_transactions', 'replication_slot', '',
                   coalesce(xids, 0)::float8
            FROM slots
            UNION ALL
            SELECT 'oldest_transaction_age_seconds', 'session', '',
                   greatest(coalesce(seconds, 0), 0)::float8
            FROM sessions
            UNION ALL
            SELECT 'oldest_transaction_age_seconds', 'prepared_transaction', '',
                   greatest(coalesce(seconds, 0), 0)::float8
            FROM prepared
            UNION ALL
            SELECT 'dead_tuples', name, '', dead::float8 FROM tables
            UNION ALL
            SELECT 'live_tuples', name, '', live::float8 FROM tables
            UNION ALL
            SELECT 'table_size_bytes', name, '', bytes::float8 FROM tables
        ) AS g
        "#,
    )
    .fetch_all(executor)
    .await
}
