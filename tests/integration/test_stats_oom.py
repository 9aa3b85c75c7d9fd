"""shim.cgroups on the real cgroupfs (root): stats of a live cgroup, the OOM
watch on our own memory cgroup (v1: the eventfd of memory.oom_control; v2:
inotify on memory.events, oom_kill), and find()/stats()/watch_oom() on
containers that runc creates under containerd (Go runtime
io.containerd.runc.v2; checked against `ctr task metrics`). Each test is for
cgroup v1 / hybrid or for cgroup v2 and skips on the other kind of host; the
container tests follow PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER
(support.cgroup)."""
import itertools
import json
import os
import select
import signal
import time

import pytest

from shim import _native, cgroups
from shim.loop import get_loop
from shim.pb2.io.containerd.cgroups.v1 import metrics_pb2 as pb1
from shim.pb2.io.containerd.cgroups.v2 import metrics_pb2 as pb2
from support.cgroup import is_v2, proc_cgroup, v2_file
from support.containerd import GO_RUNTIME

pytestmark = pytest.mark.integration

loop = get_loop()
ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "blkio")
MAX64 = (1 << 64) - 1
_n = itertools.count()


def _need_v1():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates cgroups)")
    if os.path.exists(ROOT + "/cgroup.controllers") or not os.path.isdir(ROOT + "/memory"):
        pytest.skip("not a cgroup v1 / hybrid host with a v1 memory controller")


def _need_v2():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates cgroups)")
    if not is_v2():
        pytest.skip("not a cgroup v2 host")


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


