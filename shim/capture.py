"""A child's output, read through the loop into memory while it runs:

    out = OutputCapture(loop)
    pid = _native.spawn(binary, argv, env, [fd0, out.w, out.w])
    out.start()                 # closes our copy of the write end
    status = await reaper.watch(pid)
    data = out.finish()         # what it printed (up to MAX_OUTPUT bytes)

Used for runc's invocations (shim.runc) and mount helpers (shim.mount_helper).
"""
import os

MAX_OUTPUT = 4 << 20


class OutputCapture:
    """Read end of an output pipe, drained through the loop while the child
    runs and once more after it exited. EOF is not awaited: a grandchild
    (the container init) may hold the write end."""

    def __init__(self, loop):
        self.loop = loop
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.r, False)
        self.chunks = []
        self.size = 0
        self.watching = False

    def start(self):
        os.close(self.w)
        self.w = -1
        self.loop.add_reader(self.r, self._on_readable)
        self.watching = True

    def _read(self):
        """Read what is available; False at EOF."""
        while True:
            try:
                b = os.read(self.r, 65536)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError:
                return False
            if not b:
                return False
            if self.size < MAX_OUTPUT:
                self.chunks.append(b)
                self.size += len(b)

    def _on_readable(self):
        if not self._read():
            self._unwatch()

    def _unwatch(self):
        if self.watching:
            self.watching = False
            self.loop.remove_reader(self.r)

    def finish(self):
        if self.r >= 0:
            self._unwatch()
            self._read()
            self.close()
        return b"".join(self.chunks)

    def close(self):
        self._unwatch()
        for fd in (self.r, self.w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.r = self.w = -1
