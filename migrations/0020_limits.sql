-- 0020: cluster-wide concurrency and rate limits. A limit (a "throttle") applies to a queue or
-- to a kind, across every worker: at most max_running of its jobs running at once (optionally
-- per partition: per value of one top-level key of the args, such as customer_id), and/or at
-- most max_starts starts per period_secs (a token bucket). docs/schema.md documents the tables,
-- the functions and the claim.
--
-- Running counts are never stored: a claim in a limited scope takes a transaction-level
-- advisory lock per scope (and per partition), then counts the scope's `running` rows under
-- that lock, so completions, failures, snoozes, cancels and rescues (from Rust or from SQL)
-- free their slot by changing the job's state, with no bookkeeping to keep right. Claims of
-- scopes without a limit take no lock and read nothing but one probe of an empty table.
--
-- Independent of 0019/0021 (workflows): it reads and writes no workflow column, and the claim
-- keeps the `state = 'available'` filter, so `pending` jobs are never claimed.

CREATE TABLE skiplock.throttles (
    id            bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Exactly one of queue and kind: the scope.
    queue         text,
    kind          text,
    -- NULL: one limit for the whole scope. Else the limit holds per value of args -> partition_key
    -- (jobs without the key share the partition `null`).
    partition_key text,
    -- Jobs of the scope (of each partition) running at once; NULL: no concurrency limit.
    max_running   integer,
    -- Starts per period_secs across the scope; NULL: no rate limit.
    max_starts    integer,
    period_secs   double precision,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    -- The role that set it last.
    updated_by    text,
    CONSTRAINT throttles_one_scope CHECK ((queue IS NULL) <> (kind IS NULL)),
    CONSTRAINT throttles_queue_length CHECK (char_length(queue) BETWEEN 1 AND 128),
    CONSTRAINT throttles_kind_length CHECK (char_length(kind) BETWEEN 1 AND 128),
    CONSTRAINT throttles_partition_key_length CHECK (char_length(partition_key) BETWEEN 1 AND 128),
    CONSTRAINT throttles_some_limit CHECK (max_running IS NOT NULL OR max_starts IS NOT NULL),
    CONSTRAINT throttles_max_running CHECK (max_running BETWEEN 1 AND 1000000),
    CONSTRAINT throttles_max_starts CHECK (max_starts BETWEEN 1 AND 1000000),
    CONSTRAINT throttles_rate CHECK ((max_starts IS NULL) = (period_secs IS NULL)),
    CONSTRAINT throttles_period CHECK (period_secs BETWEEN 1 AND 86400),
    -- A rate holds for the whole scope: per-partition buckets are not supported.
    CONSTRAINT throttles_rate_unpartitioned CHECK (max_starts IS NULL OR partition_key IS NULL)
);

-- One limit per scope and partition key (a queue may have a limit of its own and one per
-- customer_id besides).
CREATE UNIQUE INDEX throttles_scope_idx
    ON skiplock.throttles ((coalesce(queue, '')), (coalesce(kind, '')), (coalesce(partition_key, '')));

COMMENT ON TABLE skiplock.throttles IS
    'Cluster-wide limits on a queue or a kind (optionally per args key): max running jobs, max starts per period.';

