"""Faults around a container, through containerd, on both shims: the shim
SIGKILLed during an exec, the reader of the container's stdout FIFO killed
while the container writes a lot, and a runc that fails at create, start,
exec or delete. Each ends with leak accounting (support.leaks) for the
container; the Go shim's leftovers are recorded (and removed), not judged."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from shim import ttrpc_client
from support import leaks, reltable
from support.containerd import PY_RUNTIME, pid_alive, wait_pids_gone
from support.helpers import address_of, wait_status
from support.shimwire import state


def finish(c, cid, before, runtime, check):
    """Leak accounting for `cid` after its container is gone: record it
    under `check`; the Go shim's leftover socket is removed (it leaves it
    after a SIGKILL, see test_run.py). The diff, for pyshim to assert on."""
    left = leaks.settled(c, before, [cid])
    reltable.record(check, runtime, leaks.describe(left))
    sock = leaks.socket_path(c, cid)
    if runtime != PY_RUNTIME and os.path.exists(sock) and not c.shims(id=cid):
        os.unlink(sock)
    return left


def task_pids(c, cid):
    out = c.ctr("task", "ps", cid, check=False).stdout.splitlines()[1:]
    return [int(line.split()[0]) for line in out if line.strip()]


def remove(c, cid):
    c.ctr("task", "rm", "-f", cid, check=False, timeout=30)
    c.ctr("container", "rm", cid, check=False, timeout=30)


# ---- the shim SIGKILLed during an exec ---------------------------------------------

def test_shim_sigkilled_during_exec(containerd, ctr_run, cid, runtime):
    before = leaks.snapshot(containerd, [cid])
    ctr_run("sleep", "3600", runtime=runtime, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    init = containerd.tasks()[cid][0]
    shim = containerd.shims(id=cid)[0][0]
    ex = containerd.ctr_popen("task", "exec", "--exec-id", "victim", cid, "sleep", "600",
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(task_pids(containerd, cid)) < 2:
        assert time.monotonic() < deadline and ex.poll() is None, "exec never ran"
        time.sleep(0.05)
    procs = task_pids(containerd, cid)
    os.kill(shim, signal.SIGKILL)
    rc = ex.wait(30)
    _, err = ex.communicate()
    assert rc != 0, "ctr task exec succeeded with its shim killed"
    deadline = time.monotonic() + 20
    while containerd.tasks().get(cid, (0, "gone"))[1] not in ("STOPPED", "gone"):
        assert time.monotonic() < deadline, containerd.tasks()
        time.sleep(0.1)
    remove(containerd, cid)
    gone = not wait_pids_gone(procs + [init, shim], 10)
    reltable.record("shim SIGKILLed during an exec: exec client error, container "
                    "processes gone", runtime, "exit %d, %s" % (rc, "gone" if gone else "LEFT"))
    left = finish(containerd, cid, before, runtime,
                  "shim SIGKILLed during an exec: leaked after cleanup")
    assert gone
    if runtime == PY_RUNTIME:
        assert not left, left


# ---- the FIFO reader killed while the container writes -------------------------------

WRITES = 40         # cat /bin/busybox (about 1-2 MiB) this many times, then exit 5
FIFO_WAIT = 5       # seconds for the container to end by itself


def fifo_dirs_of(pid):
    dirs = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if "/fifo/" in target:
            dirs.add(os.path.dirname(target))
    return dirs


def exit_status(c, cid):
    """The stopped task's exit status, asked of its shim (ctr 1.6's
    `task delete` does not return it)."""
    with ttrpc_client.SyncClient(address_of(c, cid)) as cl:
        return state(cl, c.task_service, cid).exit_status


def test_fifo_reader_killed_while_container_writes(containerd, image, cid, runtime):
    """ctr (the reader of the container's stdout FIFO) is SIGKILLed while
    the container writes tens of MiB. Both shims keep the FIFO open for a
    reader that may come back (ctr task attach), so the container blocks on
    its full stdout rather than losing output or dying of SIGPIPE; the shim
    survives, the task stays manageable, and its exit is reported: its own
    (5) if it got to the end, else 137 once killed."""
    before = leaks.snapshot(containerd, [cid])
    script = ('i=0; while [ $i -lt %d ]; do cat /bin/busybox; i=$((i+1)); done; exit 5'
              % WRITES)
    p = containerd.ctr_popen("run", "--runtime", runtime, *containerd.run_args(runtime, cid),
                             image, cid, "sh", "-c", script, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fifos = set()
    try:
        got = 0
        while got < (1 << 20):
            chunk = p.stdout.read1(65536)
            assert chunk, "no output"
            got += len(chunk)
        fifos = fifo_dirs_of(p.pid)
        p.kill()
        p.wait(10)
    finally:
        p.stdout.close()
    shim = containerd.shims(id=cid)[0][0]
    status = wait_status(containerd, cid, "STOPPED", timeout=FIFO_WAIT)
    outcome = "exited by itself" if status == "STOPPED" else "blocked on stdout"
    if status != "STOPPED":
        containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        status = wait_status(containerd, cid, "STOPPED", timeout=20)
    shim_alive = pid_alive(shim)
    code = exit_status(containerd, cid) if status == "STOPPED" else None
    containerd.ctr("task", "delete", cid, check=False, timeout=30)
    containerd.ctr("container", "rm", cid, check=False, timeout=30)
    reltable.record("FIFO reader killed mid-write: shim, container, exit reported", runtime,
                    "%s, %s, %s" % ("alive" if shim_alive else "DEAD", outcome, code))
    left = finish(containerd, cid, before, runtime, "FIFO reader killed: leaked after delete")
    for d in fifos:     # ctr's own FIFO dir, left by its SIGKILL
        shutil.rmtree(d, ignore_errors=True)
    assert shim_alive and status == "STOPPED"
    assert code == (5 if outcome == "exited by itself" else 137), (outcome, code)
    if runtime == PY_RUNTIME:
        assert not left, left


# ---- a failing runc ---------------------------------------------------------------

WRAPPER = r"""#!/bin/sh
# A runc that fails subcommand X while the file DIR/fail-X exists: it appends
# an error line to --log, as runc does, says it on stderr, and exits 1.
sub= log= prev=
for a in "$@"; do
  [ "$prev" = --log ] && log=$a
  case "$a" in create|start|exec|delete|kill|state|run|pause|resume|ps|update)
    [ -z "$sub" ] && sub=$a;;
  esac
  prev=$a
