#!/usr/bin/env python3
"""W1 (issue 7): N schedules firing every second against a loopback sink that measures
lateness (receive time - nominal time), duplicates and loss; one configuration per run.

  1. start the peers' sink (../shared/peers/sink) reading the fire from Almanac's
     X-Almanac-Schedule-Id / X-Almanac-Nominal-Time headers, and wait for /health;
  2. start `almanac executor` and `almanac scheduler` as two processes (SQLite files in a
     temporary folder, or PostgreSQL with --database-url), as a user would run them;
  3. create N interval schedules (every 1 s; offset 0 = burst, i/N s = --spread) whose
     action is call_api POST to the sink and whose overlap policy is ALLOW_ALL (a late
     fire still runs, as in the peers), through the real gRPC API;
  4. T0 = next whole second + warm-up, T1 = T0 + duration; sample both processes' CPU
     at T0 and T1; after the drain, ask the sink about nominal times in [T0, T1)
     (expected N x duration fires);
  5. read both processes' peak RSS (VmHWM), stop them with SIGTERM, print one JSON line
     (and append it to --out).

Every process is started and stopped here by PID; all traffic stays on 127.0.0.1; every
wait is bounded.
"""
import argparse
import concurrent.futures
import importlib
import json
import math
import os
import sqlite3
import sys
import time

import grpc

from harness import (ROOT, cpu_seconds, generate_stubs, http_get, peak_rss_mb, sleep_until,
                     start, stop, wait_http)
from harness import run_main, work_dir


def create_schedules(stub, pb, action_pb, duration_pb, n, spread, sink_url):
    def request(i):
        offset_ms = (i * 1000) // n if spread else 0
        spec = pb.ScheduleSpec(
            interval=pb.IntervalSpec(
                every=duration_pb.Duration(seconds=1),
                offset=duration_pb.Duration(nanos=offset_ms * 1_000_000),
            )
        )
        action = action_pb.Action(call_api=action_pb.CallApiAction(method="POST", url=sink_url))
        # ALLOW_ALL: a late fire still runs (SKIP, the default, would record it SKIPPED
        # behind the previous one and the sink would count it missing), as the peers do.
        return pb.CreateScheduleRequest(
            schedule_id=f"w1-{i:06d}",
            schedule=pb.Schedule(spec=spec, action=action,
                                 overlap_policy=pb.OVERLAP_POLICY_ALLOW_ALL),
        )

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(lambda i: stub.CreateSchedule(request(i), timeout=60), range(n)):
            pass
    return time.time() - started


