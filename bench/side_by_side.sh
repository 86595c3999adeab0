#!/usr/bin/env bash
# W1 side by side: Almanac (bench/w1.py) and the peers (../shared/peers/bench.py:
# APScheduler 3, tokio-cron-scheduler with a 32768 channel) on the same sink, the same
# workload and the same machine, one configuration after the other, then one table.
#
#   bench/side_by_side.sh                      # burst N=100,1000,5000,10000; spread 1000,5000,10000
#   NS="100 1000" SPREAD_NS="" bench/side_by_side.sh
#   PEERS=0 bench/side_by_side.sh              # Almanac rows only
#   DATABASE_URL=postgres://…/postgres bench/side_by_side.sh   # Almanac on PostgreSQL as well
#                                              (a fresh database per configuration, made with psql)
#
# Results: $RESULTS_DIR (default target/bench-results)/w1-<stamp>.jsonl and .md.
# About 50 s per configuration (5 s warm-up, 30 s window, 5 s drain, start-up); the full
# matrix is ~15 minutes. Needs target/release/almanac (cargo build --release) and the
# test tools' Python venv (scripts/test.sh creates it); builds the sink and the
# tokio-cron-scheduler peer into $CARGO_TARGET_DIR_PEERS (default /tmp/peers-target) and
# the peers' venv into /tmp/peers-venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/peers}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/target/bench-results}"
PY="${ALMANAC_PYTHON:-$ROOT/target/test-tools/venv/bin/python}"
PEERS_TARGET="${CARGO_TARGET_DIR_PEERS:-/tmp/peers-target}"
PEERS_VENV="${PEERS_VENV:-/tmp/peers-venv}"
NS="${NS:-100 1000 5000 10000}"
SPREAD_NS="${SPREAD_NS-1000 5000 10000}"
PEERS="${PEERS:-1}"
WARMUP="${WARMUP:-5}" DURATION="${DURATION:-30}" DRAIN="${DRAIN:-5}"

mkdir -p "$RESULTS_DIR"
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"   # the peers run from their own folder
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$RESULTS_DIR/w1-$STAMP.jsonl"
[ -x "$ROOT/target/release/almanac" ] || { echo "build first: cargo build --release" >&2; exit 1; }
CARGO_TARGET_DIR="$PEERS_TARGET" cargo build --release -q --manifest-path "$PEERS_DIR/sink/Cargo.toml"
if [ "$PEERS" = 1 ]; then
  CARGO_TARGET_DIR="$PEERS_TARGET" cargo build --release -q --manifest-path "$PEERS_DIR/tcs-peer/Cargo.toml"
  [ -x "$PEERS_VENV/bin/python" ] || python3 -m venv "$PEERS_VENV"
  "$PEERS_VENV/bin/pip" install -q -r "$PEERS_DIR/requirements.txt"
fi
ulimit -n "$(ulimit -Hn)" || true
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); $(lscpu | sed -n 's/^Model name: *//p')"
  echo "almanac: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+dirty')"
  uptime
} | tee "$RESULTS_DIR/w1-$STAMP.machine.txt"

peer() {  # label peer N spread(0/1) [peer args]
  local spread=()
  [ "$4" = 1 ] && spread=(--spread)
  (cd "$PEERS_DIR" && CARGO_TARGET_DIR="$PEERS_TARGET" "$PEERS_VENV/bin/python" bench.py "${spread[@]}" \
      --label "$1" --peer "$2" --n "$3" --peer-args "${5:-}" --warmup "$WARMUP" \
      --duration "$DURATION" --drain "$DRAIN" --out "$OUT") || echo "!! $1 N=$3 failed" >&2
}
almanac() {  # N spread(0/1) [w1 args]
  local n="$1" spread=()
  [ "$2" = 1 ] && spread=(--spread)
  shift 2
  SINK_BIN="$PEERS_TARGET/release/sink" "$PY" "$ROOT/bench/w1.py" --n "$n" "${spread[@]}" \
    --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --out "$OUT" "$@" \
    || echo "!! almanac N=$n failed" >&2
}

pg_fresh() {  # a new, empty database on DATABASE_URL's server: its URL (needs psql)
  local name
  name="almanac_w1_$(date -u +%Y%m%d%H%M%S)_$RANDOM"
  psql -q "$DATABASE_URL" -c "CREATE DATABASE $name" >&2
  echo "${DATABASE_URL%/*}/$name"
}
for n in $NS; do
  almanac "$n" 0
  [ -n "${DATABASE_URL:-}" ] && almanac "$n" 0 --database-url "$(pg_fresh)" --label "almanac-pg-burst-$n"
  if [ "$PEERS" = 1 ]; then
    peer apscheduler-interval apscheduler "$n" 0 "--trigger interval"
    peer tcs-chan32768 tcs "$n" 0 "--channel-size 32768"
  fi
done
for n in $SPREAD_NS; do
  almanac "$n" 1
  [ -n "${DATABASE_URL:-}" ] && almanac "$n" 1 --database-url "$(pg_fresh)" --label "almanac-pg-spread-$n"
  if [ "$PEERS" = 1 ]; then
    peer apscheduler-interval-spread apscheduler "$n" 1 "--trigger interval"
    peer tcs-chan32768-spread tcs "$n" 1 "--channel-size 32768"
  fi
done

"$PY" "$ROOT/bench/table.py" "$OUT" | tee "$RESULTS_DIR/w1-$STAMP.md"
echo "raw: $OUT" >&2
