//! Statements on `skiplock.jobs`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::{AttemptError, ErrorKind, JobRow, JobState};

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
    pub(crate) timeout_secs: Option<f64>,
    /// `metadata`, as `{"traceparent": ...}`; validated by the caller and by the table's
    /// `jobs_metadata_valid`.
    pub(crate) metadata: Option<Value>,
    /// The traceparent in it, for `skiplock.enqueue`.
    pub(crate) traceparent: Option<&'a str>,
}

/// Inserts one job and, when it is runnable now, wakes its queue (the notification is
/// delivered at commit); returns its id.
///
/// The wake-up is part of the statement rather than a trigger's job: an AFTER INSERT trigger
/// cost a quarter of single-enqueue throughput (migration 0006 says how that was measured). It
/// calls `pg_notify` directly: going through `skiplock.wake()` cost another fifth.
pub(crate) async fn insert<'e>(
    executor: impl PgExecutor<'e>,
    row: InsertRow<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH inserted AS (
            INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, run_at, tags,
                                       state, timeout_secs, metadata)
            SELECT $1, $2, $3, $4, $5, t.run_at, $8,
                   skiplock.initial_state(t.run_at),
                   $9, $10
            FROM (SELECT coalesce($6, now() + make_interval(secs => coalesce($7::float8, 0))) AS run_at) AS t
            RETURNING id, queue, state
        )
        SELECT id AS "id!"
        FROM inserted
        LEFT JOIN LATERAL (SELECT pg_notify('skiplock_wake', queue) WHERE state = 'available') AS woken
               ON true
        "#,
        row.kind,
        row.args,
        row.queue,
        row.priority,
        row.max_attempts,
        row.run_at,
        row.delay_secs,
        row.tags,
        row.timeout_secs,
        row.metadata,
    )
    .fetch_one(executor)
    .await
}

/// Inserts one unique job through `skiplock.enqueue`, which returns the id of the existing job
/// with the same key (in one of `unique_states`) instead of inserting a second one. The
/// key is `unique_key`, or derived from kind and args when that is `None`.
pub(crate) async fn insert_unique<'e>(
    executor: impl PgExecutor<'e>,
    row: InsertRow<'_>,
    unique_key: Option<&str>,
    unique_states: &[JobState],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT skiplock.enqueue(
            kind => $1, args => $2, queue => $3, priority => $4, max_attempts => $5,
            run_at => coalesce($6, now() + make_interval(secs => coalesce($7::float8, 0))),
            tags => $8, timeout_secs => $9,
            unique_key => $10, unique_by_args => $10::text IS NULL,
            unique_states => $11::skiplock.job_state[], traceparent => $12
        ) AS "id!"
        "#,
        row.kind,
        row.args,
        row.queue,
        i32::from(row.priority),
        row.max_attempts,
        row.run_at,
        row.delay_secs,
        row.tags,
        row.timeout_secs,
        unique_key,
        unique_states as &[JobState],
        row.traceparent,
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
    pub(crate) timeout_secs: Vec<Option<f64>>,
    /// Each job's tags as a JSON array of strings, `None` for none: PostgreSQL arrays must be
    /// rectangular, so a `text[][]` parameter cannot carry tag lists of different lengths.
    pub(crate) tags: Vec<Option<Value>>,
    /// Each job's `metadata` (`{"traceparent": ...}`, validated); empty when no job has any
    /// (`unnest` pads the shorter arrays with NULLs).
    pub(crate) metadata: Vec<Option<Value>>,
}

/// Inserts many jobs in one statement (one round trip, no parameter-count limit: every column
/// travels as one array) and wakes each queue that got a runnable job once; returns their ids
/// in input order.
pub(crate) async fn insert_many<'e>(
    executor: impl PgExecutor<'e>,
    columns: &InsertColumns,
) -> Result<Vec<i64>, sqlx::Error> {
    // Rows are inserted in `ord` order and identity values are drawn in that order, so sorting
    // the returned ids restores input order even if RETURNING ever yields them differently.
    let mut ids = sqlx::query_scalar!(
        r#"
        WITH inserted AS (
        INSERT INTO skiplock.jobs (kind, args, queue, priority, max_attempts, run_at, tags, state,
                                   timeout_secs, metadata)
        SELECT t.kind, t.args, t.queue, t.priority, t.max_attempts, r.run_at,
               -- Most jobs have no tags: no subquery for them.
               CASE WHEN t.tags IS NULL THEN '{}'::text[]
                    ELSE ARRAY(SELECT tag
                               FROM jsonb_array_elements_text(t.tags) WITH ORDINALITY AS e(tag, n)
                               ORDER BY n)
               END,
               skiplock.initial_state(r.run_at),
               t.timeout_secs, t.metadata
        FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::smallint[], $5::int[],
                    $6::timestamptz[], $7::float8[], $8::jsonb[], $9::float8[], $10::jsonb[])
             WITH ORDINALITY AS t(kind, args, queue, priority, max_attempts, run_at, delay_secs, tags,
                                  timeout_secs, metadata, ord)
        CROSS JOIN LATERAL
             (SELECT coalesce(t.run_at, now() + make_interval(secs => coalesce(t.delay_secs, 0))) AS run_at) AS r
        ORDER BY t.ord
        RETURNING id, queue, state
        ),
        -- pg_notify directly, as `insert` does (see `complete_many`); one row always.
        woken AS (
            SELECT count(pg_notify('skiplock_wake', q))
            FROM (SELECT DISTINCT queue AS q FROM inserted WHERE state = 'available') AS w
        )
        SELECT id AS "id!" FROM inserted, woken
        "#,
        &columns.kinds,
        &columns.args,
        &columns.queues,
        &columns.priorities,
        &columns.max_attempts,
        &columns.run_ats as &[Option<DateTime<Utc>>],
        &columns.delay_secs as &[Option<f64>],
        &columns.tags as &[Option<Value>],
        &columns.timeout_secs as &[Option<f64>],
        &columns.metadata as &[Option<Value>],
    )
    .fetch_all(executor)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

/// How many entries of `attempted_by` a claim keeps: the most recent ones. A job that snoozes
/// forever is claimed forever, and its row must not grow with it. Documented in docs/schema.md.
pub(crate) const ATTEMPTED_BY_KEPT: i32 = 100;

/// A job as claimed by a producer. Every column arrives in a form that always decodes, whatever
/// a foreign writer stored: one undecodable row must not fail the claim of its whole batch (the
/// claim has committed by then, so its jobs would sit `running` until rescued, and be claimed
/// together again).
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) queue: String,
    /// The arguments as JSON text: valid jsonb, yet perhaps not JSON that `serde_json` reads
    /// (nesting deeper than its recursion limit, numbers beyond `f64`). Each job decodes its
    /// own, into its handler's type, and fails alone if they do not.
    pub(crate) args: String,
    pub(crate) priority: i16,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    /// `None` when the stored value is outside what `chrono` represents (`infinity`, or a year
    /// past 262,000): such a row fails as `undecodable_row`.
    pub(crate) created_at: Option<DateTime<Utc>>,
    /// Without NULL elements, flattened if a foreign writer stored a multidimensional array.
    pub(crate) tags: Vec<String>,
    pub(crate) lease_token: i64,
    pub(crate) timeout_secs: Option<f64>,
    /// `metadata->>'traceparent'`, unvalidated: the worker parses it (a row written before
    /// `jobs_metadata_valid`, or by hand, must not reach spans unchecked).
    pub(crate) traceparent: Option<String>,
    /// Seconds from `run_at` to this claim (database time): how long the job waited while due.
    pub(crate) pickup_lag_secs: f64,
    /// `run_at`, for the producer's [`Position`]; `None` when outside what `chrono` represents.
    pub(crate) run_at: Option<DateTime<Utc>>,
    /// The byte bound left out jobs this claim could otherwise have taken (the same in every
    /// row of one claim): more are waiting.
    pub(crate) cut_by_bytes: bool,
}

/// Where a claim's scan of one kind starts: the place in claim order (`priority, run_at, id`)
/// of the last job of that kind the producer claimed. The scan reads the index from there on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) priority: i16,
    pub(crate) run_at: DateTime<Utc>,
    pub(crate) id: i64,
}

impl Position {
    /// The place of a claimed job; `None` when its `run_at` did not decode (such a job sorts
    /// first or last, and the scan had better start from the head).
    pub(crate) fn of(job: &Claimed) -> Option<Self> {
        Some(Self {
            priority: job.priority,
            run_at: job.run_at?,
            id: job.id,
        })
    }
}

/// The kinds one claim reads, each from its head or after a position.
pub(crate) struct Scans<'a> {
    pub(crate) kinds: &'a [String],
    /// As many as `kinds`: where the scan of each starts (only jobs after it in claim order are
    /// read); `None` reads the kind from its head.
    pub(crate) after: &'a [Option<Position>],
}

