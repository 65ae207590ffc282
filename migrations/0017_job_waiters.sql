-- 0017: waiting on jobs. A process that waits on (or watches) jobs registers them here; the
-- statements that record an attempt's outcome or a job's progress send one `skiplock_job`
-- notification (payload: the job's id) for each registered job they change, and only for
-- those: a job nobody waits on costs its completion a probe of this (usually empty) table.
-- Waiters also poll, so a lost notification only delays them. docs/schema.md documents it.

CREATE TABLE skiplock.job_waiters (
    job_id     bigint      NOT NULL,
    -- The waiting process's id (skiplock::results::Results::waiter_id).
    waiter     text        NOT NULL,
    -- Registrations are renewed while the waiter waits; the pruner deletes expired ones (a
    -- waiter that died).
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, waiter),
    CONSTRAINT job_waiters_waiter_length CHECK (char_length(waiter) BETWEEN 1 AND 128)
);

COMMENT ON TABLE skiplock.job_waiters IS
    'Jobs a process waits on: their outcome and progress writes send a skiplock_job notification.';

-- As 0013's, plus: enqueuers read what waiting on their jobs needs (state, progress, result,
-- errors), and enqueuers and observers register as waiters.
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
                       'state, timeout_secs, metadata), SELECT (id, queue, state, kind, attempt, '
                       'max_attempts, progress, result, errors, finished_at) '
                       'ON skiplock.jobs TO %s', grantee);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON skiplock.job_waiters TO %s', grantee);
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
        EXECUTE format('GRANT INSERT, UPDATE, DELETE ON skiplock.job_waiters TO %s', grantee);
    END IF;
END
$$;

-- Roles granted enqueuer or observer access before this migration get what it adds. Enqueuers
-- are the roles with column-level INSERT on jobs.kind; observers those with table-level SELECT
-- on jobs and no INSERT on it (workers got the new table through default privileges).
DO $$
DECLARE
    granted record;
BEGIN
    FOR granted IN
        SELECT DISTINCT a.grantee
        FROM pg_attribute AS att CROSS JOIN LATERAL aclexplode(att.attacl) AS a
        WHERE att.attrelid = 'skiplock.jobs'::regclass AND att.attname = 'kind'
          AND a.privilege_type = 'INSERT' AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT SELECT (kind, attempt, max_attempts, progress, result, errors, '
                       'finished_at) ON skiplock.jobs TO %s', granted.grantee::regrole);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON skiplock.job_waiters TO %s',
                       granted.grantee::regrole);
    END LOOP;
    FOR granted IN
        SELECT DISTINCT a.grantee
        FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        WHERE c.oid = 'skiplock.jobs'::regclass AND a.privilege_type = 'SELECT'
          AND a.grantee <> 0 AND a.grantee <> c.relowner
          AND NOT has_table_privilege(a.grantee, c.oid, 'INSERT')
          -- Observers were granted every table; a role an operator gave SELECT on jobs alone
          -- is not one.
          AND has_table_privilege(a.grantee, 'skiplock.migrations', 'SELECT')
          AND has_table_privilege(a.grantee, 'skiplock.workers', 'SELECT')
    LOOP
        EXECUTE format('GRANT INSERT, UPDATE, DELETE ON skiplock.job_waiters TO %s',
                       granted.grantee::regrole);
    END LOOP;
END
$$;
