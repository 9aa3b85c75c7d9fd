"""shim.exits without a TaskService: exits routed by pid, early exits (reaped
before runc told the pid), held exits (during Create/Start, released after
its event), the pid window's failure path, and the init's exit settled only
after every exec's (shim.container.Container.settle_exit)."""
from shim.container import Container
from shim.exits import ExitRouter
from shim.loop import get_loop, sleep
from shim.process import CREATED, RUNNING, STOPPED, Process

loop = get_loop()


def run(coro, timeout=10):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


class FakeLog:
    def __getattr__(self, name):
        return lambda *a, **k: None


class FakeRunc:
    def __init__(self):
        self.calls = []

    async def kill(self, *a, **k):
        self.calls.append(("kill",) + a)


class _C:
    id = "c1"


def proc(exec_id=""):
    return Process(_C(), exec_id, "", "", "", False, None)


def router():
    got = []
    r = ExitRouter(lambda p, status, when: got.append((p.id, status, when)))
    return r, got


def test_known_pid_routed_unknown_dropped_outside_window():
    r, got = router()
    p = proc()
    with r.window(p) as w:
        w.known(100)
    r.on_exit(100, 3, 1.0)
    r.on_exit(101, 4, 1.0)          # no window open: nobody's
    assert got == [("c1", 3, 1.0)]
    assert r.by_pid == {} and r.early == {}


def test_early_exit_claimed_when_pid_known_and_held_until_release():
    r, got = router()
    p = proc("e1")
    r.hold(p)
    with r.window(p) as w:
        r.on_exit(200, 7, 2.0)      # reaped before runc exec returned
        assert r.early == {200: (7, 2.0)}
        w.known(200)
        assert p.held_exit == (7, 2.0) and r.early == {}
    assert got == []                # its start event is not out yet
    r.release(p)
    assert got == [("e1", 7, 2.0)] and not p.starting and p.held_exit is None
    assert r.by_pid == {} and r.windows == 0


def test_early_exits_kept_while_any_window_is_open():
    r, got = router()
    a, b = proc("a"), proc("b")
    wa = r.window(a).__enter__()
    with r.window(b):
        r.on_exit(300, 1, 3.0)
    assert r.early == {300: (1, 3.0)}      # a's window still open
    wa.known(300)
    wa.__exit__(None, None, None)
    assert r.early == {} and a.held_exit == (1, 3.0)


def test_exit_while_start_in_flight_is_held():
    r, got = router()
    p = proc()
    with r.window(p) as w:
        w.known(400)
    r.hold(p)
    r.on_exit(400, 0, 4.0)
    assert got == [] and p.held_exit == (0, 4.0)
    r.release(p)
    assert got == [("c1", 0, 4.0)]


def test_abandon_after_runc_made_the_process():
    r, got = router()
    p = proc("e1")
    with r.window(p) as w:
        assert w.abandon() is False           # no pid yet: nothing to kill
        w.known(500)
        assert w.abandon() is True            # alive and ours: caller kills it
    assert r.by_pid == {} and p.pid == 0
    q = proc("e2")
    with r.window(q) as w:
        r.on_exit(501, 9, 5.0)
        w.known(501)
        assert w.abandon() is False           # already exited
    assert q.held_exit is None
    z = proc()
    with r.window(z) as w:
        w.known(502)
        assert w.abandon(forget=False) is True
    assert r.by_pid == {502: z} and z.pid == 502   # its exit still routed to it


def test_init_exit_settled_after_every_exec_exit():
    runc = FakeRunc()
    order = []

    def on_exited(p, status, when):
        if p is not c.init:
            p.record_exit(status, when)
        loop.spawn(publish(p, status, when))

    async def publish(p, status, when):
        await c.settle_exit(p, status, when)
        order.append((p.id, p.exit_status))
        p.exited.set_result(None)

    r = ExitRouter(on_exited)
    c = Container("c1", "/nonexistent-bundle", runc, False, False, r, FakeLog())
    init = c.init = Process(c, "", "", "", "", False, None)
    init.status = RUNNING
    e1 = c.execs["e1"] = Process(c, "e1", "", "", "", False, None)
    e2 = c.execs["e2"] = Process(c, "e2", "", "", "", False, None)   # never started
    for p, pid in ((init, 600), (e1, 601)):
        with r.window(p) as w:
            w.known(pid)
    e1.status = RUNNING
    r.on_exit(600, 137, 6.0)                  # the init first
    loop.run_until_complete(sleep(0.05), timeout=5)
    assert order == [] and init.status == RUNNING
    assert runc.calls == [("kill", "c1", "/nonexistent-bundle", 9)]  # shared pid ns
    r.on_exit(601, 137, 6.1)
    loop.run_until_complete(sleep(0.05), timeout=5)
    assert order == [("e1", 137), ("c1", 137)]
    assert init.status == STOPPED and e2.status == CREATED
