-- 0013: job metadata, for the trace context a job carries from the code that enqueued it to the
-- attempts that run it (a W3C `traceparent`). docs/schema.md documents the column, its
-- constraint and enqueue's new argument.

-- Null unless the job was enqueued with trace context: adding it rewrites nothing.
ALTER TABLE skiplock.jobs ADD COLUMN IF NOT EXISTS metadata jsonb;

-- Whatever writes the row (Rust, SQL, another client), metadata is a small JSON object, and a
-- `traceparent` in it is a well-formed W3C trace context (version-00 form: 55 characters,
-- lowercase hex, neither id all zeros, version not ff). Garbage is refused at the enqueue
-- instead of travelling to every worker and tracing backend.
--
-- A function rather than an inline expression: PostgreSQL prepares every CHECK expression of a
-- table for each INSERT statement, and the inline form of these tests cost a fifth of
-- single-enqueue throughput. The constraint is the bare call: STRICT, so NULL metadata (the
-- CHECK passes on NULL) never calls it, and the smallest expression to prepare (`metadata IS
-- NULL OR ...` cost 4%, the bare call 1%, within noise). PL/pgSQL, so it is never inlined back;
-- search_path pinned, so the caller's cannot change what it computes. Executable by everyone,
-- like tags_fit: a CHECK runs it as whoever inserts (PostgreSQL checks EXECUTE when it prepares
-- the constraint, whether or not it calls it), and it reads nothing.
CREATE FUNCTION skiplock.metadata_valid(metadata jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    traceparent text;
BEGIN
    IF jsonb_typeof(metadata) <> 'object' OR octet_length(metadata::text) > 1024 THEN
        RETURN false;
    END IF;
    IF NOT (metadata ? 'traceparent') THEN
        RETURN true;
    END IF;
    IF jsonb_typeof(metadata -> 'traceparent') <> 'string' THEN
        RETURN false;
    END IF;
    traceparent := metadata ->> 'traceparent';
    RETURN traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       AND left(traceparent, 2) <> 'ff'
       AND substr(traceparent, 4, 32) <> repeat('0', 32)
       AND substr(traceparent, 37, 16) <> repeat('0', 16);
END
$$;

GRANT EXECUTE ON FUNCTION skiplock.metadata_valid(jsonb) TO PUBLIC;

COMMENT ON FUNCTION skiplock.metadata_valid(jsonb) IS
    'Whether a job''s metadata is a small object with a valid W3C traceparent, if any.';

-- NOT VALID: the column is new and null in every row, so there is nothing to check, and
-- validating would scan the table under this migration's lock.
ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_metadata_valid
    CHECK (skiplock.metadata_valid(metadata)) NOT VALID;

-- skiplock.enqueue() takes the trace context as a new last argument, `traceparent`. A new
-- argument is a new function: it is created next to the old one, given the old one's grants
-- (whoever could call enqueue still can), and the old one is dropped, all in this transaction.
-- As 0011's otherwise.
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

REVOKE EXECUTE ON FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer,
    text[], text, boolean, skiplock.job_state[], double precision, text) FROM PUBLIC;

COMMENT ON FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer, text[],
    text, boolean, skiplock.job_state[], double precision, text) IS
    'Inserts one job and returns its id. Runs in the caller''s transaction: rolled back, no job.';

DO $$
DECLARE
    old_enqueue CONSTANT regprocedure := 'skiplock.enqueue(text, jsonb, text, timestamptz, '
        'integer, integer, text[], text, boolean, skiplock.job_state[], double precision)';
    granted record;
BEGIN
    -- Every EXECUTE the old function had (the owner's aside), with its grant option.
    FOR granted IN
        SELECT a.grantee, a.is_grantable
        FROM pg_proc AS p CROSS JOIN LATERAL aclexplode(p.proacl) AS a
        WHERE p.oid = old_enqueue AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, '
            'integer, text[], text, boolean, skiplock.job_state[], double precision, text) TO %s%s',
            CASE WHEN granted.grantee = 0 THEN 'PUBLIC' ELSE granted.grantee::regrole::text END,
            CASE WHEN granted.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    -- Roles that insert jobs directly (enqueuers: skiplock's Rust enqueue) were granted INSERT
    -- column by column; they may now set metadata too.
    FOR granted IN
        SELECT DISTINCT a.grantee
        FROM pg_attribute AS att CROSS JOIN LATERAL aclexplode(att.attacl) AS a
        WHERE att.attrelid = 'skiplock.jobs'::regclass AND att.attname = 'kind'
          AND a.privilege_type = 'INSERT' AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT INSERT (metadata) ON skiplock.jobs TO %s', granted.grantee::regrole);
    END LOOP;
    EXECUTE format('DROP FUNCTION %s', old_enqueue);
END
$$;

-- As 0008's, with the new enqueue and the enqueuer's INSERT on metadata.
CREATE OR REPLACE FUNCTION skiplock.grant_access(grantee regrole, access text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner regrole := (SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'skiplock');
    api text := 'FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer, '
                'text[], text, boolean, skiplock.job_state[], double precision, text), '
                'skiplock.cancel(bigint), skiplock.retry(bigint), skiplock.wake(text[]), '
                'skiplock.unique_key_of(text, jsonb)';
BEGIN
    IF access NOT IN ('enqueuer', 'worker', 'observer') OR access IS NULL THEN
        RAISE EXCEPTION 'skiplock.grant_access: access must be enqueuer, worker or observer, not %', access
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA skiplock TO %s', grantee);
    IF access = 'enqueuer' THEN
        EXECUTE format('GRANT EXECUTE ON %s TO %s', api, grantee);
        EXECUTE format('GRANT INSERT (kind, args, queue, priority, max_attempts, run_at, tags, '
                       'state, timeout_secs, metadata), SELECT (id, queue, state) '
                       'ON skiplock.jobs TO %s', grantee);
    ELSIF access = 'worker' THEN
        -- Every function, present and future: the worker is trusted with the queue, and a
        -- function a later migration adds for workers must not stop them. The owner's
        -- functions (set_limits, grant_access) run with the caller's rights and fail for it.
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA skiplock TO %s', grantee);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA skiplock '
                       'GRANT EXECUTE ON FUNCTIONS TO %s', owner, grantee);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA skiplock TO %s',
                       grantee);
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON skiplock.migrations FROM %s', grantee);
        EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA skiplock TO %s', grantee);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA skiplock '
                       'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %s', owner, grantee);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA skiplock '
                       'GRANT USAGE, SELECT ON SEQUENCES TO %s', owner, grantee);
    ELSE
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA skiplock TO %s', grantee);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA skiplock '
                       'GRANT SELECT ON TABLES TO %s', owner, grantee);
    END IF;
END
$$;
