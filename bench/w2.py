#!/usr/bin/env python3
"""W2 (issue 7): pipeline overhead per node, with every node's records persisted.

  1. start `almanac executor` (SQLite file in a temporary folder) as a process;
  2. create three pipelines through PipelineService.CreatePipeline, all of no-op nodes:
     `one` (a trigger alone), `seq` (a trigger then --width - 1 `parallel` nodes in a
     chain: --width nodes in all) and `fanout` (a trigger -> --width `parallel` nodes ->
     one `parallel` join node with join ALL; max_parallelism = --width). A `parallel`
     node is the cheapest real node: it passes its input through, and the executor still
     appends its NodeStarted / NodeSucceeded events (a `delay` must be > 0, a call_api
     adds an HTTP round trip);
  3. run each pipeline with ExecutorService.Execute (action execute_pipeline), one run at a
     time: --warmup runs, then --runs measured; wall = Execute sent -> ExecutionFinished
     received; the executor's CPU over all measured runs of a pipeline;
  4. per-node overhead = (p50 wall of the pipeline - p50 wall of `one`) / (its nodes - 1),
     and the same for CPU (mean per run: /proc counts in 10 ms ticks).

One JSON line per pipeline (appended to --out); a human summary on stderr. The process is
started and stopped here by PID; all traffic stays on 127.0.0.1; every wait is bounded.
"""
import argparse
import importlib
import os
import sys
import time
import uuid

import grpc

from harness import (ALMANAC, BenchError, cpu_seconds, emit, generate_stubs, peak_rss_mb,
                     percentile, start_executor, stop)
from harness import run_main, work_dir


def pipeline(pb, kind, width):
    """The pipeline `kind` of no-op nodes: (message, node count)."""
    nodes = [pb.Node(id="start", trigger=pb.TriggerNode())]
    edges = []
    if kind == "seq":
        for i in range(1, width):
            nodes.append(pb.Node(id=f"n{i:03d}", parallel=pb.ParallelNode()))
            edges.append(pb.Edge(**{"from": nodes[-2].id, "to": nodes[-1].id}))
    elif kind == "fanout":
        for i in range(width):
            nodes.append(pb.Node(id=f"n{i:03d}", parallel=pb.ParallelNode()))
            edges.append(pb.Edge(**{"from": "start", "to": nodes[-1].id}))
        nodes.append(pb.Node(id="join", parallel=pb.ParallelNode(), join=pb.JOIN_ALL))
        edges += [pb.Edge(**{"from": f"n{i:03d}", "to": "join"}) for i in range(width)]
    message = pb.Pipeline(id=f"w2-{kind}", nodes=nodes, edges=edges,
                          max_parallelism=width if kind == "fanout" else 0)
    return message, len(nodes)


def run_once(stub, ex_pb, action_pb, pipeline_id, nodes, timeout):
    """Executes the pipeline once: wall seconds from Execute to ExecutionFinished."""
    request = ex_pb.ExecuteRequest(
        idempotency_key=f"w2-{pipeline_id}-{uuid.uuid4()}",
        action=action_pb.Action(execute_pipeline=action_pb.ExecutePipelineAction(
            pipeline_id=pipeline_id)),
    )
    started = time.perf_counter()
    succeeded = 0
    finished = None
    for response in stub.Execute(request, timeout=timeout):
        kind = response.event.WhichOneof("kind")
        if kind == "node_succeeded":
            succeeded += 1
        elif kind == "execution_finished":
            finished = response.event.execution_finished
            break
    wall = time.perf_counter() - started
    if finished is None or finished.status != ex_pb.EXECUTION_STATUS_SUCCEEDED:
        raise BenchError(f"{pipeline_id}: did not succeed: {finished}")
    if succeeded != nodes:
        raise BenchError(f"{pipeline_id}: {succeeded} nodes succeeded, expected {nodes}")
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=40, help="nodes of `seq`, branches of `fanout`")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120, help="seconds allowed to one run")
    ap.add_argument("--almanac", default=ALMANAC)
    ap.add_argument("--smoke", action="store_true", help="3 runs after 1 warm-up: proves the harness")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    a = ap.parse_args()
    if a.smoke:
        a.runs, a.warmup = 3, 1

    work = work_dir("almanac-w2-")
    generate_stubs(os.path.join(work, "stubs"))
    pb = importlib.import_module("almanac.executor.v1.pipeline_pb2")
    pb_rpc = importlib.import_module("almanac.executor.v1.pipeline_pb2_grpc")
    ex_pb = importlib.import_module("almanac.executor.v1.executor_pb2")
    ex_rpc = importlib.import_module("almanac.executor.v1.executor_pb2_grpc")
    action_pb = importlib.import_module("almanac.executor.v1.action_pb2")

    executor, url = start_executor(a.almanac, work, egress_loopback=False)
    rows = []
    try:
        channel = grpc.insecure_channel(url.removeprefix("http://"))
        pipelines, executions = pb_rpc.PipelineServiceStub(channel), ex_rpc.ExecutorServiceStub(channel)
        for kind in ["one", "seq", "fanout"]:
            message, nodes = pipeline(pb, kind, a.width)
            pipelines.CreatePipeline(pb.CreatePipelineRequest(pipeline_id=message.id, pipeline=message),
                                     timeout=30)
            for _ in range(a.warmup):
                run_once(executions, ex_pb, action_pb, message.id, nodes, a.timeout)
            cpu0 = cpu_seconds(executor.pid)
            walls = [run_once(executions, ex_pb, action_pb, message.id, nodes, a.timeout)
                     for _ in range(a.runs)]
            cpu = cpu_seconds(executor.pid) - cpu0
            rows.append({
                "system": "almanac", "workload": "w2", "pipeline": kind, "nodes": nodes,
                "width": a.width, "runs": a.runs, "backend": "sqlite",
                "node_kind": "parallel (pass-through)",
                "wall_ms": {"p50": round(percentile(walls, 50) * 1e3, 3),
                            "p90": round(percentile(walls, 90) * 1e3, 3),
                            "min": round(min(walls) * 1e3, 3), "max": round(max(walls) * 1e3, 3)},
                "executor_cpu_ms_per_run": round(cpu * 1e3 / a.runs, 3),
            })
        rss = peak_rss_mb(executor.pid)
    finally:
        code = stop(executor)
    if code not in (0, None):
        print(f"# the executor exited with {code} (see {work}/executor.log)", file=sys.stderr)

    base = rows[0]
    for row in rows:
        row["executor_peak_rss_mb"] = rss
        extra = row["nodes"] - base["nodes"]
        if extra > 0:
            row["per_node_wall_ms"] = round((row["wall_ms"]["p50"] - base["wall_ms"]["p50"]) / extra, 4)
            row["per_node_cpu_ms"] = round(
                (row["executor_cpu_ms_per_run"] - base["executor_cpu_ms_per_run"]) / extra, 4)
        emit(row, a.out)
        print(f"# w2 {row['pipeline']} ({row['nodes']} nodes): p50 {row['wall_ms']['p50']} ms per run, "
              f"executor CPU {row['executor_cpu_ms_per_run']} ms per run"
              + (f"; per node {row['per_node_wall_ms']} ms wall, {row['per_node_cpu_ms']} ms CPU"
                 if "per_node_wall_ms" in row else ""), file=sys.stderr)


if __name__ == "__main__":
    run_main(main, "w2", (BenchError, grpc.RpcError))
