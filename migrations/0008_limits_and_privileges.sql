-- 0008: size limits and a sane run_at at enqueue; the SQL API runs with least privilege.
-- docs/schema.md documents the limits, docs/security.md the roles.

-- ## Limits
--
-- CHECK constraints, not triggers: a trigger cost a quarter of single-enqueue throughput
-- (0006). Every constraint is NOT VALID, so adding it never scans the table, and each spares
-- the rows that existed when it was (re)made (`created_at` before that instant): PostgreSQL
-- checks constraints on every UPDATE as well, and an old row over a new limit would otherwise
-- fail the claim of its whole batch, or its cancellation. The limit checks are also skipped
-- once a job has been claimed (`attempt > 0`), so claims, heartbeats and completions never pay
-- for them. Inserting with `created_at` or `attempt` set needs rights the enqueuer role does
-- not have (docs/security.md).

-- Whether every tag is at most `max_chars` characters long. Evaluated by CHECK constraints as
-- the inserting role, so it is executable by everyone (it reads nothing); names are qualified
-- so the caller's search_path cannot change what it computes. PL/pgSQL rather than SQL: a
-- non-inlinable SQL function starts an executor per call, which cost 12 µs per enqueued row.
-- The constraint calls it only when the tags together are longer than one tag may be.
CREATE FUNCTION skiplock.tags_fit(tags text[], max_chars integer) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    tag text;
BEGIN
    FOREACH tag IN ARRAY tags LOOP
        IF pg_catalog.char_length(tag) OPERATOR(pg_catalog.>) max_chars THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

-- Replaces the three limit constraints with new bounds; rows that exist now are spared (see
-- above). Takes a brief ACCESS EXCLUSIVE lock on skiplock.jobs and scans nothing. Only the
-- table's owner may call it. The defaults are the limits 0008 installs; keep them in step with
-- `skiplock::Limits::DEFAULT`.
CREATE FUNCTION skiplock.set_limits(
    args_bytes integer DEFAULT 1048576,
    tags       integer DEFAULT 100,
    tag_chars  integer DEFAULT 200
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF args_bytes IS NULL OR args_bytes < 2 OR tags IS NULL OR tags < 0
       OR tag_chars IS NULL OR tag_chars < 1 THEN
        RAISE EXCEPTION 'skiplock.set_limits: args_bytes must be at least 2, tags at least 0 and tag_chars at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format(
        'ALTER TABLE skiplock.jobs
             DROP CONSTRAINT IF EXISTS jobs_args_max_bytes,
             DROP CONSTRAINT IF EXISTS jobs_tags_max_count,
             DROP CONSTRAINT IF EXISTS jobs_tag_max_chars,
             ADD CONSTRAINT jobs_args_max_bytes CHECK (
                 attempt > 0 OR created_at < %1$L::timestamptz OR octet_length(args::text) <= %2$s
             ) NOT VALID,
             ADD CONSTRAINT jobs_tags_max_count CHECK (
                 attempt > 0 OR created_at < %1$L::timestamptz OR cardinality(tags) <= %3$s
             ) NOT VALID,
             ADD CONSTRAINT jobs_tag_max_chars CHECK (
                 attempt > 0 OR created_at < %1$L::timestamptz
                 OR char_length(array_to_string(tags, '''')) <= %4$s
                 OR skiplock.tags_fit(tags, %4$s)
             ) NOT VALID',
        now(), args_bytes, tags, tag_chars);
END
$$;

COMMENT ON FUNCTION skiplock.set_limits(integer, integer, integer) IS
    'Sets the largest args (bytes of args::text), tag count and tag length (characters) an enqueue may store.';

SELECT skiplock.set_limits();

-- run_at must be a real instant between 1970 and the end of 9999: 'infinity' once made the
-- promoter compute an infinite wait. Checked on every insert and update (cheap); rows that
-- exist now are spared, and the waiting ones among them that can never run are pulled back to
-- the end of 9999 (found through jobs_due_idx, so this reads only those rows).
UPDATE skiplock.jobs SET run_at = '9999-12-31 23:59:59+00'
WHERE state IN ('scheduled', 'retryable') AND run_at > '9999-12-31 23:59:59+00';

DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE skiplock.jobs ADD CONSTRAINT jobs_run_at_range CHECK (
             created_at < %L::timestamptz
             OR (run_at >= ''1970-01-01 00:00:00+00'' AND run_at < ''10000-01-01 00:00:00+00'')
         ) NOT VALID',
        now());
END
$$;

-- ## Least privilege
--
-- The functions an application calls run as their owner (SECURITY DEFINER) with a pinned
-- search_path, so a role needs EXECUTE on them and nothing on the table. Their bodies already
-- qualify every skiplock object. Nobody but the owner may execute anything until granted.
ALTER FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer, text[], text,
                                boolean, skiplock.job_state[], double precision)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION skiplock.cancel(bigint) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION skiplock.retry(bigint) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION skiplock.wake(text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION skiplock.unique_key_of(text, jsonb) SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA skiplock FROM PUBLIC;
GRANT EXECUTE ON FUNCTION skiplock.tags_fit(text[], integer) TO PUBLIC;

-- Grants one of the documented access levels to `grantee`:
-- - 'enqueuer': call enqueue, cancel, retry, wake and unique_key_of; insert jobs through
--   skiplock's Rust enqueue (INSERT on the columns an enqueue sets, SELECT on id, queue and
--   state for its RETURNING). It cannot update or delete jobs, read their args, or insert a
--   job that is running or finished (those need lease_token or finished_at).
-- - 'worker': everything a worker process does (claim, heartbeat, complete, rescue, promote,
--   prune, schedule): reads and writes every skiplock table but the migrations table, which
--   it may read, and executes every function. Tables, sequences and functions a later
--   migration adds are covered too (default privileges of the schema's owner).
-- - 'observer': read every skiplock table, including later ones.
-- Run by the schema's owner (or a superuser). Idempotent. See docs/security.md.
CREATE FUNCTION skiplock.grant_access(grantee regrole, access text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner regrole := (SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'skiplock');
    api text := 'FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer, integer, '
                'text[], text, boolean, skiplock.job_state[], double precision), '
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
                       'state, timeout_secs), SELECT (id, queue, state) ON skiplock.jobs TO %s',
                       grantee);
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

REVOKE EXECUTE ON FUNCTION skiplock.set_limits(integer, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION skiplock.grant_access(regrole, text) FROM PUBLIC;

COMMENT ON FUNCTION skiplock.grant_access(regrole, text) IS
    'Grants the enqueuer, worker or observer access level to a role: see docs/security.md.';
