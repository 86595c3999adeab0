"""A worker of Almanac's WorkerService in Python, its stubs generated from proto/ at run
time with grpcio-tools: the tests' proof that workers in any language can serve run_task
queues (an agent runtime receiving {agent_id, goal, max_steps} is the intended first user).

usage: worker.py EXECUTOR_ADDR PROTO_DIR QUEUE WORKER_ID MODE [COUNT]

MODE
  complete        take one task, report progress twice, complete it with a result that
                  echoes the payload
  hang            take one task, report progress once, then sleep until killed
  silent          take COUNT tasks (default 1) and never heartbeat nor finish them
  fail            take one task and fail it (not retryable)
  fail-retryable  take one task and fail it as retryable

Each lease is printed as `LEASED <json>`, each end as `DONE <json>`, flushed at once.
Exit status: 0 when the mode's work is done, 3 when no task came within a minute.
"""

import glob
import importlib
import json
import os
import sys
import tempfile
import time

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from grpc_tools import protoc


def generate(proto_dir, out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = sorted(
        os.path.relpath(p, proto_dir)
        for p in glob.glob(os.path.join(proto_dir, "almanac", "executor", "v1", "*.proto"))
    )
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def say(kind, **fields):
    print(f"{kind} {json.dumps(fields, sort_keys=True)}", flush=True)


class Worker:
    def __init__(self, addr, queue, worker_id):
        self.pb = importlib.import_module("almanac.executor.v1.worker_pb2")
        rpc = importlib.import_module("almanac.executor.v1.worker_pb2_grpc")
        self.stub = rpc.WorkerServiceStub(grpc.insecure_channel(addr))
        self.queue = queue
        self.worker_id = worker_id

    def take(self, within=60.0):
        """Long-polls until a task comes (or `within` seconds pass: exit 3)."""
        deadline = time.time() + within
        while time.time() < deadline:
            response = self.stub.PollTask(
                self.pb.PollTaskRequest(
                    worker_id=self.worker_id,
                    queues=[self.queue],
                    wait=duration_pb2.Duration(seconds=5),
                ),
                timeout=30,
            )
            if response.HasField("task"):
                task = response.task
                say(
                    "LEASED",
                    task_id=task.task_id,
                    lease_id=task.lease_id,
                    delivery=task.delivery,
                    node_id=task.node_id,
                    payload=json_format.MessageToDict(task.payload),
                )
                return task
        say("NOTHING", worker=self.worker_id)
        sys.exit(3)

    def progress(self, task, percent, message):
        answer = self.stub.Heartbeat(
            self.pb.HeartbeatRequest(
                task_id=task.task_id, lease_id=task.lease_id, percent=percent, message=message
            ),
            timeout=10,
        )
        return answer.cancel_requested

    def complete(self, task, result):
        value = json_format.ParseDict(result, struct_pb2.Value())
        self.stub.CompleteTask(
            self.pb.CompleteTaskRequest(task_id=task.task_id, lease_id=task.lease_id, result=value),
            timeout=10,
        )
        say("DONE", task_id=task.task_id, result=result)

    def fail(self, task, error, retryable):
        self.stub.FailTask(
            self.pb.FailTaskRequest(
                task_id=task.task_id, lease_id=task.lease_id, error=error, retryable=retryable
            ),
            timeout=10,
        )
        say("DONE", task_id=task.task_id, error=error, retryable=retryable)


def main():
    addr, proto_dir, queue, worker_id, mode = sys.argv[1:6]
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    generate(proto_dir, tempfile.mkdtemp())
    worker = Worker(addr, queue, worker_id)

    if mode == "complete":
        task = worker.take()
        payload = json_format.MessageToDict(task.payload)
        steps = int(payload.get("max_steps", 1))
        worker.progress(task, 10.0, f"planning {payload.get('goal', '')}")
        worker.progress(task, 90.0, f"ran {steps} steps")
        worker.complete(
            task,
            {
                "worker": worker_id,
                "delivery": task.delivery,
                "agent_id": payload.get("agent_id"),
                "steps": steps,
                "payload": payload,
                "idempotency_key": task.idempotency_key,
            },
        )
    elif mode == "hang":
        task = worker.take()
        worker.progress(task, 5.0, "started, then hung")
        say("HUNG", task_id=task.task_id)
        while True:
            time.sleep(60)
    elif mode == "silent":
        for _ in range(count):
            worker.take()
    elif mode in ("fail", "fail-retryable"):
        task = worker.take()
        worker.fail(task, f"the agent gave up (worker {worker_id})", mode == "fail-retryable")
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
