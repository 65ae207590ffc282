-- 0004: retention of finished jobs. Every worker's pruner deletes completed, failed and
-- cancelled jobs once their finished_at is older than the worker's retention for that state.
-- docs/schema.md documents it.

-- The pruner's index: finished rows by state and age. The pruner asks, per state, for the
-- oldest rows finished before a cutoff (state = $1 AND finished_at < cutoff ORDER BY
-- finished_at LIMIT n): with state leading, that is one contiguous range of this index read in
-- order, so other states' rows and young rows are never visited, however many the table keeps.
-- Partial: finished_at is set exactly in the final states (jobs_finished_at_iff_finished), so
-- waiting and running rows are not in it and cost it nothing when they change.
--
-- IF NOT EXISTS: on a large table, building the index here blocks writes to skiplock.jobs
-- until it is built (migrations run in one transaction, where CONCURRENTLY is not allowed).
-- To avoid that, build it first with
--   CREATE INDEX CONCURRENTLY jobs_finished_idx ON skiplock.jobs (state, finished_at)
--       WHERE finished_at IS NOT NULL;
-- and this migration then finds it and only records itself.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON skiplock.jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
