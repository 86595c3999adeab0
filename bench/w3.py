#!/usr/bin/env python3
"""W3 (issue 7): recovery after 10 minutes of scheduler downtime.

  1. start the peers' sink, `almanac executor` and `almanac scheduler` (SQLite files in a
     temporary folder, or with --database-url a fresh PostgreSQL database on that server,
     made and dropped here with psql) as processes;
  2. create N schedules firing every minute (cron `* * * * *`, UTC), default catch-up policy
     (window 1 minute, misfire RUN_ONCE), action call_api POST to the sink: all through the
     API with --concurrency calls in flight (--fill api: the create rate is W4's
     CreateSchedule throughput too), or --api-n through the API and the rest copied from the
     first one's row in the store while the scheduler is stopped (--fill copy);
  3. stop the scheduler (SIGTERM) and move every stored time of its ledger --downtime
     seconds back (harness.shift_ledger: schedules' next fires, runs, attempts, replica
     heartbeats). Restarting at once is then what restarting after that downtime would be:
     every fire in [next fire, restart) was missed, as many as a real outage would miss;
  4. expected = the missed fires, per schedule #{whole minutes f : next_fire <= f < start};
     start the scheduler and poll its ledger read-only (through its indexes; the rows are
     counted only when those say it may be time) until the RECOVERY rows explain them all: sum over RECOVERY rows of missed_count (a MISSED range older than the window,
     or folded SKIPPED) or 1 (a SKIPPED fire coalesced into the recovery run, or the
     RECOVERY run itself), and until a recovery run's attempt has started;
  5. report, from the ledger's own timestamps (runs.created_ms, attempts.started_ms) minus
     the scheduler's spawn time: (a) ledger_complete_s, when the last RECOVERY row was
     written, and (b) first_dispatch_s, when the executor started the first recovery run;
     with --until-done, also (c) recovery_runs_done_s, when the last recovery run finished.

One JSON line (appended to --out); a human summary on stderr. Every process is started and
stopped here by PID; all traffic stays on 127.0.0.1; every wait is bounded.
"""
import argparse
import importlib
import math
import os
import sys
import time

import grpc

from harness import (ALMANAC, SCHEDULE_COLUMNS, BenchError, call_concurrently, copy_schedules,
                     cpu_seconds, emit, generate_stubs, peak_rss_mb, pg_drop_database,
                     pg_fresh_database, psql, read_only, shift_ledger, shift_statements, start,
                     start_executor, start_scheduler, stop, wait_for, wait_http)
from harness import run_main, work_dir

MINUTE_MS = 60_000
# A minute boundary between the spawn and the scheduler's own boot time would make the
# expected count ambiguous: the restart waits until none falls within this many seconds.
BOOT_GUARD_S = 5.0


class Ledger:
    """The scheduler's tables: a SQLite file (read-only while the scheduler runs: WAL never
    blocks its writer) or a PostgreSQL database (through psql)."""

    def __init__(self, sqlite_path=None, database_url=None):
        self.sqlite_path, self.database_url = sqlite_path, database_url

    def rows(self, sql):
        if self.database_url:
            return psql(self.database_url, sql, schema="scheduler")
        con = read_only(self.sqlite_path)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def copy_schedules(self, template_id, first, last):
        """Schedules w3-NNNNNN for NNNNNN in [first, last], copies of `template_id`."""
        if not self.database_url:
            return copy_schedules(self.sqlite_path, template_id, first, last, "w3-%06d")
        cols = ", ".join(SCHEDULE_COLUMNS)
        return psql(self.database_url,
                    f"WITH copied AS (INSERT INTO schedules (id, {cols}) "
                    f"SELECT 'w3-' || lpad(i::text, 6, '0'), {cols} "
                    f"FROM generate_series({int(first)}, {int(last)}) i, schedules t "
                    f"WHERE t.id = '{template_id}' RETURNING 1) SELECT COUNT(*) FROM copied",
                    schema="scheduler")[0][0]

    def shift(self, ms):
        if not self.database_url:
            return shift_ledger(self.sqlite_path, ms)
        psql(self.database_url, "; ".join(shift_statements(ms)), single_transaction=True,
             schema="scheduler")


def expected_missed(ledger, boot_ms):
    """Fires every schedule missed: whole minutes in [its next fire, boot)."""
    rows = ledger.rows("SELECT next_fire_ms, COUNT(*) FROM schedules "
                       "WHERE state = 'ACTIVE' GROUP BY next_fire_ms")
    return sum(n * max(0, math.ceil((boot_ms - nf) / MINUTE_MS)) for nf, n in rows if nf is not None)


