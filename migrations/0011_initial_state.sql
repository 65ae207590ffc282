-- 0011: one place decides whether a new job waits for its run_at (`scheduled`) or may run now
-- (`available`): skiplock.initial_state(). docs/schema.md documents it.

-- A plain SQL function, so the planner inlines it into each INSERT (no call per row): for that
-- it must not be SECURITY DEFINER, must have no SET clause, and whoever inserts needs EXECUTE
-- on it, so it is executable by everyone, like tags_fit (it reads nothing). Operators and
-- functions are qualified: the caller's search_path cannot change what it computes.
CREATE FUNCTION skiplock.initial_state(run_at timestamptz) RETURNS skiplock.job_state
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN run_at OPERATOR(pg_catalog.>) pg_catalog.now()
                THEN 'scheduled' ELSE 'available' END::skiplock.job_state
$$;

GRANT EXECUTE ON FUNCTION skiplock.initial_state(timestamptz) TO PUBLIC;

COMMENT ON FUNCTION skiplock.initial_state(timestamptz) IS
    'The state a new job starts in: scheduled when run_at is in the future, else available.';

-- skiplock.enqueue() decides through it too. CREATE OR REPLACE resets the attributes 0008 gave
-- the function (its privileges stay), so they are given again here.
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
                skiplock.initial_state(enqueue.run_at),
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
