"""containerd SIGKILLed in the middle of a burst of creates, then restarted:
every container is either fully running and manageable (exec, kill, delete
work) or fully cleaned up, and once the shims' idle-exit bound has passed
no shim is left that serves no task.

pyshim exits by itself when it has created no task PYSHIM_IDLE_EXIT_SECONDS
after its start (a Create that failed when containerd died counts as none;
30 s by default; set to IDLE here through containerd's
environment, which containerd passes on to its shims). The Go shim has no
such bound: its orphans are recorded, then removed by this test (by PID)."""
import os
import subprocess
import time

import pytest

from support import leaks, reltable
from support.containerd import (GO_RUNTIME, PY_RUNTIME, Containerd, _flag, kill_pids,
                                remove_cgroups)
from support.helpers import wait_status

IDLE_ENV = "PYSHIM_IDLE_EXIT_SECONDS"
IDLE = 4                # PYSHIM_IDLE_EXIT_SECONDS for this test's shims
BURST = 10              # creates per round
ROUNDS = 2
KILL_AT = (1, 4)        # runc-created containers (init.pid written) at the kill, per round


def sigkill_and_restart(c):
    c.proc.kill()
    c.proc.wait(10)
    c.stop()
    c.start()


def burst_then_kill(c, image, runtime, ids, kill_at):
    procs = []
    for id in ids:
        procs.append(c.ctr_popen("run", "-d", "--runtime", runtime, *c.run_args(runtime, id),
                                 image, id, "sleep", "3600", stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    # Kill once `kill_at` containers exist in runc (their bundle has
    # init.pid): the others are somewhere between `start` and Start.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum(os.path.exists(os.path.join(c.bundle(id), "init.pid")) for id in ids) >= kill_at:
            break
        time.sleep(0.005)
    sigkill_and_restart(c)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def manageable(c, id):
    """exec, kill and delete work on a RUNNING task; its exit status right."""
    if c.ctr("task", "exec", "--exec-id", "probe", id, "true", check=False).returncode != 0:
        return False
    c.ctr("task", "kill", "-s", "SIGKILL", id, check=False)
    if wait_status(c, id, "STOPPED", timeout=20) != "STOPPED":
        return False
    return c.ctr("task", "delete", id, check=False).returncode == 0


def debris_of(c, id):
    """What the runtime left for a container that has no task."""
    out = []
    if os.path.exists(leaks.socket_path(c, id)):
        out.append("socket")
    if os.path.exists(c.bundle(id)):
        out.append("bundle")
    if os.path.exists(os.path.join(c.runc_root, id)):
        out.append("runc state")
    return out


class Outcome:
    """What one runtime's rounds came to (see crash_outcome)."""

    def __init__(self):
        self.running_managed = 0        # RUNNING after the restart; exec, kill, delete work
        self.created_removed = 0        # CREATED (containerd died before Start); removable
        self.broken = []                # a task that is neither of these
        self.orphans = []               # shims serving no task after the idle bound
        self.orphan_log = []            # containerd's log lines about pyshim's orphans
        self.debris = []                # what a container without task left
        self.left = {}                  # leak accounting after removing everything
        self.problems = []              # the private containerd's own cleanup check


def run_rounds(c, runtime, out):
    image = c.import_image()
    before = leaks.snapshot(c)
    all_ids = []
    for r in range(ROUNDS):
        ids = ["crash-%d-%d" % (r, i) for i in range(BURST)]
        all_ids += ids
        burst_then_kill(c, image, runtime, ids, KILL_AT[r % len(KILL_AT)])
        time.sleep(IDLE + 2)            # past the idle-exit bound of this round's shims
        tasks = c.tasks()
        stray = [(p, _flag(a, "id")) for p, a in c.shims() if _flag(a, "id") not in tasks]
        # Under load a shim starts serving late, or takes a moment to leave
        # (it flushes its events): give pyshim's idle exits slack before
        # counting orphans. The Go shim's never leave: no wait for them.
        slack = time.monotonic() + 20
        while stray and runtime == PY_RUNTIME and time.monotonic() < slack:
            time.sleep(0.5)
            tasks = c.tasks()
            stray = [(p, _flag(a, "id")) for p, a in c.shims() if _flag(a, "id") not in tasks]
        out.orphans += stray
        if runtime == PY_RUNTIME:       # what containerd said of them, for the report
            out.orphan_log += [line for line in c.log_text().splitlines()
                               if any('id=%s ' % id in line or '"%s"' % id in line
                                      for _p, id in stray)]
        for id in ids:
            st = tasks.get(id, (0, None))[1]
            if st == "RUNNING":
                if manageable(c, id):
                    out.running_managed += 1
                else:
                    out.broken.append((id, "RUNNING, not manageable"))
            elif st == "CREATED":
                c.ctr("task", "rm", "-f", id, check=False)
                if id in c.tasks():
                    out.broken.append((id, "CREATED, cannot be removed"))
                else:
                    out.created_removed += 1
            elif st is not None:
                out.broken.append((id, st))
            elif id not in [i for _p, i in stray]:
                out.debris += ["%s: %s" % (id, d) for d in debris_of(c, id)]
            c.ctr("task", "rm", "-f", id, check=False)
            c.ctr("container", "rm", id, check=False)
        # The Go shim's orphans (nothing removes them): by PID, with their sockets.
        kill_pids([p for p, _id in stray])
        for _p, id in stray:
            subprocess.run(["runc", "--root", c.runc_root, "delete", "--force", id],
                           capture_output=True, timeout=30)
            try:
                os.unlink(leaks.socket_path(c, id))
            except FileNotFoundError:
                pass
    out.left = leaks.settled(c, before, all_ids)


@pytest.fixture(scope="module", params=[GO_RUNTIME, PY_RUNTIME], ids=["go", "py"])
def crash_outcome(request, containerd):
    """Runs the rounds once per runtime on a private containerd whose shims
    get PYSHIM_IDLE_EXIT_SECONDS=IDLE; the tests below judge the Outcome.
    (`containerd`: the session one is up, so the machine has what it needs.)"""
    runtime = request.param
    if runtime == PY_RUNTIME:
        request.getfixturevalue("pyshim_binary")
    saved = os.environ.get(IDLE_ENV)
    os.environ[IDLE_ENV] = str(IDLE)
    out = Outcome()
    c = Containerd()
    t0 = time.monotonic()
    try:
        c.start()
        run_rounds(c, runtime, out)
    finally:
        if saved is None:
            os.environ.pop(IDLE_ENV, None)
        else:
            os.environ[IDLE_ENV] = saved
        for id in ["crash-%d-%d" % (r, i) for r in range(ROUNDS) for i in range(BURST)]:
            remove_cgroups(os.path.join(c.namespace, id))
        out.problems = c.cleanup()
    rt = reltable.runtime_key(runtime)
    n = ROUNDS * BURST
    reltable.record("containerd SIGKILLed mid-burst (%d creates in %d rounds, restarted): "
                    "running+manageable / created+removable / broken tasks" % (n, ROUNDS), rt,
                    "%d / %d / %d" % (out.running_managed, out.created_removed,
                                      len(out.broken)))
    reltable.record("containerd SIGKILLed mid-burst: shims serving no task after the "
                    "%d s idle bound" % IDLE, rt, len(out.orphans))
    reltable.record("containerd SIGKILLed mid-burst: debris of containers without task "
                    "(socket, bundle, runc state)", rt, len(out.debris))
    reltable.record("containerd SIGKILLed mid-burst: leaked after removing all", rt,
                    leaks.describe(out.left))
    reltable.record("containerd SIGKILLed mid-burst: wall s", rt,
                    "%.0f" % (time.monotonic() - t0))
    return runtime, out


def test_every_task_running_and_manageable_or_removable(crash_outcome):
    runtime, out = crash_outcome
    if runtime != PY_RUNTIME and out.broken:
        # recorded in the table, not judged: seen once under load (2 tasks
        # found STOPPED after the restart)
        pytest.skip("Go shim: broken tasks recorded: %s" % (out.broken,))
    assert not out.broken, out.broken


def test_no_shim_left_after_the_idle_bound(crash_outcome):
    runtime, out = crash_outcome
    if runtime != PY_RUNTIME:
        pytest.skip("the Go shim has no idle-exit bound: %d orphans recorded"
                    % len(out.orphans))
    assert not out.orphans, "%s\n%s" % (out.orphans, "\n".join(out.orphan_log[-40:]))


def test_nothing_left_once_everything_is_removed(crash_outcome):
    runtime, out = crash_outcome
    if runtime != PY_RUNTIME:
        pytest.skip("Go shim figures recorded: %s" % leaks.describe(out.left))
    assert not out.debris, out.debris
    assert not out.left, out.left
    assert not out.problems, out.problems
