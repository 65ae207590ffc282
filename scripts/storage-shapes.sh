#!/usr/bin/env bash
# Raw-SQL drain rates of storage shapes for a SKIP LOCKED queue, each with the indexes skiplock
# needs, through pgbench (prepared statements, CLIENTS clients): what "write less per job" can buy
# before any of it is built (issue 13; docs/performance.md, "Storage shapes").
#
#   ceiling   the shape of ../shared/bench/pg-limit.sh's raw ceiling: one table, its primary key
#             and the claim index; claim UPDATE + completion UPDATE, rows kept (here with a lease
#             column that the claim sets and the completion clears, as in every shape below).
#   inplace   the same statements with skiplock's two other indexes that every job enters:
#             the rescuer's (lease expiry of running jobs) and the pruner's and inspection's
#             (state, queue, kind, id of finished jobs).
#   inplace-lease, inplace-finished   `inplace` with only one of the two, to tell their costs apart.
#   finish-moves   claims update in place (with the lease index); the completion moves the row
#             into a `done` table (primary key, finished index) with DELETE ... RETURNING.
#   move      no updates: a narrow `ready` table (primary key, claim index); the claim moves rows
#             with DELETE ... RETURNING into `running` (primary key, lease index), the completion
#             moves them into `done` (primary key, finished index), where they stay queryable.
#   move-bare `move` with primary keys only (no lease or finished index; close to
#             ../shared/bench/design-ceilings.sh move, whose `done` has no index at all).
#   partitioned  `move` by PostgreSQL's own means: one `jobs` table partitioned by state
#             (`ready`, `running`, `done`), every index of `inplace` declared on it (the primary
#             key must include the partition key: (id, state)), and `inplace`'s statements, each
#             naming the state it moves from, so an UPDATE that changes the state moves the row.
#             With more than one client, claims fail ("tuple to be locked was already moved to
#             another partition due to concurrent update"): see `failed_transactions`.
#   combined  `ceiling`'s table and statements, but each client completes its previous batch and
#             claims the next in one statement (the completion in the claim's WITH): one
#             statement per batch instead of two (performance.md, "What a statement costs").
# Rows are narrow (10-11 columns, not skiplock's 26) and the claim index has no `kind`: the shapes
# differ in what they write per job, not in skiplock's statements. Two shapes measure skiplock's
# own rows and statements instead:
#   skiplock  the migrated schema (`skiplock migrate`: 26 columns, 15 CHECK constraints, every
#             index, its triggers) and the claim and completion statements adapted from
#             src/db/job.rs (`claim`, `complete_many`): one kind, from the head; the claim on
#             the producers' session settings (a generic plan, no sequential scans, no JIT),
#             the completion on the completer's (the server's plan settings). Adapted: two
#             more statements per batch set and reset those settings; the claim's
#             rows are aggregated on the server (`\gset` takes one row) rather than sent; the
#             worker id, lease, byte bound and `attempted_by` bound are literals; every job
#             completes, its outcome arrays built on the server with `array_fill`; the
#             completion's grouping names the state; the worker's separate `job_stats` write
#             is left out.
#   skiplock-move  the same rows, constraints and statements on `move`'s layout: tables `ready`,
#             `running` and `done` made LIKE skiplock.jobs (columns, defaults, CHECK constraints,
#             storage settings), each keeping the indexes its rows need (`ready` the claim and
#             due indexes, `running` the lease index, `done` the finished index; all three the
#             primary key and the partial unique, schedule and workflow indexes, which plain jobs
#             never enter); the claim's UPDATE becomes a DELETE ... RETURNING feeding an INSERT
#             into `running`, the completion's likewise into `done`, which gets the workflow
#             triggers the completion fires on skiplock.jobs (LIKE copies none). Uniqueness
#             across the three tables is not enforced: this measures what the layout writes,
#             not a design.
#
# Usage: scripts/storage-shapes.sh SHAPE...   (default: ceiling inplace move move-bare, in turn)
# SHOW=1 prints pgbench's own report too, with each statement's mean latency (pgbench -r).
# Env: PGHOST PGPORT PGUSER (127.0.0.1 5432 postgres), BATCH=1000 DURATION=10 ROWS=1000000,
# SKIPLOCK=target/release/skiplock (the CLI that migrates the skiplock shapes' database),
# FILLFACTOR=100 (of the one-table shapes' jobs table; the moving shapes never update a row),
# CLIENTS=1 (each claiming BATCH at a time).
# Prints one JSON line per shape. Run it against scripts/stock-cluster.sh for stock settings.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
BATCH=${BATCH:-1000} DURATION=${DURATION:-10} ROWS=${ROWS:-1000000} FILLFACTOR=${FILLFACTOR:-100}
CLIENTS=${CLIENTS:-1} SKIPLOCK=${SKIPLOCK:-target/release/skiplock}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

