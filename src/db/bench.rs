//! Statements of `skiplock bench`: filling a benchmark database, counting what the run did, and
//! reading the server's cost counters.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Inserts `count` runnable jobs of `kind` in `queue` in one statement (the untimed set-up of a
/// drain). Generated in the server, so filling a million rows costs no round trips.
pub(crate) async fn fill_available<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    queue: &str,
    count: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO skiplock.jobs (kind, queue, args, state)
        SELECT $1, $2, jsonb_build_object('n', g), 'available'
        FROM generate_series(1, $3::bigint) AS g
        "#,
        kind,
        queue,
        count,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts `count` jobs scheduled a day ahead: a backlog the claim must never scan.
pub(crate) async fn fill_scheduled<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    queue: &str,
    count: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO skiplock.jobs (kind, queue, args, state, run_at)
        SELECT $1, $2, jsonb_build_object('n', g), 'scheduled', now() + interval '1 day'
        FROM generate_series(1, $3::bigint) AS g
        "#,
        kind,
        queue,
        count,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts `count` completed jobs: the finished history a long-running queue retains, finished
/// evenly over the `spread_secs` seconds before now (created, run and attempted as they finished).
pub(crate) async fn fill_completed<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    queue: &str,
    count: i64,
    spread_secs: f64,
) -> Result<u64, sqlx::Error> {
    // In id order, evenly: the oldest (count - 1) / count × `spread_secs` ago, the newest now.
    let done = sqlx::query!(
        r#"
        INSERT INTO skiplock.jobs (kind, queue, args, state, attempt, created_at, run_at,
                                   attempted_at, finished_at, attempted_by, result)
        SELECT $1, $2, jsonb_build_object('n', g), 'completed', 1, finished, finished, finished,
               finished, '{bench-filler}', 'null'::jsonb
        FROM generate_series(1, $3::bigint) AS g,
             LATERAL (SELECT now() - make_interval(secs => $4::float8 * ($3 - g) / $3))
                 AS at(finished)
        ORDER BY g
        "#,
        kind,
        queue,
        count,
        spread_secs,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Updates planner statistics and cleans the jobs table after a fill, so every run starts from
/// the same state (as a table that autovacuum has caught up with).
pub(crate) async fn vacuum_jobs<'e>(executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("VACUUM (ANALYZE) skiplock.jobs")
        .execute(executor)
        .await?;
    Ok(())
}

/// Resets the autovacuum settings the migrations give `skiplock.jobs` to the server's, for a
/// benchmark that measures what they buy.
pub(crate) async fn reset_autovacuum<'e>(executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "ALTER TABLE skiplock.jobs RESET (autovacuum_vacuum_scale_factor, \
         autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay)",
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// `skiplock.jobs`' storage parameters (`reloptions`, as `name=value`), for a report to say
/// which autovacuum settings it ran with.
pub(crate) async fn jobs_settings<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT coalesce(reloptions, '{}') AS "settings!"
        FROM pg_class
        WHERE oid = 'skiplock.jobs'::regclass
        "#
    )
    .fetch_one(executor)
    .await
}

/// The server settings a run's figures depend on most, as `name=value` in the server's units:
/// autovacuum and its naptime, commit durability, memory and checkpoint spacing, and the version.
pub(crate) async fn server_settings<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT coalesce(array_agg(name || '=' || current_setting(name) ORDER BY name), '{}')
            AS "settings!"
        FROM pg_settings
        WHERE name IN ('autovacuum', 'autovacuum_naptime', 'checkpoint_timeout', 'fsync',
                       'max_wal_size', 'server_version', 'shared_buffers', 'synchronous_commit')
        "#
    )
    .fetch_one(executor)
    .await
}

/// Flushes dirty pages now, so that a checkpoint triggered by the fill does not land inside the
/// timed part. Needs superuser or `pg_checkpoint`; callers ignore a refusal.
pub(crate) async fn checkpoint<'e>(executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("CHECKPOINT").execute(executor).await?;
    Ok(())
}

/// How many jobs of `kind` exist.
pub(crate) async fn count_kind<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM skiplock.jobs WHERE kind = $1"#,
        kind
    )
    .fetch_one(executor)
    .await
}

