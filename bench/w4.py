#!/usr/bin/env python3
"""W4 (issue 7): holding many schedules — CreateSchedule throughput, then start-up time,
RSS and idle CPU of a scheduler with N active schedules.

  1. start `almanac executor` and `almanac scheduler` (SQLite files in a temporary folder)
     as processes;
  2. (a) create the first --api-n schedules through the API, --concurrency calls in
     flight: schedules/s (and the client's own CPU, which may be the bound);
  3. (b) stop the scheduler (SIGTERM) and fill up to N by copying the first schedule's row
     in the SQLite file (same spec, action, policy and next fire; fresh ids);
  4. (c) start the scheduler again: seconds until its first stdout line ("scheduler
     listening on", printed before the store is opened) and until a GetSchedule of the last
     schedule is answered (it serves once the timer's index is loaded); its RSS then; its
     CPU over --idle seconds after that (% of one core) and its peak RSS (VmHWM).

The schedules fire daily (cron `M H * * *`, H twelve hours from now, UTC) so that nothing
fires during the run: the figures are about holding them. The action is a call_api POST to
a loopback port that is never called. One JSON line (appended to --out); a human summary on
stderr. Every process is started and stopped here by PID; all traffic stays on 127.0.0.1;
every wait is bounded.
"""
import argparse
import importlib
import os
import sys
import time

import grpc

from harness import (ALMANAC, BenchError, call_concurrently, copy_schedules, cpu_seconds, emit,
                     generate_stubs, peak_rss_mb, rss_mb, start_executor, start_scheduler,
                     stop)
from harness import run_main, work_dir


def wait_serving(stub, pb, schedule_id, timeout):
    """Seconds until GetSchedule(schedule_id) is answered (each try bounded)."""
    deadline = time.time() + timeout
    while True:
        try:
            stub.GetSchedule(pb.GetScheduleRequest(schedule_id=schedule_id),
                             timeout=max(0.1, min(5.0, deadline - time.time())), wait_for_ready=True)
            return
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise
            if time.time() > deadline:
                raise BenchError(f"GetSchedule not answered within {timeout} s") from e
            time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--api-n", type=int, default=20_000, help="schedules created through the API")
    ap.add_argument("--concurrency", type=int, default=64, help="CreateSchedule calls in flight")
    ap.add_argument("--idle", type=float, default=30, help="seconds of idle CPU measured")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to the start-up")
    ap.add_argument("--almanac", default=ALMANAC)
    ap.add_argument("--smoke", action="store_true", help="N=5000 (1000 via the API), 5 s idle")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.api_n, a.idle, a.timeout = 5000, 1000, 5, 20
    api_n = max(1, min(a.n, a.api_n))

    work = work_dir("almanac-w4-")
    generate_stubs(os.path.join(work, "stubs"))
    pb = importlib.import_module("almanac.scheduler.v1.scheduler_pb2")
    rpc = importlib.import_module("almanac.scheduler.v1.scheduler_pb2_grpc")
    action_pb = importlib.import_module("almanac.executor.v1.action_pb2")
    db = os.path.join(work, "scheduler.db")
    hour = (time.gmtime().tm_hour + 12) % 24
    cron = f"{time.gmtime().tm_min} {hour} * * *"

    procs = []
    try:
        executor, executor_url = start_executor(a.almanac, work)
        procs.append(executor)
        scheduler, addr = start_scheduler(a.almanac, work, executor_url)
        procs.append(scheduler)
        stub = rpc.SchedulerServiceStub(grpc.insecure_channel(addr))
        spec = pb.ScheduleSpec(cron=pb.CronSpec(expression=cron))
        action = action_pb.Action(call_api=action_pb.CallApiAction(method="POST", url="http://127.0.0.1:9/never"))

        def create(i):
            return stub.CreateSchedule.future(pb.CreateScheduleRequest(
                schedule_id=f"w4-{i:07d}", schedule=pb.Schedule(spec=spec, action=action)), timeout=60)

        client0, server0 = sum(os.times()[:2]), cpu_seconds(scheduler.pid)
        create_s = call_concurrently(create, api_n, a.concurrency)
        client_cpu = sum(os.times()[:2]) - client0
        create_cpu = cpu_seconds(scheduler.pid) - server0
        create_rss = peak_rss_mb(scheduler.pid)
        code = stop(scheduler, grace=60)
        procs.remove(scheduler)
        if code != 0:
            raise BenchError(f"the scheduler exited with {code} on SIGTERM (see {work}/scheduler.log)")
        filled = time.time()
        copied = copy_schedules(db, "w4-0000000", api_n, a.n - 1, "w4-%07d") if a.n > api_n else 0
        fill_s = time.time() - filled
        if copied != a.n - api_n:
            raise BenchError(f"copied {copied} schedules, expected {a.n - api_n}")

        spawned = time.time()
        scheduler, addr = start_scheduler(a.almanac, work, executor_url, timeout=a.timeout)
        listening_s = time.time() - spawned
        procs.append(scheduler)
        stub = rpc.SchedulerServiceStub(grpc.insecure_channel(addr))
        wait_serving(stub, pb, f"w4-{a.n - 1:07d}", a.timeout)
        serving_s = time.time() - spawned
        rss_serving = rss_mb(scheduler.pid)
        cpu0, idle0 = cpu_seconds(scheduler.pid), time.time()
        time.sleep(a.idle)
        idle_cpu = cpu_seconds(scheduler.pid) - cpu0
        idle_wall = time.time() - idle0
        peak = peak_rss_mb(scheduler.pid)
        rss_idle = rss_mb(scheduler.pid)
        if scheduler.poll() is not None:
            raise BenchError(f"the scheduler exited with {scheduler.returncode} while idle")
    finally:
        for p in reversed(procs):
            stop(p)

    row = {
        "system": "almanac", "workload": "w4", "label": a.label or f"almanac-w4-{a.n}",
        "backend": "sqlite", "n": a.n, "spec": f"cron {cron} (UTC, daily)",
        "created_via_api": api_n, "create_concurrency": a.concurrency,
        "create_s": round(create_s, 2), "create_per_s": round(api_n / create_s, 1),
        "create_client_cpu_pct": round(100 * client_cpu / create_s, 1),
        "create_scheduler_cpu_us_per_schedule": round(create_cpu * 1e6 / api_n, 1),
        "create_scheduler_peak_rss_mb": create_rss,
        "copied_in_sqlite": copied, "copy_s": round(fill_s, 2),
        "db_mb": round(os.path.getsize(db) / 2**20, 1),
        "startup_listening_s": round(listening_s, 3), "startup_serving_s": round(serving_s, 3),
        "rss_serving_mb": rss_serving, "rss_idle_mb": rss_idle, "peak_rss_mb": peak,
        "idle_s": round(idle_wall, 1), "idle_cpu_pct": round(100 * idle_cpu / idle_wall, 2),
    }
    emit(row, a.out)
    print(f"# {row['label']}: CreateSchedule {row['create_per_s']}/s ({a.concurrency} in flight, "
          f"client at {row['create_client_cpu_pct']}% CPU); start-up with {a.n} schedules: serving "
          f"after {row['startup_serving_s']} s, RSS {rss_serving:.0f} MB (peak {peak:.0f} MB), idle CPU "
          f"{row['idle_cpu_pct']}% over {row['idle_s']} s", file=sys.stderr)


if __name__ == "__main__":
    run_main(main, "w4", (BenchError, grpc.RpcError))
