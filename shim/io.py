"""Process stdio between containerd's FIFOs (or a file) and runc.

Non-terminal processes get one pipe per stream. The shim opens the client
FIFOs so that nothing ever blocks and nothing is lost (spec io.md §3):
stdout/stderr FIFOs O_RDWR (the shim is writer and keep-alive reader at
once), stdin FIFO O_RDONLY|O_NONBLOCK plus a keep-alive O_WRONLY writer that
only CloseIO drops. The bytes are moved by the native copier in the loop.
"""
import os

from shim.loop import Future, get_loop, wait_for
from shim.ttrpc import TTRPCError, INVALID_ARGUMENT, UNIMPLEMENTED

_O_CLOEXEC = os.O_CLOEXEC
_O_NONBLOCK = os.O_NONBLOCK


def _close(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def parse_uri(stdout):
    """(scheme, path) of a stdout value: '' / 'fifo' / 'file' / 'binary'."""
    if not stdout:
        return "", ""
    if stdout.startswith("/"):
        return "fifo", stdout
    i = stdout.find("://")
    if i < 0:
        raise TTRPCError(INVALID_ARGUMENT, "unknown STDIO scheme %s" % stdout)
    scheme, rest = stdout[:i], stdout[i + 3:]
    path = rest.split("?", 1)[0]
    if scheme == "fifo":
        return "fifo", path
    if scheme == "file":
        return "file", path
    if scheme in ("binary", "binary-v2"):
        return scheme, path
    raise TTRPCError(INVALID_ARGUMENT, "unknown STDIO scheme %s" % scheme)


class ProcessIO:
    """stdio of one process. Usage: open() before runc, runc_fds() for runc,
    start() after runc returned, wait_copied() at exit, close() at delete."""

    def __init__(self, stdin, stdout, stderr, terminal=False, uid=0, gid=0, loop=None):
        self.loop = loop or get_loop()
        self.stdin_path, self.stdout_path, self.stderr_path = stdin, stdout, stderr
        self.terminal = terminal
        self.uid, self.gid = uid, gid
        self.fds = []            # every fd we own, closed at close()
        self.child = [None, None, None]   # container-side ends handed to runc
        self.copies = []         # (src, dst) to start after runc returned
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1   # our write end of the container's stdin pipe
        self.pending = 0
        self.copied = Future()   # resolved when stdout/stderr copies are done
        self.active = []

    def _own(self, fd):
        self.fds.append(fd)
        return fd

    def open(self):
        if self.terminal:
            raise TTRPCError(UNIMPLEMENTED, "terminal stdio is not supported yet: not implemented")
        scheme, path = parse_uri(self.stdout_path)
        try:
            if scheme == "":
                null = self._own(os.open("/dev/null", os.O_RDWR | _O_CLOEXEC))
                self.child = [null, null, null]
            elif scheme == "fifo":
                self._open_fifos()
            elif scheme == "file":
                self._open_file(path)
            else:
                raise TTRPCError(UNIMPLEMENTED, "%s logging is not supported yet: not implemented" % scheme)
        except BaseException:
            self.close()
            raise
        if not self.pending:
            self.copied.set_result(None)

    def _pipe(self):
        r, w = os.pipe2(_O_CLOEXEC)
        self._own(r)
        self._own(w)
        return r, w

    def _chown(self, fd):
        if self.uid or self.gid:
            os.fchown(fd, self.uid, self.gid)

    def _output(self, index, dst):
        r, w = self._pipe()
        self._chown(w)
        self.child[index] = w
        self.copies.append((r, dst, True))

    def _open_fifos(self):
        null = None
        if self.stdin_path:
            src = self._own(os.open(self._path(self.stdin_path), os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC))
            self.stdin_keepalive = self._own(
                os.open(self._path(self.stdin_path), os.O_WRONLY | _O_NONBLOCK | _O_CLOEXEC))
            r, w = self._pipe()
            self._chown(r)
            self.child[0] = r
            self.stdin_pipe_w = w
            self.copies.append((src, w, False))
        for index, path in ((1, self.stdout_path), (2, self.stderr_path)):
            if path:
                dst = self._own(os.open(self._path(path), os.O_RDWR | _O_CLOEXEC))
                self._output(index, dst)
            else:
                if null is None:
                    null = self._own(os.open("/dev/null", os.O_RDWR | _O_CLOEXEC))
                self.child[index] = null
        if self.child[0] is None:
            self.child[0] = null if null is not None else self._own(
                os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC))

    def _open_file(self, path):
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, 0o755, exist_ok=True)
        f = self._own(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o644))
        self.child[0] = self._own(os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC))
        self._output(1, f)
        self._output(2, self._own(os.dup(f)))

    @staticmethod
    def _path(p):
        return p[len("fifo://"):] if p.startswith("fifo://") else p

    def runc_fds(self):
        return list(self.child)

    def start(self):
        """runc has the container-side ends now: drop ours and copy."""
        for fd in set(fd for fd in self.child if fd is not None):
            if fd in self.fds:
                self.fds.remove(fd)
                _close(fd)
        self.child = [None, None, None]
        for src, dst, is_output in self.copies:
            if is_output:
                self.pending += 1
            self.active.append(self.loop.add_copy(
                src, dst, lambda err, s=src, d=dst, o=is_output: self._copy_done(s, d, o)))
        self.copies = []

    def _copy_done(self, src, dst, is_output):
        # Close both ends now: the reader of dst (client or container) must
        # see EOF as soon as the source ended, not at Delete time.
        for fd in (src, dst):
            if fd in self.fds:
                self.fds.remove(fd)
                _close(fd)
        if not is_output:
            self.stdin_pipe_w = -1
            return
        self.pending -= 1
        if self.pending == 0:
            self.copied.set_result(None)

    def close_stdin(self):
        """CloseIO: drop the keep-alive writer; the container sees EOF once
        the client's writer is closed too."""
        fd = self.stdin_keepalive
        if fd >= 0:
            self.stdin_keepalive = -1
            if fd in self.fds:
                self.fds.remove(fd)
            _close(fd)

    async def wait_copied(self, timeout):
        if not self.copied.done():
            try:
                await wait_for(self.copied, timeout)
            except TimeoutError:
                return False
        return True

    def close(self):
        for c in self.active:
            c.cancel()
        self.active = []
        fds, self.fds = self.fds, []
        for fd in fds:
            _close(fd)
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1
