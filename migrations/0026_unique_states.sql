-- 0026: skiplock.enqueue refuses unique states that claims could not keep.
-- docs/schema.md ("Unique jobs") says which.
--
-- A unique job is unique while its state is one of its unique_states. A job unique while
-- `running` but not while `available` does not hold its key while it waits, so duplicates can
-- wait side by side; a claim that takes two of them at once, or one while another runs, makes
-- them `running` together, and jobs_unique_idx fails the claim, and every claim after it of
-- that queue and kind. The Rust API refuses such states (and an empty set) when it enqueues;
-- skiplock.enqueue, which any enqueuer may call, did not. It is 0013's function with that
-- check first (which also refuses NULL, and NULL elements: a NULL set made a "unique" job
-- that never was). (Rows written straight into the table need rights only the owner and workers
-- have.)

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
    timeout_secs   double precision     DEFAULT NULL,
    traceparent    text                 DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    key text := coalesce(
        enqueue.unique_key,
        CASE WHEN enqueue.unique_by_args
             THEN skiplock.unique_key_of(enqueue.kind, enqueue.args) END);
    meta jsonb := CASE WHEN enqueue.traceparent IS NOT NULL
                       THEN jsonb_build_object('traceparent', enqueue.traceparent) END;
    new_id bigint;
BEGIN
    -- New in 0026 (see above).
    -- NULL elements first: with one, `'available' = ANY (...)` is NULL and would let
    -- '{running,NULL}' through.
    IF key IS NOT NULL AND (enqueue.unique_states IS NULL
                            OR cardinality(enqueue.unique_states) = 0
                            OR array_position(enqueue.unique_states, NULL) IS NOT NULL
                            OR ('running' = ANY (enqueue.unique_states)
                                AND NOT 'available' = ANY (enqueue.unique_states))) THEN
        RAISE EXCEPTION 'skiplock.enqueue: unique_states must be a non-empty set of states without NULL, holding available when it holds running'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1..10 LOOP
        INSERT INTO skiplock.jobs AS j (kind, args, queue, run_at, priority, max_attempts, tags,
                                        state, unique_key, unique_states, timeout_secs, metadata)
        VALUES (enqueue.kind, enqueue.args, enqueue.queue, enqueue.run_at, enqueue.priority,
                enqueue.max_attempts, enqueue.tags,
                skiplock.initial_state(enqueue.run_at),
                key, CASE WHEN key IS NOT NULL THEN enqueue.unique_states END, enqueue.timeout_secs,
                meta)
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

