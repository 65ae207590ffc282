-- 0018: a worker protocol in SQL, so a worker in any language can share queues with Rust
-- workers: claim, heartbeat, complete, fail, snooze, set_progress. Fenced by the same lease
-- tokens as the Rust worker: every call after the claim names the job and its token, and
-- changes nothing once the job is no longer that attempt's (rescued, cancelled, re-claimed).
-- docs/schema.md documents each function; docs/sql-worker.md shows a worker in Python.
--
-- Each is one short statement run as the caller (a role with `worker` access): no function
-- here is SECURITY DEFINER, and none is executable by PUBLIC.

-- Claims up to max_jobs available jobs of the given kinds from the given queues (in that
-- order; paused queues are skipped), for worker_id, with a lease of lease_secs seconds. Like
-- the Rust claim (src/db/job.rs): each kind's head read from jobs_claim_kind_idx with FOR
-- UPDATE SKIP LOCKED, so concurrent claimers never take the same job and never wait.
CREATE FUNCTION skiplock.claim(
    worker_id text,
    queues text[],
    kinds text[],
    max_jobs integer DEFAULT 1,
    lease_secs double precision DEFAULT 30
) RETURNS TABLE (id bigint, kind text, queue text, args jsonb, attempt integer,
                 max_attempts integer, lease_token bigint, lease_expires_at timestamptz,
                 timeout_secs double precision, progress jsonb)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    q text;
    wanted integer;
    taken integer := 0;
BEGIN
    IF worker_id IS NULL OR char_length(worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'skiplock.claim: worker_id must be 1 to 128 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kinds IS NULL OR cardinality(kinds) = 0 THEN
        RAISE EXCEPTION 'skiplock.claim: kinds must name the kinds this worker runs'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_jobs IS NULL OR max_jobs NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'skiplock.claim: max_jobs must be 1 to 10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease_secs IS NULL OR NOT lease_secs BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'skiplock.claim: lease_secs must be 1 to 86400'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH q IN ARRAY coalesce(queues, '{}') LOOP
        wanted := max_jobs - taken;
        EXIT WHEN wanted <= 0;
        CONTINUE WHEN EXISTS (SELECT FROM skiplock.queues AS p
                              WHERE p.name = q AND p.paused_at IS NOT NULL);
        RETURN QUERY
        WITH heads AS MATERIALIZED (
            SELECT head.id, head.priority, head.run_at
            FROM unnest(kinds) AS k(kind)
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at
                FROM skiplock.jobs AS j
                WHERE j.state = 'available' AND j.queue = q AND j.kind = k.kind
                ORDER BY j.priority, j.run_at, j.id
                LIMIT wanted
                FOR UPDATE SKIP LOCKED
            ) AS head
            ORDER BY head.priority, head.run_at, head.id
            LIMIT wanted
        )
        UPDATE skiplock.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            attempted_at = now(),
            attempted_by = (array_append(j.attempted_by, worker_id))
                               [greatest(cardinality(j.attempted_by) + 2 - 100, 1):],
            lease_expires_at = now() + make_interval(secs => lease_secs),
            lease_token = nextval('skiplock.lease_token_seq')
        FROM heads
        WHERE j.id = heads.id
        RETURNING j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.lease_token,
                  j.lease_expires_at, j.timeout_secs, j.progress;
        GET DIAGNOSTICS wanted = ROW_COUNT;
        taken := taken + wanted;
    END LOOP;
    -- The worker's row, as a Rust worker's heartbeat writes it: inspection, explain and the
    -- dashboard see it, and the rescuer marks it lost when it stops calling.
    INSERT INTO skiplock.workers AS w (id, host, pid, queues, kinds, version, alive_until, heartbeat_at)
    VALUES (worker_id, coalesce(host(inet_client_addr()), 'local'), pg_backend_pid(),
            coalesce(queues, '{}'), kinds, 'sql', now() + make_interval(secs => 2 * lease_secs), now())
    ON CONFLICT (id) DO UPDATE
    SET queues = excluded.queues, kinds = excluded.kinds, alive_until = excluded.alive_until,
        heartbeat_at = now(), stopped_at = NULL, stop_reason = NULL;
END
$$;

COMMENT ON FUNCTION skiplock.claim(text, text[], text[], integer, double precision) IS
    'Claims up to max_jobs jobs for a worker in any language; later calls present each job''s lease_token.';