/// Claims up to `limit` available jobs of `queue` of the kinds in `scans` for `worker_id`, and
/// no more of them than fit in `max_bytes` of stored arguments (but always at least one).
///
/// Why the statement looks like this:
/// - `heads` reads, for each kind this worker runs, the head of that kind in the partial index
///   `jobs_claim_kind_idx` (`queue, kind, priority, run_at, id`) in index order, and merges the
///   heads in claim order (`priority, run_at, id`). Only `available` rows are in the index, and
///   only this worker's kinds are visited: however many jobs of other kinds (or other states)
///   wait in the queue, the claim reads just the rows it may take. A single scan with
///   `kind = ANY (...)` would have to filter its way past every other kind's jobs.
/// - `FOR UPDATE SKIP LOCKED` makes concurrent producers (other processes, other hosts) pass over
///   rows another transaction is claiming instead of queueing behind its lock: each job goes to
///   exactly one claimer, and nobody waits. Rows are locked in each kind's scan, before the
///   merge, so a row another claimer holds never counts towards the limit.
/// - The cost of that: each kind's scan locks up to `limit` rows, and the merge keeps `limit` of
///   them; a worker running K kinds may lock up to K × `limit` rows for the milliseconds of the
///   statement (released at its commit). Another claimer skips those meanwhile and may get
///   fewer jobs than are waiting; it claims again at its next wake-up or poll. Workers with
///   few kinds or small claims pay nearly nothing; one with dozens of busy kinds locks dozens of
///   times its claim size.
/// - Each kind's scan may start after a position (`after`) rather than at the head of the index
///   (when and why: `runtime::cursor`): while a long transaction pins the xmin horizon, the index entries
///   of every job claimed since cannot be marked dead, and a scan from the head visits the heap
///   for each of them before it reaches a runnable job (millions after minutes at thousands of
///   jobs a second: seconds per claim). The bound is a row comparison on the index's own
///   columns after `queue, kind`, so the scan descends straight to it. The head is the same
///   comparison against the smallest position there is (`-32768`, `-infinity`, the smallest
///   id): one statement, one plan.
/// - `MATERIALIZED` makes `heads` a fence: the LIMITs and the row locks are taken once, before
///   the UPDATE joins against the result. Inlined, the planner may turn it into a join that
///   re-evaluates the subquery and locks rows the UPDATE then skips.
/// - A queue or kind with a limit (`skiplock.throttles`, migration 0020) yields nothing here
///   either: the producer claims it through [`super::throttle::claim`]. Without limits this is
///   one more uncorrelated probe of an empty table per claim.
/// - A paused queue (`skiplock.queues.paused_at`, migration 0016) yields nothing. The test is
///   in the claim itself rather than in each worker's memory, so a pause holds from the next
///   claim on, on every worker at once, with no notification to miss.
/// - `picked` bounds the bytes of one claim: a running sum of the stored size of `args`
///   (`pg_column_size`, the size on disk, which is compressed for large values) in claim order;
///   the first job is always taken, so a job larger than the bound still runs.
/// - It runs on a generic plan (the producers' connections set `plan_cache_mode`; see
///   `db::session::configure`): planned once per connection, not at every execution. Its shape
///   must therefore be right whatever the parameters: the UPDATE finds its rows through the
///   primary key from an array (`id = ANY (ARRAY(...))`), because a join against `picked`,
///   whose size a generic plan cannot know, was planned as a hash join over a sequential scan
///   of the whole table (40 ms instead of 12 ms for 1,000 jobs among 100,000).
/// - One statement claims the whole batch (as many jobs as the producer has free slots): one
///   round trip and one commit for N jobs instead of N.
/// - Each claimed row gets a fresh `lease_token`: every later write on the job (heartbeat,
///   progress, completion) must present it, so a worker that lost the job changes nothing.
/// - `attempted_by` keeps the last [`ATTEMPTED_BY_KEPT`] workers.
/// - The columns returned always decode (see [`Claimed`]). `tags` is rebuilt by a subquery
///   (NULL elements dropped, dimensions flattened) only for rows that have tags: most have none,
///   and the subquery was 1.7 % of the server's time in a drain by one worker with 800 slots.
pub(crate) async fn claim<'e>(
    executor: impl PgExecutor<'e>,
    queue: &str,
    limit: i64,
    worker_id: &str,
    lease_secs: f64,
    scans: Scans<'_>,
    max_bytes: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // Arrays of different lengths would pad with NULLs, and a kind compared with NULL is
    // never claimed.
    assert_eq!(scans.kinds.len(), scans.after.len(), "one start per kind");
    let (priorities, run_ats, ids): (Vec<i16>, Vec<Option<DateTime<Utc>>>, Vec<i64>) = scans
        .after
        .iter()
        .map(|after| match after {
            // Just after the job: the next id on, or the job itself at the very last id (its
            // entry is no longer a runnable row).
            Some(at) => (at.priority, Some(at.run_at), at.id.saturating_add(1)),
            None => (i16::MIN, None, i64::MIN),
        })
        .collect();
    sqlx::query_as!(
        Claimed,
        r#"
        WITH heads AS MATERIALIZED (
            SELECT head.id, head.priority, head.run_at, head.size
            FROM unnest($5::text[], $8::int2[], $9::timestamptz[], $10::int8[])
                AS k(kind, priority, run_at, id)
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at, pg_column_size(j.args) AS size
                FROM skiplock.jobs AS j
                WHERE j.state = 'available' AND j.queue = $1 AND j.kind = k.kind
                  AND (j.priority, j.run_at, j.id)
                      >= (k.priority, coalesce(k.run_at, '-infinity'), k.id)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ) AS head
            -- An uncorrelated test: evaluated once per claim (one primary-key probe of a
            -- small table), it gates the whole scan.
            WHERE NOT EXISTS (SELECT FROM skiplock.queues AS q
                              WHERE q.name = $1 AND q.paused_at IS NOT NULL)
              -- Likewise: a queue or kind with a limit (0020) is claimed through
              -- throttle::claim only. The producer knows which (throttle::applies); this
              -- covers a limit set since it last looked.
              AND NOT EXISTS (SELECT FROM skiplock.throttles AS t
                              WHERE t.queue = $1 OR t.kind = ANY ($5))
            ORDER BY head.priority, head.run_at, head.id
            LIMIT $2
        ),
        picked AS (
            SELECT id
            FROM (SELECT id,
                         sum(size) OVER (ORDER BY priority, run_at, id) AS bytes,
                         row_number() OVER (ORDER BY priority, run_at, id) AS n
                  FROM heads) AS h
            WHERE h.n = 1 OR h.bytes <= $6
        )
        UPDATE skiplock.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            attempted_at = now(),
            attempted_by = (array_append(j.attempted_by, $3))
                               [greatest(cardinality(j.attempted_by) + 2 - $7::int, 1):],
            lease_expires_at = now() + make_interval(secs => $4),
            lease_token = nextval('skiplock.lease_token_seq')
        WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
        RETURNING j.id, j.kind, j.queue, j.args::text AS "args!", j.priority, j.attempt,
                  j.max_attempts,
                  CASE WHEN isfinite(j.created_at) AND j.created_at < '262000-01-01'
                       THEN j.created_at END AS "created_at?",
                  CASE WHEN cardinality(j.tags) = 0 THEN '{}'::text[]
                       ELSE ARRAY(SELECT tag FROM unnest(j.tags) WITH ORDINALITY AS t(tag, n)
                                  WHERE tag IS NOT NULL ORDER BY n)
                  END AS "tags!",
                  j.lease_token AS "lease_token!", j.timeout_secs,
                  j.metadata ->> 'traceparent' AS traceparent,
                  -- 0 for an infinite run_at (a row older than 0008's CHECK): subtracting
                  -- it fails on PostgreSQL 15, and would fail the claim of its whole batch.
                  CASE WHEN isfinite(j.run_at) THEN extract(epoch FROM now() - j.run_at)::float8
                       ELSE 0 END AS "pickup_lag_secs!",
                  CASE WHEN isfinite(j.run_at) AND j.run_at < '262000-01-01'
                       THEN j.run_at END AS "run_at?",
                  (SELECT count(*) FROM heads) > (SELECT count(*) FROM picked) AS "cut_by_bytes!"
        "#,
        queue,
        limit,
        worker_id,
        lease_secs,
        scans.kinds,
        max_bytes,
        ATTEMPTED_BY_KEPT,
        &priorities,
        &run_ats as &[Option<DateTime<Utc>>],
        &ids,
    )
    .fetch_all(executor)
    .await
}

/// Column arrays for [`complete_many`]: element `i` of every vector describes one finished attempt.
#[derive(Default)]
pub(crate) struct Outcomes {
    pub(crate) ids: Vec<i64>,
    pub(crate) lease_tokens: Vec<i64>,
    /// The new state's name: `completed`, `failed`, `cancelled`, `retryable`, `available`
    /// (interrupted) or `scheduled` (snoozed).
    pub(crate) states: Vec<JobState>,
    /// Whether the attempt is given back (snoozed or interrupted jobs): `attempt` goes down by
    /// one, so the next claim runs the same attempt number again.
    pub(crate) give_back: Vec<bool>,
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