columns="queue text NOT NULL DEFAULT 'default', kind text NOT NULL, args jsonb NOT NULL DEFAULT '{}',
  priority smallint NOT NULL DEFAULT 0, attempt int NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(), attempted_at timestamptz, finished_at timestamptz,
  lease_expires_at timestamptz"

one_table() { # $1: extra indexes
  cat <<SQL
CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, $columns,
  state text NOT NULL DEFAULT 'available') WITH (fillfactor = $FILLFACTOR);
INSERT INTO jobs (kind, args) SELECT 'noop', jsonb_build_object('i', g) FROM generate_series(1, $ROWS) g;
CREATE INDEX jobs_claim ON jobs (queue, priority, run_at, id) WHERE state = 'available';
$1
VACUUM ANALYZE jobs;
SQL
}

# The claim of the one-table shapes, as CTEs `c` and `u` after `WITH` (and $1, if given, as a
# CTE before them), setting :ids to the claimed jobs' ids.
one_table_claim() {
  cat <<SQL
WITH $1c AS (
  SELECT id FROM jobs WHERE state = 'available' AND queue = 'default' AND run_at <= now()
  ORDER BY priority, run_at, id LIMIT $BATCH FOR UPDATE SKIP LOCKED
), u AS (
  UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
                    lease_expires_at = now() + interval '30 s'
  FROM c WHERE j.id = c.id RETURNING j.id
)
SELECT coalesce(array_agg(id), '{}') AS ids FROM u \gset
SQL
}

completion="UPDATE jobs SET state = 'completed', finished_at = now(), lease_expires_at = NULL
WHERE id = ANY (:ids::bigint[]) AND state = 'running'"

one_table_step() {
  one_table_claim ""
  echo "$completion;"
}

partitioned() {
  cat <<SQL
CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY, $columns,
  state text NOT NULL DEFAULT 'available', PRIMARY KEY (id, state)) PARTITION BY LIST (state);
CREATE TABLE ready PARTITION OF jobs FOR VALUES IN ('available');
CREATE TABLE running PARTITION OF jobs FOR VALUES IN ('running');
CREATE TABLE done PARTITION OF jobs DEFAULT;
INSERT INTO jobs (kind, args) SELECT 'noop', jsonb_build_object('i', g) FROM generate_series(1, $ROWS) g;
CREATE INDEX jobs_claim ON jobs (queue, priority, run_at, id) WHERE state = 'available';
$lease_index
$finished_index
VACUUM ANALYZE jobs;
SQL
}

# `inplace`'s claim, its UPDATE naming the state it moves rows from (which prunes it to one
# partition), and its completion (which names it already).
partitioned_step() {
  one_table_claim "" | sed 's/FROM c WHERE j.id = c.id/FROM c WHERE j.id = c.id AND j.state = '"'available'"'/'
  echo "$completion;"
}

# One statement per batch: the previous batch's completion (its ids in a pgbench variable,
# `{}` at first) and the next claim.
combined_step() {
  one_table_claim "done AS (
  $completion
), "
}

moved() { # $1: extra indexes
  cat <<SQL
CREATE TABLE ready (id bigint PRIMARY KEY, $columns);
CREATE TABLE running (id bigint PRIMARY KEY, $columns);
CREATE TABLE done (id bigint PRIMARY KEY, $columns, state text NOT NULL);
INSERT INTO ready (id, kind, args) SELECT g, 'noop', jsonb_build_object('i', g) FROM generate_series(1, $ROWS) g;
CREATE INDEX ready_claim ON ready (queue, priority, run_at, id);
$1
VACUUM ANALYZE ready;
SQL
}

