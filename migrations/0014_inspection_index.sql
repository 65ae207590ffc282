-- 0014: the inspection index. docs/schema.md documents it.

-- How `skiplock::inspect` lists and counts scheduled, retrying and finished jobs on a table of
-- millions without a scan, and (since 0015) how the pruner finds finished jobs. A list walks
-- the distinct (state, queue, kind) triples of the states asked for (a loose index scan: one
-- descent per triple, however many rows each holds), reads the head of each chosen triple in
-- id order, and merges them: 50 jobs of 11,000,000 take about as long as 50 of 50. Without it,
-- `state = 'scheduled' ORDER BY id DESC` walked the primary key past every finished row (1.6 s
-- on 10,000,000 finished jobs).
--
-- Partial: `available` and `running` rows are left out. Every job passes through both on the
-- hot path (insert, claim), and those versions of a row would each have cost an index entry:
-- with them, a drain wrote 18% more WAL per job (1,379 bytes against 1,167). Available jobs
-- are found through the claim index and running ones through the lease index. A job gets one
-- entry here, when it finishes, which is what 0004's jobs_finished_idx cost (0015 drops that
-- one: the pruner reads this index instead), so a drain writes no more than before.
--
-- A concurrent-index migration (src/migrate.rs): `migrate` runs this one statement as CREATE
-- INDEX CONCURRENTLY, outside any transaction, so writes go on while it is built.
CREATE INDEX IF NOT EXISTS jobs_state_queue_kind_idx ON skiplock.jobs (state, queue, kind, id)
    WHERE state NOT IN ('available', 'running');