def _rmdir_when_empty(d, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            # busy until the killed processes are fully gone
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def v2cg():
    """A new cgroup v2 dir /sys/fs/cgroup/pyshim-test-<pid>-<n> with the memory
    and pids controllers (systemd enables them at the root; so does runc's
    cgroupfs driver where it has to). Removed afterwards (processes left
    inside are SIGKILLed first)."""
    _need_v2()
    with open(ROOT + "/cgroup.subtree_control") as f:
        enabled = f.read().split()
    missing = [c for c in ("memory", "pids") if c not in enabled]
    if missing:
        _write(ROOT + "/cgroup.subtree_control", " ".join("+" + c for c in missing))
    d = os.path.join(ROOT, "pyshim-test-%d-%d" % (os.getpid(), next(_n)))
    os.mkdir(d)
    yield d
    for pid in _procs(d):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _rmdir_when_empty(d)


def _no_swap(d):
    # Where there is swap, a 128 MiB allocation under a 32 MiB limit could
    # swap instead of meeting the OOM killer.
    if os.path.exists(d + "/memory.swap.max"):
        _write(d + "/memory.swap.max", "0")


def spawn_in(dirs, cmd):
    """Start `cmd` (sh syntax) inside every cgroup of `dirs` (it joins them
    before exec, so everything it allocates is charged there); returns
    (pid, pidfd)."""
    joins = "".join("echo $$ > %s/cgroup.procs && " % d for d in dirs.values())
    pid = _native.spawn("sh", ["sh", "-c", joins + "exec " + cmd],
                        [b"PATH=/usr/sbin:/usr/bin:/sbin:/bin"], [None, None, None])
    return pid, os.pidfd_open(pid)


def exited(pidfd):
    """Whether the process of `pidfd` has ended (reaped or not)."""
    return bool(select.select([pidfd], [], [], 0)[0])


def reap(pid):
    """waitpid; None if someone else (another test's Reaper) got it first."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def decode(any_):
    """The Metrics message of a Stats Any: v1 or v2 by its type_url."""
    pb = pb2 if is_v2() else pb1
    assert any_.type_url == "io.containerd.cgroups.v%d.Metrics" % (2 if is_v2() else 1)
    m = pb.Metrics()
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
        # (the kernel may signal the eventfd again while its victim dies,
        # and a loaded machine reads the two signals apart: seen once)
        assert order[-1] == "exit" and order[:-1] and set(order[:-1]) == {"oom"}, order
        seen = list(order)
        if status[0] is not None:
            assert os.WIFSIGNALED(status[0]) and os.WTERMSIG(status[0]) == 9
        with open(mem["memory"] + "/memory.oom_control") as f:
            assert "oom_kill 1" in f.read()
        assert not h.closed
        # Removing the cgroup also wakes the eventfd: no OOM, the watch ends.
        os.rmdir(mem["memory"])
        assert spin(lambda: h.closed, 5)
        assert order == seen
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
    try:
        for attempt in range(3):
            pid, pidfd = spawn_in(mem, "dd if=/dev/zero of=/dev/null bs=128M count=1")
            spin(lambda fd=pidfd: calls or exited(fd), 20)
            if calls or not exited(pidfd) or attempt == 2:
                break
            # dd ended instead of waiting under OOM (seen twice in CI on this
            # host, cause unknown): not the case tested here, start it again
            os.close(pidfd)
            reap(pid)
        assert spin(lambda: calls, 1)
        with open(mem["memory"] + "/memory.oom_control") as f:
            text = f.read()
        assert "under_oom 1" in text and "oom_kill 0" in text
        assert decode(cg.stats()).memory_oom_control.under_oom == 1
    finally:
        h.close()
        if not exited(pidfd):
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


def test_stats_of_sleeping_process_v2(v2cg):
    pid, pidfd = spawn_in({"v2": v2cg}, "sleep 1000")
    try:
        assert spin(lambda: _procs(v2cg) == [pid]
                    and open("/proc/%d/comm" % pid).read().strip() == "sleep", 5)
        cg = cgroups.find(pid)
        assert (cg.version, cg.path, cg.paths) == (2, v2cg, {})
        _write(v2cg + "/memory.max", "67108864")
        m = decode(cg.stats())
        # pids.max "max" is 2^64-1, as the Go library reports it
        assert (m.pids.current, m.pids.limit) == (1, MAX64)
        assert 0 < m.memory.usage <= 67108864
        assert m.memory.usage_limit == 67108864
        assert m.memory.swap_limit in (0, MAX64)     # 0: no swap accounting
        assert m.HasField("memory_events") and m.memory_events.oom_kill == 0
        # cpu.stat exists in every v2 cgroup; usage_usec counts sh + sleep
        assert m.HasField("cpu") and m.cpu.usage_usec > 0
        assert m.cpu.usage_usec >= m.cpu.user_usec
        _write(v2cg + "/pids.max", "7")
        assert decode(cg.stats()).pids.limit == 7
        _write(v2cg + "/memory.max", "max")
        assert decode(cg.stats()).memory.usage_limit == MAX64
    finally:
        os.kill(pid, signal.SIGKILL)
        assert os.WTERMSIG(reap(pid) or 9) == 9
        os.close(pidfd)
    with pytest.raises(ProcessLookupError):
        cgroups.find(pid)


def test_oom_reported_before_exit_v2(v2cg):
    """v2: inotify on memory.events may wake us after the victim's exit; the
    shim calls poll() before it publishes an exit (Service._on_exit), so the
    OOM still comes first. Done here the same way."""
    _write(v2cg + "/memory.max", "33554432")
    _no_swap(v2cg)
    order = []
    go_r, go_w = os.pipe()
    pid = _native.spawn("sh", ["sh", "-c", "echo $$ > %s/cgroup.procs && read x <&3 && "
                               "exec dd if=/dev/zero of=/dev/null bs=128M count=1" % v2cg],
                        [b"PATH=/usr/bin:/bin"], [None, None, None, go_r])
    os.close(go_r)
    pidfd = os.pidfd_open(pid)
    status = []
    h = None

    def on_exit():
        loop.remove_reader(pidfd)
        h.poll()                    # what the shim does before publishing an exit
        order.append("exit")
        status.append(reap(pid))

    try:
        assert spin(lambda: _procs(v2cg) == [pid], 5)
        cg = cgroups.find(pid)
        h = cgroups.watch_oom(cg, loop, lambda: order.append("oom"))
        loop.add_reader(pidfd, on_exit)
        os.write(go_w, b"go\n")
        assert spin(lambda: "exit" in order, 20), order
        spin(lambda: False, 0.2)    # a late inotify wake-up must not report it again
        assert order == ["oom", "exit"]
        if status[0] is not None:
            assert os.WIFSIGNALED(status[0]) and os.WTERMSIG(status[0]) == 9
        events = v2_file(v2cg, "memory.events").split()
        assert events[events.index("oom_kill") + 1] == "1"
        assert not h.closed
        # Removing the cgroup wakes nobody on v2 (no inotify event on
        # cgroupfs): the next poll() sees it gone and ends the watch.
        fd = h.fd
        os.rmdir(v2cg)
        h.poll()
        assert h.closed and loop.poller.handlers(fd) == (None, None)
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


def test_watch_close_stops_reporting_v2(v2cg):
    _write(v2cg + "/memory.max", "33554432")
    _no_swap(v2cg)
    calls = []
    h = cgroups.watch_oom(cgroups.Cgroup(2, {}, v2cg), loop, lambda: calls.append(1))
    fd = h.fd
    h.close()
    assert h.closed and loop.poller.handlers(fd) == (None, None)
    pid, pidfd = spawn_in({"v2": v2cg}, "dd if=/dev/zero of=/dev/null bs=128M count=1")
    try:
        spin(lambda: False, 0.5)
        assert reap(pid) in (None, 9)
        events = v2_file(v2cg, "memory.events").split()
        assert events[events.index("oom_kill") + 1] == "1"     # there was an OOM
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


def _oom_kills(d):
    events = v2_file(d, "memory.events").split()
    return int(events[events.index("oom_kill") + 1])


# containerd 2.x's Go shim (containerd/cgroups v3) reports more than the
# cgroups 1.0.4 schema pyshim follows (shim/cgroups.py): PSI of cpu, memory
# and io (*.pressure), memory.peak and memory.swap.peak.
V3_ONLY = {"cpu": ("psi",), "memory": ("psi", "max_usage", "swap_max_usage"), "io": ("psi",)}


def comparable_v2(m):
    """A v2 metrics dict without the V3_ONLY fields, hugetlb by page size
    (1.0.4 lists them in Go map order, v3 in sysfs order)."""
    m = json.loads(json.dumps(m))
    for key, fields in V3_ONLY.items():
        for f in fields:
            m.get(key, {}).pop(f, None)
    m["hugetlb"] = sorted(m.get("hugetlb", []), key=lambda e: e.get("pagesize", ""))
    return m


def test_find_and_stats_of_runc_container_v2(containerd, ctr_run):
    _need_v2()
    r = ctr_run("sleep", "1000", detach=True, runtime=GO_RUNTIME, check=True,
                args=["--memory-limit", "67108864"])
    pid = task_pid(containerd, r.id)
    cg = cgroups.find(pid)
    assert cg.version == 2 and cg.path == proc_cgroup(pid)
    # ctr's cgroupsPath: /<namespace>/<id>, or <slice>:ctr:<id> with systemd
    # (crun puts the processes into a "container" sub-cgroup of a systemd scope)
    want = containerd.cgroup_dir(r.id)
    assert cg.path in (want, want + "/container"), (cg.path, want)
    m = decode(cg.stats())
    assert m.pids.current == 1
    assert m.memory.usage_limit == 67108864 and m.memory.usage > 0
    assert m.cpu.usage_usec > 0

    # The Go shim's Stats for the same container: same fields set, same
    # values (retry while a counter moves under us), but for what only
    # containerd/cgroups v3 reports.
    for _ in range(5):
        ours = comparable_v2(to_dict(decode(cg.stats())))
        go = json.loads(containerd.ctr("task", "metrics", "--format", "json", r.id).stdout)
        extra = {k: sorted(f for f in V3_ONLY[k] if f in go.get(k, {})) for k in V3_ONLY}
        go = comparable_v2(go)
        again = comparable_v2(to_dict(decode(cg.stats())))
        if ours == again:
            if ours == go:
                break
        time.sleep(0.2)
    assert ours == go
    # only known additions (a Go shim built with cgroups 1.0.4 has none)
    assert all(set(v) <= set(V3_ONLY[k]) for k, v in extra.items()), extra


def test_oom_of_runc_container_v2(containerd, ctr_run):
    _need_v2()
    r = ctr_run("sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
                "exec dd if=/dev/zero of=/dev/null bs=128M count=1",
                detach=True, runtime=GO_RUNTIME, check=True,
                args=["--memory-limit", "33554432"])
    pid = task_pid(containerd, r.id)
    cg = cgroups.find(pid)
    assert cg.version == 2
    # memory.events at each notification (None if already gone: systemd
    # removes an empty scope as soon as the container's processes are gone)
    seen = []

    def on_oom():
        try:
            seen.append(_oom_kills(cg.path))
        except OSError:
            seen.append(None)

    h = cgroups.watch_oom(cg, loop, on_oom)
    try:
        open("/proc/%d/root/tmp/go" % pid, "w").close()
        # The wake-up; with the systemd driver the scope may be removed
        # before the kernel's rate-limited notification goes out, and then
        # none comes: at_exit() (the shim calls it at the init's exit)
        # reports the kill from the nearest ancestor left.
        spin(lambda: seen or not cg.exists(), 20)
        deadline = time.monotonic() + 10
        while containerd.tasks()[r.id][1] != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert containerd.tasks()[r.id][1] == "STOPPED"
        spin(lambda: False, 0.2)
        assert h.at_exit() == 1
        assert len(seen) == 1       # one per oom_kill increase
        assert seen[0] in (1, None), seen
        if cg.exists():
            assert _oom_kills(cg.path) == 1
            assert decode(cg.stats()).memory_events.oom_kill == 1
    finally:
        h.close()
    # After Delete the cgroup is gone: stats() of the cached Cgroup reports
    # nothing, exists() says so.
    containerd.ctr("task", "delete", r.id)
    assert not cg.exists()
    assert decode(cg.stats()).ByteSize() == 0
