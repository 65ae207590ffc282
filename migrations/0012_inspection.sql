-- 0012: what the inspection API (skiplock::inspect) reads: more about each worker, workers
-- kept for an hour after they stop or die, and per-minute outcome counts.
-- docs/schema.md documents the columns and the table.

-- What each worker runs with, and how long its last heartbeat vouches for it.
ALTER TABLE skiplock.workers
    -- How many jobs it runs at once in each queue, in the order of `queues`.
    ADD COLUMN IF NOT EXISTS concurrency integer[],
    ADD COLUMN IF NOT EXISTS version text,
    -- The worker counts as alive until then (its heartbeat writes now() + 2 × its lease).
    ADD COLUMN IF NOT EXISTS alive_until timestamptz,
    -- Set when it stopped: 'shutdown' (it stopped cleanly) or 'lost' (the rescuer found its
    -- heartbeat too old). Such rows stay an hour, so `skiplock workers list` shows what just
    -- went away, and nobody counts them as running anything.
    ADD COLUMN IF NOT EXISTS stopped_at timestamptz,
    ADD COLUMN IF NOT EXISTS stop_reason text;

ALTER TABLE skiplock.workers
    ADD CONSTRAINT workers_stop_reason CHECK (stop_reason IN ('shutdown', 'lost')),
    ADD CONSTRAINT workers_stopped_iff_reason CHECK ((stopped_at IS NULL) = (stop_reason IS NULL));

-- As 0010's, but a stopped or lost worker runs nothing.
CREATE OR REPLACE FUNCTION skiplock.unrunnable_jobs(grace interval DEFAULT interval '1 minute')
RETURNS TABLE (queue text, kind text, jobs bigint, oldest_run_at timestamptz)
LANGUAGE sql STABLE
AS $$
    WITH RECURSIVE pairs AS (
        (SELECT j.queue, j.kind FROM skiplock.jobs AS j
         WHERE j.state = 'available'
         ORDER BY j.queue, j.kind
         LIMIT 1)
        UNION ALL
        SELECT next.queue, next.kind
        FROM pairs AS p
        CROSS JOIN LATERAL (
            SELECT j.queue, j.kind FROM skiplock.jobs AS j
            WHERE j.state = 'available' AND (j.queue, j.kind) > (p.queue, p.kind)
            ORDER BY j.queue, j.kind
            LIMIT 1
        ) AS next
    ),
    orphaned AS MATERIALIZED (
        SELECT p.queue, p.kind FROM pairs AS p
        WHERE NOT EXISTS (
            SELECT FROM skiplock.workers AS w
            WHERE w.stopped_at IS NULL
              AND p.queue = ANY (w.queues) AND (w.kinds IS NULL OR p.kind = ANY (w.kinds)))
    )
    SELECT o.queue, o.kind, waiting.jobs, waiting.oldest_run_at
    FROM orphaned AS o
    CROSS JOIN LATERAL (
        SELECT count(*) AS jobs, min(j.run_at) AS oldest_run_at
        FROM skiplock.jobs AS j
        WHERE j.state = 'available' AND j.queue = o.queue AND j.kind = o.kind
          AND j.run_at < now() - grace
    ) AS waiting
    WHERE waiting.jobs > 0
    ORDER BY o.queue, o.kind
$$;

REVOKE EXECUTE ON FUNCTION skiplock.unrunnable_jobs(interval) FROM PUBLIC;

-- How attempts ended, per minute, queue and kind: what "completed in the last hour" and the
-- throughput charts read, however long finished jobs are kept. Each worker adds its counts
-- every heartbeat (10 s by default) in a statement of its own, never inside a completion (a
-- row shared by every worker would serialize their completions on its lock); the pruner
-- deletes minutes older than 8 days. Counts of a worker that dies are lost since its last
-- heartbeat: these are statistics, the jobs table is the record.
CREATE TABLE IF NOT EXISTS skiplock.job_stats (
    minute  timestamptz NOT NULL,
    queue   text        NOT NULL,
    kind    text        NOT NULL,
    -- completed, failed, cancelled (while running), retried (back to retryable or, with no
    -- backoff, available), snoozed, lost (rescued from a worker that stopped renewing its lease)
    outcome text        NOT NULL,
    jobs    bigint      NOT NULL CHECK (jobs >= 0),
    PRIMARY KEY (minute, queue, kind, outcome)
);

COMMENT ON TABLE skiplock.job_stats IS
    'Attempt outcomes per minute, queue and kind, written by workers: see docs/schema.md.';

-- Joint statistics of state and queue: `skiplock::inspect` reads the planner's estimate for a
-- queue's count in a state past what it counts exactly (10,000 waiting jobs, 1,000 finished
-- ones), and the product of the two columns' frequencies is far off when one queue holds most
-- of the failures. Costs nothing but a little more work for ANALYZE.
CREATE STATISTICS IF NOT EXISTS skiplock.jobs_state_queue_stats (mcv) ON state, queue
    FROM skiplock.jobs;