-- The token bucket of each rate limit: tokens left at refilled_at; it refills at
-- max_starts / period_secs per second up to max_starts. Written under the throttle's lock.
CREATE TABLE skiplock.throttle_buckets (
    throttle_id bigint           PRIMARY KEY REFERENCES skiplock.throttles (id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    refilled_at timestamptz      NOT NULL
);

COMMENT ON TABLE skiplock.throttle_buckets IS
    'Token bucket state of the rate limits in skiplock.throttles; maintained by the claim.';

-- Sets (creates or replaces) the limit of one scope: exactly one of queue and kind, and
-- partition_key for a per-partition limit. Returns the limit's id. Changing the rate refills its
-- bucket. Workers of the scope are woken at commit, and claim under the new limit from their
-- next claim on (a claim already in flight when it commits may still start its jobs).
CREATE FUNCTION skiplock.set_limit(
    queue text DEFAULT NULL,
    kind text DEFAULT NULL,
    max_running integer DEFAULT NULL,
    max_starts integer DEFAULT NULL,
    period_secs double precision DEFAULT NULL,
    partition_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    limit_id bigint;
BEGIN
    -- Serializes concurrent set_limit calls, so the upsert below cannot race.
    PERFORM pg_catalog.pg_advisory_xact_lock(1936419956, 0);
    UPDATE skiplock.throttles AS t
    SET max_running = set_limit.max_running, max_starts = set_limit.max_starts,
        period_secs = set_limit.period_secs, updated_at = now(), updated_by = session_user
    WHERE coalesce(t.queue, '') = coalesce(set_limit.queue, '')
      AND coalesce(t.kind, '') = coalesce(set_limit.kind, '')
      AND coalesce(t.partition_key, '') = coalesce(set_limit.partition_key, '')
    RETURNING t.id INTO limit_id;
    IF limit_id IS NULL THEN
        INSERT INTO skiplock.throttles (queue, kind, partition_key, max_running, max_starts,
                                        period_secs, updated_by)
        VALUES (set_limit.queue, set_limit.kind, set_limit.partition_key, set_limit.max_running,
                set_limit.max_starts, set_limit.period_secs, session_user)
        RETURNING id INTO limit_id;
    END IF;
    DELETE FROM skiplock.throttle_buckets AS b WHERE b.throttle_id = limit_id;
    IF set_limit.max_starts IS NOT NULL THEN
        INSERT INTO skiplock.throttle_buckets (throttle_id, tokens, refilled_at)
        VALUES (limit_id, set_limit.max_starts, pg_catalog.clock_timestamp());
    END IF;
    PERFORM skiplock.wake_scope(set_limit.queue, set_limit.kind);
    RETURN limit_id;
END
$$;

COMMENT ON FUNCTION skiplock.set_limit(text, text, integer, integer, double precision, text) IS
    'Sets the concurrency and/or rate limit of a queue or a kind (optionally per args key); returns its id.';

-- Removes the limit of one scope; true when there was one. Its workers are woken at commit.
CREATE FUNCTION skiplock.clear_limit(
    queue text DEFAULT NULL,
    kind text DEFAULT NULL,
    partition_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM skiplock.throttles AS t
    WHERE coalesce(t.queue, '') = coalesce(clear_limit.queue, '')
      AND coalesce(t.kind, '') = coalesce(clear_limit.kind, '')
      AND coalesce(t.partition_key, '') = coalesce(clear_limit.partition_key, '');
    IF FOUND THEN
        PERFORM skiplock.wake_scope(clear_limit.queue, clear_limit.kind);
        RETURN true;
    END IF;
    RETURN false;
END
$$;

COMMENT ON FUNCTION skiplock.clear_limit(text, text, text) IS
    'Removes the limit of a queue or a kind (and partition key); true when there was one.';

-- Wakes the workers of a queue, or of every queue whose live workers run `kind`.
CREATE FUNCTION skiplock.wake_scope(queue text, kind text) RETURNS integer
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT skiplock.wake(CASE
        WHEN wake_scope.queue IS NOT NULL THEN ARRAY[wake_scope.queue]
        ELSE ARRAY(SELECT DISTINCT q FROM skiplock.workers AS w CROSS JOIN LATERAL unnest(w.queues) AS q
                   WHERE wake_scope.kind = ANY (w.kinds) AND w.stopped_at IS NULL)
    END)
$$;

-- Whether a limit applies to claims of `queue` by a worker running `kinds`: the probe that
-- sends a claim down the limited path.
CREATE FUNCTION skiplock.throttled(queue text, kinds text[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM skiplock.throttles AS t
                   WHERE t.queue = throttled.queue OR t.kind = ANY (throttled.kinds))
$$;

-- Claims up to max_jobs available jobs of `queue` of the given kinds under the limits that apply
-- (the Rust worker's claim and skiplock.claim both come here when skiplock.throttled says so).
-- Returns the claimed rows. How, and why it is race-free:
-- 1. Every applying limit without a partition key is locked with a transaction-level advisory
--    lock (pg_advisory_xact_lock(1936419956, id)), blocking, in ascending id order: claimers
--    that need several wait for each other in one order, so they cannot deadlock.
-- 2. Only then are the scope's running jobs counted, in a statement of their own: plpgsql takes
--    a new snapshot per statement (READ COMMITTED), and a claimer that held the lock before us
--    has committed (its jobs are visible as `running`) before it released the lock. So no two
--    claimers both see the same room. (Under REPEATABLE READ or SERIALIZABLE the snapshot would
--    predate the lock: refused.) Jobs finishing meanwhile only make the count err high.
-- 3. Rates: the bucket is refilled by the time since refilled_at, and whole tokens are room.
-- 4. Without per-partition limits, each kind's head is claimed as the plain claim does, limited
--    by the room of the queue's limits and of the kind's. With them, a window of the queue's
--    next jobs is read (at most 4 x max_jobs + 64 per kind) and walked in claim order: each new
--    partition is try-locked (pg_try_advisory_xact_lock on the limit's id and the value; one
--    another claimer holds is skipped this time, so waiting never happens in partition order and
--    cannot deadlock) and counted under its lock; a job is taken while every room it needs is
--    left. The chosen rows are then locked FOR UPDATE SKIP LOCKED and re-checked `available`.
-- 5. The buckets are charged for what was claimed.
-- The locks are released at commit, after the claimed rows became visible.
CREATE FUNCTION skiplock.claim_throttled(
    queue text,
    kinds text[],
    max_jobs integer,
    worker_id text,
    lease_secs double precision,
    max_bytes bigint DEFAULT 9223372036854775807,
    attempted_by_kept integer DEFAULT 100
) RETURNS SETOF skiplock.jobs
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    t skiplock.throttles;
    cand record;
    room_left integer := max_jobs;
    kind_rooms integer[];
    running integer;
    tokens double precision;
    partitioned skiplock.throttles[] := '{}';
    part_room jsonb := '{}';
    part_key text;
    part_value text;
    ok boolean;
    taken bigint[] := '{}';
    taken_kinds text[] := '{}';
    needed text[];
    i integer;
    now_ts timestamptz;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'skiplock.claim_throttled: a limited claim must run in a READ COMMITTED transaction'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    IF kinds IS NULL OR cardinality(kinds) = 0 OR max_jobs IS NULL OR max_jobs < 1 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM skiplock.queues AS p
               WHERE p.name = claim_throttled.queue AND p.paused_at IS NOT NULL) THEN
        RETURN;
    END IF;
    kind_rooms := array_fill(max_jobs, ARRAY[cardinality(kinds)]);
    -- 1. The scope locks, in id order.
    PERFORM pg_catalog.pg_advisory_xact_lock(1936419956, (th.id % 2147483647)::integer)
    FROM (SELECT th.id FROM skiplock.throttles AS th
          WHERE (th.queue = claim_throttled.queue OR th.kind = ANY (claim_throttled.kinds))
            AND th.partition_key IS NULL
          ORDER BY th.id) AS th;
    -- 2. and 3. The room_left each leaves, counted and refilled under its lock.
    now_ts := pg_catalog.clock_timestamp();
    FOR t IN SELECT th.* FROM skiplock.throttles AS th
             WHERE th.queue = claim_throttled.queue OR th.kind = ANY (claim_throttled.kinds)
             ORDER BY th.id
    LOOP
        IF t.partition_key IS NOT NULL THEN
            partitioned := partitioned || t;
            CONTINUE;
        END IF;
        IF t.max_running IS NOT NULL THEN
            IF t.queue IS NOT NULL THEN
                SELECT count(*) INTO running FROM skiplock.jobs AS j
                WHERE j.state = 'running' AND j.queue = t.queue;
            ELSE
                SELECT count(*) INTO running FROM skiplock.jobs AS j
                WHERE j.state = 'running' AND j.kind = t.kind;
            END IF;
            running := greatest(t.max_running - running, 0);
        ELSE
            running := max_jobs;
        END IF;
        IF t.max_starts IS NOT NULL THEN
            SELECT least(t.max_starts::double precision,
                         b.tokens + extract(epoch FROM now_ts - b.refilled_at)
                                    * t.max_starts / t.period_secs)
            INTO tokens
            FROM skiplock.throttle_buckets AS b WHERE b.throttle_id = t.id;
            tokens := coalesce(tokens, t.max_starts);
            running := least(running, floor(tokens)::integer);
        END IF;
        IF t.queue IS NOT NULL THEN
            room_left := least(room_left, running);
        ELSE
            FOR i IN 1 .. cardinality(kinds) LOOP
                IF kinds[i] = t.kind THEN
                    kind_rooms[i] := least(kind_rooms[i], running);
                END IF;
            END LOOP;
        END IF;
    END LOOP;

    IF room_left > 0 AND cardinality(partitioned) = 0 THEN
        -- 4. No partitions: the plain claim's heads, within the rooms.
        SELECT coalesce(array_agg(p.id), '{}'), coalesce(array_agg(p.kind), '{}')
        INTO taken, taken_kinds
        FROM (
            SELECT h.id, h.kind,
                   sum(h.size) OVER (ORDER BY h.priority, h.run_at, h.id) AS bytes,
                   row_number() OVER (ORDER BY h.priority, h.run_at, h.id) AS n
            FROM (
                SELECT head.id, head.kind, head.priority, head.run_at, head.size
                FROM unnest(kinds, kind_rooms) AS k(kind, room)
                CROSS JOIN LATERAL (
                    SELECT j.id, j.kind, j.priority, j.run_at, pg_column_size(j.args) AS size
                    FROM skiplock.jobs AS j
                    WHERE j.state = 'available' AND j.queue = claim_throttled.queue
                      AND j.kind = k.kind
                    ORDER BY j.priority, j.run_at, j.id
                    LIMIT least(k.room, room_left)
                    FOR UPDATE SKIP LOCKED
                ) AS head
                WHERE k.room > 0
                ORDER BY head.priority, head.run_at, head.id
                LIMIT room_left
            ) AS h
        ) AS p
        WHERE p.n = 1 OR p.bytes <= max_bytes;
    ELSIF room_left > 0 THEN
        -- 4. Partitions: walk a window of candidates (read without locks) in claim order.
        FOR cand IN
            SELECT head.id, head.kind, head.args
            FROM unnest(kinds, kind_rooms) AS k(kind, room)
            CROSS JOIN LATERAL (
                SELECT j.id, j.kind, j.args, j.priority, j.run_at
                FROM skiplock.jobs AS j
                WHERE j.state = 'available' AND j.queue = claim_throttled.queue AND j.kind = k.kind
                ORDER BY j.priority, j.run_at, j.id
                LIMIT 4 * max_jobs + 64
            ) AS head
            WHERE k.room > 0
            ORDER BY head.priority, head.run_at, head.id
        LOOP
            EXIT WHEN room_left <= 0;
            i := array_position(kinds, cand.kind);
            CONTINUE WHEN kind_rooms[i] <= 0;
            ok := true;
            needed := '{}';
            FOREACH t IN ARRAY partitioned LOOP
                CONTINUE WHEN NOT (t.queue = claim_throttled.queue OR t.kind = cand.kind);
                part_value := coalesce((cand.args -> t.partition_key)::text, 'null');
                part_key := t.id::text || ':' || part_value;
                IF NOT part_room ? part_key THEN
                    IF pg_catalog.pg_try_advisory_xact_lock(
                           pg_catalog.hashtextextended('skiplock.throttle:' || part_key, 1936419956)) THEN
                        IF t.queue IS NOT NULL THEN
                            SELECT count(*) INTO running FROM skiplock.jobs AS j
                            WHERE j.state = 'running' AND j.queue = t.queue
                              AND coalesce((j.args -> t.partition_key)::text, 'null') = part_value;
                        ELSE
                            SELECT count(*) INTO running FROM skiplock.jobs AS j
                            WHERE j.state = 'running' AND j.kind = t.kind
                              AND coalesce((j.args -> t.partition_key)::text, 'null') = part_value;
                        END IF;
                        part_room := part_room || jsonb_build_object(part_key, t.max_running - running);
                    ELSE
                        part_room := part_room || jsonb_build_object(part_key, 0);
                    END IF;
                END IF;
                IF (part_room ->> part_key)::integer <= 0 THEN
                    ok := false;
                    EXIT;
                END IF;
                needed := needed || part_key;
            END LOOP;
            CONTINUE WHEN NOT ok;
            FOREACH part_key IN ARRAY needed LOOP
                part_room := jsonb_set(part_room, ARRAY[part_key],
                                       to_jsonb((part_room ->> part_key)::integer - 1));
            END LOOP;
            taken := taken || cand.id;
            room_left := room_left - 1;
            kind_rooms[i] := kind_rooms[i] - 1;
        END LOOP;
        -- Lock what was chosen; a row another claimer took meanwhile is left out.
        SELECT coalesce(array_agg(j.id), '{}'), coalesce(array_agg(j.kind), '{}')
        INTO taken, taken_kinds
        FROM (SELECT j.id, j.kind FROM skiplock.jobs AS j
              WHERE j.id = ANY (taken) AND j.state = 'available'
              FOR UPDATE SKIP LOCKED) AS j;
    END IF;

    IF cardinality(taken) = 0 THEN
        RETURN;
    END IF;
    -- 5. Charge the buckets (refilled to now first).
    UPDATE skiplock.throttle_buckets AS b
    SET tokens = least(th.max_starts::double precision,
                       b.tokens + extract(epoch FROM now_ts - b.refilled_at)
                                  * th.max_starts / th.period_secs)
                 - CASE WHEN th.queue IS NOT NULL THEN cardinality(taken)
                        ELSE (SELECT count(*) FROM unnest(taken_kinds) AS k WHERE k = th.kind) END,
        refilled_at = now_ts
    FROM skiplock.throttles AS th
    WHERE b.throttle_id = th.id AND th.max_starts IS NOT NULL
      AND (th.queue = claim_throttled.queue OR th.kind = ANY (taken_kinds));

    RETURN QUERY
    UPDATE skiplock.jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        attempted_at = now(),
        attempted_by = (array_append(j.attempted_by, worker_id))
                           [greatest(cardinality(j.attempted_by) + 2 - attempted_by_kept, 1):],
        lease_expires_at = now() + make_interval(secs => lease_secs),
        lease_token = nextval('skiplock.lease_token_seq')
    WHERE j.id = ANY (taken)
    RETURNING j.*;
END
$$;

COMMENT ON FUNCTION skiplock.claim_throttled(text, text[], integer, text, double precision, bigint, integer) IS
    'Claims jobs of a queue under the concurrency and rate limits that apply; see docs/schema.md.';

-- Seconds until the next start a rate limit applying to `queue` and `kinds` allows (0 when one
-- is allowed now; NULL when no rate limit applies). A worker held by a rate sleeps this long.
CREATE FUNCTION skiplock.throttle_wait(queue text, kinds text[]) RETURNS double precision
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT max(greatest(0, (1 - least(t.max_starts::double precision,
                                      b.tokens + extract(epoch FROM clock_timestamp() - b.refilled_at)
                                                 * t.max_starts / t.period_secs))
                          * t.period_secs / t.max_starts))
    FROM skiplock.throttles AS t
    JOIN skiplock.throttle_buckets AS b ON b.throttle_id = t.id
    WHERE t.queue = throttle_wait.queue OR t.kind = ANY (throttle_wait.kinds)
$$;

-- The SQL worker protocol's claim (0018), unchanged but for limits: a queue a limit applies to is
-- claimed through skiplock.claim_throttled (the plain statement also refuses a queue a limit
-- applies to, for a limit set between the probe and the statement).
CREATE OR REPLACE FUNCTION skiplock.claim(
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
        IF skiplock.throttled(q, kinds) THEN
            RETURN QUERY
            SELECT c.id, c.kind, c.queue, c.args, c.attempt, c.max_attempts, c.lease_token,
                   c.lease_expires_at, c.timeout_secs, c.progress
            FROM skiplock.claim_throttled(q, kinds, wanted, worker_id, lease_secs) AS c;
        ELSE
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
                WHERE NOT EXISTS (SELECT FROM skiplock.throttles AS t
                                  WHERE t.queue = q OR t.kind = ANY (kinds))
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
        END IF;
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

-- Operators and workers call these (the worker level gets every function, as for pause_queue);
-- observers read the tables; nobody else.
REVOKE EXECUTE ON FUNCTION
    skiplock.set_limit(text, text, integer, integer, double precision, text),
    skiplock.clear_limit(text, text, text),
    skiplock.wake_scope(text, text),
    skiplock.throttled(text, text[]),
    skiplock.claim_throttled(text, text[], integer, text, double precision, bigint, integer),
    skiplock.throttle_wait(text, text[])
FROM PUBLIC;