def add_history(db, per_schedule):
    """Writes `per_schedule` SUCCEEDED runs, a second apart and ending an hour ago, for
    every schedule of the ledger at `db` (written beside the running scheduler: SQLite
    serialises the writers)."""
    end_ms = int(time.time() * 1000) - 3_600_000
    conn = sqlite3.connect(db, timeout=60)
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM schedules")]
        for sid in ids:
            with conn:  # a transaction per schedule: the scheduler's writes go on between
                conn.executemany(
                    "INSERT INTO runs (id, schedule_id, nominal_ms, trigger, status, attempt, "
                    "created_ms, finished_ms) VALUES (?, ?, ?, 'SCHEDULED', 'SUCCEEDED', 1, ?, ?)",
                    ((f"{sid}-h{k}", sid, end_ms - k * 1000, end_ms, end_ms)
                     for k in range(per_schedule)))
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--spread", action="store_true")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--drain", type=int, default=5)
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--almanac", default=os.path.join(ROOT, "target", "release", "almanac"))
    ap.add_argument("--sink", default=os.environ.get("SINK_BIN", "/tmp/peers-target/release/sink"))
    ap.add_argument("--database-url", default=None, help="PostgreSQL for both services (default: SQLite files)")
    ap.add_argument("--history", type=int, default=0,
                    help="finished runs each schedule already has in its ledger (SQLite only): "
                         "what a schedule that fired for a day carries")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    a = ap.parse_args()

    work = work_dir("almanac-w1-")
    generate_stubs(os.path.join(work, "stubs"))
    pb = importlib.import_module("almanac.scheduler.v1.scheduler_pb2")
    rpc = importlib.import_module("almanac.scheduler.v1.scheduler_pb2_grpc")
    action_pb = importlib.import_module("almanac.executor.v1.action_pb2")
    from google.protobuf import duration_pb2

    sink, _ = start(
        [a.sink, "--port", str(a.port), "--schedule-header", "X-Almanac-Schedule-Id",
         "--nominal-header", "X-Almanac-Nominal-Time"],
        os.path.join(work, "sink.log"),
    )
    base = f"http://127.0.0.1:{a.port}"
    procs = []
    try:
        wait_http(f"{base}/health")
        config = os.path.join(work, "executor.toml")
        with open(config, "w") as f:
            f.write('[egress]\nallow = ["127.0.0.0/8"]\n')
        db = lambda name: (["--database-url", a.database_url] if a.database_url
                           else ["--database", os.path.join(work, f"{name}.db")])
        executor, line = start(
            [a.almanac, "executor", "--listen", "127.0.0.1:0", "--config", config,
             "--replica-id", "executor"] + db("executor"),
            os.path.join(work, "executor.log"), "executor listening on",
        )
        procs.append(executor)
        executor_url = line.split()[-1]
        scheduler, line = start(
            [a.almanac, "scheduler", "--listen", "127.0.0.1:0", "--executor", executor_url,
             "--replica-id", "scheduler"] + db("scheduler"),
            os.path.join(work, "scheduler.log"), "scheduler listening on",
        )
        procs.append(scheduler)
        scheduler_addr = line.split()[-1].removeprefix("http://")
        stub = rpc.SchedulerServiceStub(grpc.insecure_channel(scheduler_addr))
        create_s = create_schedules(stub, pb, action_pb, duration_pb2, a.n, a.spread, f"{base}/fire")
        if a.history:
            if a.database_url:
                raise SystemExit("--history fills a SQLite ledger only")
            add_history(os.path.join(work, "scheduler.db"), a.history)

        t0 = math.ceil(time.time()) + a.warmup
        t1 = t0 + a.duration
        sleep_until(t0)
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        sleep_until(t1)
        cpu1 = {p.pid: cpu_seconds(p.pid) for p in procs}
        time.sleep(a.drain)
        query = f"from_ms={t0 * 1000}&to_ms={t1 * 1000}&expected={a.n * a.duration}"
        if a.spread:
            query += f"&spread_n={a.n}"
        report = json.loads(http_get(f"{base}/report?{query}"))
        rss = {name: peak_rss_mb(p.pid) for name, p in zip(["executor", "scheduler"], procs)}
        cpu = sum(cpu1[p] - cpu0[p] for p in cpu1)
        cpu_by = {name: round((cpu1[p.pid] - cpu0[p.pid]) * 1e6 / max(report.get("unique", 0), 1), 1)
                  for name, p in zip(["executor", "scheduler"], procs)}
        delivered = max(report.get("unique", 0), 1)
        row = {
            "system": "almanac",
            "label": a.label or f"almanac-{'spread' if a.spread else 'burst'}-{a.n}",
            "backend": "postgres" if a.database_url else "sqlite",
            "n": a.n,
            "history": a.history,
            "mode": "spread" if a.spread else "burst",
            "duration_s": a.duration,
            "create_s": round(create_s, 2),
            "cpu_s": round(cpu, 2),
            "cpu_us_per_fire": round(cpu * 1e6 / delivered, 1),
            "cpu_us_per_fire_by_process": cpu_by,
            "peak_rss_mb": rss,
            "report": report,
        }
    finally:
        for p in reversed(procs):
            stop(p)
        stop(sink)
    line = json.dumps(row)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    r = row["report"]
    lat = r.get("lateness_ms") or {}
    print(f"# {row['label']}: delivered {r.get('unique')}/{r.get('expected')} "
          f"(missing {r.get('missing')}, duplicates {r.get('duplicates')}), lateness {lat}, "
          f"{row['cpu_us_per_fire']} us CPU per fire {row['cpu_us_per_fire_by_process']}, "
          f"peak RSS {rss}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main, "w1")