moved_step() {
  cat <<SQL
WITH c AS (
  SELECT id FROM ready WHERE queue = 'default' AND run_at <= now()
  ORDER BY priority, run_at, id LIMIT $BATCH FOR UPDATE SKIP LOCKED
), d AS (
  DELETE FROM ready r USING c WHERE r.id = c.id RETURNING r.*
), i AS (
  INSERT INTO running
  SELECT id, queue, kind, args, priority, attempt + 1, run_at, now(), NULL, now() + interval '30 s'
  FROM d RETURNING id
)
SELECT coalesce(array_agg(id), '{}') AS ids FROM i \gset
WITH d AS (DELETE FROM running WHERE id = ANY (:ids::bigint[]) RETURNING *)
INSERT INTO done
SELECT id, queue, kind, args, priority, attempt, run_at, attempted_at, now(), NULL, 'completed' FROM d;
SQL
}

# The `skiplock` shapes: the migrated schema, ROWS no-op jobs in skiplock.jobs. $1: more setup.
skiplock_setup() {
  cat <<SQL
INSERT INTO skiplock.jobs (queue, kind, args)
SELECT 'default', 'noop', jsonb_build_object('i', g) FROM generate_series(1, $ROWS) g;
$1
VACUUM ANALYZE;
SQL
}

# `move`'s tables with skiplock's rows: LIKE skiplock.jobs, each keeping the indexes it needs.
skiplock_move_tables() {
  cat <<'SQL'
DO $$
DECLARE
  t text;
  options text[] := (SELECT reloptions FROM pg_class WHERE oid = 'skiplock.jobs'::regclass);
  i record;
BEGIN
  FOREACH t IN ARRAY ARRAY['ready', 'running', 'done'] LOOP
    EXECUTE format('CREATE TABLE skiplock.%I (LIKE skiplock.jobs INCLUDING ALL EXCLUDING IDENTITY)', t);
    IF options IS NOT NULL THEN
      EXECUTE format('ALTER TABLE skiplock.%I SET (%s)', t, array_to_string(options, ', '));
    END IF;
    FOR i IN SELECT indexrelid::regclass AS name, pg_get_indexdef(indexrelid) AS def
             FROM pg_index WHERE indrelid = format('skiplock.%I', t)::regclass LOOP
      IF (i.def LIKE '%(lease_expires_at)%' AND t <> 'running')
         OR (i.def LIKE '%(queue, kind, priority, run_at, id)%' AND t <> 'ready')
         OR (i.def LIKE '%(run_at)%' AND t <> 'ready')
         OR (i.def LIKE '%(state, queue, kind, id)%' AND t <> 'done') THEN
        EXECUTE format('DROP INDEX %s', i.name);
      END IF;
    END LOOP;
  END LOOP;
END $$;
-- What a completion fires on skiplock.jobs (0022): a row trigger whose WHEN plain jobs fail,
-- and the statement trigger.
CREATE TRIGGER done_workflow_changed AFTER INSERT ON skiplock.done FOR EACH ROW
  WHEN (NEW.workflow_id IS NOT NULL) EXECUTE FUNCTION skiplock.workflow_job_changed();
CREATE TRIGGER done_workflow_settled AFTER INSERT ON skiplock.done FOR EACH STATEMENT
  EXECUTE FUNCTION skiplock.workflow_statement_done();
INSERT INTO skiplock.ready SELECT * FROM skiplock.jobs;
TRUNCATE skiplock.jobs;
SQL
}

# The head of `claim` (src/db/job.rs) reading table $1, its parameters pgbench variables,
# after the producers' session settings (src/db/session.rs; one statement, one round trip).
skiplock_claim_head() {
  cat <<SQL
SELECT set_config('plan_cache_mode', 'force_generic_plan', false),
       set_config('enable_seqscan', 'off', false), set_config('jit', 'off', false);
WITH heads AS MATERIALIZED (
  SELECT head.id, head.priority, head.run_at, head.size
  FROM unnest(:kinds::text[], :prios::int2[], :runats::timestamptz[], :heads::int8[])
    AS k(kind, priority, run_at, id)
  CROSS JOIN LATERAL (
    SELECT j.id, j.priority, j.run_at, pg_column_size(j.args) AS size
    FROM $1 AS j
    WHERE j.state = 'available' AND j.queue = :queue AND j.kind = k.kind
      AND (j.priority, j.run_at, j.id) >= (k.priority, coalesce(k.run_at, '-infinity'), k.id)
    ORDER BY j.priority, j.run_at, j.id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
  ) AS head
  WHERE NOT EXISTS (SELECT FROM skiplock.queues AS q WHERE q.name = :queue AND q.paused_at IS NOT NULL)
    AND NOT EXISTS (SELECT FROM skiplock.throttles AS t WHERE t.queue = :queue OR t.kind = ANY (:kinds::text[]))
  ORDER BY head.priority, head.run_at, head.id
  LIMIT :batch
), picked AS (
  SELECT id FROM (SELECT id, sum(size) OVER (ORDER BY priority, run_at, id) AS bytes,
                         row_number() OVER (ORDER BY priority, run_at, id) AS n FROM heads) AS h
  WHERE h.n = 1 OR h.bytes <= 16777216
),
SQL
}

