-- 0027: skiplock.retry does not put back a unique job whose key a duplicate holds.
-- docs/schema.md describes it.
--
-- A failed or cancelled unique job put back to `available` while a duplicate enqueued
-- meanwhile held its key failed on jobs_unique_idx: the caller got an error instead of
-- `false`, and a bulk retry (the CLI's, the dashboard's), which calls this function for each
-- job of a batch in one statement, failed on the whole batch, every time it was run. It now
-- returns false for such a job, as for a job in any other state it cannot put back; the
-- duplicate does the work. Each call sees the ones before it in the same statement, so of two
-- duplicates retried together the second finds the first holding the key. It is 0022's
-- function with that condition added.

CREATE OR REPLACE FUNCTION skiplock.retry(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    flow bigint;
    job_queue text;
    blocked boolean;
BEGIN
    PERFORM skiplock.reset_workflow_settings();
    SELECT j.workflow_id INTO flow FROM skiplock.jobs AS j WHERE j.id = retry.job_id;
    IF flow IS NULL THEN
        -- New in 0027: not while a duplicate holds its unique key (see above).
        UPDATE skiplock.jobs AS j
        SET state = 'available', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
            lease_token = NULL, max_attempts = greatest(j.max_attempts, j.attempt + 1)
        WHERE j.id = retry.job_id AND j.state IN ('failed', 'cancelled')
          AND NOT (j.unique_key IS NOT NULL
                   AND coalesce('available' = ANY (j.unique_states), false)
                   AND EXISTS (SELECT FROM skiplock.jobs AS o
                               WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                 AND o.state = ANY (o.unique_states)))
        RETURNING j.queue INTO job_queue;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        PERFORM skiplock.wake(ARRAY[job_queue]);
        RETURN true;
    END IF;
    -- The workflow's row first, as settling takes it.
    PERFORM FROM skiplock.workflows WHERE id = flow FOR UPDATE;
    PERFORM FROM skiplock.jobs WHERE id = retry.job_id AND state IN ('failed', 'cancelled') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT w.on_failure = 'propagate'
           AND EXISTS (SELECT FROM skiplock.job_dependencies AS d
                       LEFT JOIN skiplock.jobs AS j ON j.id = d.depends_on
                       WHERE d.job_id = retry.job_id
                         AND (j.id IS NULL OR j.state IN ('failed', 'cancelled')))
    INTO blocked
    FROM skiplock.workflows AS w WHERE w.id = flow;
    IF coalesce(blocked, false) THEN
        RETURN false;
    END IF;
    PERFORM set_config('skiplock.workflow_settling', 'on', true);
    UPDATE skiplock.jobs
    SET state = 'pending', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
        lease_token = NULL, max_attempts = greatest(max_attempts, attempt + 1)
    WHERE id = retry.job_id;
    PERFORM set_config('skiplock.workflow_settling', '', true);
    INSERT INTO skiplock.pending_jobs (job_id, workflow_id, waiting_for)
    VALUES (retry.job_id, flow, 0)
    ON CONFLICT ON CONSTRAINT pending_jobs_pkey DO NOTHING;
    PERFORM skiplock.reconcile_workflows(ARRAY[flow]);
    RETURN true;
END
$$;
