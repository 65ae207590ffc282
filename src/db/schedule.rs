//! Statements on `skiplock.schedules` and the jobs schedules create.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use crate::{Misfire, ScheduleRow};

/// A full row of `skiplock.schedules` as its columns decode; only [`list`] and [`lock_due`]
/// see it, and they return it as the one public [`ScheduleRow`] (the `From` below is the only
/// conversion).
struct Columns {
    pub(crate) name: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) kind: String,
    pub(crate) args: Value,
    pub(crate) queue: String,
    pub(crate) priority: i16,
    pub(crate) max_attempts: i32,
    pub(crate) misfire: String,
    pub(crate) backfill_limit: i32,
    pub(crate) paused: bool,
    pub(crate) active: bool,
    pub(crate) source: String,
    pub(crate) owner: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) timeout_secs: Option<f64>,
    pub(crate) next_fire_at: Option<DateTime<Utc>>,
    pub(crate) last_fire_at: Option<DateTime<Utc>>,
}

impl From<Columns> for ScheduleRow {
    fn from(row: Columns) -> Self {
        Self {
            misfire: Misfire::from_columns(&row.misfire, row.backfill_limit),
            name: row.name,
            cron: row.cron,
            timezone: row.timezone,
            kind: row.kind,
            args: row.args,
            queue: row.queue,
            priority: row.priority,
            max_attempts: row.max_attempts,
            paused: row.paused,
            active: row.active,
            source: row.source,
            owner: row.owner,
            tags: row.tags,
            timeout: row
                .timeout_secs
                .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok()),
            next_fire_at: row.next_fire_at,
            last_fire_at: row.last_fire_at,
        }
    }
}

/// A schedule to create or update.
pub(crate) struct Upsert<'a> {
    pub(crate) name: &'a str,
    pub(crate) cron: &'a str,
    pub(crate) timezone: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) args: &'a Value,
    pub(crate) queue: &'a str,
    pub(crate) priority: i16,
    pub(crate) max_attempts: i32,
    pub(crate) misfire: &'a str,
    pub(crate) backfill_limit: i32,
    pub(crate) tags: &'a [String],
    pub(crate) timeout_secs: Option<f64>,
    /// `None` for a schedule added at runtime; the declaring owner for one declared in code.
    pub(crate) owner: Option<&'a str>,
}

/// Creates or updates a schedule and makes it active; returns `false` when it was left alone
/// because another owner's active code schedule holds the name. A changed expression or time
/// zone takes effect from its next fire time: the scheduler computes it afresh. Pausing is left
/// as it is.
///
/// A schedule added at runtime (`owner` `None`) replaces whatever holds the name; a declaration
/// in code takes a runtime schedule, an ownerless (pre-0009) or inactive one, or its own owner's.
pub(crate) async fn upsert<'e>(
    executor: impl PgExecutor<'e>,
    s: &Upsert<'_>,
) -> Result<bool, sqlx::Error> {
    let source = if s.owner.is_some() { "code" } else { "runtime" };
    let stored = sqlx::query_scalar!(
        r#"
        INSERT INTO skiplock.schedules AS s (name, cron, timezone, kind, args, queue, priority,
                                             max_attempts, misfire, backfill_limit, source,
                                             tags, timeout_secs, owner)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (name) DO UPDATE
        SET cron = excluded.cron, timezone = excluded.timezone, kind = excluded.kind,
            args = excluded.args, queue = excluded.queue, priority = excluded.priority,
            max_attempts = excluded.max_attempts, misfire = excluded.misfire,
            backfill_limit = excluded.backfill_limit, source = excluded.source, active = true,
            tags = excluded.tags, timeout_secs = excluded.timeout_secs, owner = excluded.owner,
            next_fire_at = CASE WHEN (s.cron, s.timezone) = (excluded.cron, excluded.timezone)
                                THEN s.next_fire_at END,
            updated_at = now()
        WHERE excluded.owner IS NULL OR s.owner IS NULL OR s.owner = excluded.owner
              OR NOT s.active
        RETURNING name
        "#,
        s.name,
        s.cron,
        s.timezone,
        s.kind,
        s.args,
        s.queue,
        s.priority,
        s.max_attempts,
        s.misfire,
        s.backfill_limit,
        source,
        s.tags,
        s.timeout_secs,
        s.owner,
    )
    .fetch_optional(executor)
    .await?;
    Ok(stored.is_some())
}

/// Records that `owner` declares its schedules at `generation` and locks its row until the
/// transaction ends (declarations of one owner take turns); `false` when a newer generation has
/// declared already, and this declaration must change nothing.
pub(crate) async fn claim_owner(
    conn: &mut PgConnection,
    owner: &str,
    generation: i64,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"
        INSERT INTO skiplock.schedule_owners AS o (owner, generation) VALUES ($1, $2)
        ON CONFLICT (owner) DO UPDATE
        SET generation = excluded.generation, declared_at = now()
        WHERE o.generation <= excluded.generation
        RETURNING generation
        "#,
        owner,
        generation,
    )
    .fetch_optional(conn)
    .await?;
    Ok(claimed.is_some())
}

/// Marks inactive the active code schedules of `owner` that are not in `names`: they were
/// removed from its code. Code schedules stored before owners existed (no owner) go by the
/// old rule: inactive when their kind is one of `kinds` and they are not in `names`.
pub(crate) async fn deactivate_undeclared(
    conn: &mut PgConnection,
    owner: &str,
    kinds: &[String],
    names: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        UPDATE skiplock.schedules
        SET active = false, next_fire_at = NULL, updated_at = now()
        WHERE source = 'code' AND active AND NOT (name = ANY($3))
              AND (owner = $1 OR (owner IS NULL AND kind = ANY($2)))
        RETURNING name
        "#,
        owner,
        kinds,
        names,
    )
    .fetch_all(conn)
    .await
}