# What `claim` returns, and the ids and lease tokens the completion needs.
skiplock_claim_returning="RETURNING j.id, j.kind, j.queue, j.args::text AS args, j.priority, j.attempt,
    j.max_attempts,
    CASE WHEN isfinite(j.created_at) AND j.created_at < '262000-01-01' THEN j.created_at END AS created_at,
    CASE WHEN cardinality(j.tags) = 0 THEN '{}'::text[]
         ELSE ARRAY(SELECT tag FROM unnest(j.tags) WITH ORDINALITY AS t(tag, n)
                    WHERE tag IS NOT NULL ORDER BY n) END AS tags,
    j.lease_token, j.timeout_secs, j.metadata ->> 'traceparent' AS traceparent,
    extract(epoch FROM now() - j.run_at)::float8 AS pickup_lag_secs,
    CASE WHEN isfinite(j.run_at) AND j.run_at < '262000-01-01' THEN j.run_at END AS run_at_,
    (SELECT count(*) FROM heads) > (SELECT count(*) FROM picked) AS cut_by_bytes
)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(lease_token), '{}') AS toks,
       sum(length(args)) AS bytes FROM u \\gset
SELECT set_config('plan_cache_mode', 'auto', false), set_config('enable_seqscan', 'on', false),
       set_config('jit', 'on', false);"

# `complete_many`'s outcomes: every job completed.
skiplock_outcomes="unnest(:ids::bigint[], :toks::bigint[],
    array_fill('completed'::skiplock.job_state, ARRAY[cardinality(:ids::bigint[])]),
    array_fill(NULL::jsonb, ARRAY[cardinality(:ids::bigint[])]),
    array_fill(NULL::text, ARRAY[cardinality(:ids::bigint[])]),
    array_fill(NULL::text, ARRAY[cardinality(:ids::bigint[])]),
    array_fill(0::float8, ARRAY[cardinality(:ids::bigint[])]),
    array_fill(false, ARRAY[cardinality(:ids::bigint[])]))
  AS o(id, lease_token, state, result, error_kind, error_message, retry_in_secs, give_back)"

# The end of `complete_many`: wake-ups, waiters, limits, stats rows, from CTE `done`.
skiplock_completion_tail="woken AS (
  SELECT count(pg_notify('skiplock_wake', q))
  FROM (SELECT DISTINCT queue AS q FROM done WHERE state = 'available') AS w
), waited AS (
  SELECT skiplock.notify_waiters(array_agg(d.id)) FROM done AS d
), freed AS (
  SELECT count(pg_notify('skiplock_wake', q))
  FROM (SELECT DISTINCT d.queue AS q FROM done AS d
        WHERE EXISTS (SELECT FROM skiplock.throttles)
          AND EXISTS (SELECT FROM skiplock.throttles AS t
                      WHERE t.queue = d.queue OR t.kind = d.kind)) AS f
)
SELECT array_agg(id), queue, kind, state::text FROM done, woken, waited, freed GROUP BY 2, 3, 4;"