    /// Just row `i`.
    pub(crate) fn row(&self, i: usize) -> Self {
        Self {
            ids: vec![self.ids[i]],
            lease_tokens: vec![self.lease_tokens[i]],
            states: vec![self.states[i]],
            give_back: vec![self.give_back[i]],
            results: vec![self.results[i].clone()],
            error_kinds: vec![self.error_kinds[i].clone()],
            error_messages: vec![self.error_messages[i].clone()],
            retry_in_secs: vec![self.retry_in_secs[i]],
        }
    }

    /// The same attempts recorded as cancelled: they cannot go back to a state they are unique
    /// in because a duplicate holds their key, and that duplicate will do the work.
    pub(crate) fn superseded(&self) -> Self {
        let message = "a duplicate unique job holds the key".to_owned();
        self.finished_instead(JobState::Cancelled, ErrorKind::Superseded, message)
    }

    /// The same attempts recorded as failed because their outcome could not be stored.
    pub(crate) fn unrecordable(&self, error: &sqlx::Error) -> Self {
        let message = format!("the outcome could not be stored: {error}").replace('\0', "");
        self.finished_instead(JobState::Failed, ErrorKind::UnrecordableOutcome, message)
    }

    /// The same attempts, all ending in final `state` with one error entry instead.
    fn finished_instead(&self, state: JobState, error_kind: ErrorKind, message: String) -> Self {
        let n = self.len();
        Self {
            ids: self.ids.clone(),
            lease_tokens: self.lease_tokens.clone(),
            states: vec![state; n],
            give_back: vec![false; n],
            results: vec![None; n],
            error_kinds: vec![Some(error_kind.as_str().to_owned()); n],
            error_messages: vec![Some(message); n],
            retry_in_secs: vec![0.0; n],
        }
    }
}

/// Records the outcome of many attempts in one statement and wakes the queues of jobs it made
/// `available`, and of jobs that freed a slot of a limit; returns the ids it changed.
///
/// Fenced: a row changes only while it is still `running` under the lease token of the attempt
/// that finished. A stale write (the job was rescued or re-claimed meanwhile) changes nothing,
/// and its id is missing from the result.
pub(crate) async fn complete_many<'e>(
    executor: impl PgExecutor<'e>,
    outcomes: &Outcomes,
) -> Result<Vec<Recorded>, sqlx::Error> {
    sqlx::query_as!(
        Recorded,
        r#"
        WITH done AS (
        -- A job somebody asked to cancel while it ran ends `cancelled` when its attempt would
        -- have put it back (a retry, a snooze, an interruption at shutdown): the request can
        -- reach the worker after the handler returned, and the job must not run again. As
        -- skiplock.fail and skiplock.snooze do for SQL workers, and the rescuer for lost ones.
        UPDATE skiplock.jobs AS j
        SET state = CASE WHEN j.cancel_requested_at IS NOT NULL
                              AND o.state IN ('retryable', 'available', 'scheduled')
                         THEN 'cancelled' ELSE o.state END,
            result = o.result,
            attempt = CASE WHEN o.give_back AND j.cancel_requested_at IS NULL THEN j.attempt - 1
                           ELSE j.attempt END,
            -- An entry for every error, and one of kind `cancelled` for a job cancelled instead
            -- of put back, even a snoozed one (which has no error of its own).
            errors = CASE WHEN o.error_kind IS NULL
                               AND (j.cancel_requested_at IS NULL
                                    OR o.state NOT IN ('retryable', 'available', 'scheduled'))
                          THEN j.errors
                          ELSE j.errors || jsonb_build_array(jsonb_build_object(
                                 'attempt', j.attempt,
                                 'at', now(),
                                 'kind', CASE WHEN j.cancel_requested_at IS NOT NULL
                                                   AND o.state IN ('retryable', 'available', 'scheduled')
                                              THEN 'cancelled' ELSE o.error_kind END,
                                 'message', coalesce(o.error_message, 'snoozed after a cancel request'),
                                 'worker', j.attempted_by[cardinality(j.attempted_by)]))
                     END,
            -- Every outcome is final once a cancel was requested (see above).
            finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled')
                                    OR j.cancel_requested_at IS NOT NULL THEN now() END,
            -- Interrupted jobs keep their place in the queue; retries and snoozes wait.
            run_at = CASE WHEN j.cancel_requested_at IS NOT NULL THEN j.run_at
                          WHEN o.give_back AND o.state = 'available' THEN j.run_at
                          WHEN o.state IN ('retryable', 'available', 'scheduled')
                          THEN now() + make_interval(secs => o.retry_in_secs)
                          ELSE j.run_at END,
            lease_expires_at = NULL,
            lease_token = NULL
        FROM unnest($1::bigint[], $2::bigint[], $3::skiplock.job_state[], $4::jsonb[], $5::text[], $6::text[],
                    $7::float8[], $8::bool[])
             AS o(id, lease_token, state, result, error_kind, error_message, retry_in_secs, give_back)
        -- The fence is the lease token alone: a CHECK (0005) makes a non-null token mean
        -- `running`. A `state = 'running'` term here would let stale statistics (no running
        -- rows at the last ANALYZE) turn this join into batch × running comparisons.
        WHERE j.id = o.id AND j.lease_token = o.lease_token
        RETURNING j.id, j.queue, j.kind, j.state, o.error_kind
        ),
        -- pg_notify directly, as `insert` does: every call of skiplock.wake(), even with
        -- nothing to wake, sets its search_path and parses its body again, and a statement of
        -- this one called it twice (about 4% of the server's time in a drain by 16 workers
        -- x 50). One row always, so the join below never drops the batch.
        woken AS (
            SELECT count(pg_notify('skiplock_wake', q))
            FROM (SELECT DISTINCT queue AS q FROM done WHERE state = 'available') AS w
        ),
        -- Jobs somebody waits on (skiplock::results): one notification each. Looked up
        -- after the update, in a fresh snapshot, under a lock a registering waiter takes
        -- (0023): a registration racing this statement is either seen or waits for it.
        waited AS (
            SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
        ),
        -- Jobs of a limited queue or kind (0020) free a slot: their queues' workers are woken
        -- to claim again. Gated by one probe of a table that is empty without limits.
        freed AS (
            SELECT count(pg_notify('skiplock_wake', q))
            FROM (SELECT DISTINCT d.queue AS q FROM done AS d
                  WHERE EXISTS (SELECT FROM skiplock.throttles)
                    AND EXISTS (SELECT FROM skiplock.throttles AS t
                                WHERE t.queue = d.queue OR t.kind = d.kind)) AS f
        )
        -- Grouped for skiplock.job_stats: a few rows per batch, whatever its size.
        SELECT array_agg(id) AS "ids!", queue AS "queue!", kind AS "kind!",
               CASE WHEN state = 'retryable' THEN 'retried'
                    WHEN state = 'scheduled' THEN 'snoozed'
                    WHEN state = 'available' AND error_kind IS NULL THEN 'snoozed'
                    WHEN state = 'available' AND error_kind = 'interrupted' THEN 'interrupted'
                    WHEN state = 'available' THEN 'retried'
                    ELSE state::text END AS "outcome!"
        FROM done, woken, waited, freed
        GROUP BY 2, 3, 4
        "#,
        &outcomes.ids,
        &outcomes.lease_tokens,
        &outcomes.states as &[JobState],
        &outcomes.results as &[Option<Value>],
        &outcomes.error_kinds as &[Option<String>],
        &outcomes.error_messages as &[Option<String>],
        &outcomes.retry_in_secs,
        &outcomes.give_back,
    )
    .fetch_all(executor)
    .await
}

/// The jobs of one queue and kind whose outcome [`complete_many`] recorded, by outcome as
/// `skiplock.job_stats` names it.
pub(crate) struct Recorded {
    pub(crate) ids: Vec<i64>,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) outcome: String,
}

/// Adds outcome counts to `skiplock.job_stats`, in the current minute.
pub(crate) async fn add_job_stats<'e>(
    executor: impl PgExecutor<'e>,
    queues: &[String],
    kinds: &[String],
    outcomes: &[String],
    jobs: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO skiplock.job_stats AS s (minute, queue, kind, outcome, jobs)
        SELECT date_trunc('minute', now()), queue, kind, outcome, jobs
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(queue, kind, outcome, jobs)
        -- Sorted, so two workers adding the same rows lock them in the same order.
        ORDER BY queue, kind, outcome
        ON CONFLICT (minute, queue, kind, outcome) DO UPDATE SET jobs = s.jobs + excluded.jobs
        "#,
        queues,
        kinds,
        outcomes,
        jobs,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes the `skiplock.job_stats` minutes older than `older_than_secs`.
