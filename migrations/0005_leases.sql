-- 0005: leases are the fence, by constraint; the rescuer's index is keyed on the lease alone.
--
-- Every write a worker makes to a job it claimed (completion, renewal, progress) must match
-- the lease token of its attempt. The token and the lease expiry are set by the claim and
-- cleared by every way out of `running`; this CHECK makes that a guarantee rather than a habit
-- of the code, so a matching token alone means "still running, same attempt".
--
-- Why it matters for speed: batch statements join an array of (id, token) pairs against the
-- table. With an extra `state = 'running'` term, stale statistics (no running rows at the last
-- ANALYZE, the usual case right after a burst of claims) made the planner expect one running
-- row and compare every row of the batch with every running row: 2,000 × 3,000 comparisons,
-- seconds per completion. Fenced by the token alone, rows are looked up by primary key.
--
-- NOT VALID: rows already in the table were written by code that keeps the invariant, and
-- validating would scan the whole table while this migration's transaction holds its locks.
-- New and updated rows are checked. Run `ALTER TABLE skiplock.jobs VALIDATE CONSTRAINT
-- jobs_lease_iff_running` later if you want the old rows checked too (it does not block writes).
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_lease_iff_running
    CHECK ((state = 'running') = (lease_token IS NOT NULL)
           AND (state = 'running') = (lease_expires_at IS NOT NULL))
    NOT VALID;

-- 0002's index was partial on `state = 'running'`, which invited the same misestimate;
-- `lease_expires_at IS NOT NULL` holds for exactly the same rows (above), and the rescuer's
-- `lease_expires_at < now()` implies it. IF NOT EXISTS: on a large table, build it first with
--   CREATE INDEX CONCURRENTLY jobs_lease_expiry_idx ON skiplock.jobs (lease_expires_at)
--       WHERE lease_expires_at IS NOT NULL;
-- (building it here blocks writes to skiplock.jobs until it is built).
CREATE INDEX IF NOT EXISTS jobs_lease_expiry_idx ON skiplock.jobs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;

DROP INDEX IF EXISTS skiplock.jobs_lease_idx;
