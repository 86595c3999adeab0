#!/usr/bin/env bash
# Proves the benchmark harness still works, at tiny sizes (what scripts/test.sh runs):
# W1 (20 schedules, 2 s), W2, W3 (also on PostgreSQL when ALMANAC_TEST_POSTGRES_URL is set),
# W4 and the limits with --smoke. Not a measurement.
#
#   bench/smoke.sh [path/to/almanac]     # default target/debug/almanac
#
# W1 and W3 need the peers' sink (../shared/peers/sink, or $PEERS_DIR/sink); without it
# they are reported as skipped. Results go to target/bench-smoke/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ALMANAC="${1:-$ROOT/target/debug/almanac}"
PY="${ALMANAC_PYTHON:-$ROOT/target/test-tools/venv/bin/python}"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/peers}"
OUT="$ROOT/target/bench-smoke"
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl
[ -x "$ALMANAC" ] || { echo "no almanac binary at $ALMANAC (cargo build first)" >&2; exit 1; }

sink=()
if [ -f "$PEERS_DIR/sink/Cargo.toml" ]; then
  CARGO_TARGET_DIR="$ROOT/target/peers" cargo build --release -q --manifest-path "$PEERS_DIR/sink/Cargo.toml"
  sink=(--sink "$ROOT/target/peers/release/sink")
else
  echo "==> bench smoke: W1 and W3 skipped (no peers' sink at $PEERS_DIR/sink)"
fi

if [ ${#sink[@]} -gt 0 ]; then
  echo "==> bench smoke: W1 (20 schedules, 2 s)"
  "$PY" "$ROOT/bench/w1.py" --n 20 --warmup 1 --duration 2 --drain 1 --almanac "$ALMANAC" \
    "${sink[@]}" --out "$OUT/w1.jsonl" >/dev/null
  "$PY" - "$OUT/w1.jsonl" <<'EOF'
import json, sys
row = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rep = row["report"]
assert rep["unique"] == rep["expected"] == 40 and rep["duplicates"] == 0, rep
print(f"    W1: {rep['unique']}/{rep['expected']} delivered, 0 duplicates")
EOF
  echo "==> bench smoke: W3"
  "$PY" "$ROOT/bench/w3.py" --smoke --until-done --almanac "$ALMANAC" "${sink[@]}" --out "$OUT/w3.jsonl" >/dev/null
  if [ -n "${ALMANAC_TEST_POSTGRES_URL:-}" ]; then
    echo "==> bench smoke: W3 on PostgreSQL"
    "$PY" "$ROOT/bench/w3.py" --smoke --until-done --fill copy --api-n 50 \
      --database-url "$ALMANAC_TEST_POSTGRES_URL" --almanac "$ALMANAC" "${sink[@]}" \
      --out "$OUT/w3.jsonl" >/dev/null
  fi
fi
echo "==> bench smoke: W2"
"$PY" "$ROOT/bench/w2.py" --smoke --almanac "$ALMANAC" --out "$OUT/w2.jsonl" >/dev/null
echo "==> bench smoke: W4"
"$PY" "$ROOT/bench/w4.py" --smoke --almanac "$ALMANAC" --out "$OUT/w4.jsonl" >/dev/null
echo "==> bench smoke: limits"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/bench-limits}" \
  "$PY" "$ROOT/bench/limits.py" --smoke --almanac "$ALMANAC" --out "$OUT/limits.jsonl" >/dev/null
echo "==> bench smoke: every harness ran ($OUT)"
