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
/// milliseconds. `SET LOCAL`: they end with the transaction.
pub(crate) async fn limit_transaction(
    conn: &mut PgConnection,
    statement_timeout_ms: i64,
    lock_timeout_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        SELECT set_config('statement_timeout', $1::bigint::text, true) AS "statement_timeout!",
               set_config('lock_timeout', $2::bigint::text, true) AS "lock_timeout!"
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
///   grouped by its leading column), `scheduled` and `retryable` through the promoter's
///   `jobs_due_idx` (partial on those states), `running` through the rescuer's
///   `jobs_lease_expiry_idx` (partial on a lease being held), which also gives the leases that
///   expired and wait for the rescuer. Finished rows are in none of these indexes.
/// - the age of the oldest `available` job per queue (now minus its `run_at`);
/// - jobs that reached `completed`, `failed` or `cancelled` in the last minute, per state: one
///   range of the pruner's `jobs_finished_idx` (`state, finished_at`) each, index-only; and the
///   age of the newest completion (one descent of the same index);
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
        WITH available AS (
            SELECT queue, count(*) AS jobs, min(run_at) AS oldest
            FROM skiplock.jobs
            WHERE state = 'available'
            GROUP BY queue
        ),
        due AS (
            SELECT queue, state, count(*) AS jobs
            FROM skiplock.jobs
            WHERE state IN ('scheduled', 'retryable')
            GROUP BY queue, state
        ),
        leased AS (
            SELECT queue, count(*) AS jobs,
                   count(*) FILTER (WHERE lease_expires_at < now()) AS expired
            FROM skiplock.jobs
            WHERE lease_expires_at IS NOT NULL
            GROUP BY queue
        ),
        finished AS (
            SELECT f.state,
                   (SELECT count(*) FROM skiplock.jobs AS j
                    WHERE j.state = f.state AND j.finished_at > now() - interval '1 minute')
                       AS jobs
            FROM unnest('{completed,failed,cancelled}'::skiplock.job_state[]) AS f(state)
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
            SELECT 'oldest_available_age_seconds', queue, '',
                   greatest(extract(epoch FROM now() - oldest), 0)::float8
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
                   greatest(extract(epoch FROM now() - max(j.finished_at)), 0)::float8
            FROM skiplock.jobs AS j
            WHERE j.state = 'completed' AND j.finished_at IS NOT NULL
            HAVING max(j.finished_at) IS NOT NULL
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