pub(crate) async fn delete_old_job_stats<'e>(
    executor: impl PgExecutor<'e>,
    older_than_secs: f64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM skiplock.job_stats WHERE minute < now() - make_interval(secs => $1)",
        older_than_secs,
    )
    .execute(executor)
    .await?;
    Ok(deleted.rows_affected())
}

/// Completes one running job inside the caller's transaction (transactional completion);
/// returns `false`, changing nothing, when the lease token is stale.
pub(crate) async fn complete_one<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    lease_token: i64,
    result: &Value,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query_scalar!(
        r#"
        WITH done AS (
            UPDATE skiplock.jobs
            SET state = 'completed', result = $3, finished_at = now(),
                lease_expires_at = NULL, lease_token = NULL
            WHERE id = $1 AND lease_token = $2 AND state = 'running'
            RETURNING id
        ),
        waited AS (
            SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
        )
        SELECT count(*) AS "changed!" FROM done, waited
        "#,
        id,
        lease_token,
        result,
    )
    .fetch_one(executor)
    .await?;
    Ok(changed == 1)
}

/// Stores a running job's progress; returns `false`, changing nothing, when the lease token is
/// stale.
pub(crate) async fn set_progress<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    lease_token: i64,
    progress: &Value,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query_scalar!(
        r#"
        WITH changed AS (
            UPDATE skiplock.jobs SET progress = $3
            WHERE id = $1 AND lease_token = $2 AND state = 'running'
            RETURNING id
        ),
        -- Watchers (skiplock::results) hear of it (race-free, see complete_many); nobody
        -- else pays more than a probe.
        waited AS (
            SELECT skiplock.notify_waiters(array_agg(c.id)) FROM changed AS c
        )
        SELECT count(*) AS "changed!" FROM changed, waited
        "#,
        id,
        lease_token,
        progress,
    )
    .fetch_one(executor)
    .await?;
    Ok(changed == 1)
}

/// One lease, as [`heartbeat`] reports it.
pub(crate) struct Renewed {
    pub(crate) id: i64,
    /// The lease was extended.
    pub(crate) renewed: bool,
    /// Not extended because somebody holds the row's lock (the handler's own transaction, in
    /// transactional completion), but still this worker's: neither renewed nor lost.
    pub(crate) busy: bool,
    pub(crate) cancel_requested: bool,
}

/// Extends the leases of the given running jobs (fenced by their tokens) to `now() + lease`,
/// and records the worker's heartbeat. Rows locked by another transaction are skipped, never
/// waited for (one long transaction must not stall every renewal), and reported `busy`; rows
/// neither renewed nor busy are no longer this worker's. Rows are locked in id order.
pub(crate) async fn heartbeat<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[i64],
    lease_tokens: &[i64],
    lease_secs: f64,
    worker: &WorkerRow<'_>,
) -> Result<Vec<Renewed>, sqlx::Error> {
    sqlx::query_as!(
        Renewed,
        r#"
        WITH alive AS (
            INSERT INTO skiplock.workers
                (id, host, pid, queues, kinds, concurrency, version, alive_until)
            VALUES ($4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => 2 * $3::float8))
            -- A worker the rescuer took for lost that renews again is alive after all.
            ON CONFLICT (id) DO UPDATE
            SET heartbeat_at = now(), kinds = excluded.kinds, alive_until = excluded.alive_until,
                stopped_at = NULL, stop_reason = NULL
        ),
        held AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS l(id, lease_token)
        ),
        locked AS MATERIALIZED (
            SELECT j.id
            FROM skiplock.jobs AS j
            -- Fenced by the token alone, as in `complete_many` (and for the same reason).
            JOIN held ON j.id = held.id AND j.lease_token = held.lease_token
            ORDER BY j.id
            FOR UPDATE OF j SKIP LOCKED
        ),
        renewed AS (
            UPDATE skiplock.jobs AS j
            SET lease_expires_at = now() + make_interval(secs => $3)
            FROM locked
            WHERE j.id = locked.id
            RETURNING j.id, j.cancel_requested_at IS NOT NULL AS cancel_requested
        )
        SELECT held.id AS "id!",
               renewed.id IS NOT NULL AS "renewed!",
               renewed.id IS NULL AND EXISTS (
                   SELECT 1 FROM skiplock.jobs AS j
                   WHERE j.id = held.id AND j.lease_token = held.lease_token
               ) AS "busy!",
               coalesce(renewed.cancel_requested, false) AS "cancel_requested!"
        FROM held LEFT JOIN renewed ON renewed.id = held.id
        "#,
        ids,
        lease_tokens,
        lease_secs,
        worker.id,
        worker.host,
        worker.pid,
        worker.queues,
        worker.kinds,
        worker.concurrency,
        worker.version,
    )
    .fetch_all(executor)
    .await
}

/// A worker's row in `skiplock.workers`.
pub(crate) struct WorkerRow<'a> {
    pub(crate) id: &'a str,
    pub(crate) host: &'a str,
    pub(crate) pid: i32,
    pub(crate) queues: &'a [String],
    /// The kinds it has handlers for.
    pub(crate) kinds: &'a [String],
    /// How many jobs it runs at once in each queue, in the order of `queues`.
    pub(crate) concurrency: &'a [i32],
    /// The skiplock version it runs.
    pub(crate) version: &'a str,
}

/// Jobs of one queue and kind that no worker runs, as `skiplock.unrunnable_jobs` reports them.
pub(crate) struct Unrunnable {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) jobs: i64,
    pub(crate) oldest_run_at: DateTime<Utc>,
}

/// `skiplock.unrunnable_jobs(grace)`: available jobs waiting longer than `grace_secs` whose
/// queue and kind no worker in `skiplock.workers` runs, by queue and kind.
pub(crate) async fn unrunnable<'e>(
    executor: impl PgExecutor<'e>,
    grace_secs: f64,
) -> Result<Vec<Unrunnable>, sqlx::Error> {
    sqlx::query_as!(
        Unrunnable,
        r#"
        SELECT queue AS "queue!", kind AS "kind!", jobs AS "jobs!",
               oldest_run_at AS "oldest_run_at!"
        FROM skiplock.unrunnable_jobs(make_interval(secs => $1))
        "#,
        grace_secs,
    )
    .fetch_all(executor)
    .await
}

/// Marks a worker's row as stopped when it stops cleanly (the rescuer deletes it an hour
/// later, [`WORKER_ROWS_KEPT_SECS`]).
pub(crate) async fn stop_worker<'e>(
    executor: impl PgExecutor<'e>,
    id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE skiplock.workers SET stopped_at = now(), stop_reason = 'shutdown'
        WHERE id = $1 AND stopped_at IS NULL
        "#,
        id
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// How long the row of a stopped or lost worker stays in `skiplock.workers`, in seconds: an
/// hour, so that inspection shows what just went away.
pub(crate) const WORKER_ROWS_KEPT_SECS: f64 = 3600.0;

/// Marks as lost the workers whose last heartbeat is older than `max_age_secs` and returns
/// their ids; deletes the rows of workers stopped or lost more than
/// [`WORKER_ROWS_KEPT_SECS`] ago.
pub(crate) async fn reap_dead_workers<'e>(
    executor: impl PgExecutor<'e>,
    max_age_secs: f64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH forgotten AS (
            DELETE FROM skiplock.workers
            WHERE stopped_at < now() - make_interval(secs => $2)
        )
        UPDATE skiplock.workers SET stopped_at = now(), stop_reason = 'lost'
        WHERE stopped_at IS NULL AND heartbeat_at < now() - make_interval(secs => $1)
        RETURNING id
        "#,
        max_age_secs,
        WORKER_ROWS_KEPT_SECS,
    )
    .fetch_all(executor)
    .await
}

/// What [`rescue_expired`] did to one job.
pub(crate) struct Rescued {
    pub(crate) id: i64,
    pub(crate) state: JobState,
    /// How many expired jobs the statement locked, the same in every row: a duplicate left
    /// waiting is locked but not rescued, so a full batch may rescue fewer than its limit.
    pub(crate) locked: i64,
}

