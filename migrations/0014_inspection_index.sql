-- 0014: the inspection index. docs/schema.md documents it.

-- How `skiplock::inspect` lists and counts jobs on a table of millions without a scan. A list
-- (newest or oldest first, any states, queues and kinds) walks the distinct (state, queue,
-- kind) triples of the states asked for (a loose index scan: one descent per triple, however
-- many rows each holds), reads the head of each chosen triple in id order, and merges them:
-- 50 jobs of 11,000,000 take about as long as 50 of 50. Counting a queue's waiting jobs reads
-- only its entries. Without it, `state = 'scheduled' ORDER BY id DESC` walked the primary key
-- past every finished row (1.6 s on 10,000,000 finished jobs).
--
-- The cost: one more entry per row version. Claims and completions change `state`, so those
-- updates were never HOT and already wrote an entry in every index; docs/performance.md has
-- the drain figures with and without it.
--
-- A concurrent-index migration (src/migrate.rs): `migrate` runs this one statement as CREATE
-- INDEX CONCURRENTLY, outside any transaction, so writes go on while it is built.
CREATE INDEX IF NOT EXISTS jobs_state_queue_kind_idx ON skiplock.jobs (state, queue, kind, id);
