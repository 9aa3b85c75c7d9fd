"""Exit holding and event order in the Task service, with a fake runc: exits
are injected exactly where the races happen (before the pid is known, during
Start, init before its execs)."""
import json

import pytest

from shim.io import ProcessIO
from shim.loop import get_loop, sleep
from shim.pb import task as pb
from shim.pb import wkt
from shim.process import CREATED, RUNNING, STOPPED, Process
from shim.container import Container
from shim.task import TaskService
from shim.ttrpc import TTRPCError

loop = get_loop()
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
# Far above any real pid on a test machine (pidfd_open of them fails).
INIT_PID = 4000001
EXEC_PID = 4000002


def run(coro, timeout=10):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


class FakeReaper:
    on_exit = None


class FakePublisher:
    def __init__(self):
        self.events = []

    def publish(self, topic, msg):
        self.events.append((topic, msg))

    def topics(self):
        return [t for t, _ in self.events]


class FakeLog:
    def __getattr__(self, name):
        return lambda *a, **k: None


class FakeRunc:
    """runc stand-in: `on_exec(service)` / `on_start(service)` run inside the
    call, before it returns (i.e. before the shim knows the outcome)."""

    def __init__(self):
        self.on_exec = None
        self.on_start = None
        self.exec_error = None
        self.calls = []

    async def exec(self, id, bundle, spec, exec_id, stdio=None, console_socket=None):
        self.calls.append(("exec", exec_id, json.loads(spec)))
        await sleep(0)
        if self.on_exec:
            self.on_exec()
        if self.exec_error:
            from shim.runc import RuncError
            raise RuncError(self.exec_error)
        return EXEC_PID

    async def start(self, id, bundle):
        self.calls.append(("start",))
        await sleep(0)
        if self.on_start:
            self.on_start()

    async def kill(self, *a, **k):
        self.calls.append(("kill",) + a)

    async def delete(self, *a, **k):
        self.calls.append(("delete",) + a)


@pytest.fixture
def svc():
    pub = FakePublisher()
    s = TaskService("ns", FakeReaper(), pub, FakeLog())
    s.runc = FakeRunc()
    c = Container("c1", "/nonexistent-bundle", s.runc, False, True, s.exits, FakeLog())
    io = ProcessIO("", "", "")
    io.open()
    io.start()
    p = Process(c, "", "", "", "", False, io)
    p.pid = INIT_PID
    p.status = RUNNING
    c.init = p
    s.containers["c1"] = c
    s.exits.by_pid[INIT_PID] = p
    s.pub = pub
    yield s
    for c in list(s.containers.values()):
        for e in c.execs.values():
            if e.io is not None:
                e.io.close()
        c.init.io.close()


def exec_req(exec_id="e1", terminal=False, args=("true",)):
    spec = {"args": list(args), "cwd": "/", "terminal": not terminal}
    return pb.ExecProcessRequest(id="c1", exec_id=exec_id, terminal=terminal,
                                 spec=wkt.Any(type_url=PROCESS_URL,
                                              value=json.dumps(spec).encode()))


def settle(seconds=0.05):
    loop.run_until_complete(sleep(seconds), timeout=5)


def test_exec_registers_and_overrides_terminal(svc):
    run(svc.exec(exec_req(), None))
    assert svc.pub.topics() == ["/tasks/exec-added"]
    p = svc.containers["c1"].execs["e1"]
    assert p.status == CREATED
    assert json.loads(p.spec)["terminal"] is False
    with pytest.raises(TTRPCError) as e:
        run(svc.exec(exec_req(), None))
    assert (e.value.code, e.value.message) == (6, "id e1: already exists")


def test_exit_reaped_before_pid_known_published_after_exec_started(svc):
    run(svc.exec(exec_req(), None))
    # The exec exits (and is reaped) while runc exec is still running.
    svc.runc.on_exec = lambda: svc.exits.on_exit(EXEC_PID, 3, 1000.0)
    r = run(svc.start(pb.StartRequest(id="c1", exec_id="e1"), None))
    assert r.pid == EXEC_PID
    settle()
    assert svc.pub.topics() == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
    ex = svc.pub.events[2][1]
    assert (ex.id, ex.pid, ex.exit_status) == ("e1", EXEC_PID, 3)
    p = svc.containers["c1"].execs["e1"]
    assert p.status == STOPPED and p.exited.done()
    assert EXEC_PID not in svc.exits.by_pid and svc.exits.early == {}
    assert svc.exits.windows == 0


def test_early_exit_of_unknown_pid_dropped_outside_window(svc):
    svc.exits.on_exit(EXEC_PID, 1, 1.0)
    assert svc.exits.early == {}


def test_exit_during_init_start_held_until_start_event(svc):
    init = svc.containers["c1"].init
    init.status = CREATED
    svc.runc.on_start = lambda: svc.exits.on_exit(INIT_PID, 0, 1.0)
    run(svc.start(pb.StartRequest(id="c1"), None))
    settle()
    assert svc.pub.topics() == ["/tasks/start", "/tasks/exit"]


