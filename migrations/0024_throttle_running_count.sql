-- 0024: a limited claim counts its scope's running jobs through the lease index.
--
-- 0020's claim_throttled counted `running` rows with `state = 'running' AND queue = ...`. No
-- index covers that (the claim index holds `available` rows, 0014's index neither `available`
-- nor `running` ones), so every limited claim read the whole jobs table: 36 ms per claim at
-- 200,000 rows, growing with the finished jobs kept. Running rows, and only they, have a lease
-- (0005's jobs_lease_iff_running), and jobs_lease_expiry_idx holds exactly them: the count now
-- names the lease, and costs a scan of the running rows (0.06 ms for 100 of them). The bound is
-- written `lease_expires_at >= '-infinity'` (true of every lease) rather than `IS NOT NULL`:
-- without statistics (a new table, autovacuum behind) the planner chose a sequential scan for
-- `IS NOT NULL`, never for the range.
--
-- Only the four counts change; the rest of the function is 0020's.

CREATE OR REPLACE FUNCTION skiplock.claim_throttled(
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
                WHERE j.lease_expires_at >= '-infinity' AND j.state = 'running' AND j.queue = t.queue;
            ELSE
                SELECT count(*) INTO running FROM skiplock.jobs AS j
                WHERE j.lease_expires_at >= '-infinity' AND j.state = 'running' AND j.kind = t.kind;
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
                            WHERE j.lease_expires_at >= '-infinity' AND j.state = 'running' AND j.queue = t.queue
                              AND coalesce((j.args -> t.partition_key)::text, 'null') = part_value;
                        ELSE
                            SELECT count(*) INTO running FROM skiplock.jobs AS j
                            WHERE j.lease_expires_at >= '-infinity' AND j.state = 'running' AND j.kind = t.kind
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
