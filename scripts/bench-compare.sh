#!/usr/bin/env bash
# Measures skiplock next to the raw-SQL ceiling and the peer queues, in one session on one
# machine, so that every figure in docs/performance.md is a ratio to references taken minutes
# apart rather than on another day. Prints JSON lines on stdout (progress on stderr).
#
#   scripts/bench-compare.sh [all|skiplock|ceiling|peers|pathologies]
#
# Env: PEERS=<dir of the peers harness> (default ../shared/bench/peers, copied to a scratch dir
# because it builds in place), PG_LIMIT=<pg-limit.sh> (default ../shared/bench/pg-limit.sh),
# TCP_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# SOCKET_URL (default postgres://postgres@%2Fvar%2Frun%2Fpostgresql/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
TCP_URL=${TCP_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SOCKET_URL=${SOCKET_URL:-postgres://postgres@%2Fvar%2Frun%2Fpostgresql/postgres}
PEERS=${PEERS:-../shared/bench/peers}
PG_LIMIT=${PG_LIMIT:-../shared/bench/pg-limit.sh}

cargo build --release --quiet -p skiplock-cli
sk=target/release/skiplock
bench() { # label url args...
  local label=$1 url=$2; shift 2
  echo "[bench] $label: skiplock bench $*" >&2
  "$sk" --database-url "$url" bench "$@" --json 2>/dev/null | sed "s/^{/{\"run\": \"$label\", /"
}

skiplock() {
  for url_label in "tcp $TCP_URL" "socket $SOCKET_URL"; do
    set -- $url_label
    bench "$1" "$2" insert --single --jobs 10000
    bench "$1" "$2" insert --bulk --jobs 100000 --batch 1000
    bench "$1" "$2" drain --jobs 20000
    bench "$1" "$2" drain --jobs 100000
    bench "$1" "$2" drain --jobs 100000 --async-commit
    bench "$1" "$2" latency --samples 1000
  done
  bench tcp "$TCP_URL" latency --samples 50 --no-notify --poll-interval 1s
  bench tcp "$TCP_URL" insert --bulk --jobs 100000 --batch 1000 --clients 2
  bench tcp "$TCP_URL" steady --rate 2000 --duration 30s
}

ceiling() {
  for mode in "drain 100" "drain 1000" "insert 1" "bulk 1000"; do
    set -- $mode
    echo "[ceiling] pg-limit MODE=$1 BATCH=$2" >&2
    MODE=$1 BATCH=$2 bash "$PG_LIMIT"
  done
}

peers() {
  local dir
  dir=$(mktemp -d)/peers
  cp -r "$PEERS" "$dir" && chmod -R u+w "$dir"
  (cd "$dir" && ./setup.sh >&2 && N=20000 ./run.sh 2>&2 | grep '^{' \
    && N=100000 METRICS=drain ./run.sh graphile-worker-perf graphile-worker-rs pg-boss pgqueuer-b100 2>&2 | grep '^{')
}

pathologies() {
  # Drain with a million scheduled jobs waiting and ten million finished jobs retained, then a
  # steady load with a REPEATABLE READ transaction held open for 60 s in the middle.
  bench tcp "$TCP_URL" drain --jobs 100000 --scheduled 1000000 --finished 10000000
  bench tcp "$TCP_URL" drain --jobs 100000
  bench tcp "$TCP_URL" steady --rate 10000 --duration 150s --hold-snapshot-at 30s --hold-snapshot-for 60s
}

case "$what" in
  all) ceiling; peers; skiplock; pathologies ;;
  skiplock|ceiling|peers|pathologies) "$what" ;;
  *) echo "usage: $0 [all|skiplock|ceiling|peers|pathologies]" >&2; exit 2 ;;
esac
