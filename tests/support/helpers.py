"""Small helpers the integration tests share."""
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time


def wait_status(c, id, want, timeout=10.0):
    """Poll `ctr task ls` until task `id` has status `want`; the last status
    seen (None if the task does not exist)."""
    deadline = time.monotonic() + timeout
    while True:
        st = c.tasks().get(id, (None, None))[1]
        if st == want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def address_of(c, id, namespace=None):
    """The shim address containerd uses for container `id`: the bundle's
    `address` file, or `bootstrap.json` where only that exists (containerd
    2.x's Go shim; a pod container that 2.3+ gives to its sandbox's shim
    without a `start`)."""
    bundle = c.bundle(id, namespace)
    try:
        with open(os.path.join(bundle, "address")) as f:
            return f.read()
    except FileNotFoundError:
        with open(os.path.join(bundle, "bootstrap.json")) as f:
            return json.load(f)["address"]


def open_writer(path, timeout=10):
    """Open a FIFO for writing without blocking, once a reader exists."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def read_until(fd, want, timeout):
    """Read a non-blocking fd until the data ends with `want` or time runs out."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(want) and time.monotonic() < deadline:
        select.select([fd], [], [], 0.1)
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            continue
        buf += b
    return buf


@contextlib.contextmanager
def ctr_events(c, settle=0.5):
    """Run `ctr events` around the block; yields a list that holds its output
    text once the block has ended. `settle` seconds before and after the
    block let ctr subscribe and the events arrive."""
    ev = c.ctr_popen("events", stdout=subprocess.PIPE, text=True)
    got = []
    try:
        time.sleep(settle)
        yield got
        time.sleep(settle)
    finally:
        ev.send_signal(signal.SIGINT)
        try:
            out, _ = ev.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            ev.kill()
            out, _ = ev.communicate()
        got.append(out)


def wait_file(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.02)


def holding_runc(dir, step):
    """A runc wrapper (Options.binary_name) that, for `runc <step>`, creates
    dir/<step>-ready-<n> and waits for dir/<step>-go before running the real
    runc."""
    path = os.path.join(dir, "runc-hold")
    with open(path, "w") as f:
        f.write("""#!/bin/sh
for a in "$@"; do
  if [ "$a" = %(step)s ]; then
    n=1; while [ -e %(dir)s/%(step)s-ready-$n ]; do n=$((n+1)); done
    : > %(dir)s/%(step)s-ready-$n
    while [ ! -e %(dir)s/%(step)s-go ]; do sleep 0.05; done
    break
  fi
done
exec %(runc)s "$@"
""" % {"step": step, "dir": dir, "runc": shutil.which("runc")})
    os.chmod(path, 0o755)
    return path


def status_field(pid, name):
    """The number a /proc/PID/status line `name:` starts with (kB for sizes),
    0 if there is no such line."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def tracer_pid(pid):
    """The PID tracing pid (an attached strace), 0 if none."""
    return status_field(pid, "TracerPid")


def mount_all_now(mounts, target):
    """shim.mount.mount_all without a reaper (no FUSE helper to run): it
    never awaits, so it is run to its end here, with no loop."""
    from shim import mount
    coro = mount.mount_all(mounts, target)
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("mount_all awaited without a reaper")
