#!/usr/bin/env bash
# Starts (or reuses) a throwaway PostgreSQL cluster for the tests, on 127.0.0.1 only, and
# prints its URL: postgres://postgres@127.0.0.1:PORT/postgres. Installs PostgreSQL from
# apt when it is missing (as root). The cluster trusts local
# connections; it is for tests, never for data. It lives in /tmp/almanac-pg-PORT.
#
# usage: scripts/pg-test-cluster.sh [start|stop]   (stop deletes it)
#   (PORT: ALMANAC_PG_PORT, default 25432)
set -euo pipefail

# Below the kernel's ephemeral range (32768–60999): a port in it can be held for a minute
# by a TIME-WAIT connection of an earlier load, and the cluster would not start.
port="${ALMANAC_PG_PORT:-25432}"
# Under /tmp, not the checkout: the postgres user must reach it (a checkout under /root
# is closed to it).
dir="/tmp/almanac-pg-$port"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

if [ -z "$bin" ]; then
  echo "==> installing PostgreSQL (apt)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-start}" = stop ]; then
  [ -d "$dir/data" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  # Thrown away on stop too: the tests' databases add up to gigabytes over a run.
  rm -rf "$dir"
  exit 0
fi

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  # A cluster that is not running is thrown away: every start begins empty.
  rm -rf "$dir/data"
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1
  # Durability is not what the tests measure: fsync off keeps them fast.
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2
fi
echo "postgres://postgres@127.0.0.1:$port/postgres"
