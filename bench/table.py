#!/usr/bin/env python3
"""W1 JSON lines (Almanac's bench/w1.py and the peers' ../shared/peers/bench.py) as one
markdown table per mode, Almanac beside the peers at each N, with ratios.

  python bench/table.py results.jsonl [more.jsonl ...]

Columns: delivered = unique (schedule, nominal) fires / expected; lateness = receive time -
nominal time at the sink; CPU per fire = CPU seconds of the scheduler's processes in the
window / fires delivered (Almanac: both services; a peer: its one process); peak RSS
(Almanac: executor + scheduler). Ratios compare Almanac with the best peer at the same N and
mode that delivered every fire ("best" = lowest p99), for an Almanac row that delivered
every fire too.
When a configuration ran more than once, each run is a row.
"""
import json
import sys


def norm(r):
    """One row, whichever harness wrote it."""
    if r.get("system") == "almanac":
        rep = r["report"]
        lat = rep.get("lateness_ms") or {}
        rss = r.get("peak_rss_mb") or {}
        return {
            "who": r.get("label") or "almanac",
            "almanac": True,
            "backend": r.get("backend", "sqlite"),
            "mode": r["mode"],
            "n": r["n"],
            "expected": rep.get("expected") or 0,
            "unique": rep.get("unique") or 0,
            "dup": rep.get("duplicates") or 0,
            "p50": lat.get("p50"),
            "p99": lat.get("p99"),
            "max": lat.get("max"),
            "cpu_us": r.get("cpu_us_per_fire") if rep.get("unique") else None,
            "rss": sum(v for v in rss.values() if v) if rss else None,
            "memory": "durable (SQLite)" if r.get("backend", "sqlite") == "sqlite" else "durable (PostgreSQL)",
        }
    unique = r.get("unique") or 0
    return {
        "who": r.get("label") or r.get("peer"),
        "almanac": False,
        "backend": None,
        "mode": "spread" if r.get("spread") else "burst",
        "n": r["n"],
        "expected": r.get("expected") or 0,
        "unique": unique,
        "dup": r.get("duplicates") or 0,
        "p50": r.get("late_p50_ms"),
        "p99": r.get("late_p99_ms"),
        "max": r.get("late_max_ms"),
        "cpu_us": round(r["peer_cpu_s"] * 1e6 / unique, 1) if unique else None,
        "rss": r.get("peer_peak_rss_mb"),
        "memory": "in memory only",
    }


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def ratio(a, b):
    if not a or not b:
        return "-"
    return f"{a / b:.1f}x"


def main(paths):
    rows = []
    for path in paths:
        with open(path) as fh:
            rows += [norm(json.loads(line)) for line in fh if line.strip()]
    for mode in ("burst", "spread"):
        these = [r for r in rows if r["mode"] == mode]
        if not these:
            continue
        print(f"\n### W1 {mode}\n")
        print("| N | system | schedules kept | delivered | dup | p50 ms | p99 ms | max ms "
              "| CPU µs/fire | peak RSS MB | p99 vs best peer | CPU vs that peer |")
        print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in sorted({r["n"] for r in these}):
            at_n = sorted((r for r in these if r["n"] == n), key=lambda r: (not r["almanac"], r["who"]))
            complete = [r for r in at_n if not r["almanac"] and r["expected"] and r["unique"] >= r["expected"] and r["p99"] is not None]
            best = min(complete, key=lambda r: r["p99"], default=None)
            for r in at_n:
                pct = 100.0 * r["unique"] / r["expected"] if r["expected"] else 0.0
                if r["almanac"] and best and r["expected"] and r["unique"] >= r["expected"]:
                    # How many times lower Almanac's p99 is, and how its CPU compares.
                    p99_ratio = ratio(best["p99"], r["p99"]) + f" ({best['who']})"
                    cpu_ratio = ratio(r["cpu_us"], best["cpu_us"])
                else:
                    p99_ratio = cpu_ratio = ""
                print(f"| {n:,} | {r['who']} | {r['memory']} | {pct:.1f}% | {r['dup']} "
                      f"| {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['max'])} "
                      f"| {fmt(r['cpu_us'], 1)} | {fmt(r['rss'], 0)} | {p99_ratio} | {cpu_ratio} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
