"""Small helpers the integration tests share."""
import os
import select
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


def address_of(c, id):
    """The shim address containerd uses for container `id` (bundle file)."""
    with open(os.path.join(c.bundle(id), "address")) as f:
        return f.read()


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
