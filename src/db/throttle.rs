//! `skiplock.throttles`: cluster-wide concurrency and rate limits (migration 0020), and the
//! limited claim.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::job::{ATTEMPTED_BY_KEPT, Claimed};

/// Sets the limit of a scope (exactly one of `queue` and `kind`); returns its id.
pub(crate) async fn set<'e>(
    executor: impl PgExecutor<'e>,
    queue: Option<&str>,
    kind: Option<&str>,
    partition_key: Option<&str>,
    max_running: Option<i32>,
    max_starts: Option<i32>,
    period_secs: Option<f64>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT skiplock.set_limit(queue => $1, kind => $2, max_running => $3,
                                     max_starts => $4, period_secs => $5,
                                     partition_key => $6) AS "id!""#,
        queue,
        kind,
        max_running,
        max_starts,
        period_secs,
        partition_key,
    )
    .fetch_one(executor)
    .await
}

/// Removes the limit of a scope; whether there was one.
pub(crate) async fn clear<'e>(
    executor: impl PgExecutor<'e>,
    queue: Option<&str>,
    kind: Option<&str>,
    partition_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT skiplock.clear_limit(queue => $1, kind => $2, partition_key => $3) AS "cleared!""#,
        queue,
        kind,
        partition_key,
    )
    .fetch_one(executor)
    .await
}

/// One limit with its scope's running jobs now.
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) queue: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) max_running: Option<i32>,
    pub(crate) max_starts: Option<i32>,
    pub(crate) period_secs: Option<f64>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) updated_by: Option<String>,
    /// Jobs of the scope running now (all partitions together).
    pub(crate) running: i64,
    /// The most running in one partition (the scope's count when it has no partition key).
    pub(crate) busiest_partition: i64,
}

/// Every limit, by scope, with its running counts: one statement, counting the running jobs once
/// (through `jobs_lease_expiry_idx`, which holds the running rows and only them; see 0024).
pub(crate) async fn list<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as!(
        Row,
        r#"
        WITH running AS MATERIALIZED (
            SELECT j.queue, j.kind, j.args
            FROM skiplock.jobs AS j
            WHERE j.lease_expires_at >= '-infinity' AND j.state = 'running'
              AND EXISTS (SELECT FROM skiplock.throttles AS t
                          WHERE t.queue = j.queue OR t.kind = j.kind)
        )
        SELECT t.id, t.queue, t.kind, t.partition_key, t.max_running, t.max_starts,
               t.period_secs, t.updated_at, t.updated_by,
               c.running AS "running!", c.busiest AS "busiest_partition!"
        FROM skiplock.throttles AS t
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(p.n), 0)::bigint AS running, coalesce(max(p.n), 0)::bigint AS busiest
            FROM (SELECT count(*) AS n
                  FROM running AS r
                  WHERE r.queue = t.queue OR r.kind = t.kind
                  GROUP BY CASE WHEN t.partition_key IS NULL THEN ''
                                ELSE coalesce((r.args -> t.partition_key)::text, 'null') END) AS p
        ) AS c
        ORDER BY t.queue NULLS LAST, t.kind, t.partition_key NULLS FIRST
        "#
    )
    .fetch_all(executor)
    .await
}