/// The completed jobs of `kind`, and the span from the first claim to the last completion in
/// database time.
pub(crate) struct Completed {
    pub(crate) count: i64,
    pub(crate) first_attempt: Option<DateTime<Utc>>,
    pub(crate) last_finish: Option<DateTime<Utc>>,
}

pub(crate) async fn completed<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
) -> Result<Completed, sqlx::Error> {
    sqlx::query_as!(
        Completed,
        r#"
        SELECT count(*) AS "count!", min(attempted_at) AS first_attempt,
               max(finished_at) AS last_finish
        FROM skiplock.jobs
        WHERE kind = $1 AND state = 'completed'
        "#,
        kind
    )
    .fetch_one(executor)
    .await
}

/// Jobs of `queue` waiting to run (`available`) or running: the backlog of a steady run. Reads
/// the claim index for `available`, so it stays cheap on a big table.
pub(crate) async fn backlog<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "count!" FROM skiplock.jobs
        WHERE queue = $1 AND state IN ('available', 'running')
        "#,
        queue
    )
    .fetch_one(executor)
    .await
}

/// The server's cumulative cost counters, read before and after a run.
pub(crate) struct Counters {
    /// Commits in this database (`pg_stat_database.xact_commit`).
    pub(crate) commits: i64,
    /// The server's WAL insert position in bytes: the difference of two readings is the WAL
    /// written between them (by the whole server, which is why benchmarks want it to themselves).
    pub(crate) wal_bytes: i64,
    /// Dead tuples in `skiplock.jobs` (`pg_stat_user_tables.n_dead_tup`).
    pub(crate) dead_tuples: i64,
}

/// Reads [`Counters`]. The statistics are those backends have reported: a backend reports at
/// most once a second while busy, and on exit.
pub(crate) async fn counters<'e>(executor: impl PgExecutor<'e>) -> Result<Counters, sqlx::Error> {
    sqlx::query_as!(
        Counters,
        r#"
        SELECT
            (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
                AS "commits!",
            pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS "wal_bytes!",
            coalesce((SELECT n_dead_tup FROM pg_stat_user_tables
                      WHERE relid = 'skiplock.jobs'::regclass), 0) AS "dead_tuples!"
        "#
    )
    .fetch_one(executor)
    .await
}

/// Drops the statistics snapshot cached in this session, so [`counters`] sees fresh values.
pub(crate) async fn clear_stats_snapshot<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_stat_clear_snapshot()")
        .execute(executor)
        .await?;
    Ok(())
}

/// Opens nothing by itself: run inside a `REPEATABLE READ` transaction, takes its snapshot, which
/// then pins the server's xmin horizon until the transaction ends (the long-reader pathology).
pub(crate) async fn take_snapshot<'e>(executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM skiplock.migrations"#)
        .fetch_one(executor)
        .await
}

/// Inserts `count` finished jobs spread over five queues (three fifths in `default`), ten kinds
/// and fifty tags, one in a hundred `failed` and one in 333 `cancelled`: the history of
/// `skiplock bench inspect`.
pub(crate) async fn fill_history<'e>(
    executor: impl PgExecutor<'e>,
    count: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO skiplock.jobs (queue, kind, args, tags, state, attempt, attempted_at,
                                   finished_at, attempted_by, result, run_at, created_at)
        SELECT (ARRAY['default', 'default', 'default', 'emails', 'reports'])[1 + g % 5],
               'kind_' || (g % 10),
               jsonb_build_object('user_id', g, 'customer', 'c' || (g % 1000)),
               ARRAY['t' || (g % 50)],
               (CASE WHEN g % 100 = 0 THEN 'failed' WHEN g % 333 = 0 THEN 'cancelled'
                     ELSE 'completed' END)::skiplock.job_state,
               1, now() - interval '1 day', now() - interval '1 day', '{bench-filler}', 'null'::jsonb,
               now() - interval '1 day', now() - interval '1 day'
        FROM generate_series(1, $1::bigint) AS g
        "#,
        count,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts `count` waiting jobs spread like [`fill_history`]'s: six in ten `available`, three
