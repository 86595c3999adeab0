"""A Python gRPC client of Almanac's scheduler, generated from proto/ at run time with
grpcio-tools: proof that the contracts serve clients in other languages.

usage: scheduler_client.py SCHEDULER_ADDR TARGET_URL PROTO_DIR
"""

import importlib
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def generate(proto_dir, out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [
        "almanac/executor/v1/action.proto",
        "almanac/executor/v1/executor.proto",
        "almanac/scheduler/v1/scheduler.proto",
    ]
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def main():
    addr, target, proto_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    out_dir = tempfile.mkdtemp()
    generate(proto_dir, out_dir)
    pb = importlib.import_module("almanac.scheduler.v1.scheduler_pb2")
    rpc = importlib.import_module("almanac.scheduler.v1.scheduler_pb2_grpc")
    action_pb = importlib.import_module("almanac.executor.v1.action_pb2")

    stub = rpc.SchedulerServiceStub(grpc.insecure_channel(addr))
    schedule = pb.Schedule(
        display_name="from python",
        spec=pb.ScheduleSpec(cron=pb.CronSpec(expression="* * * * * *", timezone="Europe/Paris")),
        action=action_pb.Action(call_api=action_pb.CallApiAction(method="POST", url=target)),
    )
    created = stub.CreateSchedule(
        pb.CreateScheduleRequest(schedule_id="py", schedule=schedule, request_id="py-1"), timeout=10
    ).schedule
    assert created.state == pb.SCHEDULE_STATE_ACTIVE, created
    again = stub.CreateSchedule(
        pb.CreateScheduleRequest(schedule_id="py", schedule=schedule, request_id="py-1"), timeout=10
    ).schedule
    assert again.etag == created.etag, "a retried create returns the same schedule"

    try:
        stub.CreateSchedule(
            pb.CreateScheduleRequest(
                schedule_id="bad",
                schedule=pb.Schedule(
                    spec=pb.ScheduleSpec(cron=pb.CronSpec(expression="not cron")), action=schedule.action
                ),
            ),
            timeout=10,
        )
        sys.exit("a bad cron expression was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "schedule.spec.cron.expression" in e.details(), e.details()

    deadline = time.time() + 20
    while time.time() < deadline:
        runs = stub.ListRuns(pb.ListRunsRequest(schedule_id="py"), timeout=10).runs
        done = [r for r in runs if r.status == pb.RUN_STATUS_SUCCEEDED]
        if done:
            assert done[0].nominal_time.nanos == 0, "cron fires on whole seconds"
            stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="py", note="done"), timeout=10)
            print(f"ok: {len(done)} succeeded run(s)")
            return
        time.sleep(0.2)
    sys.exit("no run succeeded within 20 s")


if __name__ == "__main__":
    main()
