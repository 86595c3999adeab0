"""What every bench/ script shares: Python stubs generated from proto/, the two services
started as processes and stopped by PID, their CPU and memory from /proc, bounded waits,
percentiles, the JSON line each configuration prints, and the SQLite helpers that fill or
shift a stopped scheduler's ledger.

Every process is started and stopped here by PID; all traffic stays on 127.0.0.1; every
wait is bounded.
"""
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALMANAC = os.path.join(ROOT, "target", "release", "almanac")
PROTOS = [
    "almanac/executor/v1/action.proto",
    "almanac/executor/v1/executor.proto",
    "almanac/executor/v1/pipeline.proto",
    "almanac/scheduler/v1/scheduler.proto",
]


class BenchError(Exception):
    """A run that cannot give a trustworthy figure: the script exits non-zero."""


_WORK_DIRS = []


def work_dir(prefix):
    """A scratch directory for this run (databases, logs, stubs). `run_main` deletes it when
    the script succeeds and keeps it, named on stderr, when it fails or when
    ALMANAC_BENCH_KEEP=1: a benchmark leaves no gigabytes behind in /tmp."""
    path = tempfile.mkdtemp(prefix=prefix)
    _WORK_DIRS.append(path)
    return path


def run_main(main, name, errors=()):
    """Runs a script's `main`; an error of `errors` exits non-zero with its message."""
    try:
        main()
    except BaseException as e:
        for path in _WORK_DIRS:
            print(f"# {name}: kept {path}", file=sys.stderr)
        if isinstance(e, errors):
            sys.exit(f"{name} failed: {e}")
        raise
    for path in _WORK_DIRS:
        if os.environ.get("ALMANAC_BENCH_KEEP"):
            print(f"# {name}: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def generate_stubs(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["protoc", f"-I{ROOT}/proto", f"-I{include}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}"] + PROTOS
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mb(pid):
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid):
    return _status_mb(pid, "VmRSS:")


def read_line(proc, timeout):
    """The process's next stdout line, waiting at most `timeout` seconds ('' if none)."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.time() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.time()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


def start(cmd, log_path, ready_prefix=None, timeout=60):
    """Starts `cmd`; with `ready_prefix`, waits (bounded) for its first stdout line and
    returns (process, that line)."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    if ready_prefix is None:
        return proc, None
    line = read_line(proc, timeout)
    if not line.startswith(ready_prefix):
        stop(proc)
        sys.exit(f"{cmd[0]} did not start: {line!r} (see {log_path})")
    return proc, line.strip()


def stop(proc, grace=15.0):
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def store_args(work, name, database_url=None):
    """A service's store: PostgreSQL at `database_url`, or a SQLite file in `work`."""
    if database_url:
        return ["--database-url", database_url]
    return ["--database", os.path.join(work, f"{name}.db")]


def start_executor(almanac, work, name="executor", egress_loopback=True, timeout=60,
                   database_url=None):
    """`almanac executor` on 127.0.0.1:0 with a SQLite file in `work` (or PostgreSQL at
    `database_url`): (process, URL)."""
    cmd = [almanac, "executor", "--listen", "127.0.0.1:0", "--replica-id", name]
    cmd += store_args(work, name, database_url)
    if egress_loopback:
        config = os.path.join(work, f"{name}.toml")
        with open(config, "w") as f:
            f.write('[egress]\nallow = ["127.0.0.0/8"]\n')
        cmd += ["--config", config]
    proc, line = start(cmd, os.path.join(work, f"{name}.log"), "executor listening on", timeout)
    return proc, line.split()[-1]


def start_scheduler(almanac, work, executor_url, name="scheduler", timeout=120,
                    database_url=None):
    """`almanac scheduler` on 127.0.0.1:0 with a SQLite file in `work` (or PostgreSQL at
    `database_url`): (process, host:port). It prints its address before opening the
    store: it serves later."""
    proc, line = start(
        [almanac, "scheduler", "--listen", "127.0.0.1:0", "--executor", executor_url,
         "--replica-id", name] + store_args(work, name, database_url),
        os.path.join(work, f"{name}.log"), "scheduler listening on", timeout,
    )
    return proc, line.split()[-1].removeprefix("http://")