/// `scheduled` a day ahead, one `retryable` an hour ahead.
pub(crate) async fn fill_backlog<'e>(
    executor: impl PgExecutor<'e>,
    count: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        r#"
        INSERT INTO skiplock.jobs (queue, kind, args, tags, state, run_at)
        SELECT (ARRAY['default', 'default', 'default', 'emails', 'reports'])[1 + g % 5],
               'kind_' || (g % 10),
               jsonb_build_object('user_id', g, 'customer', 'c' || (g % 1000)),
               ARRAY['t' || (g % 50)],
               (CASE WHEN g % 10 < 6 THEN 'available' WHEN g % 10 < 9 THEN 'scheduled'
                     ELSE 'retryable' END)::skiplock.job_state,
               CASE WHEN g % 10 < 6 THEN now() - interval '1 minute'
                    WHEN g % 10 < 9 THEN now() + interval '1 day'
                    ELSE now() + interval '1 hour' END
        FROM generate_series(1, $1::bigint) AS g
        "#,
        count,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// What a soak samples of the table and the server every few seconds.
pub(crate) struct TableHealth {
    /// `pg_table_size('skiplock.jobs')`: heap, TOAST and free space map, in bytes.
    pub(crate) table_bytes: i64,
    /// `pg_indexes_size('skiplock.jobs')`, in bytes.
    pub(crate) index_bytes: i64,
    pub(crate) live_rows: i64,
    pub(crate) dead_rows: i64,
    /// Autovacuum and autoanalyze runs on the table since the statistics were reset.
    pub(crate) autovacuums: i64,
    pub(crate) autoanalyzes: i64,
    /// The age in transactions of the oldest snapshot any session holds (`backend_xmin`), and
    /// how long the oldest transaction holding one has been open: the xmin horizon.
    pub(crate) xmin_age: Option<i32>,
    pub(crate) xmin_held_secs: Option<f64>,
}

/// Reads [`TableHealth`] (after [`clear_stats_snapshot`], for fresh statistics).
pub(crate) async fn table_health<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<TableHealth, sqlx::Error> {
    sqlx::query_as!(
        TableHealth,
        r#"
        SELECT pg_table_size('skiplock.jobs') AS "table_bytes!",
               pg_indexes_size('skiplock.jobs') AS "index_bytes!",
               coalesce(s.n_live_tup, 0) AS "live_rows!",
               coalesce(s.n_dead_tup, 0) AS "dead_rows!",
               coalesce(s.autovacuum_count, 0) AS "autovacuums!",
               coalesce(s.autoanalyze_count, 0) AS "autoanalyzes!",
               (SELECT max(age(a.backend_xmin)) FROM pg_stat_activity AS a
                WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()) AS xmin_age,
               (SELECT extract(epoch FROM now() - min(a.xact_start))::float8 FROM pg_stat_activity AS a
                WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()) AS xmin_held_secs
        FROM (SELECT 1) AS one
        LEFT JOIN pg_stat_user_tables AS s ON s.relid = 'skiplock.jobs'::regclass
        "#
    )
    .fetch_one(executor)
    .await
}

#[cfg(test)]
mod tests {
    use skiplock_testing::TestDatabase;

    use super::*;

    /// A history finishes evenly over its spread, the newest as it is put in, each job created,
    /// run and attempted as it finished.
    #[tokio::test]
    async fn a_history_is_spread_over_the_seconds_asked() {
        let db = TestDatabase::new().await.expect("database");
        let filled = fill_completed(db.pool(), "history", "default", 10, 100.0)
            .await
            .expect("fill");
        assert_eq!(filled, 10);
        let (oldest, newest, apart, whole): (f64, f64, f64, bool) = sqlx::query_as(
            "SELECT extract(epoch FROM now() - min(finished_at))::float8,
                    extract(epoch FROM now() - max(finished_at))::float8,
                    extract(epoch FROM (array_agg(finished_at ORDER BY id))[2]
                                     - (array_agg(finished_at ORDER BY id))[1])::float8,
                    bool_and(created_at = finished_at AND run_at = finished_at
                             AND attempted_at = finished_at)
             FROM skiplock.jobs",
        )
        .fetch_one(db.pool())
        .await
        .expect("read");
        assert!((oldest - 90.0).abs() < 1.0, "{oldest}");
        assert!(newest.abs() < 1.0, "{newest}");
        assert!((apart - 10.0).abs() < 0.001, "{apart}");
        assert!(whole);
    }
}
