-- 0023: a job somebody waits on is never finished unheard.
--
-- Until now the statements that record outcomes looked for waiters (0017) in their own
-- snapshot, taken when the statement began. A waiter that registered after that moment and
-- read the job before the statement committed saw it unfinished and was not notified: it
-- learnt the outcome at its next poll (1 s by default), or never within a test that polls once
-- a minute.
--
-- Now both sides meet at one advisory lock, (1936419956, -1):
-- * `skiplock.notify_waiters(ids)`, called by a statement after it has changed its jobs, takes
--   it shared (held to commit) and only then looks for waiters, in a fresh snapshot (a
--   VOLATILE function's own statement, under READ COMMITTED);
-- * a waiter registers while holding it exclusively (the Rust `Results` does; see
--   docs/schema.md for other languages), then reads the jobs.
-- Either the registration committed before the look (the waiter is notified), or it waited for
-- the finishing transaction to commit (the waiter's read sees the outcome). The lock is held
-- from the look to the commit, a few milliseconds; a registration waits at most that long, and
-- so do the finishing statements that reach the look while one waits.

CREATE FUNCTION skiplock.notify_waiters(job_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF job_ids IS NULL OR cardinality(job_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1936419956, -1);
    -- Each statement below sees registrations committed up to its own start.
    IF NOT EXISTS (SELECT FROM skiplock.job_waiters) THEN
        RETURN 0;
    END IF;
    -- One index probe per id: `job_id = ANY (job_ids)` would compare every registration with
    -- every id of a 2,000-job batch.
    RETURN (SELECT count(pg_notify('skiplock_job', d.id::text))
            FROM (SELECT DISTINCT id FROM unnest(job_ids) AS u(id)) AS d
            WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = d.id));
END
$$;

COMMENT ON FUNCTION skiplock.notify_waiters(bigint[]) IS
    'Sends skiplock_job for each of job_ids somebody waits on; call after changing the jobs, in the same transaction.';

REVOKE ALL ON FUNCTION skiplock.notify_waiters(bigint[]) FROM PUBLIC;

-- The SQL worker protocol (0018) looks for waiters the same way. And an outcome recorded in
-- SQL now frees a slot of a concurrency limit (0020) at once, as the Rust completer's do: the
-- `freed` step wakes the queue of a job whose queue or kind is limited, so workers held back
-- by the limit claim again now instead of at their next poll (1 s). Only the `waited` and
-- `freed` steps change.

CREATE OR REPLACE FUNCTION skiplock.complete(job_id bigint, lease_token bigint, result jsonb DEFAULT NULL)
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
    -- A slot of a limited queue or kind is free: wake its workers.
    freed AS (
        SELECT skiplock.wake(array_agg(d.queue)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.throttles AS t WHERE t.queue = d.queue OR t.kind = d.kind)
    ),
    waited AS (
        SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
    )
    SELECT count(*) = 1 FROM done, freed, waited
$$;

CREATE OR REPLACE FUNCTION skiplock.fail(
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
    -- A slot of a limited queue or kind is free: wake its workers.
    freed AS (
        SELECT skiplock.wake(array_agg(d.queue)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.throttles AS t WHERE t.queue = d.queue OR t.kind = d.kind)
    ),
    waited AS (
        SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
    )
    SELECT d.state FROM done AS d, freed, waited
$$;

CREATE OR REPLACE FUNCTION skiplock.snooze(job_id bigint, lease_token bigint, delay_secs double precision)
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
        RETURNING j.id, j.queue, j.kind, j.state
    ),
    woken AS (
        SELECT skiplock.wake(array_agg(d.queue)) FROM done AS d WHERE d.state = 'available'
    ),
    -- A slot of a limited queue or kind is free: wake its workers.
    freed AS (
        SELECT skiplock.wake(array_agg(d.queue)) FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.throttles AS t WHERE t.queue = d.queue OR t.kind = d.kind)
    ),
    waited AS (
        SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
    )
    SELECT count(*) = 1 FROM done, woken, freed, waited
$$;

CREATE OR REPLACE FUNCTION skiplock.set_progress(job_id bigint, lease_token bigint, progress jsonb)
RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH done AS (
        UPDATE skiplock.jobs AS j SET progress = set_progress.progress
        WHERE j.id = set_progress.job_id AND j.lease_token = set_progress.lease_token
        RETURNING j.id
    ),
    waited AS (
        SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
    )
    SELECT count(*) = 1 FROM done, waited
$$;