done
if [ -n "$sub" ] && [ -e "%(dir)s/fail-$sub" ]; then
  msg="injected $sub failure from the runc wrapper"
  [ -n "$log" ] && printf '{"level":"error","msg":"%%s","time":"2026-01-01T00:00:00Z"}\n' \
    "$msg" >> "$log"
  echo "$msg" >&2
  exit 1
fi
exec %(runc)s "$@"
"""


@pytest.fixture
def failing_runc(tmp_path):
    """(wrapper path, fail(step) -> context-free toggle dir)."""
    d = tmp_path / "runc"
    d.mkdir()
    path = d / "runc-wrapper"
    path.write_text(WRAPPER % {"dir": d, "runc": shutil.which("runc")})
    path.chmod(0o755)
    return str(path), d


def wrapper_args(c, runtime, wrapper, dir):
    if runtime == PY_RUNTIME:
        toml = dir / "options.toml"
        toml.write_text('BinaryName = "%s"\n' % wrapper)
        return ["--runtime-config-path", str(toml)]
    return ["--runc-binary", wrapper]


@pytest.mark.parametrize("step", ["create", "start", "exec", "delete"])
def test_failing_runc_clear_error_nothing_left(containerd, image, cid, runtime, failing_runc,
                                               step):
    wrapper, d = failing_runc
    marker = d / ("fail-" + step)
    want = "injected %s failure from the runc wrapper" % step
    before = leaks.snapshot(containerd, [cid])
    args = ["--runtime", runtime] + wrapper_args(containerd, runtime, wrapper, d)
    if step in ("create", "start"):
        marker.touch()
        r = containerd.ctr("run", "--rm", *args, image, cid, "sleep", "600", check=False)
        marker.unlink()
        err, rc = r.stderr, r.returncode
        assert rc != 0
        # ctr run --rm does not delete a task whose Start failed (its
        # container delete then fails too): what it leaves is removed here.
        after = containerd.tasks().get(cid, (0, "none"))[1]
        reltable.record("runc fails at %s: task left by ctr" % step, runtime, after)
        remove(containerd, cid)
    else:
        containerd.ctr("run", "-d", *args, image, cid, "sleep", "600")
        assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
        if step == "exec":
            marker.touch()
            r = containerd.ctr("task", "exec", "--exec-id", "e1", cid, "true", check=False)
            marker.unlink()
            err, rc = r.stderr, r.returncode
            assert rc != 0
            # The container goes on and is still manageable.
            assert containerd.tasks()[cid][1] == "RUNNING"
            assert containerd.ctr("task", "exec", "--exec-id", "e2", cid, "true",
                                  check=False).returncode == 0
        containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
        assert wait_status(containerd, cid, "STOPPED") == "STOPPED"
        if step == "delete":
            marker.touch()
            r = containerd.ctr("task", "delete", cid, check=False)
            marker.unlink()
            err, rc = r.stderr, r.returncode
            # A retry once runc works again.
            containerd.ctr("task", "delete", cid, check=False)
        containerd.ctr("task", "rm", "-f", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
    clear = want in err
    left = finish(containerd, cid, before, runtime, "runc fails at %s: leaked after" % step)
    reltable.record("runc fails at %s: error carries runc's message" % step, runtime,
                    "yes" if clear else "no (%s)" % (err.strip().splitlines() or [""])[-1][:80])
    assert cid not in containerd.containers()
    if runtime == PY_RUNTIME:
        assert clear, err
        assert not left, left
