-- 0022: workflows, second pass. 0019 did a workflow's bookkeeping in a row trigger, one
-- finished job at a time, and that had four faults this migration removes:
-- - cost: every finished job rewrote its workflow's row, so a statement finishing n jobs of one
--   workflow (a completer's batch, a cancel, a propagation) left an n-version chain of that
--   row to walk: cancelling 100,000 jobs took 15 minutes;
-- - deadlocks: two batches finishing jobs of the same two workflows in opposite orders locked
--   the two workflow rows in opposite orders;
-- - retry: skiplock.retry() made a workflow job `available` whatever its dependencies were;
-- - a job deleted by hand left its workflow unfinished for good.
--
-- Now the row trigger only lists the job in a transaction-local setting, and a statement
-- trigger settles everything the statement changed at once: the workflows' rows are locked in
-- id order, then the waiting jobs' counter rows in id order, then the jobs it releases or
-- fails. Every path that changes a pending job holds its workflow's row first, so no two
-- settlements wait for each other in a cycle. Jobs outside workflows still pay one NULL test
-- of a WHEN clause per finishing row, plus one early return per finishing statement.
--
-- Invariants kept (docs/schema.md): a dependency row's `outcome` is NULL exactly while its
-- job is unfinished; `pending_jobs.waiting_for` counts a pending job's NULL outcomes;
-- `workflows.unfinished` counts its jobs with no `finished_at`.

-- What the checks let through: NaN and Infinity pass `timeout_secs > 0` (NaN sorts above every
-- number), and only workflow jobs wait for others. NOT VALID: rows already there are not
-- scanned (0019's functions never wrote either); new and updated rows are checked.
ALTER TABLE skiplock.jobs
    ADD CONSTRAINT jobs_timeout_finite CHECK (timeout_secs < 'Infinity'::float8) NOT VALID,
    -- (state::text: the printed script adds 'pending' in the same transaction, where the
    -- new value cannot be named yet.)
    ADD CONSTRAINT jobs_pending_in_workflow CHECK (state::text <> 'pending' OR workflow_id IS NOT NULL) NOT VALID;

-- What the pruner reads: workflows finished longest ago.
CREATE INDEX workflows_finished_idx ON skiplock.workflows (finished_at) WHERE finished_at IS NOT NULL;
-- What reconcile_workflows and the pruner read: a workflow's pending jobs.
CREATE INDEX pending_jobs_workflow_idx ON skiplock.pending_jobs (workflow_id);

-- 0019's trigger and the functions whose signatures change are replaced.
DROP TRIGGER jobs_workflow_changed ON skiplock.jobs;
DROP FUNCTION skiplock.workflow_job_changed();
DROP FUNCTION skiplock.repair_workflows(integer);
DROP FUNCTION skiplock.resolve_dependencies(bigint, skiplock.job_state);

-- The settings that steer the triggers below belong to the session, and anyone can set them:
-- the SECURITY DEFINER functions clear them first, so a caller cannot make them skip a
-- workflow's bookkeeping or settle jobs it names.
CREATE FUNCTION skiplock.reset_workflow_settings() RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT set_config('skiplock.workflow_settling', '', true),
           set_config('skiplock.workflow_changed', '', true),
           set_config('skiplock.workflow_recount', '', true);
$$;

-- Fails, or cancels, every pending job reachable from `roots` through pending jobs (the whole
-- downstream in one statement, however long the chain), with an error entry naming `cause`.
-- Returns the jobs it ended. Their bookkeeping is the caller's (skiplock.settle_jobs): the
-- row trigger skips them, so a long downstream costs one statement, not one trigger each.
CREATE FUNCTION skiplock.end_downstream(roots bigint[], ending skiplock.job_state, cause bigint)
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    doomed bigint[];
BEGIN
    WITH RECURSIVE downstream(id) AS (
        SELECT j.id FROM unnest(roots) AS r(id)
        JOIN skiplock.jobs AS j ON j.id = r.id AND j.state = 'pending'
        UNION
        -- Each step looks up its few dependents by index. A plain join here is planned as a
        -- hash of the whole dependency table, rebuilt at every step (50 s for a chain of
        -- 10,000): OFFSET 0 keeps the subquery apart, run once per row with its index.
        SELECT n.job_id FROM downstream AS s
        CROSS JOIN LATERAL (
            SELECT d.job_id FROM skiplock.job_dependencies AS d
            JOIN skiplock.jobs AS j ON j.id = d.job_id AND j.state = 'pending'
            WHERE d.depends_on = s.id
            OFFSET 0
        ) AS n
    )
    SELECT array_agg(id ORDER BY id) INTO doomed FROM downstream;
    IF doomed IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM FROM unnest(doomed) AS d(id) JOIN skiplock.jobs AS j ON j.id = d.id
    ORDER BY j.id FOR UPDATE OF j;
    PERFORM set_config('skiplock.workflow_settling', 'on', true);
    WITH ended AS (
        UPDATE skiplock.jobs AS j
        SET state = ending,
            finished_at = now(),
            cancel_requested_at = CASE WHEN ending = 'cancelled' THEN now() END,
            errors = errors || jsonb_build_array(jsonb_build_object(
                'attempt', attempt, 'at', now(), 'kind', 'dependency',
                'message', format('dependency %s ended %s', cause, ending)))
        FROM unnest(doomed) AS d(id)
        WHERE j.id = d.id AND j.state = 'pending'
        RETURNING j.id
    )
    SELECT array_agg(id ORDER BY id) INTO doomed FROM ended;
    PERFORM set_config('skiplock.workflow_settling', '', true);
    RETURN doomed;
END
$$;

-- Decides what becomes of pending jobs among `candidates` (their workflows' rows already
-- locked): in a `propagate` workflow, one with a dependency that failed (or was cancelled)
-- fails (or is cancelled) with its whole downstream; one whose count reached zero is
-- released (`available`, or `scheduled` if its run_at is ahead), its queue woken and its
-- waiters told. Only `suspects` and jobs whose count reached zero have their dependency rows
-- read: a chord's callback is read once, not once per finished member. Returns the jobs it
-- ended, for the caller to settle.
CREATE FUNCTION skiplock.settle_pending(candidates bigint[], suspects bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failing bigint[];
    failed_cause bigint;
    cancelling bigint[];
    cancelled_cause bigint;
    doomed bigint[];
    more bigint[];
    released text[];
BEGIN
    SELECT array_agg(p.job_id) FILTER (WHERE x.failed IS NOT NULL), min(x.failed),
           array_agg(p.job_id) FILTER (WHERE x.failed IS NULL), min(x.cancelled)
    INTO failing, failed_cause, cancelling, cancelled_cause
    FROM unnest(candidates) AS c(id)
    JOIN skiplock.pending_jobs AS p ON p.job_id = c.id
    JOIN skiplock.workflows AS w ON w.id = p.workflow_id AND w.on_failure = 'propagate'
    LEFT JOIN unnest(suspects) AS s(id) ON s.id = p.job_id
    CROSS JOIN LATERAL (
        SELECT min(d.depends_on) FILTER (WHERE d.outcome = 'failed') AS failed,
               min(d.depends_on) FILTER (WHERE d.outcome = 'cancelled') AS cancelled
        FROM skiplock.job_dependencies AS d WHERE d.job_id = p.job_id
    ) AS x
    WHERE (s.id IS NOT NULL OR p.waiting_for = 0)
      AND (x.failed IS NOT NULL OR x.cancelled IS NOT NULL);
    IF failing IS NOT NULL THEN
        doomed := skiplock.end_downstream(failing, 'failed', failed_cause);
    END IF;
    IF cancelling IS NOT NULL THEN
        more := skiplock.end_downstream(cancelling, 'cancelled', cancelled_cause);
        doomed := coalesce(doomed, '{}') || coalesce(more, '{}');
    END IF;
    IF doomed IS NOT NULL THEN
        DELETE FROM skiplock.pending_jobs AS p USING unnest(doomed) AS d(id) WHERE p.job_id = d.id;
    END IF;

    WITH ready AS (
        DELETE FROM skiplock.pending_jobs AS p USING unnest(candidates) AS c(id)
        WHERE p.job_id = c.id AND p.waiting_for = 0
        RETURNING p.job_id
    ),
    made AS (
        UPDATE skiplock.jobs AS j
        SET state = CASE WHEN j.run_at > now() THEN 'scheduled'
                         ELSE 'available' END::skiplock.job_state,
            run_at = greatest(j.run_at, now())
        FROM ready
        WHERE j.id = ready.job_id AND j.state = 'pending'
        RETURNING j.id, j.queue, j.state
    ),
    told AS (
        SELECT count(pg_notify('skiplock_job', m.id::text)) AS n FROM made AS m
        WHERE EXISTS (SELECT FROM skiplock.job_waiters AS w WHERE w.job_id = m.id)
    )
    SELECT array_agg(m.queue) FILTER (WHERE m.state = 'available') INTO released
    FROM made AS m, told;
    IF released IS NOT NULL THEN
        PERFORM skiplock.wake(released);
    END IF;
    RETURN doomed;
END
$$;

-- Settles workflow jobs whose finished-ness changed (they finished, or were put back): the
-- workflows' counters, the dependency rows on them, the counts of the jobs waiting on them,
-- and what that releases or ends. Called by the statement trigger with the jobs its statement
-- changed, and by the functions below that change many jobs at once. Ids of jobs outside
-- workflows, or gone, are ignored.
CREATE FUNCTION skiplock.settle_jobs(changed bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    flows bigint[];
    ended bigint[];
    reopened bigint[];
    moved integer[];
    waiting bigint[];
    deltas integer[];
    suspects bigint[];
    doomed bigint[];
BEGIN
    SELECT array_agg(j.id) FILTER (WHERE j.finished_at IS NOT NULL),
           array_agg(j.id) FILTER (WHERE j.finished_at IS NULL)
    INTO ended, reopened
    FROM unnest(changed) AS c(id)
    JOIN skiplock.jobs AS j ON j.id = c.id AND j.workflow_id IS NOT NULL;
    SELECT array_agg(workflow_id ORDER BY workflow_id), array_agg(delta ORDER BY workflow_id)
    INTO flows, moved
    FROM (SELECT j.workflow_id,
                 sum(CASE WHEN j.finished_at IS NULL THEN 1 ELSE -1 END)::integer AS delta
          FROM unnest(changed) AS c(id)
          JOIN skiplock.jobs AS j ON j.id = c.id AND j.workflow_id IS NOT NULL
          GROUP BY j.workflow_id) AS m;
    IF flows IS NULL THEN
        RETURN;
    END IF;
    -- The workflows' rows first, in id order: whoever settles jobs of the same workflows
    -- waits here, before touching anything else they share.
    PERFORM FROM skiplock.workflows WHERE id = ANY (flows) ORDER BY id FOR UPDATE;
    UPDATE skiplock.workflows AS w
    SET unfinished = least(greatest(w.unfinished + c.delta, 0), w.jobs),
        finished_at = CASE WHEN w.unfinished + c.delta <= 0 THEN coalesce(w.finished_at, now()) END
    FROM unnest(flows, moved) AS c(id, delta)
    WHERE w.id = c.id;
    -- A job that finished while pending (cancelled) waits for nothing any more.
    IF ended IS NOT NULL THEN
        DELETE FROM skiplock.pending_jobs AS p USING unnest(ended) AS e(id) WHERE p.job_id = e.id;
    END IF;

    -- Dependency rows follow their dependency: resolved when it ended (once: `outcome IS
    -- NULL`), unresolved again when it was put back. Each moves its waiting job's count.
    WITH resolved AS (
        UPDATE skiplock.job_dependencies AS d SET outcome = j.state
        FROM unnest(ended) AS e(id) JOIN skiplock.jobs AS j ON j.id = e.id
        WHERE d.depends_on = e.id AND d.outcome IS NULL
        RETURNING d.job_id, d.outcome
    ),
    cleared AS (
        UPDATE skiplock.job_dependencies AS d SET outcome = NULL
        FROM unnest(reopened) AS r(id)
        WHERE d.depends_on = r.id AND d.outcome IS NOT NULL
        RETURNING d.job_id
    ),
    moves AS (
        SELECT job_id, -1 AS delta, outcome <> 'completed' AS bad FROM resolved
        UNION ALL
        SELECT job_id, 1, false FROM cleared
    )
    SELECT array_agg(job_id ORDER BY job_id), array_agg(delta ORDER BY job_id),
           array_agg(job_id ORDER BY job_id) FILTER (WHERE bad)
    INTO waiting, deltas, suspects
    FROM (SELECT job_id, sum(delta)::integer AS delta, bool_or(bad) AS bad
          FROM moves GROUP BY job_id) AS m;
    IF waiting IS NULL THEN
        RETURN;
    END IF;
    PERFORM FROM unnest(waiting) AS w(id) JOIN skiplock.pending_jobs AS p ON p.job_id = w.id
    ORDER BY p.job_id FOR UPDATE OF p;
    UPDATE skiplock.pending_jobs AS p
    SET waiting_for = greatest(p.waiting_for + c.delta, 0)
    FROM unnest(waiting, deltas) AS c(job_id, delta)
    WHERE p.job_id = c.job_id;
    doomed := skiplock.settle_pending(waiting, suspects);
    IF doomed IS NOT NULL THEN
        -- Their own dependents are in `doomed` too: this nests once, whatever the depth.
        PERFORM skiplock.settle_jobs(doomed);
    END IF;
END
$$;

-- Recounts whole workflows from their jobs: the counters, the dependency rows whose end no
-- trigger saw (a job deleted by hand counts as cancelled), the pending jobs' counts, and what
-- that releases or ends. For statements that change more jobs than the trigger lists, for
-- deletes, and for the rescuer. Reads every job of each workflow: the rare path.
CREATE FUNCTION skiplock.reconcile_workflows(flows bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missed integer;
    waiting bigint[];
    doomed bigint[];
BEGIN
    PERFORM FROM skiplock.workflows WHERE id = ANY (flows) ORDER BY id FOR UPDATE;
    UPDATE skiplock.workflows AS w
    SET unfinished = least(c.unfinished, w.jobs),
        finished_at = CASE WHEN c.unfinished = 0 THEN coalesce(w.finished_at, now()) END
    FROM (SELECT f.id, (SELECT count(*) FROM skiplock.jobs AS j
                        WHERE j.workflow_id = f.id AND j.finished_at IS NULL)::integer AS unfinished
          FROM unnest(flows) AS f(id)) AS c
    WHERE w.id = c.id;
    WITH fixed AS (
        UPDATE skiplock.job_dependencies AS d
        SET outcome = CASE WHEN j.id IS NULL THEN 'cancelled'
                           WHEN j.finished_at IS NOT NULL THEN j.state END
        FROM skiplock.job_dependencies AS o
        LEFT JOIN skiplock.jobs AS j ON j.id = o.depends_on
        WHERE o.workflow_id = ANY (flows)
          AND d.job_id = o.job_id AND d.position = o.position
          AND d.outcome IS DISTINCT FROM CASE WHEN j.id IS NULL THEN 'cancelled'
                                              WHEN j.finished_at IS NOT NULL THEN j.state END
        RETURNING d.job_id
    )
    SELECT count(*) INTO missed FROM fixed;
    -- Counters of jobs no longer pending go; the others are recounted.
    DELETE FROM skiplock.pending_jobs AS p
    WHERE p.workflow_id = ANY (flows)
      AND NOT EXISTS (SELECT FROM skiplock.jobs AS j WHERE j.id = p.job_id AND j.state = 'pending');
    -- (Jobs with no dependency rows, put back by a retry, keep their count of 0.)
    WITH counted AS (
        UPDATE skiplock.pending_jobs AS p
        SET waiting_for = c.waiting_for
        FROM (SELECT d.job_id, count(*) FILTER (WHERE d.outcome IS NULL)::integer AS waiting_for
              FROM skiplock.job_dependencies AS d
              WHERE d.workflow_id = ANY (flows)
              GROUP BY d.job_id) AS c
        WHERE p.job_id = c.job_id
    )
    SELECT array_agg(p.job_id ORDER BY p.job_id) INTO waiting
    FROM skiplock.pending_jobs AS p WHERE p.workflow_id = ANY (flows);
    IF waiting IS NOT NULL THEN
        doomed := skiplock.settle_pending(waiting, waiting);
        IF doomed IS NOT NULL THEN
            PERFORM skiplock.settle_jobs(doomed);
        END IF;
    END IF;
    RETURN missed;
END
$$;

-- The row trigger: a workflow job finished, or was put back. It tells whoever waits on it
-- (skiplock::results; a completer tells them itself when the job was running) and lists it
-- for the statement trigger, unless the statement's caller settles it itself. Past 5,000 or
-- so jobs in one statement the list would grow quadratically: it names the workflow instead,
-- to be recounted whole.
CREATE FUNCTION skiplock.workflow_job_changed() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    listed text;
BEGIN
    IF NEW.finished_at IS NOT NULL AND OLD.state <> 'running'
       AND EXISTS (SELECT FROM skiplock.job_waiters WHERE job_id = NEW.id) THEN
        PERFORM pg_notify('skiplock_job', NEW.id::text);
    END IF;
    IF coalesce(current_setting('skiplock.workflow_settling', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    listed := coalesce(current_setting('skiplock.workflow_changed', true), '');
    IF length(listed) < 50000 THEN
        PERFORM set_config('skiplock.workflow_changed', listed || NEW.id || ',', true);
        RETURN NULL;
    END IF;
    listed := coalesce(current_setting('skiplock.workflow_recount', true), '');
    IF position(',' || NEW.workflow_id || ',' IN ',' || listed) = 0 THEN
        PERFORM set_config('skiplock.workflow_recount', listed || NEW.workflow_id || ',', true);
    END IF;
    RETURN NULL;
END
$$;

-- An unfinished workflow job deleted (by hand: the pruner deletes finished jobs only): its
-- workflow is recounted at the end of the statement, so nothing waits for it forever.
CREATE FUNCTION skiplock.workflow_job_deleted() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    listed text := coalesce(current_setting('skiplock.workflow_recount', true), '');
BEGIN
    IF position(',' || OLD.workflow_id || ',' IN ',' || listed) = 0 THEN
        PERFORM set_config('skiplock.workflow_recount', listed || OLD.workflow_id || ',', true);
    END IF;
    RETURN NULL;
END
$$;

-- The statement trigger: settles what the row triggers listed. Outside workflows the lists
-- are empty and it returns at once. The lists are emptied before settling: the statements
-- settling runs fire this trigger again, and find nothing to do.
CREATE FUNCTION skiplock.workflow_statement_done() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    changed text := coalesce(current_setting('skiplock.workflow_changed', true), '');
    recount text := coalesce(current_setting('skiplock.workflow_recount', true), '');
BEGIN
    IF changed = '' AND recount = '' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('skiplock.workflow_changed', '', true);
    PERFORM set_config('skiplock.workflow_recount', '', true);
    IF changed <> '' THEN
        PERFORM skiplock.settle_jobs(string_to_array(rtrim(changed, ','), ',')::bigint[]);
    END IF;
    IF recount <> '' THEN
        PERFORM skiplock.reconcile_workflows(string_to_array(rtrim(recount, ','), ',')::bigint[]);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_workflow_changed
    AFTER UPDATE OF finished_at ON skiplock.jobs
    FOR EACH ROW
    WHEN (NEW.workflow_id IS NOT NULL AND (OLD.finished_at IS NULL) <> (NEW.finished_at IS NULL))
    EXECUTE FUNCTION skiplock.workflow_job_changed();

CREATE TRIGGER jobs_workflow_deleted
    AFTER DELETE ON skiplock.jobs
    FOR EACH ROW
    WHEN (OLD.workflow_id IS NOT NULL AND OLD.finished_at IS NULL)
    EXECUTE FUNCTION skiplock.workflow_job_deleted();

CREATE TRIGGER jobs_workflow_settled
    AFTER UPDATE OF finished_at ON skiplock.jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION skiplock.workflow_statement_done();

CREATE TRIGGER jobs_workflow_settled_deleted
    AFTER DELETE ON skiplock.jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION skiplock.workflow_statement_done();

-- Dependencies whose end no trigger saw (rows restored with triggers off, or deleted before
-- this migration): their workflows are recounted. Run by the rescuer; returns how many
-- dependency rows it corrected.
CREATE FUNCTION skiplock.repair_workflows(max_workflows integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    flows bigint[];
BEGIN
    SELECT array_agg(DISTINCT w) INTO flows
    FROM (SELECT d.workflow_id AS w
          FROM skiplock.job_dependencies AS d
          LEFT JOIN skiplock.jobs AS j ON j.id = d.depends_on
          WHERE d.outcome IS NULL AND (j.id IS NULL OR j.finished_at IS NOT NULL)
          LIMIT max_workflows) AS m;
    IF flows IS NULL THEN
        RETURN 0;
    END IF;
    RETURN skiplock.reconcile_workflows(flows);
END
$$;

-- Enqueue, as 0019's, checking every field's type before anything is cast (a NaN
-- timeout_secs, a null tag or a numeric queue were let through or failed on a cast),
-- refusing a dependency named twice, and checking the sizes before reading each element.
CREATE OR REPLACE FUNCTION skiplock.enqueue_workflow(
    name text,
    jobs jsonb,
    on_failure text DEFAULT 'propagate',
    OUT workflow_id bigint,
    OUT job_ids bigint[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
    bad integer;
    edges bigint;
BEGIN
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'array' OR jsonb_array_length(jobs) = 0 THEN
        RAISE EXCEPTION 'skiplock.enqueue_workflow: jobs must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := jsonb_array_length(jobs);
    IF n > 100000 THEN
        RAISE EXCEPTION 'skiplock.enqueue_workflow: at most 100000 jobs, not %', n
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT coalesce(sum(jsonb_array_length(x.job -> 'depends_on')), 0) INTO edges
    FROM jsonb_array_elements(jobs) AS x(job)
    WHERE jsonb_typeof(x.job -> 'depends_on') = 'array';
    IF edges > 1000000 THEN
        RAISE EXCEPTION 'skiplock.enqueue_workflow: at most 1000000 dependencies, not %', edges
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT min(x.i) INTO bad
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(job, i)
    WHERE jsonb_typeof(x.job) IS DISTINCT FROM 'object'
       OR jsonb_typeof(x.job -> 'kind') IS DISTINCT FROM 'string'
       OR coalesce(jsonb_typeof(x.job -> 'queue'), 'string') <> 'string'
       OR coalesce(jsonb_typeof(x.job -> 'run_at'), 'string') <> 'string'
       OR coalesce(jsonb_typeof(x.job -> 'metadata'), 'object') NOT IN ('object', 'null')
       OR coalesce(jsonb_typeof(x.job -> 'priority'), 'number') <> 'number'
       OR coalesce(jsonb_typeof(x.job -> 'max_attempts'), 'number') <> 'number'
       OR coalesce(jsonb_typeof(x.job -> 'delay_secs'), 'number') <> 'number'
       OR coalesce(jsonb_typeof(x.job -> 'timeout_secs'), 'number') <> 'number'
       OR coalesce(jsonb_typeof(x.job -> 'depends_on'), 'array') <> 'array'
       OR coalesce(jsonb_typeof(x.job -> 'tags'), 'array') <> 'array'
       OR EXISTS (SELECT FROM jsonb_array_elements(coalesce(x.job -> 'tags', '[]')) AS t(tag)
                  WHERE jsonb_typeof(t.tag) <> 'string')
       OR EXISTS (SELECT FROM jsonb_array_elements(coalesce(x.job -> 'depends_on', '[]')) AS d(dep)
                  WHERE jsonb_typeof(d.dep) <> 'number'
                     OR d.dep::text !~ '^[0-9]{1,9}$'
                     OR d.dep::text::integer >= x.i - 1)
       OR (SELECT count(DISTINCT d.dep) <> count(*)
           FROM jsonb_array_elements(coalesce(x.job -> 'depends_on', '[]')) AS d(dep));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'skiplock.enqueue_workflow: job % is not an object with a "kind" string, '
                        'fields of their documented types, and "depends_on" an array of '
                        'distinct indexes of earlier jobs', bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO skiplock.workflows (name, on_failure, jobs, unfinished)
    VALUES (enqueue_workflow.name, coalesce(enqueue_workflow.on_failure, 'propagate'), n, n)
    RETURNING id INTO workflow_id;

    -- Ids drawn first, in array order, so dependencies can name them before the rows exist.
    SELECT array_agg(nextval(pg_get_serial_sequence('skiplock.jobs', 'id')) ORDER BY i)
    INTO job_ids
    FROM generate_series(1, n) AS i;

    INSERT INTO skiplock.job_dependencies (job_id, position, depends_on, workflow_id)
    SELECT job_ids[x.i], (d.n - 1)::integer, job_ids[d.dep::text::integer + 1],
           enqueue_workflow.workflow_id
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(job, i)
    CROSS JOIN LATERAL jsonb_array_elements(x.job -> 'depends_on') WITH ORDINALITY AS d(dep, n)
    WHERE x.job ? 'depends_on';

    INSERT INTO skiplock.pending_jobs (job_id, workflow_id, waiting_for)
    SELECT job_ids[x.i], enqueue_workflow.workflow_id, jsonb_array_length(x.job -> 'depends_on')
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(job, i)
    WHERE jsonb_array_length(coalesce(x.job -> 'depends_on', '[]')) > 0;

    INSERT INTO skiplock.jobs (id, kind, args, queue, priority, max_attempts, run_at, tags,
                               state, timeout_secs, metadata, workflow_id)
    SELECT job_ids[x.i],
           x.job ->> 'kind',
           coalesce(x.job -> 'args', '{}'),
           coalesce(x.job ->> 'queue', 'default'),
           coalesce((x.job ->> 'priority')::smallint, 0),
           coalesce((x.job ->> 'max_attempts')::integer, 25),
           r.run_at,
           ARRAY(SELECT t FROM jsonb_array_elements_text(coalesce(x.job -> 'tags', '[]'))
                 WITH ORDINALITY AS e(t, k) ORDER BY k),
           CASE WHEN jsonb_array_length(coalesce(x.job -> 'depends_on', '[]')) > 0
                THEN 'pending'::skiplock.job_state
                ELSE skiplock.initial_state(r.run_at) END,
           (x.job ->> 'timeout_secs')::float8,
           nullif(x.job -> 'metadata', 'null'),
           enqueue_workflow.workflow_id
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(job, i)
    CROSS JOIN LATERAL (
        SELECT coalesce((x.job ->> 'run_at')::timestamptz,
                        now() + make_interval(secs => coalesce((x.job ->> 'delay_secs')::float8, 0)))
               AS run_at) AS r
    ORDER BY x.i;
END
$$;

-- Cancels every unfinished job of a workflow, as skiplock.cancel() does one. Running jobs are
-- asked to stop first, before the workflow's row is locked (a completer finishing one of them
-- holds its row and then wants the workflow's); then the workflow's row, then the waiting jobs,
-- cancelled in one statement and settled at once.
CREATE OR REPLACE FUNCTION skiplock.cancel_workflow(
    id bigint,
    OUT cancelled integer,
    OUT stopping integer
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    wf bigint := cancel_workflow.id;
    ended bigint[];
BEGIN
    PERFORM skiplock.reset_workflow_settings();
    IF NOT EXISTS (SELECT FROM skiplock.workflows WHERE id = wf) THEN
        RETURN;
    END IF;
    WITH asked AS (
        UPDATE skiplock.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
        WHERE workflow_id = wf AND state = 'running'
        RETURNING id
    )
    SELECT count(pg_notify('skiplock_cancel', asked.id::text)) INTO stopping FROM asked;
    PERFORM FROM skiplock.workflows WHERE id = wf FOR UPDATE;
    UPDATE skiplock.workflows SET cancelled_at = coalesce(cancelled_at, now()) WHERE id = wf;
    PERFORM set_config('skiplock.workflow_settling', 'on', true);
    WITH gone AS (
        UPDATE skiplock.jobs
        SET state = 'cancelled', finished_at = now(), cancel_requested_at = now()
        WHERE workflow_id = wf AND state IN ('pending', 'scheduled', 'available', 'retryable')
        RETURNING id
    )
    SELECT array_agg(id) INTO ended FROM gone;
    PERFORM set_config('skiplock.workflow_settling', '', true);
    cancelled := coalesce(cardinality(ended), 0);
    IF ended IS NOT NULL THEN
        PERFORM skiplock.settle_jobs(ended);
    END IF;
END
$$;

-- Puts a workflow's failed and cancelled jobs back, as 0019's, but settled in one pass: each
-- job put back waits for its dependencies that are unfinished now (those put back with it
-- included) and becomes `pending`, or `available` when none is. Completed jobs keep their
-- results. Returns how many jobs it put back, or NULL when there is no such workflow.
CREATE OR REPLACE FUNCTION skiplock.retry_workflow(id bigint) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    wf bigint := retry_workflow.id;
    again bigint[];
BEGIN
    PERFORM skiplock.reset_workflow_settings();
    PERFORM FROM skiplock.workflows WHERE id = wf FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(id ORDER BY id) INTO again
    FROM (SELECT id FROM skiplock.jobs
          WHERE workflow_id = wf AND state IN ('failed', 'cancelled')
          ORDER BY id FOR UPDATE) AS f;
    IF again IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE skiplock.workflows SET cancelled_at = NULL WHERE id = wf;
    -- Back as `pending` first (unfinished), so the counts below see every job put back.
    PERFORM set_config('skiplock.workflow_settling', 'on', true);
    UPDATE skiplock.jobs
    SET state = 'pending', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
        lease_token = NULL, max_attempts = greatest(max_attempts, attempt + 1)
    WHERE id = ANY (again);
    PERFORM set_config('skiplock.workflow_settling', '', true);
    INSERT INTO skiplock.pending_jobs (job_id, workflow_id, waiting_for)
    SELECT a.id, wf, 0 FROM unnest(again) AS a(id)
    ON CONFLICT ON CONSTRAINT pending_jobs_pkey DO NOTHING;
    -- Counters, dependency rows, counts; jobs waiting for nothing are released.
    PERFORM skiplock.reconcile_workflows(ARRAY[wf]);
    RETURN cardinality(again);
END
$$;

-- A single job put back (0002's), now aware of workflows: a workflow job waits again for its
-- dependencies that are unfinished (`pending`), and is not put back (false) when its workflow
-- propagates failures and one of its dependencies failed or was cancelled: retry the workflow
-- (skiplock.retry_workflow) to run those again as well.
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
        UPDATE skiplock.jobs
        SET state = 'available', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
            lease_token = NULL, max_attempts = greatest(max_attempts, attempt + 1)
        WHERE id = retry.job_id AND state IN ('failed', 'cancelled')
        RETURNING queue INTO job_queue;
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

-- skiplock.cancel(), as 0019's, taking a waiting workflow job's workflow row before the job
-- (the order settling takes them). A running job is only asked to stop: no workflow row.
CREATE OR REPLACE FUNCTION skiplock.cancel(job_id bigint) RETURNS skiplock.job_state
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current skiplock.job_state;
    flow bigint;
BEGIN
    PERFORM skiplock.reset_workflow_settings();
    SELECT state, workflow_id INTO current, flow FROM skiplock.jobs WHERE id = job_id;
    IF flow IS NOT NULL AND current <> 'running' THEN
        PERFORM FROM skiplock.workflows WHERE id = flow FOR UPDATE;
    END IF;
    SELECT state INTO current FROM skiplock.jobs WHERE id = job_id FOR UPDATE;
    IF current IN ('pending', 'scheduled', 'available', 'retryable') THEN
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

-- Retention: a workflow goes whole, jobs, dependency rows and all, once it finished longer ago
-- than `older_than_secs` (the pruner passes its longest retention), oldest first. The
-- pruner's per-state deletes leave workflow jobs alone. Returns how many workflows it deleted.
CREATE OR REPLACE FUNCTION skiplock.prune_workflows(older_than_secs double precision, max_workflows integer DEFAULT 1000)
RETURNS integer
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    WITH old AS (
        SELECT w.id FROM skiplock.workflows AS w
        WHERE w.finished_at < now() - make_interval(secs => older_than_secs)
        ORDER BY w.finished_at
        LIMIT max_workflows
        FOR UPDATE SKIP LOCKED
    ),
    jobs_gone AS (
        DELETE FROM skiplock.jobs AS j USING old
        WHERE j.workflow_id = old.id AND j.finished_at IS NOT NULL
    ),
    edges AS (
        DELETE FROM skiplock.job_dependencies AS d USING old WHERE d.workflow_id = old.id
    ),
    waits AS (
        DELETE FROM skiplock.pending_jobs AS p USING old WHERE p.workflow_id = old.id
    ),
    gone AS (
        DELETE FROM skiplock.workflows AS w USING old WHERE w.id = old.id RETURNING w.id
    )
    SELECT count(*)::integer FROM gone
$$;

REVOKE EXECUTE ON FUNCTION skiplock.reset_workflow_settings(),
                          skiplock.end_downstream(bigint[], skiplock.job_state, bigint),
                          skiplock.settle_pending(bigint[], bigint[]),
                          skiplock.settle_jobs(bigint[]),
                          skiplock.reconcile_workflows(bigint[]),
                          skiplock.workflow_job_changed(),
                          skiplock.workflow_job_deleted(),
                          skiplock.workflow_statement_done(),
                          skiplock.repair_workflows(integer)
    FROM PUBLIC;
