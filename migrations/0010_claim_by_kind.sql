-- 0010: claims keyed by kind (the index is 0007's), and jobs no worker can run made visible.
-- docs/schema.md documents the column and the function.

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

-- As every function since 0008 (docs/security.md): nobody but the owner and the roles given
-- access with skiplock.grant_access() may call it.
REVOKE EXECUTE ON FUNCTION skiplock.unrunnable_jobs(interval) FROM PUBLIC;
