"""SIGUSR1 makes a serving shim write its state to its log (shim/diag.py);
the shim and its containers go on. The Go shim dumps its goroutine stacks on
SIGUSR1 and goes on too: both must survive it."""
import os
import signal
import time

import pytest

from support.containerd import PY_RUNTIME, pid_alive
from support.helpers import wait_status

pytestmark = pytest.mark.integration


def serving_shim(containerd, cid):
    pids = [p for p, argv in containerd.shims(id=cid) if "start" not in argv
            and "delete" not in argv]
    assert len(pids) == 1, containerd.shims(id=cid)
    return pids[0]


def test_sigusr1_dumps_state_and_the_shim_goes_on(containerd, runtime, sleeper):
    exe = containerd.ctr_popen("task", "exec", "--exec-id", "diag-exec", sleeper,
                               "sleep", "300")
    try:
        deadline = time.monotonic() + 10
        # `ctr task ps`: a header, the init and the exec.
        while len(containerd.ctr("task", "ps", sleeper).stdout.splitlines()) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shim = serving_shim(containerd, sleeper)
        mark = len(containerd.log_text())
        os.kill(shim, signal.SIGUSR1)
        time.sleep(1.0)
        assert pid_alive(shim)
        assert wait_status(containerd, sleeper, "RUNNING") == "RUNNING"
        r = containerd.ctr("task", "exec", "--exec-id", "after", sleeper, "echo", "alive")
        assert r.stdout == "alive\n"
        if runtime == PY_RUNTIME:
            log = containerd.log_text()[mark:]
            state = [line for line in log.splitlines() if "msg=\"state: " in line]
            text = "\n".join(state)
            assert "containers=1" in text, log[-3000:]
            assert "container %s bundle=" % sleeper in text and " running" in text, text
            assert "container %s exec diag-exec pid=" % sleeper in text, text
            assert "requests_in_flight=" in text and "open_fds=" in text and "VmRSS=" in text
    finally:
        exe.kill()
        exe.wait()
