-- 0002: leases with fencing tokens, rescue, timeouts, cancellation, unique jobs, progress,
-- and the skiplock.workers table. docs/schema.md documents all of it.

-- Every claim takes a fresh token; every later write on the job (heartbeat, progress,
-- completion) must present it. A worker that lost its job (rescued, cancelled, re-claimed)
-- presents a stale token and changes nothing.
CREATE SEQUENCE skiplock.lease_token_seq AS bigint;

ALTER TABLE skiplock.jobs
    ADD COLUMN lease_token bigint,
    ADD COLUMN timeout_secs double precision
        CONSTRAINT jobs_timeout_positive CHECK (timeout_secs > 0),
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN unique_key text,
    ADD COLUMN unique_states skiplock.job_state[],
    ADD COLUMN progress jsonb;

-- Unique jobs: at most one job per key among the rows whose state is one of that job's
-- unique_states. Enforced by the index itself, so concurrent enqueuers cannot both insert.
CREATE UNIQUE INDEX jobs_unique_idx ON skiplock.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);

-- The rescuer's index: running jobs by lease expiry.
CREATE INDEX jobs_lease_idx ON skiplock.jobs (lease_expires_at) WHERE state = 'running';

-- Who is alive: one row per running worker, refreshed by its heartbeat, deleted when it stops
-- cleanly or, after it died, by any rescuer once its heartbeat is old.
CREATE TABLE skiplock.workers (
    id           text        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    queues       text[]      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE skiplock.workers IS 'skiplock worker processes and their last heartbeat.';

-- Cancel a job from any language. Waiting jobs are cancelled at once; a running job is marked,
-- and its worker (told through NOTIFY skiplock_cancel, or by its next heartbeat) stops it and
-- records it as cancelled. Returns the job's state after the call, or NULL if there is no such
-- job. Finished jobs are left as they are.
CREATE FUNCTION skiplock.cancel(job_id bigint) RETURNS skiplock.job_state
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    current skiplock.job_state;
BEGIN
    SELECT state INTO current FROM skiplock.jobs WHERE id = job_id FOR UPDATE;
    IF current IN ('scheduled', 'available', 'retryable') THEN
        UPDATE skiplock.jobs
        SET state = 'cancelled', finished_at = now(), cancel_requested_at = now()
        WHERE id = job_id;
        RETURN 'cancelled';
    ELSIF current = 'running' THEN
        UPDATE skiplock.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
        WHERE id = job_id;
        PERFORM pg_notify('skiplock_cancel', job_id::text);
    END IF;
    RETURN current;
END
$$;

-- Put a failed or cancelled job back in its queue, with one more attempt if it had used them
-- all. Returns true if the job was put back.
CREATE FUNCTION skiplock.retry(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    job_queue text;
BEGIN
    UPDATE skiplock.jobs
    SET state = 'available', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
        lease_token = NULL, max_attempts = greatest(max_attempts, attempt + 1)
    WHERE id = job_id AND state IN ('failed', 'cancelled')
    RETURNING queue INTO job_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM skiplock.wake(ARRAY[job_queue]);
    RETURN true;
END
$$;

-- The unique key derived from a job's kind and arguments: jsonb prints its keys in a canonical
-- order, so equal arguments always give equal keys.
CREATE FUNCTION skiplock.unique_key_of(kind text, args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT kind || ':' || encode(sha256(convert_to(args::text, 'UTF8')), 'hex')
$$;

-- enqueue() gains unique jobs: with unique_key (or unique_by_args, which derives the key from
-- kind and args), an enqueue that finds a job with the same key in one of unique_states
-- returns that job's id instead of inserting a second one.
DROP FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer, text[]);

CREATE FUNCTION skiplock.enqueue(
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