def http_get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer within {timeout} s")


def sleep_until(t):
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 0.5))


def wait_for(what, check, timeout, every=0.05):
    """Polls `check()` until it returns a true value (returned), or fails after `timeout` s."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise BenchError(f"{what}: not within {timeout} s")
        time.sleep(every)


def percentile(values, q):
    """The q-th percentile (0-100, nearest rank) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))]


def emit(row, out):
    """Prints one JSON line and appends it to `out` (if given)."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def call_concurrently(make_future, n, window):
    """Issues n calls (`make_future(i)` returns a grpc future), at most `window` in flight,
    and waits for each (the futures carry their own deadline): returns the seconds taken."""
    started = time.time()
    pending = []
    for i in range(n):
        pending.append(make_future(i))
        if len(pending) >= window:
            pending.pop(0).result()
    for f in pending:
        f.result()
    return time.time() - started


# The scheduler's ledger (migrations/scheduler/sqlite): copied and shifted only while the
# scheduler is stopped; read (never written) while it runs.

SCHEDULE_COLUMNS = [
    "display_name", "description", "spec", "action", "policy", "state", "pause_note",
    "pause_identity", "paused_ms", "next_fire_ms", "run_count", "version", "completion_reason",
    "created_ms", "updated_ms", "consecutive_failures", "buffer_overruns",
]


def copy_schedules(db, template_id, first, last, id_format):
    """Inserts schedules `id_format % i` for i in [first, last] as copies of `template_id`
    (same spec, action, policy and next fire; no request id). Returns the rows added."""
    cols = ", ".join(SCHEDULE_COLUMNS)
    con = sqlite3.connect(db, timeout=30)
    try:
        before = con.total_changes
        with con:
            con.execute(
                f"WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                f"INSERT INTO schedules (id, {cols}) "
                f"SELECT printf(?, n.i), {cols} FROM n, schedules t WHERE t.id = ?",
                (first, last, id_format, template_id),
            )
        return con.total_changes - before
    finally:
        con.close()


# Every time column of the scheduler's tables: shifting them all by the same amount is the
# ledger as it would be had everything happened that much earlier.
TIME_COLUMNS = {
    "schedules": ["paused_ms", "next_fire_ms", "created_ms", "updated_ms"],
    "runs": ["nominal_ms", "dispatch_after_ms", "started_ms", "finished_ms",
             "missed_first_ms", "missed_last_ms", "created_ms", "lease_until_ms"],
    "attempts": ["deadline_ms", "started_ms", "finished_ms"],
    "replicas": ["alive_until_ms"],
}


def shift_statements(ms):
    """The statements that move every stored time of a scheduler's ledger `ms` earlier."""
    return [f"UPDATE {table} SET " + ", ".join(f"{c} = {c} - {int(ms)}" for c in cols)
            for table, cols in TIME_COLUMNS.items()]


def shift_ledger(db, ms):
    """Moves every stored time of a stopped scheduler's ledger `ms` earlier."""
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            for sql in shift_statements(ms):
                con.execute(sql)
    finally:
        con.close()


def psql(url, sql, single_transaction=False, schema=None):
    """Runs `sql` on PostgreSQL with psql (from the apt package the test script installs),
    with `schema` first on the search path: the rows, each a tuple of ints, strings, or
    None for NULL."""
    cmd = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-d", url]
    if single_transaction:
        cmd.append("-1")
    env = dict(os.environ, PGOPTIONS=f"-c search_path={schema}") if schema else None
    out = subprocess.run(cmd + ["-c", sql], capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise BenchError(f"psql failed: {out.stderr.strip()}")

    def value(v):
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            return v
    return [tuple(value(v) for v in line.split("\x1f")) for line in out.stdout.splitlines() if line]


def pg_fresh_database(url, prefix):
    """A new, empty database on `url`'s server: its URL (dropped by `pg_drop_database`)."""
    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    psql(url, f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def pg_drop_database(url):
    """Drops the database `pg_fresh_database` made (its connections closed first)."""
    base, name = url.rsplit("/", 1)
    psql(base + "/postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def read_only(db):
    """A read-only connection to a live SQLite file (WAL: never blocks its writer)."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