/// Takes back up to `limit` running jobs whose lease has expired (their worker died, hung or
/// lost the database): runnable again after `min(2^(attempt-1) - 1, 600)` seconds — at once
/// (`available`, its queue woken) after a first attempt, `retryable` with a growing delay when
/// a job keeps losing its workers, so that a job that kills its worker cannot crash-loop a
/// fleet — or `failed` when it was the last attempt, or `cancelled` when a cancel was
/// requested. Each gets a `worker_lost` entry in `errors`. Safe with several rescuers: rows are
/// locked and skipped.
///
/// With `expired_since`, only leases that expired at or after it are read (the rescuer's
/// position, see `runtime::rescuer`); without, the lease index is read from its head. While a
/// long transaction pins the xmin horizon, the index keeps an entry for every lease given
/// since, and a read from the head visits the heap for each of them.
pub(crate) async fn rescue_expired<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
    expired_since: Option<DateTime<Utc>>,
) -> Result<Vec<Rescued>, sqlx::Error> {
    sqlx::query_as!(
        Rescued,
        r#"
        WITH locked AS MATERIALIZED (
            SELECT j.id, j.lease_expires_at, n.new_state,
                   CASE WHEN n.new_state = ANY (j.unique_states) THEN j.unique_key END AS takes_key
            FROM skiplock.jobs AS j
            CROSS JOIN LATERAL (
                SELECT CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                            WHEN j.attempt >= j.max_attempts THEN 'failed'
                            WHEN j.attempt <= 1 THEN 'available'
                            ELSE 'retryable' END::skiplock.job_state AS new_state
            ) AS n
            WHERE j.state = 'running' AND j.lease_expires_at < now()
              AND j.lease_expires_at >= coalesce($2::timestamptz, '-infinity')
              -- As in promote_due: a unique job going to a state it is unique in waits while
              -- its duplicate holds the key (one ending failed or cancelled, with that state
              -- among its unique states, waits too: with a finished holder, until the pruner
              -- deletes it).
              AND NOT (j.unique_key IS NOT NULL
                       AND coalesce(n.new_state = ANY (j.unique_states), false)
                       AND EXISTS (SELECT 1 FROM skiplock.jobs AS o
                                   WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                     AND o.state = ANY (o.unique_states)))
            ORDER BY j.lease_expires_at
            LIMIT $1
            FOR UPDATE OF j SKIP LOCKED
        ),
        -- Two duplicates (a key neither held while running) can come back in one batch: only
        -- the first may enter a state it is unique in, or the statement would fail on
        -- jobs_unique_idx, and with it every round after. The others wait for the next round,
        -- which finds the key held.
        expired AS (
            SELECT id, new_state FROM locked WHERE takes_key IS NULL
            UNION ALL
            (SELECT DISTINCT ON (takes_key) id, new_state FROM locked
             WHERE takes_key IS NOT NULL ORDER BY takes_key, lease_expires_at, id)
        ),
        rescued AS (
            UPDATE skiplock.jobs AS j
            SET state = e.new_state,
                finished_at = CASE WHEN e.new_state IN ('failed', 'cancelled') THEN now() END,
                -- The exponent is capped before the power: 2^1024 overflows a float8, and a
                -- job that loses its worker that often (max_attempts is not bounded) would
                -- otherwise fail every round.
                run_at = CASE WHEN e.new_state = 'retryable'
                              THEN now() + make_interval(secs => least(power(2, least(j.attempt - 1, 10)) - 1, 600))
                              -- It was running, so it was at the head of its queue: it keeps
                              -- its place instead of queueing behind the backlog.
                              ELSE j.run_at END,
                lease_expires_at = NULL,
                lease_token = NULL,
                errors = j.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempt,
                    'at', now(),
                    'kind', 'worker_lost',
                    'message', 'the worker stopped renewing its lease (it died, hung or lost the database)',
                    'worker', j.attempted_by[cardinality(j.attempted_by)]))
            FROM expired AS e
            WHERE j.id = e.id
            RETURNING j.id, j.state, j.queue, j.kind
        ),
        woken AS (
            SELECT skiplock.wake(array_agg(queue)) FROM rescued WHERE state = 'available'
        ),
        -- Rescues are rare, and one rescuer runs at a time: counted here, in its statement.
        counted AS (
            INSERT INTO skiplock.job_stats AS s (minute, queue, kind, outcome, jobs)
            SELECT date_trunc('minute', now()), queue, kind, 'lost', count(*)
            FROM rescued GROUP BY queue, kind ORDER BY queue, kind
            ON CONFLICT (minute, queue, kind, outcome) DO UPDATE SET jobs = s.jobs + excluded.jobs
        )
        SELECT id AS "id!", state AS "state!: JobState",
               (SELECT count(*) FROM locked) AS "locked!"
        FROM rescued, woken
        "#,
        limit,
        expired_since,
    )
    .fetch_all(executor)
    .await
}

/// Where a pruner stands in one (queue, kind) of one final state: the largest id it deleted
/// there (0 when none yet), and how many the statement that returned it deleted there (0 in a
/// position passed to one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrunePosition {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) after: i64,
    pub(crate) deleted: i64,
}

/// Deletes up to `limit` jobs in final `state` (`completed`, `failed` or `cancelled`) whose
/// `finished_at` is more than `older_than_secs` before the database's `now()`, lowest ids
/// after each position first, reading the (queue, kind) pairs of `from` after their
/// positions (`from` holds each pair once), or every pair of the state from its start when
/// `from` is empty. Returns the positions after the statement, one per pair it read, with how
/// many it deleted in each; `None` when another statement held advisory lock `lock_key`
/// (another worker's pruner), so that this one read nothing.
///
/// Why the statement looks like this:
/// - Candidates come from `jobs_state_queue_kind_idx` (migration 0014): the distinct (queue,
///   kind) of `state` by a loose index scan (one descent each), then the first `limit` rows of
///   each in id order, of which those past the cutoff are kept. Reading a bounded head instead
///   of "every row past the cutoff" is what keeps a table of millions of young finished rows
///   (nothing to delete) from being scanned every interval: ids follow enqueue order, so old
///   rows are at the head. A row that finished long after it was enqueued (retried for days)
///   can sit at a head while young; the rows behind it in the same window are still deleted,
///   and it goes once it is old enough itself.
/// - Positions: each statement starts every (queue, kind) of `from` just after the largest id
///   the pruner deleted there (`id > after`, an index bound), within a round and across
///   rounds (`runtime::pruner`). From the start, a statement would visit the index entries of
///   every row deleted before it, and while a snapshot pins the xmin horizon (a long
///   `REPEATABLE READ` transaction, a replica's feedback) those entries cannot be marked dead:
///   with positions only within a round, each round's first statement walked all of them
///   (those seen running for over 150 ms took 1.6–2.0 s on average during a 5-minute hold at
///   10,000 jobs/s), and from the start every batch did (up to 0.7 s a statement,
///   back to back). A statement with no positions (the first of a pruner's round that reads
///   from the start, and any for a state in which the pruner knows no pair yet) reads every
///   pair of the state from its start, and is the only one that finds the (queue, kind)
///   pairs; rows passed over below a position (locked, or not yet old enough) wait for such a
///   statement. A pair in which the pruner has deleted nothing is read from its start: during
///   a hold, a queue whose jobs are all young walks its dead entries (rows that left the state
///   otherwise: a failed job retried) once per statement.
/// - The literal `state NOT IN ('available', 'running')` lets the planner use the partial index
///   (a parameter alone cannot prove its predicate).
/// - The candidates are then locked through the primary key with `FOR UPDATE SKIP LOCKED`,
///   re-testing state and age: rows another transaction holds (a `skiplock.retry` of a failed
///   job, say) are passed over, so the pruner never waits for anyone. Others wait for it only
///   on the rows of its batch, for the milliseconds of one statement.
/// - `pg_try_advisory_xact_lock` sits in an uncorrelated subquery, so it runs once per
///   statement, before the scan, as a one-time filter: when another pruner holds the lock, the
///   statement scans nothing and deletes nothing instead of waiting. SKIP LOCKED alone would
///   keep concurrent pruners correct, but several may run (workers built with `listen(false)`
///   each run one, and leadership can change hands mid-round), and a fleet working through a
///   large backlog at once would multiply the delete load (and WAL) for no benefit; with the
///   lock one statement of one pruner runs at a time, and the others come back next interval.
///   The lock is transaction-scoped: released at the end of this autocommit statement. The
///   loose index scan sits behind the same kind of one-time filter (no positions), so a
///   statement with positions does not run it. The lock's outcome is a CTE of its own (one
///   volatile call, evaluated once) that the result is joined to, so that a statement locked
///   out says so instead of looking like one that found nothing: a read from the start that
///   was locked out must not count as done.
/// - The victims travel as `id = ANY (ARRAY(...))` rather than a join against a CTE: an id
///   array is always a primary-key index scan of exactly the rows chosen.
/// - The DELETE repeats the state test. The rows are locked, so it cannot fail today; it keeps
///   the statement from ever deleting a row in another state whatever the subquery becomes.
/// - One statement, its own short transaction: a batch holds its row locks for milliseconds.
pub(crate) async fn delete_finished<'e>(
    executor: impl PgExecutor<'e>,
    state: JobState,
    older_than_secs: f64,
    limit: i64,
    lock_key: i64,
    from: &[PrunePosition],
) -> Result<Option<Vec<PrunePosition>>, sqlx::Error> {
    let queues: Vec<&str> = from.iter().map(|p| p.queue.as_str()).collect();
    let kinds: Vec<&str> = from.iter().map(|p| p.kind.as_str()).collect();
    let after: Vec<i64> = from.iter().map(|p| p.after).collect();
    let rows = sqlx::query!(
        r#"
        WITH RECURSIVE guard AS (
            SELECT pg_try_advisory_xact_lock($4) AS held
        ),
        pairs AS (
            (SELECT j.queue, j.kind FROM skiplock.jobs AS j
             WHERE j.state = $1 AND j.state NOT IN ('available', 'running')
             ORDER BY j.queue, j.kind LIMIT 1)
            UNION ALL
            SELECT n.queue, n.kind FROM pairs AS p
            CROSS JOIN LATERAL (
                SELECT j.queue, j.kind FROM skiplock.jobs AS j
                WHERE j.state = $1 AND j.state NOT IN ('available', 'running')
                  AND (j.queue, j.kind) > (p.queue, p.kind)
                ORDER BY j.queue, j.kind LIMIT 1) AS n
        ),
        starts AS (
            SELECT s.queue, s.kind, s.after
            FROM unnest($5::text[], $6::text[], $7::int8[]) AS s (queue, kind, after)
            WHERE (SELECT g.held FROM guard AS g)
            UNION ALL
            SELECT p.queue, p.kind, 0 FROM pairs AS p
            WHERE cardinality($5::text[]) = 0 AND (SELECT g.held FROM guard AS g)
        ),
        deleted AS (
            DELETE FROM skiplock.jobs
            WHERE id = ANY (ARRAY(
                      SELECT v.id
                      FROM skiplock.jobs AS v
                      WHERE v.id = ANY (ARRAY(
                                SELECT h.id
                                FROM starts AS s
                                CROSS JOIN LATERAL (
                                    SELECT j.id, j.finished_at FROM skiplock.jobs AS j
                                    WHERE j.state = $1 AND j.state NOT IN ('available', 'running')
                                      AND j.queue = s.queue AND j.kind = s.kind
                                      AND j.id > s.after
                                      -- Workflow jobs go with their workflow, by
                                      -- skiplock.prune_workflows: skipped here without a join.
                                      AND j.workflow_id IS NULL
                                    ORDER BY j.id LIMIT $3) AS h
                                WHERE h.finished_at < now() - make_interval(secs => $2)
                                ORDER BY h.id
                                LIMIT $3))
                        AND v.state = $1
                        AND v.finished_at < now() - make_interval(secs => $2)
                      FOR UPDATE SKIP LOCKED))
              AND state = $1
            RETURNING queue, kind, id
        )
        SELECT g.held AS "held!", r.queue AS "queue?", r.kind AS "kind?",
               r.after AS "after?", r.deleted AS "deleted?"
        FROM guard AS g
        LEFT JOIN (
            SELECT s.queue, s.kind, coalesce(max(d.id), s.after) AS after,
                   count(d.id) AS deleted
            FROM starts AS s
            LEFT JOIN deleted AS d ON d.queue = s.queue AND d.kind = s.kind
            GROUP BY s.queue, s.kind, s.after
        ) AS r ON true
        "#,
        state as JobState,
        older_than_secs,
        limit,
        lock_key,
        &queues as &[&str],
        &kinds as &[&str],
        &after,
    )
    .fetch_all(executor)
    .await?;
    if !rows.first().is_some_and(|row| row.held) {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .filter_map(|row| {
                Some(PrunePosition {
                    queue: row.queue?,
                    kind: row.kind?,
                    after: row.after?,
                    deleted: row.deleted?,
                })
            })
            .collect(),
    ))
}