def ledger_state(ledger):
    """What the RECOVERY rows explain so far, and when they were written / started."""
    explained, schedules, last_ms, first_ms = ledger.rows(
        "SELECT COALESCE(SUM(COALESCE(missed_count, 1)), 0), COUNT(DISTINCT schedule_id), "
        "MAX(created_ms), MIN(created_ms) FROM runs WHERE trigger = 'RECOVERY'")[0]
    first_start_ms, started = ledger.rows(
        "SELECT MIN(a.started_ms), COUNT(a.started_ms) FROM attempts a "
        "JOIN runs r ON r.id = a.run_id WHERE r.trigger = 'RECOVERY'")[0]
    by_status = dict(ledger.rows(
        "SELECT status, COUNT(*) FROM runs WHERE trigger = 'RECOVERY' GROUP BY status"))
    return {"explained": explained, "schedules": schedules, "last_row_ms": last_ms,
            "first_row_ms": first_ms, "first_start_ms": first_start_ms, "started": started,
            "rows_by_status": by_status}


def any_row(ledger, sql):
    """Whether `sql` (a SELECT 1 ... LIMIT 1) finds a row."""
    return bool(ledger.rows(sql))


def ledger_complete(ledger, spawn_ms, expected):
    """The ledger's state once it explains every missed fire and a recovery run has
    started, else None. Polled every half second, so it first asks what the indexes answer
    cheaply (a schedule still due from before the spawn: its claim has not committed; an
    attempt started since the spawn) and aggregates the RECOVERY rows, a scan of the
    ledger, only when both say it may be time: a poll must not load the machine it
    measures."""
    if any_row(ledger, "SELECT 1 FROM schedules WHERE state = 'ACTIVE' "
                       f"AND next_fire_ms < {int(spawn_ms)} LIMIT 1"):
        return None
    if not any_row(ledger, f"SELECT 1 FROM attempts WHERE started_ms >= {int(spawn_ms)} LIMIT 1"):
        return None
    state = ledger_state(ledger)
    return state if state["explained"] >= expected and state["first_start_ms"] else None


def recovery_runs_done_cheaply(ledger):
    """`recovery_runs_done`, asked only when no RECOVERY run is in flight by the partial
    indexes of runs in flight."""
    for statuses in ("'PENDING', 'RUNNING'", "'BUFFERED'"):
        if any_row(ledger, f"SELECT 1 FROM runs WHERE status IN ({statuses}) "
                           "AND trigger = 'RECOVERY' LIMIT 1"):
            return None
    return recovery_runs_done(ledger)