def test_exec_start_failure_stays_created_and_wait_returns(svc):
    run(svc.exec(exec_req(), None))
    svc.runc.exec_error = 'exec failed: exec: "/bin/nope": no such file'
    with pytest.raises(TTRPCError) as e:
        run(svc.start(pb.StartRequest(id="c1", exec_id="e1"), None))
    assert e.value.code == 2
    assert e.value.message == 'OCI runtime exec failed: exec failed: exec: "/bin/nope": no such file'
    p = svc.containers["c1"].execs["e1"]
    assert p.status == CREATED and p.pid == 0 and svc.exits.windows == 0
    w = run(svc.wait(pb.WaitRequest(id="c1", exec_id="e1"), None))
    assert w.exit_status == 0
    with pytest.raises(TTRPCError) as e:
        run(svc.kill(pb.KillRequest(id="c1", exec_id="e1", signal=9), None))
    assert (e.value.code, e.value.message) == (9, "process not created: failed precondition")
    run(svc.delete(pb.DeleteRequest(id="c1", exec_id="e1"), None))
    assert "e1" not in svc.containers["c1"].execs
    assert svc.pub.topics() == ["/tasks/exec-added"]


def test_init_exit_waits_for_running_execs(svc):
    run(svc.exec(exec_req(), None))
    run(svc.start(pb.StartRequest(id="c1", exec_id="e1"), None))
    init_wait = loop.spawn(svc.wait(pb.WaitRequest(id="c1"), None))
    svc.exits.on_exit(INIT_PID, 137, 2.0)
    settle()
    # As the Go shim (containerd#10589): the init is reaped but stays running
    # until the exec has exited, and its exit is not out meanwhile. A new
    # exec may be added, but not started.
    assert svc.containers["c1"].init.status == RUNNING
    assert svc.pub.topics() == ["/tasks/exec-added", "/tasks/exec-started"]
    assert not init_wait.done()
    run(svc.exec(exec_req("e2"), None))
    with pytest.raises(TTRPCError) as e:
        run(svc.start(pb.StartRequest(id="c1", exec_id="e2"), None))
    assert (e.value.code, e.value.message) == (
        9, "container c1 init process is not running: failed precondition")
    svc.exits.on_exit(EXEC_PID, 137, 2.1)
    loop.run_until_complete(init_wait, timeout=5)
    exits = [(m.id, m.exit_status) for t, m in svc.pub.events if t == "/tasks/exit"]
    assert exits == [("e1", 137), ("c1", 137)]
    assert init_wait.result().exit_status == 137
    assert svc.containers["c1"].init.status == STOPPED


def test_exec_refused_when_init_paused_or_stopped(svc):
    from shim.process import PAUSED
    init = svc.containers["c1"].init
    init.status = PAUSED
    with pytest.raises(TTRPCError) as e:
        run(svc.exec(exec_req(), None))
    assert (e.value.code, e.value.message) == (2, "cannot exec in a paused state")
    init.status = STOPPED
    with pytest.raises(TTRPCError) as e:
        run(svc.exec(exec_req(), None))
    assert (e.value.code, e.value.message) == (2, "cannot exec in a stopped state")
    assert svc.pub.topics() == []


def test_exec_state_reports_paused_init(svc):
    from shim.process import PAUSED
    run(svc.exec(exec_req(), None))
    run(svc.start(pb.StartRequest(id="c1", exec_id="e1"), None))
    svc.containers["c1"].init.status = PAUSED
    st = run(svc.state(pb.StateRequest(id="c1", exec_id="e1"), None))
    assert (st.id, st.pid, st.status) == ("e1", EXEC_PID, PAUSED)
    svc.containers["c1"].init.status = RUNNING
    svc.exits.on_exit(EXEC_PID, 0, 3.0)
    settle()


def test_kill_and_resize_of_stopped_exec(svc):
    run(svc.exec(exec_req(), None))
    run(svc.start(pb.StartRequest(id="c1", exec_id="e1"), None))
    svc.exits.on_exit(EXEC_PID, 0, 3.0)
    settle()
    with pytest.raises(TTRPCError) as e:
        run(svc.kill(pb.KillRequest(id="c1", exec_id="e1", signal=9), None))
    assert (e.value.code, e.value.message) == (5, "process already finished: not found")
    with pytest.raises(TTRPCError) as e:
        run(svc.resize_pty(pb.ResizePtyRequest(id="c1", exec_id="e1", width=1, height=1), None))
    assert (e.value.code, e.value.message) == (2, "cannot resize a stopped container")
    d = run(svc.delete(pb.DeleteRequest(id="c1", exec_id="e1"), None))
    assert (d.pid, d.exit_status, d.exited_at.seconds) == (EXEC_PID, 0, 3)