skiplock_step() {
  skiplock_claim_head skiplock.jobs
  cat <<SQL
u AS (
  UPDATE skiplock.jobs AS j
  SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
      attempted_by = (array_append(j.attempted_by, 'w'))[greatest(cardinality(j.attempted_by) + 2 - 100, 1):],
      lease_expires_at = now() + make_interval(secs => 30),
      lease_token = nextval('skiplock.lease_token_seq')
  WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
  $skiplock_claim_returning
WITH done AS (
  UPDATE skiplock.jobs AS j
  SET state = o.state, result = o.result,
      attempt = CASE WHEN o.give_back THEN j.attempt - 1 ELSE j.attempt END,
      errors = CASE WHEN o.error_kind IS NULL THEN j.errors
                    ELSE j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt,
                           'at', now(), 'kind', o.error_kind, 'message', o.error_message,
                           'worker', j.attempted_by[cardinality(j.attempted_by)])) END,
      finished_at = CASE WHEN o.state IN ('completed', 'failed', 'cancelled') THEN now() END,
      run_at = CASE WHEN o.give_back AND o.state = 'available' THEN j.run_at
                    WHEN o.state IN ('retryable', 'available', 'scheduled')
                    THEN now() + make_interval(secs => o.retry_in_secs)
                    ELSE j.run_at END,
      lease_expires_at = NULL, lease_token = NULL
  FROM $skiplock_outcomes
  WHERE j.id = o.id AND j.lease_token = o.lease_token
  RETURNING j.id, j.queue, j.kind, j.state, o.error_kind
), $skiplock_completion_tail
SQL
}

skiplock_columns="id, queue, kind, args, state, priority, attempt, max_attempts, run_at, created_at,
  attempted_at, finished_at, lease_expires_at, attempted_by, errors, result, tags, lease_token,
  timeout_secs, cancel_requested_at, unique_key, unique_states, progress, schedule, metadata,
  workflow_id"

skiplock_move_step() {
  skiplock_claim_head skiplock.ready
  cat <<SQL
d AS (
  DELETE FROM skiplock.ready AS r WHERE r.id = ANY (ARRAY(SELECT id FROM picked)) RETURNING r.*
), u AS (
  INSERT INTO skiplock.running AS j ($skiplock_columns)
  SELECT id, queue, kind, args, 'running', priority, attempt + 1, max_attempts, run_at, created_at,
    now(), finished_at, now() + make_interval(secs => 30),
    (array_append(attempted_by, 'w'))[greatest(cardinality(attempted_by) + 2 - 100, 1):],
    errors, result, tags, nextval('skiplock.lease_token_seq'), timeout_secs, cancel_requested_at,
    unique_key, unique_states, progress, schedule, metadata, workflow_id
  FROM d
  $skiplock_claim_returning
WITH d AS (
  DELETE FROM skiplock.running AS j USING $skiplock_outcomes
  WHERE j.id = o.id AND j.lease_token = o.lease_token
  RETURNING j.*, o.state AS o_state, o.result AS o_result, o.error_kind AS o_error_kind,
    o.error_message AS o_error_message, o.retry_in_secs AS o_retry_in_secs,
    o.give_back AS o_give_back
), done AS (
  INSERT INTO skiplock.done ($skiplock_columns)
  SELECT id, queue, kind, args, o_state, priority,
    CASE WHEN o_give_back THEN attempt - 1 ELSE attempt END, max_attempts,
    CASE WHEN o_give_back AND o_state = 'available' THEN run_at
         WHEN o_state IN ('retryable', 'available', 'scheduled')
         THEN now() + make_interval(secs => o_retry_in_secs)
         ELSE run_at END,
    created_at, attempted_at,
    CASE WHEN o_state IN ('completed', 'failed', 'cancelled') THEN now() END, NULL, attempted_by,
    CASE WHEN o_error_kind IS NULL THEN errors
         ELSE errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', now(),
                'kind', o_error_kind, 'message', o_error_message,
                'worker', attempted_by[cardinality(attempted_by)])) END,
    o_result, tags, NULL, timeout_secs, cancel_requested_at, unique_key, unique_states, progress,
    schedule, metadata, workflow_id
  FROM d
  RETURNING id, queue, kind, state
), $skiplock_completion_tail
SQL
}

# skiplock's lease index (0005) and finished index (0014), on the one-table shapes' jobs table.
lease_index="CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;"
finished_index="CREATE INDEX jobs_finished ON jobs (state, queue, kind, id)
  WHERE state NOT IN ('available', 'running');"

run() {
  local shape=$1 db="skiplock_shape_${1//-/_}"
  local count="SELECT count(*) FROM jobs WHERE state = 'completed'"
  case $shape in
    ceiling | inplace | inplace-lease | inplace-finished)
      case $shape in
        ceiling) one_table "" ;;
        inplace) one_table "$lease_index