pub(crate) async fn list<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Columns,
        r#"
        SELECT name, cron, timezone, kind, args, queue, priority, max_attempts, misfire,
               backfill_limit, paused, active, source, owner, tags, timeout_secs,
               -- Instants chrono cannot hold (written by hand) read as none, as in lock_due.
               CASE WHEN isfinite(next_fire_at) AND next_fire_at < '262000-01-01'
                    THEN next_fire_at END AS next_fire_at,
               CASE WHEN isfinite(last_fire_at) AND last_fire_at < '262000-01-01'
                    THEN last_fire_at END AS last_fire_at
        FROM skiplock.schedules
        ORDER BY name
        "#
    )
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(ScheduleRow::from).collect())
}

/// Deletes a schedule; returns whether it existed. Jobs it created are kept.
pub(crate) async fn delete<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!("DELETE FROM skiplock.schedules WHERE name = $1", name)
        .execute(executor)
        .await?
        .rows_affected();
    Ok(deleted == 1)
}

/// Pauses or resumes a schedule; returns whether it exists. Resuming recomputes the next fire
/// time from now: fire times that passed while paused are not made up for.
pub(crate) async fn set_paused<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
    paused: bool,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query!(
        r#"
        UPDATE skiplock.schedules
        SET paused = $2, updated_at = now(),
            next_fire_at = CASE WHEN $2 OR NOT paused THEN next_fire_at END
        WHERE name = $1
        "#,
        name,
        paused,
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Enqueues one job of the schedule now, outside its cadence; `None` if there is no such
/// schedule.
pub(crate) async fn run_now<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH inserted AS (
            INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, tags,
                                       timeout_secs, schedule)
            SELECT kind, args, queue, priority, max_attempts, tags, timeout_secs, name
            FROM skiplock.schedules
            WHERE name = $1
            RETURNING id, queue
        )
        SELECT id AS "id!" FROM inserted, LATERAL (SELECT pg_notify('skiplock_wake', queue)) AS woken
        "#,
        name,
    )
    .fetch_optional(executor)
    .await
}

/// Locks up to `limit` active, unpaused schedules that are due at `now` (or have no next fire
/// time yet). Rows another scheduler holds are skipped: it is handling them.
pub(crate) async fn lock_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Columns,
        r#"
        SELECT name, cron, timezone, kind, args, queue, priority, max_attempts, misfire,
               backfill_limit, paused, active, source, owner, tags, timeout_secs,
               -- An instant chrono cannot hold (infinite, or past the year 262,000: written by
               -- hand) would fail the whole batch every round: it reads as none, and is due,
               -- so the schedule fires from its next fire time after now.
               CASE WHEN isfinite(next_fire_at) AND next_fire_at < '262000-01-01'
                    THEN next_fire_at END AS next_fire_at,
               CASE WHEN isfinite(last_fire_at) AND last_fire_at < '262000-01-01'
                    THEN last_fire_at END AS last_fire_at
        FROM skiplock.schedules
        WHERE active AND NOT paused
          AND (next_fire_at IS NULL OR next_fire_at <= $1 OR next_fire_at >= '262000-01-01')
        ORDER BY next_fire_at NULLS FIRST
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        "#,
        now,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ScheduleRow::from).collect())
}

/// Inserts one job per fire time of schedule `name`, with `run_at` the fire time. A fire time
/// that already has its job (another scheduler got there first) is skipped by the unique index
/// `jobs_schedule_fire_idx`; returns the ids inserted.
pub(crate) async fn insert_fires(
    conn: &mut PgConnection,
    name: &str,
    fire_times: &[DateTime<Utc>],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH inserted AS (
        INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, tags, timeout_secs,
                                   run_at, state, schedule)
        SELECT s.kind, s.args, s.queue, s.priority, s.max_attempts, s.tags, s.timeout_secs, f.at,
               skiplock.initial_state(f.at),
               s.name
        FROM skiplock.schedules AS s, unnest($2::timestamptz[]) AS f(at)
        WHERE s.name = $1
        ORDER BY f.at
        ON CONFLICT (schedule, run_at) WHERE schedule IS NOT NULL DO NOTHING
        RETURNING id, queue, state
        ),
        woken AS (
            SELECT skiplock.wake(array_agg(queue)) FROM inserted WHERE state = 'available'
        )
        SELECT id AS "id!" FROM inserted, woken
        "#,
        name,
        fire_times,
    )
    .fetch_all(conn)
    .await
}

/// Marks a schedule inactive because it will never fire again (its expression has no future
/// fire time, or it cannot be parsed).
pub(crate) async fn deactivate(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE skiplock.schedules SET active = false, next_fire_at = NULL, updated_at = now() WHERE name = $1",
        name
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a schedule's next fire time and, when it fired, its last.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    name: &str,
    next_fire_at: Option<DateTime<Utc>>,
    last_fire_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE skiplock.schedules
        SET next_fire_at = $2, last_fire_at = coalesce($3, last_fire_at)
        WHERE name = $1
        "#,
        name,
        next_fire_at,
        last_fire_at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Seconds until the earliest next fire time (negative when overdue; `None` when nothing is
/// scheduled), and whether some active schedule still needs its first fire time computed.
pub(crate) async fn seconds_until_next_fire<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT CASE WHEN bool_or(next_fire_at IS NULL) THEN 0
                    ELSE extract(epoch FROM min(next_fire_at) - now()) END::float8 AS "seconds"
        FROM skiplock.schedules
        WHERE active AND NOT paused
        "#
    )
    .fetch_one(executor)
    .await
}