-- Extends the leases of the given running jobs (each with its token) by lease_secs; returns,
-- per job still this attempt's, whether a cancel was requested. Jobs missing from the result
-- are no longer the caller's: stop working on them.
CREATE FUNCTION skiplock.heartbeat(
    worker_id text,
    job_ids bigint[],
    lease_tokens bigint[],
    lease_secs double precision DEFAULT 30
) RETURNS TABLE (id bigint, cancel_requested boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    -- The lease is held to 1 s .. 1 day, as claim's: a lease of years would disable rescue.
    WITH lease AS (
        SELECT least(greatest(coalesce(heartbeat.lease_secs, 30), 1), 86400) AS secs
    ),
    alive AS (
        UPDATE skiplock.workers AS w
        SET heartbeat_at = now(), alive_until = now() + make_interval(secs => 2 * lease.secs),
            stopped_at = NULL, stop_reason = NULL
        FROM lease
        WHERE w.id = heartbeat.worker_id
    )
    UPDATE skiplock.jobs AS j
    SET lease_expires_at = now() + make_interval(secs => lease.secs)
    FROM unnest(heartbeat.job_ids, heartbeat.lease_tokens) AS t(id, token), lease
    WHERE j.id = t.id AND j.lease_token = t.token
    RETURNING j.id, j.cancel_requested_at IS NOT NULL
$$;

-- One outcome, fenced; the `waited` step notifies waiters (0017) as the Rust completer does.
-- Counted in skiplock.job_stats in the same statement (one row per minute, queue, kind and
-- outcome: fine for a worker's own rate, a contention point for thousands a second).
CREATE FUNCTION skiplock.complete(job_id bigint, lease_token bigint, result jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH done AS (
        UPDATE skiplock.jobs AS j
        SET state = 'completed', result = complete.result, finished_at = now(),
            lease_expires_at = NULL, lease_token = NULL
        WHERE j.id = complete.job_id AND j.lease_token = complete.lease_token
        RETURNING j.id, j.queue, j.kind
    ),
    counted AS (
        INSERT INTO skiplock.job_stats AS s (minute, queue, kind, outcome, jobs)
        SELECT date_trunc('minute', now()), d.queue, d.kind, 'completed', 1 FROM done AS d
        ON CONFLICT (minute, queue, kind, outcome) DO UPDATE SET jobs = s.jobs + 1
    ),
    waited AS (
        SELECT count(pg_notify('skiplock_job', d.id::text)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = d.id)
    )
    SELECT count(*) = 1 FROM done, waited
$$;

-- A failed attempt: retried after retry_in_secs (default: the Rust default backoff, 2 s
-- doubling per attempt up to a day, ±20% jitter) while attempts remain and the error is not
-- permanent, else failed for good. As in the Rust worker, a job somebody asked to cancel ends
-- `cancelled`, and a unique job whose key a duplicate took meanwhile ends `cancelled` with
-- error kind `superseded` (the duplicate does the work). Returns the job's new state, or NULL
-- when the token is stale.
CREATE FUNCTION skiplock.fail(
    job_id bigint,
    lease_token bigint,
    message text,
    permanent boolean DEFAULT false,
    retry_in_secs double precision DEFAULT NULL
) RETURNS skiplock.job_state
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH decided AS (
        SELECT j.id,
               CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                    WHEN fail.permanent OR j.attempt >= j.max_attempts THEN 'failed'
                    WHEN j.unique_key IS NOT NULL AND 'retryable' = ANY (j.unique_states)
                         AND EXISTS (SELECT FROM skiplock.jobs AS o
                                     WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                       AND o.state = ANY (o.unique_states))
                    THEN 'superseded'
                    ELSE 'retryable' END AS outcome
        FROM skiplock.jobs AS j
        WHERE j.id = fail.job_id AND j.lease_token = fail.lease_token
    ),
    done AS (
        UPDATE skiplock.jobs AS j
        SET state = CASE WHEN d.outcome = 'superseded' THEN 'cancelled'
                         ELSE d.outcome END::skiplock.job_state,
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                         'attempt', j.attempt, 'at', now(),
                         'kind', CASE WHEN d.outcome IN ('cancelled', 'superseded') THEN d.outcome
                                      WHEN fail.permanent THEN 'permanent' ELSE 'error' END,
                         'message', left(coalesce(fail.message, ''), 10000),
                         'worker', j.attempted_by[cardinality(j.attempted_by)])),
            finished_at = CASE WHEN d.outcome <> 'retryable' THEN now() END,
            run_at = CASE WHEN d.outcome <> 'retryable' THEN j.run_at
                          -- (Not coalesce(greatest(retry_in_secs, 0), ...): GREATEST ignores
                          -- NULL, so that would be 0.)
                          WHEN fail.retry_in_secs IS NOT NULL
                          THEN now() + make_interval(secs => greatest(fail.retry_in_secs, 0))
                          ELSE now() + make_interval(secs =>
                              least(2 * 2 ^ least(greatest(j.attempt - 1, 0), 20), 86400)
                                  * (0.8 + 0.4 * random()))
                     END,
            lease_expires_at = NULL,
            lease_token = NULL
        FROM decided AS d
        WHERE j.id = d.id AND j.lease_token = fail.lease_token
        RETURNING j.id, j.queue, j.kind, j.state
    ),
    counted AS (
        INSERT INTO skiplock.job_stats AS s (minute, queue, kind, outcome, jobs)
        SELECT date_trunc('minute', now()), d.queue, d.kind,
               CASE WHEN d.state = 'retryable' THEN 'retried' ELSE d.state::text END, 1
        FROM done AS d
        ON CONFLICT (minute, queue, kind, outcome) DO UPDATE SET jobs = s.jobs + 1
    ),
    waited AS (
        SELECT count(pg_notify('skiplock_job', d.id::text)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = d.id)
    )
    SELECT d.state FROM done AS d, waited
$$;

-- Gives the attempt back and runs the job again after delay_secs (the attempt count does not
-- grow; 0 or less: at once, and its queue's workers are woken). A job somebody asked to
-- cancel ends `cancelled`; a unique job whose key a duplicate took ends `cancelled`
-- (`superseded`). True when recorded, false when the token is stale.
CREATE FUNCTION skiplock.snooze(job_id bigint, lease_token bigint, delay_secs double precision)
RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH decided AS (
        SELECT j.id, t.target,
               CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                    WHEN j.unique_key IS NOT NULL AND t.target = ANY (j.unique_states)
                         AND EXISTS (SELECT FROM skiplock.jobs AS o
                                     WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                       AND o.state = ANY (o.unique_states))
                    THEN 'superseded'
                    ELSE t.target::text END AS outcome
        FROM skiplock.jobs AS j
        CROSS JOIN LATERAL (SELECT CASE WHEN coalesce(snooze.delay_secs, 0) <= 0
                                        THEN 'available' ELSE 'scheduled'
                                   END::skiplock.job_state AS target) AS t
        WHERE j.id = snooze.job_id AND j.lease_token = snooze.lease_token
    ),
    done AS (
        UPDATE skiplock.jobs AS j
        SET state = CASE WHEN d.outcome = 'superseded' THEN 'cancelled'
                         ELSE d.outcome END::skiplock.job_state,
            attempt = CASE WHEN d.outcome IN ('cancelled', 'superseded') THEN j.attempt
                           ELSE j.attempt - 1 END,
            errors = CASE WHEN d.outcome IN ('cancelled', 'superseded')
                          THEN j.errors || jsonb_build_array(jsonb_build_object(
                                   'attempt', j.attempt, 'at', now(), 'kind', d.outcome,
                                   'message', 'snoozed after a cancel request or a duplicate took the key',
                                   'worker', j.attempted_by[cardinality(j.attempted_by)]))
                          ELSE j.errors END,
            finished_at = CASE WHEN d.outcome IN ('cancelled', 'superseded') THEN now() END,
            run_at = CASE WHEN d.outcome IN ('cancelled', 'superseded') THEN j.run_at
                          ELSE now() + make_interval(secs => greatest(coalesce(snooze.delay_secs, 0), 0))
                     END,
            lease_expires_at = NULL, lease_token = NULL
        FROM decided AS d
        WHERE j.id = d.id AND j.lease_token = snooze.lease_token
        RETURNING j.id, j.queue, j.state
    ),
    woken AS (
        SELECT skiplock.wake(array_agg(d.queue)) FROM done AS d WHERE d.state = 'available'
    ),
    waited AS (
        SELECT count(pg_notify('skiplock_job', d.id::text)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = d.id)
    )
    SELECT count(*) = 1 FROM done, woken, waited
$$;

-- Stores a running job's progress (watchers hear of it). True unless the token is stale.
CREATE FUNCTION skiplock.set_progress(job_id bigint, lease_token bigint, progress jsonb)
RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH done AS (
        UPDATE skiplock.jobs AS j SET progress = set_progress.progress
        WHERE j.id = set_progress.job_id AND j.lease_token = set_progress.lease_token
        RETURNING j.id
    ),
    waited AS (
        SELECT count(pg_notify('skiplock_job', d.id::text)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = d.id)
    )
    SELECT count(*) = 1 FROM done, waited
$$;

REVOKE EXECUTE ON FUNCTION
    skiplock.claim(text, text[], text[], integer, double precision),
    skiplock.heartbeat(text, bigint[], bigint[], double precision),
    skiplock.complete(bigint, bigint, jsonb),
    skiplock.fail(bigint, bigint, text, boolean, double precision),
    skiplock.snooze(bigint, bigint, double precision),
    skiplock.set_progress(bigint, bigint, jsonb)
FROM PUBLIC;
