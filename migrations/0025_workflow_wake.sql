-- 0025: a workflow's first jobs wake their queues, as every other enqueue does (0006).
-- docs/workflows.md and docs/schema.md describe it.
--
-- skiplock.enqueue_workflow inserted the jobs that wait for nothing as `available` without a
-- notification: idle workers found them at their next poll (1 s by default), not within
-- milliseconds. It is 0022's function with the wake-up added at its end (CREATE OR REPLACE
-- keeps its owner, its grants and SECURITY DEFINER).

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

    -- New in 0025: each queue that got a runnable job is woken once (delivered at commit).
    PERFORM pg_notify('skiplock_wake', q.queue)
    FROM (SELECT DISTINCT j.queue FROM skiplock.jobs AS j
          WHERE j.id = ANY (enqueue_workflow.job_ids) AND j.state = 'available') AS q;
END
$$;
