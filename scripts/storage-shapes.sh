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
# Rows are narrow (10 columns, not skiplock's 26) and the claim index has no `kind`: the shapes
# differ in what they write per job, not in skiplock's statements.
#
# Usage: scripts/storage-shapes.sh SHAPE...   (default: ceiling inplace move move-bare, in turn)
# SHOW=1 prints pgbench's own report too.
# Env: PGHOST PGPORT PGUSER (127.0.0.1 5432 postgres), BATCH=1000 DURATION=10 ROWS=1000000,
# FILLFACTOR=100 (of the one-table shapes' jobs table; the moving shapes never update a row),
# CLIENTS=1 (each claiming BATCH at a time).
# Prints one JSON line per shape. Run it against scripts/stock-cluster.sh for stock settings.
set -euo pipefail
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
BATCH=${BATCH:-1000} DURATION=${DURATION:-10} ROWS=${ROWS:-1000000} FILLFACTOR=${FILLFACTOR:-100}
CLIENTS=${CLIENTS:-1}
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
    *) echo "unknown shape $shape: ceiling, inplace, inplace-lease, inplace-finished, finish-moves, move, move-bare, partitioned or combined" >&2; exit 2 ;;
  esac
  PGOPTIONS="-c client_min_messages=warning" dropdb --if-exists "$db"
  createdb "$db"
  psql -qX -v ON_ERROR_STOP=1 -d "$db" -f "$work/setup.sql"
  psql -qX -d "$db" -c CHECKPOINT
  local before done_rows wal failed
  before=$(psql -AtqX -d "$db" -c "SELECT pg_current_wal_insert_lsn()")
  if ! pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -D ids='{}' -T "$DURATION" \
    -f "$work/step.sql" "$db" >"$work/out" 2>&1; then
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
