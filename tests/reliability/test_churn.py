"""Mixed churn through containerd: lifecycles that exit with codes, are
killed, trap SIGTERM, get an exec, are paused and resumed, three at a time;
every exit code as expected, none hangs, and nothing is left (leak
accounting of support.leaks)."""
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from support import leaks, reltable
from support.helpers import wait_status

LIFECYCLES = int(os.environ.get("PYSHIM_CHURN_LIFECYCLES", "100"))
WORKERS = 3
TIMEOUT = 60


class Churn:
    def __init__(self, c, image, runtime):
        self.c, self.image, self.runtime = c, image, runtime

    def run_argv(self, id, *cmd):
        return (["run", "--rm", "--runtime", self.runtime] + self.c.run_args(self.runtime, id)
                + [self.image, id] + list(cmd))

    def background(self, id, *cmd):
        """`ctr run --rm` in the background, once its task is RUNNING."""
        p = self.c.ctr_popen(*self.run_argv(id, *cmd), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_status(self.c, id, "RUNNING", timeout=TIMEOUT) != "RUNNING":
            p.kill()
            p.wait()
            raise AssertionError("%s never RUNNING" % id)
        return p

    def ctr(self, *args):
        return self.c.ctr(*args, check=False, timeout=TIMEOUT)

    def lifecycle(self, kind, id, n):
        """Run one lifecycle; (what was expected, what happened)."""
        if kind == "exit":
            r = self.ctr(*self.run_argv(id, "sh", "-c", "exit %d" % n))
            return n, r.returncode
        if kind == "kill":
            p = self.background(id, "sleep", "600")
            self.ctr("task", "kill", "-s", "SIGKILL", id)
            return 137, p.wait(TIMEOUT)
        if kind == "term":
            p = self.background(id, "sh", "-c", 'trap "exit %d" TERM; while :; do sleep 0.1; '
                                'done' % n)
            self.ctr("task", "kill", "-s", "SIGTERM", id)
            return n, p.wait(TIMEOUT)
        if kind == "exec":
            p = self.background(id, "sleep", "600")
            r = self.ctr("task", "exec", "--exec-id", "e%d" % n, id, "sh", "-c", "exit %d" % n)
            self.ctr("task", "kill", "-s", "SIGKILL", id)
            got = p.wait(TIMEOUT)
            return (n, 137), (r.returncode, got)
        if kind == "pause":
            p = self.background(id, "sleep", "600")
            self.ctr("task", "pause", id)
            paused = wait_status(self.c, id, "PAUSED")
            self.ctr("task", "resume", id)
            resumed = wait_status(self.c, id, "RUNNING")
            self.ctr("task", "kill", "-s", "SIGKILL", id)
            return ("PAUSED", "RUNNING", 137), (paused, resumed, p.wait(TIMEOUT))
        raise ValueError(kind)


KINDS = ("exit", "kill", "term", "exec", "pause")


def test_mixed_churn_no_wrong_exit_no_leak(containerd, image, make_cid, runtime):
    churn = Churn(containerd, image, runtime)
    rng = random.Random(11)
    plan = [(rng.choice(KINDS), make_cid(), rng.choice((0, 1, 3, 7, 42, 255)))
            for _ in range(LIFECYCLES)]
    ids = [id for _k, id, _n in plan]
    before = leaks.snapshot(containerd, ids)
    wrong, hangs = [], []

    def one(step):
        kind, id, n = step
        try:
            want, got = churn.lifecycle(kind, id, n)
        except (subprocess.TimeoutExpired, AssertionError, Exception) as e:
            hangs.append((kind, id, repr(e)[:200]))
            return
        if want != got:
            wrong.append((kind, id, want, got))

    t0 = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, plan))
    took = time.monotonic() - t0
    left = leaks.settled(containerd, before, ids)
    rt = reltable.runtime_key(runtime)
    reltable.record("churn: %d mixed lifecycles (%s), 3 at a time: wall s"
                    % (LIFECYCLES, "/".join(KINDS)), rt, "%.0f" % took)
    reltable.record("churn: wrong exit codes / hangs", rt, "%d / %d" % (len(wrong), len(hangs)))
    reltable.record("churn: leaked (%s)" % ", ".join(leaks.KEYS), rt, leaks.describe(left))
    assert not hangs, hangs[:5]
    assert not wrong, wrong[:5]
    assert not left, left