/// `skiplock.cancel(id)`: the job's state after the call, or `None` if there is no such job.
pub(crate) async fn cancel<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<JobState>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT skiplock.cancel($1) AS "state: JobState""#, id)
        .fetch_one(executor)
        .await
}

/// `skiplock.retry(id)`: whether the job was put back.
pub(crate) async fn retry<'e>(executor: impl PgExecutor<'e>, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT skiplock.retry($1) AS "retried!""#, id)
        .fetch_one(executor)
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
        WITH locked AS MATERIALIZED (
            SELECT id, run_at,
                   CASE WHEN 'available' = ANY (unique_states) THEN unique_key END AS takes_key
            FROM skiplock.jobs AS j
            WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
              -- A unique job whose duplicate was enqueued meanwhile waits for it to finish:
              -- promoting it would violate jobs_unique_idx and fail the whole statement.
              AND NOT (j.unique_key IS NOT NULL
                       AND coalesce('available' = ANY (j.unique_states), false)
                       AND EXISTS (SELECT 1 FROM skiplock.jobs AS o
                                   WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                     AND o.state = ANY (o.unique_states)))
            ORDER BY run_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ),
        -- Two duplicates due together (retries of a key not held while retryable): only the
        -- first becomes available, or the statement would fail on jobs_unique_idx, and with it
        -- every round after. The other waits, and the next round finds the key held.
        due AS (
            SELECT id FROM locked WHERE takes_key IS NULL
            UNION ALL
            (SELECT DISTINCT ON (takes_key) id FROM locked
             WHERE takes_key IS NOT NULL ORDER BY takes_key, run_at, id)
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
        -- Epochs rather than `min(run_at) - now()`, which fails (PostgreSQL 15) or is an
        -- infinite interval (16+) for a job at 'infinity'; capped at about 31 years.
        SELECT least(extract(epoch FROM min(run_at)) - extract(epoch FROM now()), 1e9)::float8
               AS "seconds"
        FROM skiplock.jobs
        WHERE state IN ('scheduled', 'retryable')
        "#
    )
    .fetch_one(executor)
    .await
}

/// Reads one job by id, straight into the one public row type.
pub(crate) async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT id, queue, kind, args, state AS "state: JobState", priority, attempt, max_attempts,
               run_at, created_at, attempted_at, finished_at, lease_expires_at, attempted_by,
               errors, result, tags, progress, timeout_secs, cancel_requested_at, unique_key,
               schedule
        FROM skiplock.jobs
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|row| JobRow {
        id: row.id,
        queue: row.queue,
        kind: row.kind,
        args: row.args,
        state: row.state,
        priority: row.priority,
        attempt: row.attempt,
        max_attempts: row.max_attempts,
        run_at: row.run_at,
        created_at: row.created_at,
        attempted_at: row.attempted_at,
        finished_at: row.finished_at,
        lease_expires_at: row.lease_expires_at,
        attempted_by: row.attempted_by,
        errors: AttemptError::from_column(&row.errors),
        result: row.result,
        tags: row.tags,
        progress: row.progress,
        timeout: row
            .timeout_secs
            .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok()),
        cancel_requested_at: row.cancel_requested_at,
        unique_key: row.unique_key,
        schedule: row.schedule,
    }))
}

