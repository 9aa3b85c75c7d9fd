"""Stats, OOM events and runtime options through ctr, on pyshim and the Go
shim side by side. Metrics have the shape of the host's cgroups
(io.containerd.cgroups.v1.Metrics on v1 / hybrid, v2.Metrics on v2); the
containers follow PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER."""
import json
import os
import time

import pytest

from support.cgroup import is_v2, proc_cgroup
from support.containerd import PY_RUNTIME, remove_cgroups
from support.helpers import address_of, ctr_events, wait_status

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
    assert "/tasks/exit" in topics, out
    if runtime != PY_RUNTIME and topics[0] != "/tasks/oom":
        # The Go shim does not order them, and can miss the OOM when systemd
        # removes the scope first (both seen on the v2 node, systemd driver)
        pytest.skip("Go shim published %s" % " before ".join(topics))
    assert topics[0] == "/tasks/oom", out


def test_memory_limit_update_visible_in_cgroup(containerd, ctr_run, cid, runtime):
    # ctr 1.6 has no `task update`: send Update to the shim as containerd does.
    from shim import ttrpc, ttrpc_client
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
    with ttrpc_client.SyncClient(address) as cl:
        cl.call(service, "Update", pb.UpdateTaskRequest(id=cid, resources=res))
        with pytest.raises(ttrpc.TTRPCError) as e:
            cl.call(service, "Update", pb.UpdateTaskRequest(
                id=cid, resources=wkt.Any(type_url=res.type_url, value=b"{nope")))
        assert e.value.code == ttrpc.UNKNOWN
    with open(path) as f:
        assert int(f.read()) == 48 << 20


def oom_then_exit(out, cid):
    """The task topics ctr events showed for `cid`: /tasks/oom and /tasks/exit."""
    return [line.split()[5] for line in out.splitlines()
            if cid in line and line.split()[5] in ("/tasks/oom", "/tasks/exit")]


def test_instant_oom_kill_reported_before_exit_under_load(
        containerd, image, make_cid, runtime, busy_cpus):
    """A container OOM-killed in its first milliseconds, 20 times with the
    CPUs busy: /tasks/oom comes before /tasks/exit every time (the watch is
    armed once runc create returns, and the exit checks the oom_kill count).
    The Go shim's score is printed, not asserted (containerd 1.6's arms its
    watch only after runc start; 18-20 of 20 here). PYSHIM_TEST_OOM_RUNS
    sets the count (the emulated cgroup v2 node of CI runs fewer)."""
    runs = int(os.environ.get("PYSHIM_TEST_OOM_RUNS", "20"))
    ids = []
    with ctr_events(containerd) as events:
        for _ in range(runs):
            cid = make_cid()
            ids.append(cid)
            r = containerd.ctr("run", "--rm", "--runtime", runtime,
                               *containerd.run_args(runtime, cid), "--memory-limit",
                               str(16 << 20), image, cid, "dd", "if=/dev/zero",
                               "of=/dev/null", "bs=64M", "count=1", check=False, timeout=120)
            assert r.returncode == 137, r.stderr
    out = events[0]
    seen = {cid: oom_then_exit(out, cid) for cid in ids}
    assert all("/tasks/exit" in t for t in seen.values()), seen
    good = sum(1 for t in seen.values() if t[0] == "/tasks/oom")
    print("%s: /tasks/oom before /tasks/exit %d of %d" % (runtime, good, runs))
    if runtime == PY_RUNTIME:
        assert good == runs, seen


def test_stats_after_oom_exit_until_delete(containerd, ctr_run, cid, runtime):
    """containerd 2.3's CRI reads oom_kill from the task's Stats after an
    exit with 137: Stats answers for a stopped task until Delete, for
    pyshim also once the cgroup is gone (systemd removes an empty scope's
    cgroup)."""
    ctr_run("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", runtime=runtime,
            id=cid, detach=True, check=True, args=("--memory-limit", str(16 << 20)))
    assert wait_status(containerd, cid, "STOPPED") == "STOPPED"

    def oom_kill():
        r = containerd.ctr("task", "metrics", "--format", "json", cid, check=False)
        if runtime != PY_RUNTIME and "no metrics received" in r.stderr:
            # The Go shim reads the cgroup, which systemd removed with the
            # exited task's scope (the systemd driver on cgroup v2).
            pytest.skip("Go shim: no Stats once the scope is gone: %s" % r.stderr.strip())
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        if is_v2():     # v2.Metrics: memory.events' counters
            return m.get("memory_events", {}).get("oom_kill", 0)
        return m.get("memory_oom_control", {}).get("oom_kill", 0)
    assert oom_kill() == 1
    if runtime == PY_RUNTIME:
        assert not remove_cgroups("%s/%s" % (containerd.namespace, cid))
        assert oom_kill() == 1
    containerd.ctr("task", "delete", cid)
    r = containerd.ctr("task", "metrics", cid, check=False)
    assert r.returncode != 0 and "not found" in r.stderr
