#!/usr/bin/env bash
# A throwaway PostgreSQL cluster with the distribution's stock settings, for benchmarks that
# must describe what users run: autovacuum on, shared_buffers 128 MB, fsync and synchronous
# commits on (initdb's defaults, nothing overridden but the port, the socket directory and the
# listen address). This machine's own server turns autovacuum off; figures for
# docs/performance.md come from both.
#
#   scripts/stock-cluster.sh start [PORT]   # initdb + start (default port 5433); prints the URL
#   scripts/stock-cluster.sh url [PORT]     # the URL of a running one
#   scripts/stock-cluster.sh stop [PORT]    # stop it, keep its data
#   scripts/stock-cluster.sh remove [PORT]  # stop it and delete its data
#
# PostgreSQL refuses to run as root: the cluster belongs to the `postgres` system user. Its data
# lives in /tmp/skiplock-stock-PORT; it accepts local connections only (127.0.0.1, trust), and
# has a database `bench`. The peers harness and pg-limit.sh take PGHOST=127.0.0.1 PGPORT=PORT.
set -euo pipefail
cmd=${1:-start}
port=${2:-5433}
dir=/tmp/skiplock-stock-$port
data=$dir/data
url="postgres://postgres@127.0.0.1:$port/bench"

bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$found" ]; then
    echo "no PostgreSQL server binaries: apt-get install postgresql" >&2
    exit 1
  fi
  echo "$found"
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

running() {
  [ -f "$data/postmaster.pid" ] && as_postgres "$(bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1
}

case $cmd in
  start)
    bin=$(bindir)
    if running; then
      echo "$url"
      exit 0
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$dir"
      chown postgres: "$dir"
      as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log"
    fi
    as_postgres "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    as_postgres "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
      -c "SELECT 1 FROM pg_database WHERE datname = 'bench'" | grep -q 1 ||
      as_postgres "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres bench
    # Say what is in force, so a reader of the figures can check it is stock.
    as_postgres "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d bench -qAt -c \
      "SELECT name || '=' || setting FROM pg_settings
       WHERE name IN ('autovacuum', 'shared_buffers', 'fsync', 'synchronous_commit',
                      'max_wal_size', 'checkpoint_timeout', 'work_mem', 'server_version')
       ORDER BY name" | paste -sd' ' >&2
    echo "$url"
    ;;
  url)
    running && echo "$url" || { echo "not running" >&2; exit 1; }
    ;;
  stop)
    running && as_postgres "$(bindir)/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    ;;
  remove)
    running && as_postgres "$(bindir)/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|url|stop|remove [PORT]" >&2
    exit 2
    ;;
esac
