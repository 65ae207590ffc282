-- 0015: the pruner reads 0014's jobs_state_queue_kind_idx; 0004's jobs_finished_idx has no
-- reader left, and every completion paid for an entry in it. docs/schema.md says how the
-- pruner uses the new index.
--
-- Upgrade note: a worker of an earlier version still running against this schema prunes with
-- its own query, which has no index to read now; its statement scans the finished rows of one
-- state at a time (one pruning statement runs at a time across the fleet). Finish the rolling
-- deploy of the new version soon after migrating.
DROP INDEX IF EXISTS skiplock.jobs_finished_idx;