def recovery_runs_done(ledger):
    """When the last recovery run finished, once none is waiting or running (else None)."""
    open_runs, last_ms = ledger.rows(
        "SELECT SUM(CASE WHEN status IN ('PENDING', 'RUNNING', 'BUFFERED') THEN 1 ELSE 0 END), "
        "MAX(finished_ms) FROM runs WHERE trigger = 'RECOVERY' AND status != 'MISSED'")[0]
    return last_ms if open_runs == 0 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--downtime", type=int, default=600, help="simulated downtime, seconds")
    ap.add_argument("--fill", choices=["api", "copy"], default="api")
    ap.add_argument("--api-n", type=int, default=100, help="--fill copy: schedules made through the API")
    ap.add_argument("--concurrency", type=int, default=64, help="CreateSchedule calls in flight")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to the recovery")
    ap.add_argument("--port", type=int, default=18091)
    ap.add_argument("--almanac", default=ALMANAC)
    ap.add_argument("--sink", default=os.environ.get("SINK_BIN", "/tmp/peers-target/release/sink"))
    ap.add_argument("--smoke", action="store_true", help="N=500, 30 s timeout: proves the harness")
    ap.add_argument("--until-done", action="store_true",
                    help="also wait until every recovery run has finished (recovery_runs_done_s)")
    ap.add_argument("--database-url", default=None,
                    help="a PostgreSQL server (any database on it): both services run on a fresh "
                         "database there, dropped at the end (default: SQLite files)")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.timeout = 500, 30
    if a.downtime % 60:
        sys.exit("--downtime must be whole minutes (the fires are on whole minutes)")
    api_n = a.n if a.fill == "api" else min(a.n, max(1, a.api_n))

    work = work_dir("almanac-w3-")
    generate_stubs(os.path.join(work, "stubs"))
    pb = importlib.import_module("almanac.scheduler.v1.scheduler_pb2")
    rpc = importlib.import_module("almanac.scheduler.v1.scheduler_pb2_grpc")
    action_pb = importlib.import_module("almanac.executor.v1.action_pb2")
    database_url = pg_fresh_database(a.database_url, "almanac_w3") if a.database_url else None
    ledger = Ledger(os.path.join(work, "scheduler.db"), database_url)

    sink, _ = start([a.sink, "--port", str(a.port), "--schedule-header", "X-Almanac-Schedule-Id",
                     "--nominal-header", "X-Almanac-Nominal-Time"], os.path.join(work, "sink.log"))
    procs = [sink]
    try:
        wait_http(f"http://127.0.0.1:{a.port}/health")
        executor, executor_url = start_executor(a.almanac, work, database_url=database_url)
        procs.append(executor)
        scheduler, addr = start_scheduler(a.almanac, work, executor_url,
                                          database_url=database_url)
        procs.append(scheduler)
        stub = rpc.SchedulerServiceStub(grpc.insecure_channel(addr))
        action = action_pb.Action(call_api=action_pb.CallApiAction(
            method="POST", url=f"http://127.0.0.1:{a.port}/fire"))
        spec = pb.ScheduleSpec(cron=pb.CronSpec(expression="* * * * *"))

        def create(i):
            return stub.CreateSchedule.future(pb.CreateScheduleRequest(
                schedule_id=f"w3-{i:06d}", schedule=pb.Schedule(spec=spec, action=action)), timeout=60)

        create_s = call_concurrently(create, api_n, a.concurrency)
        stopped = time.time()
        code = stop(scheduler, grace=60)
        stop_s = time.time() - stopped
        procs.remove(scheduler)
        if code != 0:
            raise BenchError(f"the scheduler exited with {code} on SIGTERM (see {work}/scheduler.log)")
        copied = ledger.copy_schedules("w3-000000", api_n, a.n - 1) if a.n > api_n else 0
        if copied != a.n - api_n:
            raise BenchError(f"copied {copied} schedules, expected {a.n - api_n}")
        ledger.shift(a.downtime * 1000)

        # Restart away from a minute boundary (see BOOT_GUARD_S), then count what was missed.
        to_boundary = MINUTE_MS - (time.time() * 1000) % MINUTE_MS
        if to_boundary < BOOT_GUARD_S * 1000:
            time.sleep(to_boundary / 1000 + 0.2)
        spawn_ms = int(time.time() * 1000)
        expected = expected_missed(ledger, spawn_ms)
        if expected != expected_missed(ledger, spawn_ms + int(BOOT_GUARD_S * 1000)):
            raise BenchError("a minute boundary fell within the restart guard")
        scheduler, addr = start_scheduler(a.almanac, work, executor_url, timeout=a.timeout,
                                          database_url=database_url)
        listening_s = time.time() - spawn_ms / 1000
        procs.append(scheduler)
        cpu0 = cpu_seconds(scheduler.pid)
        state = wait_for(
            "the ledger explaining every missed fire and a recovery run started",
            lambda: ledger_complete(ledger, spawn_ms, expected), a.timeout, every=0.5)
        observed_s = time.time() - spawn_ms / 1000
        cpu = cpu_seconds(scheduler.pid) - cpu0
        rss = peak_rss_mb(scheduler.pid)
        done_ms = None
        if a.until_done:
            done_ms = wait_for("every recovery run finished",
                               lambda: recovery_runs_done_cheaply(ledger), a.timeout, every=1.0)
    finally:
        for p in reversed(procs):
            stop(p)
        if database_url:
            pg_drop_database(database_url)

    row = {
        "system": "almanac", "workload": "w3", "label": a.label or f"almanac-w3-{a.n}",
        "backend": "postgres" if database_url else "sqlite", "n": a.n, "spec": "cron * * * * *", "misfire": "RUN_ONCE (default)",
        "catchup_window_s": 60, "downtime_s": a.downtime,
        "downtime_method": "ledger times shifted back while stopped (harness.shift_ledger)",
        "fill": a.fill, "created_via_api": api_n, "copied_in_store": copied,
        "create_s": round(create_s, 2), "create_per_s": round(api_n / create_s, 1),
        "create_concurrency": a.concurrency, "stop_s": round(stop_s, 2),
        "missed_expected": expected, "missed_explained": state["explained"],
        "late_fires_folded": state["explained"] - expected,
        "schedules_with_recovery_rows": state["schedules"],
        "recovery_rows_by_status": state["rows_by_status"],
        "listening_s": round(listening_s, 3),
        "ledger_complete_s": round((state["last_row_ms"] - spawn_ms) / 1000, 3),
        "first_recovery_row_s": round((state["first_row_ms"] - spawn_ms) / 1000, 3),
        "first_dispatch_s": round((state["first_start_ms"] - spawn_ms) / 1000, 3),
        "recovery_runs_started_by_then": state["started"],
        "recovery_runs_done_s": round((done_ms - spawn_ms) / 1000, 3) if done_ms else None,
        "observed_s": round(observed_s, 2),
        "scheduler_cpu_s": round(cpu, 2), "scheduler_peak_rss_mb": rss,
    }
    emit(row, a.out)
    print(f"# {row['label']}: {expected} missed fires of {a.n} schedules explained by the ledger "
          f"{row['ledger_complete_s']} s after the spawn (first recovery row at "
          f"{row['first_recovery_row_s']} s), first recovery run started at "
          f"{row['first_dispatch_s']} s"
          + (f", every recovery run finished at {row['recovery_runs_done_s']} s" if done_ms else "")
          + f"; created {row['create_per_s']}/s through the API", file=sys.stderr)
    # More than expected is not a failure: a claim that reaches a schedule over a catch-up
    # window after the start (PostgreSQL at 100 000) also folds the fires that came due
    # since the start into its MISSED row (`late_fires_folded`).
    if state["explained"] < expected or state["schedules"] != a.n:
        raise BenchError(f"the ledger explains {state['explained']} missed fires over "
                         f"{state['schedules']} schedules; expected {expected} over {a.n}")


if __name__ == "__main__":
    run_main(main, "w3", (BenchError, grpc.RpcError))
