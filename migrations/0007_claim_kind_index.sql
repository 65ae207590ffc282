-- 0007: the claim index keyed by kind (0010 uses it and drops 0001's). docs/schema.md
-- documents it.

-- The claim index, keyed by kind. A worker claims only the kinds it has handlers for; with
-- 0001's index (queue, priority, run_at, id) the `kind = ANY (...)` test was a filter, so jobs
-- of kinds no worker of the queue runs piled up at its head and every claim walked past all of
-- them (200,000 such rows made each claim a 36-58 ms scan). With kind in the key, the claim
-- reads each of its kinds' heads directly (see `claim` in src/db/job.rs) and never sees another
-- kind's rows. Partial on `available`, like 0001's: finished, scheduled and running rows are
-- not in it.
--
-- A concurrent-index migration (src/migrate.rs): `migrate` runs this one statement as CREATE
-- INDEX CONCURRENTLY, outside any transaction, so writes go on while it is built.
CREATE INDEX IF NOT EXISTS jobs_claim_kind_idx ON skiplock.jobs (queue, kind, priority, run_at, id)
    WHERE state = 'available';
