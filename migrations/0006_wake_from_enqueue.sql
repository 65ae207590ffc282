-- 0006: wake-ups come from the statements that enqueue, not from a trigger.
--
-- 0001 sent them from a statement-level AFTER INSERT trigger with a transition table. Measured
-- with pgbench (one client, durable commits), that trigger cost a quarter of a single enqueue's
-- throughput (3,890 -> 2,880 inserts/s), while a pg_notify in the inserting statement itself
-- costs 4%: the price was the trigger machinery (the transition table and the PL/pgSQL call),
-- not NOTIFY. skiplock's own inserts now notify in the same statement, and skiplock.enqueue()
-- notifies itself. A plain INSERT INTO skiplock.jobs from elsewhere no longer wakes anybody at
-- once: workers find it at their next poll (1 s by default), or call skiplock.wake(queues) in
-- the same transaction. Single-row paths call pg_notify directly: skiplock.wake(), an SQL
-- function over an array, cost another fifth of a single enqueue.
DROP TRIGGER jobs_notify_inserted ON skiplock.jobs;
DROP FUNCTION skiplock.jobs_notify_inserted();

CREATE OR REPLACE FUNCTION skiplock.enqueue(
    kind           text,
    args           jsonb,
    queue          text                 DEFAULT 'default',
    run_at         timestamptz          DEFAULT now(),
    priority       integer              DEFAULT 0,
    max_attempts   integer              DEFAULT 25,
    tags           text[]               DEFAULT '{}',
    unique_key     text                 DEFAULT NULL,
    unique_by_args boolean              DEFAULT false,
    unique_states  skiplock.job_state[] DEFAULT '{scheduled,available,running,retryable}',
    timeout_secs   double precision     DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    key text := coalesce(
        enqueue.unique_key,
        CASE WHEN enqueue.unique_by_args
             THEN skiplock.unique_key_of(enqueue.kind, enqueue.args) END);
    new_id bigint;
BEGIN
    FOR i IN 1..10 LOOP
        INSERT INTO skiplock.jobs AS j (kind, args, queue, run_at, priority, max_attempts, tags,
                                        state, unique_key, unique_states, timeout_secs)
        VALUES (enqueue.kind, enqueue.args, enqueue.queue, enqueue.run_at, enqueue.priority,
                enqueue.max_attempts, enqueue.tags,
                CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'available' END::skiplock.job_state,
                key, CASE WHEN key IS NOT NULL THEN enqueue.unique_states END, enqueue.timeout_secs)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
        DO NOTHING
        RETURNING j.id INTO new_id;
        IF new_id IS NOT NULL THEN
            IF enqueue.run_at <= now() THEN
                PERFORM pg_notify('skiplock_wake', enqueue.queue);
            END IF;
            RETURN new_id;
        END IF;
        SELECT j.id INTO new_id FROM skiplock.jobs AS j
        WHERE j.unique_key = key AND j.state = ANY (j.unique_states);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        -- The conflicting job finished between the two statements: try again.
    END LOOP;
    RAISE EXCEPTION 'skiplock.enqueue: unique key % kept changing state', key;
END
$$;