$finished_index" ;;
        inplace-lease) one_table "$lease_index" ;;
        inplace-finished) one_table "$finished_index" ;;
      esac >"$work/setup.sql"
      one_table_step >"$work/step.sql" ;;
    finish-moves)
      one_table "$lease_index
CREATE TABLE done (id bigint PRIMARY KEY, $columns, state text NOT NULL);
CREATE INDEX done_finished ON done (state, queue, kind, id);" >"$work/setup.sql"
      one_table_step | sed '/^UPDATE jobs SET state = .completed./,$d' >"$work/step.sql"
      cat >>"$work/step.sql" <<SQL
WITH d AS (DELETE FROM jobs WHERE id = ANY (:ids::bigint[]) AND state = 'running' RETURNING *)
INSERT INTO done
SELECT id, queue, kind, args, priority, attempt, run_at, attempted_at, now(), NULL, 'completed' FROM d;
SQL
      count="SELECT count(*) FROM done" ;;
    move)
      moved "CREATE INDEX running_lease ON running (lease_expires_at);
CREATE INDEX done_finished ON done (state, queue, kind, id);" >"$work/setup.sql"
      moved_step >"$work/step.sql"
      count="SELECT count(*) FROM done" ;;
    move-bare) moved "" >"$work/setup.sql"; moved_step >"$work/step.sql"
      count="SELECT count(*) FROM done" ;;
    partitioned) partitioned >"$work/setup.sql"; partitioned_step >"$work/step.sql" ;;
    combined) one_table "" >"$work/setup.sql"; combined_step >"$work/step.sql" ;;
    skiplock) skiplock_setup "" >"$work/setup.sql"; skiplock_step >"$work/step.sql"
      count="SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'" ;;
    skiplock-move)
      skiplock_setup "$(skiplock_move_tables)" >"$work/setup.sql"
      skiplock_move_step >"$work/step.sql"
      count="SELECT count(*) FROM skiplock.done" ;;
    *) echo "unknown shape $shape: ceiling, inplace, inplace-lease, inplace-finished, finish-moves, move, move-bare, partitioned, combined, skiplock or skiplock-move" >&2; exit 2 ;;
  esac
  PGOPTIONS="-c client_min_messages=warning" dropdb --if-exists "$db"
  createdb "$db"
  local vars=()
  if [[ $shape == skiplock* ]]; then
    "$SKIPLOCK" --database-url "postgres://$PGUSER@$PGHOST:$PGPORT/$db" migrate >/dev/null
    # The claim's parameters.
    vars=(-D queue=default -D kinds='{noop}' -D prios='{-32768}' -D runats='{NULL}'
      -D heads='{-9223372036854775808}' -D batch="$BATCH" -D toks='{}')
  fi
  psql -qX -v ON_ERROR_STOP=1 -d "$db" -f "$work/setup.sql"
  psql -qX -d "$db" -c CHECKPOINT
  local before done_rows wal failed
  before=$(psql -AtqX -d "$db" -c "SELECT pg_current_wal_insert_lsn()")
  if ! pgbench -n ${SHOW:+-r} -M prepared -c "$CLIENTS" -j "$CLIENTS" -D ids='{}' \
    ${vars[@]+"${vars[@]}"} -T "$DURATION" -f "$work/step.sql" "$db" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    exit 1
  fi
  [ -z "${SHOW:-}" ] || cat "$work/out" >&2
  done_rows=$(psql -AtqX -d "$db" -c "$count")
  # pgbench (15+) counts a transaction that failed with a serialization error and goes on.
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/out")
  wal=$(psql -AtqX -d "$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$before')")
  if [ "$done_rows" -ge "$ROWS" ]; then
    echo "$shape: all $ROWS jobs drained before $DURATION s: the rate is a floor; raise ROWS" >&2
  fi
  python3 -c "import json; print(json.dumps({'shape': '$shape', 'batch': $BATCH, 'clients': $CLIENTS,
    'seconds': $DURATION,
    'fillfactor': $FILLFACTOR, 'done': $done_rows, 'jobs_per_s': round($done_rows / $DURATION, 1),
    'failed_transactions': ${failed:-0},
    'wal_bytes_per_job': round($wal / max($done_rows, 1))}))"
  dropdb "$db"
}

shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(ceiling inplace move move-bare)
for shape in "${shapes[@]}"; do run "$shape"; done
