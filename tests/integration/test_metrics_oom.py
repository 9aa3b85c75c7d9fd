"""Stats, OOM events and runtime options through ctr, on pyshim and the Go
shim side by side. Metrics have the shape of the host's cgroups
(io.containerd.cgroups.v1.Metrics on v1 / hybrid, v2.Metrics on v2); the
containers follow PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER."""
import json
import os
import time

import pytest

from support.cgroup import is_v2, proc_cgroup
from support.helpers import address_of, ctr_events

pytestmark = pytest.mark.integration


def wait_running(c, cid, timeout=10):
    deadline = time.monotonic() + timeout
    while c.tasks().get(cid, (0, ""))[1] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_task_metrics(containerd, ctr_run, cid, runtime):
    ctr_run("sh", "-c", "sleep 3600 & exec sleep 3600", runtime=runtime, id=cid,
            detach=True, check=True)
    wait_running(containerd, cid)
    m = json.loads(containerd.ctr("task", "metrics", "--format", "json", cid).stdout)
    assert m["pids"]["current"] == 2
    table = containerd.ctr("task", "metrics", cid).stdout
    if is_v2():
        # io.containerd.cgroups.v2.Metrics: flat memory usage, cpu in usec
        assert m["memory"]["usage"] > 0 and m["memory"]["usage_limit"] > 0
        assert m["cpu"]["usage_usec"] > 0
        assert "memory_events" in m
        assert "memory.usage" in table and "cpu.usage_usec" in table
    else:
        assert m["memory"]["usage"]["usage"] > 0
        assert m["cpu"]["usage"]["total"] > 0
        assert "memory.usage_in_bytes" in table
    assert "pids.current" in table


def test_oom_event_before_exit(containerd, image, make_cid, runtime):
    cid = make_cid()
    with ctr_events(containerd) as events:
        r = containerd.ctr("run", "--rm", "--runtime", runtime,
                           *containerd.run_args(runtime, cid), "--memory-limit",
                           str(32 << 20), image, cid, "dd", "if=/dev/zero", "of=/dev/null",
                           "bs=128M", "count=1", check=False, timeout=60)
        assert r.returncode == 137, r.stderr
    out = events[0]
    topics = [line.split()[5] for line in out.splitlines()
              if cid in line and line.split()[5] in ("/tasks/oom", "/tasks/exit")]
    assert topics and topics[0] == "/tasks/oom" and "/tasks/exit" in topics, out


def test_memory_limit_update_visible_in_cgroup(containerd, ctr_run, cid, runtime):
    # ctr 1.6 has no `task update`: send Update to the shim as containerd does.
    from shim import ttrpc
    from shim.pb import task as pb
    from shim.pb import wkt
    ctr_run("sleep", "3600", runtime=runtime, id=cid, detach=True, check=True)
    wait_running(containerd, cid)
    if is_v2():
        # memory.max of the init's own cgroup (wherever the driver put it)
        path = os.path.join(proc_cgroup(containerd.tasks()[cid][0]), "memory.max")
    else:
        path = os.path.join(containerd.cgroup_dir(cid, "memory"), "memory.limit_in_bytes")
        if not os.path.exists(path):
            pytest.skip("no cgroup v1 memory controller at %s" % path)
    assert os.path.exists(path), path
    address = address_of(containerd, cid)
    res = wkt.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                  value=json.dumps({"memory": {"limit": 48 << 20}}).encode())
    # containerd 2.x's Go shim serves only the v3 Task service
    service = containerd.task_service
    with ttrpc.SyncClient(address) as cl:
        cl.call(service, "Update", pb.UpdateTaskRequest(id=cid, resources=res))
        with pytest.raises(ttrpc.TTRPCError) as e:
            cl.call(service, "Update", pb.UpdateTaskRequest(
                id=cid, resources=wkt.Any(type_url=res.type_url, value=b"{nope")))
        assert e.value.code == ttrpc.UNKNOWN
    with open(path) as f:
        assert int(f.read()) == 48 << 20
