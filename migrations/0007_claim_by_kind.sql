-- 0007: claims keyed by kind, and jobs no worker can run made visible.
-- docs/schema.md documents the index, the column and the function.

-- The claim index, keyed by kind. A worker claims only the kinds it has handlers for; with
-- 0001's index (queue, priority, run_at, id) the `kind = ANY (...)` test was a filter, so jobs
-- of kinds no worker of the queue runs piled up at its head and every claim walked past all of
-- them (200,000 such rows made each claim a 36-58 ms scan). With kind in the key, the claim
-- reads each of its kinds' heads directly (see `claim` in src/db/job.rs) and never sees another
-- kind's rows. Partial on `available`, like 0001's: finished, scheduled and running rows are
-- not in it.
--
-- IF NOT EXISTS: on a large table, building the index here blocks writes to skiplock.jobs
-- until it is built (migrations run in one transaction, where CONCURRENTLY is not allowed).
-- To avoid that, build it first with
--   CREATE INDEX CONCURRENTLY jobs_claim_kind_idx ON skiplock.jobs (queue, kind, priority, run_at, id)
--       WHERE state = 'available';
-- and this migration then finds it and only records itself.
CREATE INDEX IF NOT EXISTS jobs_claim_kind_idx ON skiplock.jobs (queue, kind, priority, run_at, id)
    WHERE state = 'available';

-- 0001's claim index has no reader left (the claim and unrunnable_jobs() below use the new one;
-- a per-queue scan of available rows uses the new index's leading column), and every enqueue
-- and claim paid for maintaining it.
DROP INDEX IF EXISTS skiplock.jobs_claim_idx;

-- The kinds each worker has handlers for, written by its heartbeat. NULL for workers of older
-- versions, which do not say: they are assumed to run every kind of their queues.
ALTER TABLE skiplock.workers ADD COLUMN IF NOT EXISTS kinds text[];

-- Jobs nobody can run: for each queue and kind with `available` jobs waiting longer than
-- `grace` that no worker in skiplock.workers runs (the queue is not among its queues, or the
-- kind not among its kinds), how many there are and the oldest run_at.
--
-- Index-bound: the (queue, kind) pairs holding available rows are found by a loose index scan
-- of jobs_claim_kind_idx (one index descent per distinct pair, however many rows each has),
-- and rows are counted only for the pairs nobody runs.
CREATE FUNCTION skiplock.unrunnable_jobs(grace interval DEFAULT interval '1 minute')
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
            WHERE p.queue = ANY (w.queues) AND (w.kinds IS NULL OR p.kind = ANY (w.kinds)))
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

COMMENT ON FUNCTION skiplock.unrunnable_jobs(interval) IS
    'Available jobs waiting longer than grace whose queue and kind no worker runs: see docs/schema.md.';
