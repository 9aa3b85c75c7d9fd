"""shim.cgroups on the real cgroupfs (root, cgroup v1 / hybrid host): stats
of a live cgroup, the v1 OOM eventfd watch on our own memory cgroup, and
find()/stats()/watch_oom() on containers that runc creates under containerd
(Go runtime io.containerd.runc.v2; checked against `ctr task metrics`)."""
import itertools
import json
import os
import signal
import time

import pytest

from shim import _native, cgroups
from shim.loop import get_loop
from shim.pb2.io.containerd.cgroups.v1 import metrics_pb2 as pb1
from support.containerd import GO_RUNTIME

pytestmark = pytest.mark.integration

loop = get_loop()
ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "blkio")
_n = itertools.count()


def _need_v1():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates cgroups)")
    if os.path.exists(ROOT + "/cgroup.controllers") or not os.path.isdir(ROOT + "/memory"):
        pytest.skip("not a cgroup v1 / hybrid host with a v1 memory controller")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _procs(d):
    try:
        with open(d + "/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def spin(cond, timeout):
    """Run the loop until cond() or timeout; returns cond()."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        loop.call_later(0.02, lambda: None)
        loop.run_once()
    return cond()


@pytest.fixture
def v1cg():
    """New cgroups pyshim-test-<pid>-<n> in the memory, pids, cpu, cpuacct
    and blkio hierarchies: {controller: dir}. Removed afterwards (processes
    left inside are SIGKILLed first)."""
    _need_v1()
    name = "pyshim-test-%d-%d" % (os.getpid(), next(_n))
    dirs = {}
    for c in CONTROLLERS:
        if os.path.isdir(os.path.join(ROOT, c)):
            d = os.path.join(ROOT, c, name)
            os.mkdir(d)
            dirs[c] = d
    yield dirs
    for d in dirs.values():
        for pid in _procs(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for d in dirs.values():
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                # busy until the killed processes are fully gone
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def spawn_in(dirs, cmd):
    """Start `cmd` (sh syntax) inside every cgroup of `dirs` (it joins them
    before exec, so everything it allocates is charged there); returns
    (pid, pidfd)."""
    joins = "".join("echo $$ > %s/cgroup.procs && " % d for d in dirs.values())
    pid = _native.spawn("sh", ["sh", "-c", joins + "exec " + cmd],
                        [b"PATH=/usr/sbin:/usr/bin:/sbin:/bin"], [None, None, None])
    return pid, os.pidfd_open(pid)


def reap(pid):
    """waitpid; None if someone else (another test's Reaper) got it first."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def decode(any_):
    assert any_.type_url == "io.containerd.cgroups.v1.Metrics"
    m = pb1.Metrics()
    m.ParseFromString(any_.value)
    return m


def to_dict(msg):
    """google message -> dict shaped like Go's json.Marshal of the same
    struct (proto field names, zero values omitted, set sub-messages kept)."""
    out = {}
    for fd, v in msg.ListFields():
        if fd.message_type is not None:
            out[fd.name] = [to_dict(x) for x in v] if fd.label == fd.LABEL_REPEATED \
                else to_dict(v)
        else:
            out[fd.name] = list(v) if fd.label == fd.LABEL_REPEATED else v
    return {k: v for k, v in out.items() if v != []}


# ------------------------------------------------------------------ own cgroups

def test_stats_of_sleeping_process(v1cg):
    pid, pidfd = spawn_in(v1cg, "sleep 1000")
    try:
        assert spin(lambda: _procs(v1cg["memory"]) == [pid]
                    and open("/proc/%d/comm" % pid).read().strip() == "sleep", 5)
        cg = cgroups.find(pid)
        assert cg.version == 1
        for c, d in v1cg.items():
            assert cg.paths[c] == d
        assert cg.path == v1cg["memory"]
        _write(v1cg["memory"] + "/memory.limit_in_bytes", "67108864")
        m = decode(cg.stats())
        assert (m.pids.current, m.pids.limit) == (1, 0)
        assert m.memory.usage.usage > 0
        assert m.memory.usage.limit == 67108864
        assert m.memory.hierarchical_memory_limit == 67108864
        assert m.memory.usage.max >= m.memory.usage.usage
        assert m.memory_oom_control.oom_kill == 0 and m.memory_oom_control.under_oom == 0
        assert m.cpu.usage.total > 0
        assert len(m.cpu.usage.per_cpu) == os.cpu_count()
        assert sum(m.cpu.usage.per_cpu) == m.cpu.usage.total
        assert m.HasField("cpu") and m.cpu.HasField("throttling")
        assert m.HasField("blkio")
        # a pids limit shows up as such
        _write(v1cg["pids"] + "/pids.max", "7")
        assert decode(cg.stats()).pids.limit == 7
    finally:
        os.kill(pid, signal.SIGKILL)
        assert os.WTERMSIG(reap(pid) or 9) == 9
        os.close(pidfd)
    # process gone
    with pytest.raises(ProcessLookupError):
        cgroups.find(pid)


def test_oom_reported_before_exit(v1cg):
    mem = {"memory": v1cg["memory"]}
    _write(mem["memory"] + "/memory.limit_in_bytes", "33554432")
    order = []
    # the child waits for us to watch before it allocates 128 MiB
    go_r, go_w = os.pipe()
    pid = _native.spawn("sh", ["sh", "-c", "echo $$ > %s/cgroup.procs && read x <&3 && "
                               "exec dd if=/dev/zero of=/dev/null bs=128M count=1"
                               % mem["memory"]],
                        [b"PATH=/usr/bin:/bin"], [None, None, None, go_r])
    os.close(go_r)
    pidfd = os.pidfd_open(pid)
    status = []

    def on_exit():
        loop.remove_reader(pidfd)
        order.append("exit")
        status.append(reap(pid))

    h = None
    try:
        assert spin(lambda: _procs(mem["memory"]) == [pid], 5)
        cg = cgroups.find(pid)
        h = cgroups.watch_oom(cg, loop, lambda: order.append("oom"))
        loop.add_reader(pidfd, on_exit)
        os.write(go_w, b"go\n")
        assert spin(lambda: "exit" in order, 20), order
        assert order == ["oom", "exit"]
        if status[0] is not None:
            assert os.WIFSIGNALED(status[0]) and os.WTERMSIG(status[0]) == 9
        with open(mem["memory"] + "/memory.oom_control") as f:
            assert "oom_kill 1" in f.read()
        assert not h.closed
        # Removing the cgroup also wakes the eventfd: no OOM, the watch ends.
        os.rmdir(mem["memory"])
        assert spin(lambda: h.closed, 5)
        assert order == ["oom", "exit"]
    finally:
        os.close(go_w)
        if h is not None:
            h.close()
        if "exit" not in order:
            loop.remove_reader(pidfd)
            os.kill(pid, signal.SIGKILL)
            reap(pid)
        os.close(pidfd)


def test_oom_with_oom_killer_disabled(v1cg):
    """oom_kill_disable 1: no kill, the process hangs under OOM; the watch
    reports it (as the Go shim does) and the process stays killable."""
    mem = {"memory": v1cg["memory"]}
    _write(mem["memory"] + "/memory.limit_in_bytes", "33554432")
    _write(mem["memory"] + "/memory.oom_control", "1")
    calls = []
    cg = cgroups.Cgroup(1, dict(mem), mem["memory"])
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    pid, pidfd = spawn_in(mem, "dd if=/dev/zero of=/dev/null bs=128M count=1")
    try:
        assert spin(lambda: calls, 20)
        with open(mem["memory"] + "/memory.oom_control") as f:
            text = f.read()
        assert "under_oom 1" in text and "oom_kill 0" in text
        assert decode(cg.stats()).memory_oom_control.under_oom == 1
    finally:
        h.close()
        os.kill(pid, signal.SIGKILL)
        reap(pid)
        os.close(pidfd)


def test_watch_close_stops_reporting(v1cg):
    mem = {"memory": v1cg["memory"]}
    _write(mem["memory"] + "/memory.limit_in_bytes", "33554432")
    calls = []
    h = cgroups.watch_oom(cgroups.Cgroup(1, dict(mem), mem["memory"]), loop,
                          lambda: calls.append(1))
    fd = h.fd
    h.close()
    assert loop.poller.handlers(fd) == (None, None)
    pid, pidfd = spawn_in(mem, "dd if=/dev/zero of=/dev/null bs=128M count=1")
    try:
        spin(lambda: False, 0.5)
        assert reap(pid) in (None, 9)
        assert calls == []
    finally:
        os.close(pidfd)


# ------------------------------------------------------------------ runc containers

def task_pid(containerd, id):
    return containerd.tasks()[id][0]


def test_find_and_stats_of_runc_container(containerd, ctr_run):
    _need_v1()
    r = ctr_run("sleep", "1000", detach=True, runtime=GO_RUNTIME, check=True,
                args=["--memory-limit", "67108864"])
    pid = task_pid(containerd, r.id)
    cg = cgroups.find(pid)
    assert cg.version == 1
    # containerd's default cgroupsPath is /<namespace>/<id>
    for c in CONTROLLERS:
        assert cg.paths[c] == "%s/%s/%s/%s" % (ROOT, c, containerd.namespace, r.id)
    m = decode(cg.stats())
    assert (m.pids.current, m.pids.limit) == (1, 0)
    assert m.memory.usage.limit == 67108864 and m.memory.usage.usage > 0

    # The Go shim's Stats (containerd/cgroups 1.0.4) for the same container:
    # same fields set, same values (retry while a counter moves under us).
    for _ in range(5):
        ours = to_dict(decode(cg.stats()))
        go = json.loads(containerd.ctr("task", "metrics", "--format", "json", r.id).stdout)
        again = to_dict(decode(cg.stats()))
        if ours == again:
            if ours == go:
                break
        time.sleep(0.2)
    assert ours == go


def test_oom_of_runc_container(containerd, ctr_run):
    _need_v1()
    r = ctr_run("sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
                "exec dd if=/dev/zero of=/dev/null bs=128M count=1",
                detach=True, runtime=GO_RUNTIME, check=True,
                args=["--memory-limit", "33554432"])
    pid = task_pid(containerd, r.id)
    cg = cgroups.find(pid)
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        open("/proc/%d/root/tmp/go" % pid, "w").close()
        assert spin(lambda: calls, 20)
        deadline = time.monotonic() + 10
        while containerd.tasks()[r.id][1] != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert containerd.tasks()[r.id][1] == "STOPPED"
        spin(lambda: False, 0.2)
        assert len(calls) >= 1      # one per kernel notification (Go's rule)
        m = decode(cg.stats())
        assert m.memory_oom_control.oom_kill == 1
        assert m.memory.usage.failcnt > 0
    finally:
        h.close()
    # After Delete the cgroup is gone: find() on the old pid fails, stats()
    # of the cached Cgroup reports nothing, exists() says so.
    containerd.ctr("task", "delete", r.id)
    assert not cg.exists()
    assert decode(cg.stats()).ByteSize() == 0
