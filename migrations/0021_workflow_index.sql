-- 0021: the jobs of a workflow, found by its id: what `skiplock::inspect::workflow`, the
-- dashboard's workflow page, `skiplock.cancel_workflow` and the pruner's test that no job of a
-- workflow is left read. Partial: jobs outside workflows (workflow_id NULL) have no entry, so
-- the hot path writes nothing more; the column never changes, so updates stay HOT as before.
--
-- A concurrent-index migration (src/migrate.rs): `migrate` runs this one statement as CREATE
-- INDEX CONCURRENTLY, outside any transaction, so writes go on while it is built.
CREATE INDEX IF NOT EXISTS jobs_workflow_idx ON skiplock.jobs (workflow_id, id)
    WHERE workflow_id IS NOT NULL;