/// Claims like [`super::job::claim`], under the limits that apply (`skiplock.claim_throttled`,
/// whose comment in migration 0020 explains why it is race-free). Must run in a READ COMMITTED
/// transaction (the default); one statement on a pooled connection is one.
pub(crate) async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    limit: i32,
    worker_id: &str,
    lease_secs: f64,
    kinds: &[String],
    max_bytes: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"
        SELECT j.id AS "id!", j.kind AS "kind!", j.queue AS "queue!", j.args::text AS "args!",
               j.priority AS "priority!", j.attempt AS "attempt!",
               j.max_attempts AS "max_attempts!",
               CASE WHEN isfinite(j.created_at) AND j.created_at < '262000-01-01'
                    THEN j.created_at END AS "created_at?",
               ARRAY(SELECT tag FROM unnest(j.tags) WITH ORDINALITY AS t(tag, n)
                     WHERE tag IS NOT NULL ORDER BY n) AS "tags!",
               j.lease_token AS "lease_token!", j.timeout_secs,
               j.metadata ->> 'traceparent' AS traceparent,
               -- 0 for an infinite run_at, as in db::job::claim.
               CASE WHEN isfinite(j.run_at) THEN extract(epoch FROM now() - j.run_at)::float8
                    ELSE 0 END AS "pickup_lag_secs!",
               CASE WHEN isfinite(j.run_at) AND j.run_at < '262000-01-01'
                    THEN j.run_at END AS "run_at?",
               false AS "cut_by_bytes!"
        FROM skiplock.claim_throttled($1, $2, $3, $4, $5, $6, $7) AS j
        "#,
        queue,
        kinds,
        limit,
        worker_id,
        lease_secs,
        max_bytes,
        ATTEMPTED_BY_KEPT,
    )
    .fetch_all(executor)
    .await
}

/// Whether a limit applies to claims of `queue` by a worker running `kinds`, and the seconds
/// until a rate limit among them allows the next start (`None`: no rate limit applies).
pub(crate) struct Probe {
    pub(crate) applies: bool,
    pub(crate) wait_secs: Option<f64>,
}

/// Probes the limits of `queue` and `kinds` (one statement, two reads of a small table).
pub(crate) async fn probe<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    kinds: &[String],
) -> Result<Probe, sqlx::Error> {
    sqlx::query_as!(
        Probe,
        r#"SELECT skiplock.throttled($1, $2) AS "applies!",
                  skiplock.throttle_wait($1, $2) AS wait_secs"#,
        queue,
        kinds
    )
    .fetch_one(executor)
    .await
}

/// A limit that applies to one job, with its scope's (its partition's) state now.
pub(crate) struct JobLimit {
    pub(crate) queue: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) partition_key: Option<String>,
    /// The job's partition: `args -> partition_key` as JSON text (`null` without the key).
    pub(crate) partition: Option<String>,
    pub(crate) max_running: Option<i32>,
    pub(crate) max_starts: Option<i32>,
    pub(crate) period_secs: Option<f64>,
    /// Jobs of the scope (of the job's partition) running now.
    pub(crate) running: i64,
    /// Seconds until the rate allows the next start (0: now); `None` without a rate.
    pub(crate) next_start_secs: Option<f64>,
}

/// The limits that apply to job `id`, by id.
pub(crate) async fn for_job<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Vec<JobLimit>, sqlx::Error> {
    sqlx::query_as!(
        JobLimit,
        r#"
        SELECT t.queue, t.kind, t.partition_key,
               CASE WHEN t.partition_key IS NOT NULL
                    THEN coalesce((j.args -> t.partition_key)::text, 'null') END AS partition,
               t.max_running, t.max_starts, t.period_secs,
               (SELECT count(*) FROM skiplock.jobs AS r
                WHERE r.state = 'running' AND (r.queue = t.queue OR r.kind = t.kind)
                  AND (t.partition_key IS NULL
                       OR coalesce((r.args -> t.partition_key)::text, 'null')
                          = coalesce((j.args -> t.partition_key)::text, 'null'))) AS "running!",
               greatest(0, (1 - least(t.max_starts::float8,
                                      b.tokens + extract(epoch FROM clock_timestamp() - b.refilled_at)
                                                 * t.max_starts / t.period_secs))
                           * t.period_secs / t.max_starts)::float8 AS next_start_secs
        FROM skiplock.jobs AS j
        JOIN skiplock.throttles AS t ON t.queue = j.queue OR t.kind = j.kind
        LEFT JOIN skiplock.throttle_buckets AS b ON b.throttle_id = t.id
        WHERE j.id = $1
        ORDER BY t.id
        "#,
        id
    )
    .fetch_all(executor)
    .await
}