/// Of the given running attempts (job id and lease token, element by element), the ids of those
/// whose job has a cancel request (`cancel_requested_at` set) and still runs under that token.
/// Reads only; locks nothing.
pub(crate) async fn cancel_requested<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[i64],
    lease_tokens: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT j.id
        FROM unnest($1::bigint[], $2::bigint[]) AS held(id, lease_token)
        JOIN skiplock.jobs AS j ON j.id = held.id AND j.lease_token = held.lease_token
        WHERE j.cancel_requested_at IS NOT NULL
        "#,
        ids,
        lease_tokens,
    )
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use sqlx::{Connection, PgConnection};

    use super::*;
    use skiplock_testing::TestDatabase;

    /// A claim of the default queue by worker `w`, every kind read from its head.
    async fn claim_heads(
        conn: &mut PgConnection,
        kinds: &[String],
        limit: i64,
        max_bytes: i64,
    ) -> Vec<Claimed> {
        let after = vec![None; kinds.len()];
        claim(
            &mut *conn,
            "default",
            limit,
            "w",
            60.0,
            Scans {
                kinds,
                after: &after,
            },
            max_bytes,
        )
        .await
        .expect("claim")
    }

    /// Every node of a JSON plan, depth first.
    fn nodes(plan: &Value) -> Vec<&Value> {
        let mut all = vec![plan];
        if let Some(children) = plan["Plans"].as_array() {
            for child in children {
                all.extend(nodes(child));
            }
        }
        all
    }

    /// The plan (with actual row counts and buffers) of the statement `conn` prepared whose text
    /// contains `marker`, executed with `args` (literals) and rolled back.
    async fn explain_prepared(conn: &mut PgConnection, marker: &str, args: &str) -> Value {
        let statement: String = sqlx::query_scalar(
            "SELECT name FROM pg_prepared_statements WHERE strpos(statement, $1) > 0",
        )
        .bind(marker)
        .fetch_one(&mut *conn)
        .await
        .expect("the prepared statement");
        let mut tx = conn.begin().await.expect("begin");
        let explain =
            format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {statement}({args})");
        // A statement name and literals of this test's own.
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
            .fetch_one(&mut *tx)
            .await
            .expect("explain");
        tx.rollback().await.expect("rollback");
        plan[0]["Plan"].clone()
    }

    /// The plan of the claim as `conn` prepared it (see [`explain_prepared`]). `starts` are the
    /// position arrays (`$8`, `$9`, `$10`), as literals.
    async fn explain_claim(conn: &mut PgConnection, kinds: &str, starts: [&str; 3]) -> Value {
        let [priorities, run_ats, ids] = starts;
        let args = format!(
            "'default', 10, 'w', 60, '{kinds}', 1000000, 100, '{priorities}', '{run_ats}', '{ids}'"
        );
        explain_prepared(conn, "WITH heads AS MATERIALIZED", &args).await
    }

    /// The node of `plan` that reads the claim index.
    fn claim_index_scan(plan: &Value) -> &Value {
        nodes(plan)
            .into_iter()
            .find(|node| node["Index Name"] == "jobs_claim_kind_idx")
            .unwrap_or_else(|| panic!("no scan of the claim index: {plan:#}"))
    }

    /// Runs `fill` (and `ANALYZE`) on `conn`, then opens a `REPEATABLE READ` transaction on
    /// another connection of `db` that holds its snapshot, and so the xmin horizon, until it
    /// ends.
    async fn fill_then_hold(
        db: &TestDatabase,
        conn: &mut PgConnection,
        fill: &'static str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "{fill}; ANALYZE skiplock.jobs;"
        )))
        .execute(&mut *conn)
        .await
        .expect("fill");
        let mut holder = db.pool().begin().await.expect("holder");
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1")
            .execute(&mut *holder)
            .await
            .expect("snapshot");
        holder
    }

    /// While a snapshot pins the xmin horizon, the index entries of claimed jobs cannot be marked
    /// dead: a claim from the head visits each of their rows, one from a position starts after
    /// them (the index bound, not a filter), whichever plan the connection uses.
    #[tokio::test]
    async fn a_claim_from_a_position_skips_the_jobs_claimed_before_it() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        let holder = fill_then_hold(
            &db,
            &mut conn,
            "INSERT INTO skiplock.jobs (kind) SELECT 'k' FROM generate_series(1, 5000)",
        )
        .await;
        let kinds = ["k".to_owned()];
        let claimed = claim_heads(&mut conn, &kinds, 4000, i64::MAX).await;
        assert_eq!(claimed.len(), 4000);
        let last = claimed
            .iter()
            .filter_map(Position::of)
            .max()
            .expect("positions");
        assert_eq!(
            last.id,
            claimed.iter().map(|job| job.id).max().expect("ids")
        );

        let head = ["{-32768}", "{NULL}", "{-9223372036854775808}"];
        let run_at = format!("{{\"{}\"}}", last.run_at.to_rfc3339());
        let next = format!("{{{}}}", last.id + 1);
        let after = ["{0}", run_at.as_str(), next.as_str()];
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .expect("set");
            let from_head = explain_claim(&mut conn, "{k}", head).await;
            let from_after = explain_claim(&mut conn, "{k}", after).await;
            let (head_scan, after_scan) =
                (claim_index_scan(&from_head), claim_index_scan(&from_after));
            assert_eq!(
                head_scan["Actual Rows"].as_f64(),
                Some(10.0),
                "{from_head:#}"
            );
            assert_eq!(
                after_scan["Actual Rows"].as_f64(),
                Some(10.0),
                "{from_after:#}"
            );
            let cond = after_scan["Index Cond"].as_str().unwrap_or_default();
            assert!(
                cond.contains("ROW(priority, run_at, id) >= ROW("),
                "{mode}: {cond}"
            );
            let hits = |scan: &Value| {
                scan["Shared Hit Blocks"].as_f64().unwrap_or(0.0)
                    + scan["Shared Read Blocks"].as_f64().unwrap_or(0.0)
            };
            // A page of the heap for every few dozen of the 4,000 claimed rows (a scan keeps the
            // page pinned from one row to the next on it) against the index's descent and one page.
            assert!(hits(head_scan) >= 40.0, "{mode}: {from_head:#}");
            assert!(hits(after_scan) <= 10.0, "{mode}: {from_after:#}");
        }
        // Through `claim` itself: the jobs just after the position, in order. All 5,000 share
        // one `run_at` (one statement), so the id breaks the tie.
        let after = [Some(last)];
        let scans = Scans {
            kinds: &kinds,
            after: &after,
        };
        let next = claim(&mut *conn, "default", 3, "w", 60.0, scans, i64::MAX)
            .await
            .expect("claim");
        let mut ids: Vec<i64> = next.iter().map(|job| job.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [last.id + 1, last.id + 2, last.id + 3]);
        holder.rollback().await.expect("release");
    }

    /// While a snapshot pins the xmin horizon, a pruning statement given positions starts after
    /// the rows deleted before (whose index entries cannot be marked dead) instead of visiting
    /// each of them again, and skips the search for (queue, kind) pairs.
    #[tokio::test]
    async fn a_prune_from_a_position_skips_the_jobs_deleted_before_it() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        let holder = fill_then_hold(
            &db,
            &mut conn,
            "INSERT INTO skiplock.jobs (kind, state, attempt, finished_at)
             SELECT 'k', 'completed', 1, now() - interval '1 hour' FROM generate_series(1, 5000)",
        )
        .await;
        let completed = JobState::Completed;
        let first = delete_finished(&mut *conn, completed, 60.0, 4000, 1, &[])
            .await
            .expect("prune")
            .expect("not locked out");
        let [position] = first.as_slice() else {
            panic!("one (queue, kind): {first:?}");
        };
        assert_eq!(
            (position.deleted, position.queue.as_str()),
            (4000, "default")
        );
        let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM skiplock.jobs ORDER BY id LIMIT 2")
            .fetch_all(&mut *conn)
            .await
            .expect("left");
        assert_eq!(left, [position.after + 1, position.after + 2]);

        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .expect("set");
            let mut scans = Vec::new();
            for (queues, kinds, after) in [
                ("{}", "{}", "{}".to_owned()),
                ("{default}", "{k}", format!("{{{}}}", position.after)),
            ] {
                let args = format!("'completed', 60, 10, 1, '{queues}', '{kinds}', '{after}'");
                scans.push(explain_prepared(&mut conn, "RETURNING queue, kind, id", &args).await);
            }
            let [from_start, from_position] = scans.as_slice() else {
                unreachable!("two plans");
            };
            // The rows to delete, read in id order after the position: the scan bound by it.
            let scan = |plan: &Value| -> Value {
                nodes(plan)
                    .into_iter()
                    .find(|node| {
                        node["Index Cond"]
                            .as_str()
                            .is_some_and(|cond| cond.contains(".after"))
                    })
                    .cloned()
                    .unwrap_or_else(|| panic!("{mode}: no scan bound by a position: {plan:#}"))
            };
            let hits = |scan: &Value| {
                scan["Shared Hit Blocks"].as_f64().unwrap_or(0.0)
                    + scan["Shared Read Blocks"].as_f64().unwrap_or(0.0)
            };
            let (start_scan, position_scan) = (scan(from_start), scan(from_position));
            assert_eq!(start_scan["Actual Rows"].as_f64(), Some(10.0), "{mode}");
            assert_eq!(position_scan["Actual Rows"].as_f64(), Some(10.0), "{mode}");
            // A heap page for every few dozen of the 4,000 deleted rows against a descent and
            // a page.
            assert!(hits(&start_scan) >= 40.0, "{mode}: {from_start:#}");
            assert!(hits(&position_scan) <= 10.0, "{mode}: {from_position:#}");
            // With positions, the loose index scan for (queue, kind) pairs does not run.
            let union = |plan: &Value| -> f64 {
                nodes(plan)
                    .into_iter()
                    .find(|node| node["Node Type"] == "Recursive Union")
                    .and_then(|node| node["Actual Loops"].as_f64())
                    .unwrap_or_else(|| panic!("{mode}: no search for pairs: {plan:#}"))
            };
            assert_eq!(union(from_start), 1.0, "{mode}");
            assert_eq!(union(from_position), 0.0, "{mode}");
        }
        // Through `delete_finished` itself: the next rows after the position.
        let next = delete_finished(&mut *conn, completed, 60.0, 3, 1, &first)
            .await
            .expect("prune");
        assert_eq!(
            next.as_deref(),
            Some(
                &[PrunePosition {
                    after: position.after + 3,
                    deleted: 3,
                    ..position.clone()
                }][..]
            )
        );
        holder.rollback().await.expect("release");
    }

    /// With many jobs of other kinds at the head of the queue, the claim reads its own kinds'
    /// rows from the claim index and nothing else: no sequential scan, no row filtered out.
    #[tokio::test]
    async fn claims_read_only_their_own_kinds() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (kind, run_at)
             SELECT 'foreign_' || (i % 3), now() - interval '1 day' FROM generate_series(1, 30000) AS i;
             INSERT INTO skiplock.jobs (kind) SELECT k FROM generate_series(1, 20) AS i,
                 unnest(ARRAY['mine', 'also_mine']) AS k;
             ANALYZE skiplock.jobs;",
        )
        .execute(&mut *conn)
        .await
        .expect("fill");
        let kinds = ["mine".to_owned(), "also_mine".to_owned()];
        // Prepares the statement on this connection (and claims two).
        let claimed = claim_heads(&mut conn, &kinds, 2, i64::MAX).await;
        assert_eq!(claimed.len(), 2);
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .expect("set");
            let head = [
                "{-32768,-32768}",
                "{NULL,NULL}",
                "{-9223372036854775808,-9223372036854775808}",
            ];
            let plan = explain_claim(&mut conn, "{mine,also_mine}", head).await;
            let mut read_claim_index = false;
            for node in nodes(&plan) {
                let kind = node["Node Type"].as_str().unwrap_or_default();
                // The one exception: the gate on `skiplock.throttles` (0020), an uncorrelated
                // probe evaluated once per claim, of a table of a few rows (none here).
                if node["Relation Name"] == "throttles" {
                    assert_eq!(node["Actual Loops"].as_f64(), Some(1.0), "{mode}: {plan:#}");
                    continue;
                }
                assert_ne!(kind, "Seq Scan", "{mode}: {plan:#}");
                assert!(
                    node["Rows Removed by Filter"].as_f64().unwrap_or(0.0) == 0.0,
                    "{mode}: rows filtered out: {plan:#}"
                );
                if node["Index Name"] == "jobs_claim_kind_idx" {
                    read_claim_index = true;
                    let cond = node["Index Cond"].as_str().unwrap_or_default();
                    assert!(cond.contains("kind"), "{mode}: {cond}");
                    // Each kind's head: at most `limit` rows (plus those skipped as locked).
                    assert!(
                        node["Actual Rows"].as_f64().unwrap_or(0.0) <= 10.0,
                        "{plan:#}"
                    );
                }
            }
            assert!(read_claim_index, "{mode}: {plan:#}");
        }
    }

    /// Sizes of the stored args of the available jobs, in claim order.
    async fn sizes(conn: &mut PgConnection) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT pg_column_size(args)::bigint FROM skiplock.jobs
             WHERE state = 'available' ORDER BY priority, run_at, id",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("sizes")
    }

    #[tokio::test]
    async fn a_claim_takes_no_more_bytes_than_its_bound_but_always_one_job() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        // Five jobs of about 100 kB of arguments each (random hex: barely compressible).
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (kind, args)
             SELECT 'big', jsonb_build_object('blob',
                        (SELECT string_agg(md5(random()::text || i || j), '')
                         FROM generate_series(1, 3200) AS j))
             FROM generate_series(1, 5) AS i",
        )
        .execute(&mut *conn)
        .await
        .expect("fill");
        let kinds = ["big".to_owned()];
        let size = sizes(&mut conn).await;
        assert!(size[0] > 50_000, "{size:?}");

        // Room for two and a half: two.
        let bound = size[0] + size[1] + size[2] / 2;
        let claimed = claim_heads(&mut conn, &kinds, 10, bound).await;
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|job| job.cut_by_bytes));
        // Room for none: still one.
        let claimed = claim_heads(&mut conn, &kinds, 10, 1).await;
        assert_eq!(claimed.len(), 1);
        // No bound: the rest.
        let claimed = claim_heads(&mut conn, &kinds, 10, i64::MAX).await;
        assert_eq!(claimed.len(), 2);
        assert!(!claimed[0].cut_by_bytes);
    }

    /// Tags travel from a bulk insert to the claim in order, whether a job has none, some, or
    /// (written by hand) NULL elements in two dimensions.
    #[tokio::test]
    async fn tags_reach_the_claim_as_inserted() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        let tagged = |tags: &[&str]| (!tags.is_empty()).then(|| Value::from(tags.to_vec()));
        let columns = InsertColumns {
            kinds: vec!["t".to_owned(); 3],
            args: vec![Value::Null; 3],
            queues: vec!["default".to_owned(); 3],
            priorities: vec![0; 3],
            max_attempts: vec![1; 3],
            run_ats: vec![None; 3],
            delay_secs: vec![None; 3],
            timeout_secs: vec![None; 3],
            tags: vec![tagged(&[]), tagged(&["b", "a"]), tagged(&["c"])],
            metadata: Vec::new(),
        };
        let ids = insert_many(&mut *conn, &columns).await.expect("insert");
        let stored: Vec<Vec<String>> =
            sqlx::query_scalar("SELECT tags FROM skiplock.jobs WHERE id = ANY ($1) ORDER BY id")
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await
                .expect("stored");
        assert_eq!(stored, [vec![], vec!["b", "a"], vec!["c"]]);
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (kind, args, tags) VALUES ('t', '{}', '{{x,NULL},{y,z}}')",
        )
        .execute(&mut *conn)
        .await
        .expect("foreign row");

        let claimed = claim_heads(&mut conn, &["t".to_owned()], 10, i64::MAX).await;
        let mut tags: Vec<(i64, Vec<String>)> =
            claimed.into_iter().map(|job| (job.id, job.tags)).collect();
        tags.sort();
        let tags: Vec<Vec<String>> = tags.into_iter().map(|(_, tags)| tags).collect();
        assert_eq!(
            tags,
            [vec![], vec!["b", "a"], vec!["c"], vec!["x", "y", "z"]]
        );
    }

    /// A job at `-infinity` (a row from before 0008's CHECK, or imported with its old
    /// `created_at`) is claimed with the others, its pickup lag 0: subtracting it from `now()`
    /// failed on PostgreSQL 15, and with it every claim of its queue.
    #[tokio::test]
    async fn a_job_at_minus_infinity_does_not_break_the_claim() {
        let db = TestDatabase::new().await.expect("database");
        let mut conn = db.pool().acquire().await.expect("connection");
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (kind, args, created_at, run_at)
             VALUES ('t', '{}', '2020-01-01', '-infinity'), ('t', '{}', now(), now())",
        )
        .execute(&mut *conn)
        .await
        .expect("insert");
        let mut claimed = claim_heads(&mut conn, &["t".to_owned()], 10, i64::MAX).await;
        claimed.sort_by_key(|job| job.id);
        let lags: Vec<(Option<DateTime<Utc>>, f64)> = claimed
            .iter()
            .map(|job| (job.run_at, job.pickup_lag_secs))
            .collect();
        assert_eq!(lags.len(), 2, "{lags:?}");
        assert_eq!(lags[0], (None, 0.0));
        assert!(lags[1].0.is_some() && lags[1].1 >= 0.0, "{lags:?}");
    }

    /// A batch of outcomes wakes the queues it made a job runnable in (a retry due at once) and
    /// the limited queues it freed a slot of; nobody else. (Once each cannot be observed:
    /// PostgreSQL delivers identical notifications of one transaction once.)
    #[tokio::test]
    async fn outcomes_wake_the_queues_they_made_runnable_or_freed_a_limit_of() {
        let db = TestDatabase::new().await.expect("database");
        let pool = db.pool();
        sqlx::raw_sql(
            "SELECT skiplock.set_limit(queue => 'limited', max_running => 5);
             INSERT INTO skiplock.jobs (kind, queue)
             SELECT 'k', q FROM unnest(ARRAY['retried', 'retried', 'limited', 'plain']) AS q;
             UPDATE skiplock.jobs SET state = 'running', attempt = 1,
                 lease_token = nextval('skiplock.lease_token_seq'),
                 lease_expires_at = now() + interval '1 minute';",
        )
        .execute(pool)
        .await
        .expect("fill");
        let running: Vec<(i64, i64, String)> =
            sqlx::query_as("SELECT id, lease_token, queue FROM skiplock.jobs ORDER BY id")
                .fetch_all(pool)
                .await
                .expect("running");
        let mut outcomes = Outcomes::default();
        for (id, lease_token, queue) in &running {
            let retried = queue == "retried";
            outcomes.ids.push(*id);
            outcomes.lease_tokens.push(*lease_token);
            outcomes.states.push(if retried {
                JobState::Available
            } else {
                JobState::Completed
            });
            outcomes.give_back.push(false);
            outcomes.results.push(None);
            outcomes
                .error_kinds
                .push(retried.then(|| "handler".to_owned()));
            outcomes
                .error_messages
                .push(retried.then(|| "again".to_owned()));
            outcomes.retry_in_secs.push(0.0);
        }
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .expect("listener");
        listener
            .listen(crate::db::WAKE_CHANNEL)
            .await
            .expect("listen");

        let recorded = complete_many(pool, &outcomes).await.expect("complete");
        let changed: usize = recorded.iter().map(|r| r.ids.len()).sum();
        assert_eq!(changed, 4);

        // Up to 5 s for the two expected, then 300 ms more for any other.
        let mut payloads = Vec::new();
        let mut wait = std::time::Duration::from_secs(5);
        while let Ok(Ok(notification)) = tokio::time::timeout(wait, listener.recv()).await {
            payloads.push(notification.payload().to_owned());
            if payloads.len() >= 2 {
                wait = std::time::Duration::from_millis(300);
            }
        }
        payloads.sort();
        assert_eq!(payloads, ["limited", "retried"]);
    }
}
