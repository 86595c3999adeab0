#!/usr/bin/env python3
"""Limits (issue 7): how close Almanac's figures are to the machine's.

  - store: the SQLite commit rate as the services configure it (WAL, synchronous=NORMAL,
    BEGIN IMMEDIATE): single-insert transactions/s, rows/s batched in one transaction, point
    selects/s, through sqlx-sqlite and through rusqlite (bench/limits `sqlbench`);
  - grpc_rtt: a bare gRPC round trip on loopback, grpc.health.v1.Health/Check against a
    running `almanac executor`, from a compiled tonic client (bench/limits `grpc-rtt`, one
    call at a time and with several in flight) with the executor's CPU per call, and from
    the Python grpcio client (that figure bounds the client, not the server);
  - sink: the peers' sink ceiling under wrk (../shared/peers/sink_capacity.sh): quoted from
    its latest stored result by default, measured again with --sink run (needs wrk, ~40 s).

The Rust tools are built on first use (CARGO_TARGET_DIR, default /tmp/bench-target). One
JSON line per configuration (appended to --out); a human summary on stderr. Every process
is started and stopped here by PID; all traffic stays on 127.0.0.1; every wait is bounded.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

import grpc

from harness import (ALMANAC, HERE, ROOT, BenchError, cpu_seconds, emit, percentile,
                     start_executor, stop)
from harness import run_main, work_dir

PEERS = os.path.join(os.path.dirname(ROOT), "shared", "peers")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/tmp/bench-target")


def tool(name, build_timeout=1800):
    """The path of a bench/limits binary, built (release) if missing."""
    path = os.path.join(TARGET, "release", name)
    if not os.path.exists(path):
        print(f"# building bench/limits into {TARGET} (first use)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--manifest-path",
                        os.path.join(HERE, "limits", "Cargo.toml")],
                       env={**os.environ, "CARGO_TARGET_DIR": TARGET}, check=True,
                       timeout=build_timeout, stdout=sys.stderr)
    return path


def json_lines(cmd, timeout):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def store_rows(n, work):
    for r in json_lines([tool("sqlbench"), "--n", str(n), "--dir", work], timeout=600):
        yield {"limit": "store", "backend": "sqlite (WAL, synchronous=NORMAL)", **r}


def python_rtt(addr, calls):
    """Sequential Health/Check calls from grpcio: latencies in microseconds."""
    channel = grpc.insecure_channel(addr)
    check = channel.unary_unary("/grpc.health.v1.Health/Check")  # raw bytes: b"" is an empty request
    for _ in range(min(200, calls)):
        check(b"", timeout=5)
    latencies = []
    for _ in range(calls):
        t = time.perf_counter()
        check(b"", timeout=5)
        latencies.append((time.perf_counter() - t) * 1e6)
    channel.close()
    return latencies


def rtt_rows(almanac, work, calls, levels, python_calls):
    executor, url = start_executor(almanac, work, egress_loopback=False)
    try:
        for level in levels:
            cpu0 = cpu_seconds(executor.pid)
            (r,) = json_lines([tool("grpc-rtt"), "--endpoint", url, "--calls", str(calls),
                               "--concurrency", str(level)], timeout=600)
            r["server_cpu_us_per_call"] = round((cpu_seconds(executor.pid) - cpu0) * 1e6 / r["calls"], 2)
            yield {"limit": "grpc_rtt", "client": "rust tonic 0.14 (1 connection, current_thread)",
                   "server": "almanac executor (grpc.health.v1.Health/Check)", **r}
        cpu0, t = cpu_seconds(executor.pid), time.time()
        lat = python_rtt(url.removeprefix("http://"), python_calls)
        wall = time.time() - t
        yield {"limit": "grpc_rtt", "client": "python grpcio (sync, sequential)",
               "server": "almanac executor (grpc.health.v1.Health/Check)", "concurrency": 1,
               "calls": len(lat), "calls_per_s": round(len(lat) / wall),
               "p50_us": round(percentile(lat, 50), 1), "p99_us": round(percentile(lat, 99), 1),
               "server_cpu_us_per_call": round((cpu_seconds(executor.pid) - cpu0) * 1e6 / len(lat), 2),
               "note": "bounds the Python client, not the server"}
    finally:
        stop(executor)


def sink_rows(mode, seconds, work):
    if mode == "run":
        env = {**os.environ, "RESULTS_DIR": work}
        subprocess.run(["bash", os.path.join(PEERS, "sink_capacity.sh"), str(seconds)], env=env,
                       check=True, timeout=8 * seconds + 120, stdout=sys.stderr)
        path, source = os.path.join(work, "sink_capacity.txt"), "measured now"
    else:
        files = sorted(glob.glob(os.path.join(PEERS, "results", "sink_capacity*.txt")))
        if not files:
            raise BenchError(f"no stored sink_capacity result under {PEERS}/results: use --sink run")
        path = files[-1]
        source = f"quoted from ../shared/peers/results/{os.path.basename(path)}"
    with open(path) as f:
        for line in f:
            fields = dict(re.findall(r"(\S+?)=(\S+)", line))
            if "req/s" in fields:
                yield {"limit": "sink", "source": source, "tool": "wrk POST /fire", **fields}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sqlbench-n", type=int, default=5000, help="operations per store case")
    ap.add_argument("--grpc-calls", type=int, default=20000, help="calls per concurrency level")
    ap.add_argument("--concurrency", default="1,16", help="gRPC calls in flight, comma-separated")
    ap.add_argument("--python-calls", type=int, default=3000)
    ap.add_argument("--sink", choices=["quote", "run"], default="quote")
    ap.add_argument("--sink-seconds", type=int, default=10)
    ap.add_argument("--only", default="store,grpc_rtt,sink", help="which limits, comma-separated")
    ap.add_argument("--almanac", default=ALMANAC)
    ap.add_argument("--smoke", action="store_true", help="tiny counts, sink quoted")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    a = ap.parse_args()
    if a.smoke:
        a.sqlbench_n, a.grpc_calls, a.python_calls, a.sink = 500, 2000, 300, "quote"
    only = set(a.only.split(","))
    work = work_dir("almanac-limits-")
    rows = []
    if "store" in only:
        rows += store_rows(a.sqlbench_n, work)
    if "grpc_rtt" in only:
        levels = [int(c) for c in a.concurrency.split(",")]
        rows += rtt_rows(a.almanac, work, a.grpc_calls, levels, a.python_calls)
    if "sink" in only:
        rows += sink_rows(a.sink, a.sink_seconds, work)
    for row in rows:
        emit(row, a.out)
        if row["limit"] == "store":
            print(f"# store {row['library']} {row['case']}: {row['per_s']:.0f} {row['unit']}/s, "
                  f"{row['cpu_us']} us CPU each", file=sys.stderr)
        elif row["limit"] == "grpc_rtt":
            print(f"# gRPC {row['client']} x{row['concurrency']}: {row['calls_per_s']} calls/s, p50 "
                  f"{row['p50_us']} us, p99 {row['p99_us']} us, server {row['server_cpu_us_per_call']} "
                  f"us CPU per call", file=sys.stderr)
        else:
            print(f"# sink threads={row.get('sink_threads')} conns={row.get('wrk_conns')}: "
                  f"{row['req/s']} req/s, {row.get('sink_cpu_per_req')} per request ({row['source']})",
                  file=sys.stderr)
    if not rows:
        raise BenchError(f"nothing measured: --only {a.only}")


if __name__ == "__main__":
    run_main(main, "limits", (BenchError, grpc.RpcError, subprocess.SubprocessError, OSError))