def test_shutdown_with_tasks_left_is_kept_until_the_last_delete(svc):
    calls = []
    svc.shutdown_cb = lambda: calls.append("shutdown")
    run(svc.shutdown(pb.ShutdownRequest(), None))
    settle()
    assert calls == []                  # a task is left: the shim stays
    svc.exits.on_exit(INIT_PID, 0, 1.0)
    settle()
    run(svc.delete(pb.DeleteRequest(id="c1"), None))
    settle()
    assert calls == ["shutdown"]        # the last Delete ends it


def fake_cgroup(tmp_path, version, oom_kill):
    """A fixture cgroup tree for the init (v1: memory only, the OOM eventfd
    never fires; v2: memory.events) and its Cgroup."""
    import os
    from shim import cgroups
    root, proc = str(tmp_path / "cgroup"), str(tmp_path / "proc")
    if version == 1:
        d, line = root + "/memory/ns/c1", "4:memory:/ns/c1"
        files = {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill %d\n",
                 "cgroup.event_control": ""}
    else:
        d, line = root + "/ns/c1", "0::/ns/c1"
        files = {"memory.events": "low 0\nhigh 0\nmax 1\noom 1\noom_kill %d\n"}
        os.makedirs(root)
        with open(root + "/cgroup.controllers", "w") as f:
            f.write("memory\n")
    os.makedirs(d)
    os.makedirs("%s/%d" % (proc, INIT_PID))
    with open("%s/%d/cgroup" % (proc, INIT_PID), "w") as f:
        f.write(line + "\n")

    def write(n):
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text % n if "%d" in text else text)
    write(oom_kill)
    return cgroups.find(INIT_PID, root=root, proc=proc), write


@pytest.mark.parametrize("version", [1, 2])
def test_oom_kill_counted_at_exit_comes_before_it_and_stays_in_stats(svc, tmp_path, version):
    """The init is OOM-killed and no wake-up reports it (v1 fixture: the
    eventfd never fires): the oom_kill count read at the exit publishes
    /tasks/oom before /tasks/exit; once the cgroup is gone (systemd removes
    an empty scope), Stats still tells the count until Delete."""
    import shutil
    from shim.pb2.io.containerd.cgroups.v1 import metrics_pb2 as pb1
    from shim.pb2.io.containerd.cgroups.v2 import metrics_pb2 as pb2
    c = svc.containers["c1"]
    c.cgroup, set_kills = fake_cgroup(tmp_path, version, 0)
    svc._watch_oom(c)
    assert c.oom is not None
    try:
        set_kills(1)
        svc.exits.on_exit(INIT_PID, 137, 2.0)
        loop.run_until_complete(c.init.exited, timeout=5)
        assert svc.pub.topics() == ["/tasks/oom", "/tasks/exit"]
        shutil.rmtree(c.cgroup.path)
        assert not c.cgroup.exists()
        st = run(svc.stats(pb.StatsRequest(id="c1"), None)).stats
        m = (pb1 if version == 1 else pb2).Metrics()
        m.ParseFromString(st.value)
        if version == 1:
            assert m.memory_oom_control.oom_kill == 1
        else:
            assert m.memory_events.oom_kill == 1
        settle()
        assert svc.pub.topics() == ["/tasks/oom", "/tasks/exit"]   # reported once
    finally:
        c.oom.close()


def test_stats_of_running_init_without_cgroup_is_not_found(svc):
    with pytest.raises(TTRPCError) as e:
        run(svc.stats(pb.StatsRequest(id="c1"), None))
    assert (e.value.code, e.value.message) == (5, "cgroup does not exist: not found")


def test_create_refused_once_the_shim_is_exiting(svc):
    svc.closing = True
    with pytest.raises(TTRPCError) as e:
        run(svc.create(pb.CreateTaskRequest(id="c2", bundle="/nonexistent-bundle"), None))
    assert (e.value.code, e.value.message) == (9, "shim is shutting down: failed precondition")
    assert "c2" not in svc.containers


def test_pids_waits_for_the_create_in_flight(svc, monkeypatch):
    """Pids of a container whose Create is in flight is answered once that
    Create has settled (a restarted containerd judges a shim leaked by it):
    here the Create fails, so NotFound, and only then."""
    order = []

    async def failing_create_init(self, req):
        await sleep(0.05)
        order.append("create failed")
        raise RuntimeError("runc create failed")
    monkeypatch.setattr(Container, "create_init", failing_create_init)

    async def pids():
        try:
            await svc.pids(pb.PidsRequest(id="c2"), None)
        except TTRPCError as e:
            order.append(("pids", e.code))

    create = loop.spawn(svc.create(pb.CreateTaskRequest(id="c2", bundle="/nonexistent-bundle"),
                                   None))
    asked = loop.spawn(pids())
    with pytest.raises(RuntimeError):
        loop.run_until_complete(create, timeout=5)
    loop.run_until_complete(asked, timeout=5)
    assert order == ["create failed", ("pids", 5)]
    assert svc.creating == {} and "c2" not in svc.containers
