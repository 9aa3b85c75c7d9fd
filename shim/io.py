"""Process stdio between containerd's FIFOs (or a file) and runc.

Non-terminal processes get one pipe per stream. The shim opens the client
FIFOs so that nothing ever blocks and nothing is lost (spec io.md §3):
stdout/stderr FIFOs O_RDWR (the shim is writer and keep-alive reader at
once), stdin FIFO O_RDONLY|O_NONBLOCK plus a keep-alive O_WRONLY writer that
only CloseIO drops. The bytes are moved by the native copier in the loop.
An output whose copy ended still counts as pending (the exit event waits
for it, wait_copied) until the client has read what the copy left in its
FIFO, within FIFO_READ_BOUND: containerd 1.6's client closes its FIFOs
when it deletes the task, before it reads them to the end, and lost the
tail of the output whenever the exit came first (a loaded node).

Terminal processes (a pty from runc): shim/io_tty.py, whose TerminalIO
ProcessIO(..., terminal=True) returns. binary:// loggers: shim/io_logger.py.
Both load only when a process needs them; their public names stay
importable from here.
"""
import os
import sys
from stat import S_ISREG as _S_ISREG   # loaded with os already
from time import monotonic as _monotonic

from shim import _native
from shim.loop import Future, get_loop, sleep, wait_for
from shim.errors import INVALID_ARGUMENT, UNIMPLEMENTED, Error as TTRPCError

_O_CLOEXEC = os.O_CLOEXEC
_O_NONBLOCK = os.O_NONBLOCK
# Buffer of the output pipes the shim splices from (Linux's default is 64 KiB):
# a producer writing big blocks wakes the copy once per block instead of 16
# times, and one splice moves it all. Bounded by fs.pipe-max-size. Not for a
# regular log file: that copy goes through a buffer (splice refuses O_APPEND)
# and measured faster from a default pipe, whose bytes are still in cache.
PIPE_SIZE = 1 << 20
PIPE_MAX_SIZE_PATH = "/proc/sys/fs/pipe-max-size"
FIFO_READ_BOUND = 1.0       # seconds an ended output waits for its reader
_pipe_size = None


def output_pipe_size():
    """PIPE_SIZE, or fs.pipe-max-size if that is smaller (read once)."""
    global _pipe_size
    if _pipe_size is None:
        size = PIPE_SIZE
        try:
            with open(PIPE_MAX_SIZE_PATH, "rb") as f:
                size = min(size, int(f.read()))
        except (OSError, ValueError):
            pass
        _pipe_size = size
    return _pipe_size


# Names that moved to io_logger / io_tty, importable from here as before.
_MOVED = {"Logger": "io_logger", "logger_argv": "io_logger",
          "LOGGER_READY_TIMEOUT": "io_logger", "LOGGER_KILL_DELAY": "io_logger",
          "TerminalIO": "io_tty", "CONSOLE_TIMEOUT": "io_tty", "TTY_REARM_MIN": "io_tty",
          "TTY_DRAIN_PAUSE": "io_tty", "TTY_REARM_MAX": "io_tty"}


def __getattr__(name):
    # Loads the module on first use only (it costs memory in every shim).
    mod = _MOVED.get(name)
    if mod is None:
        raise AttributeError("module 'shim.io' has no attribute %r" % name)
    __import__("shim." + mod)
    return getattr(sys.modules["shim." + mod], name)


async def stop_loggers():
    """The shim is leaving: stop the binary loggers still running
    (io_logger.stop_loggers). None ever ran if that module is not loaded."""
    mod = sys.modules.get("shim.io_logger")
    if mod is not None:
        await mod.stop_loggers()


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
    if scheme in ("binary", "binary-v2", "file") and not rest.startswith("/"):
        raise TTRPCError(INVALID_ARGUMENT, "%s logger path must be absolute: %s" % (scheme, stdout))
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

    def __new__(cls, stdin="", stdout="", stderr="", terminal=False, *args, **kw):
        if terminal and cls is ProcessIO:
            from shim.io_tty import TerminalIO
            cls = TerminalIO
        return object.__new__(cls)

    def __init__(self, stdin, stdout, stderr, terminal=False, uid=0, gid=0, loop=None,
                 container_id="", namespace="", reaper=None):
        self.loop = loop or get_loop()
        self.container_id, self.namespace, self.reaper = container_id, namespace, reaper
        self.logger = None       # binary:// logger
        self.stdin_path, self.stdout_path, self.stderr_path = stdin, stdout, stderr
        self.terminal = terminal
        self.uid, self.gid = uid, gid
        self.fds = []            # every fd we own, closed at close()
        self.child = [None, None, None]   # container-side ends handed to runc
        self.copies = []         # (src, dst, is_output, to_fifo) to start after runc
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1   # our write end of the container's stdin pipe
        self.pending = 0
        self.copied = Future()   # resolved when stdout/stderr copies are done
        self.active = []
        self.started = False
        self.closed = False
        self.exited = False      # the process was reaped
        self.console_path = None # what runc gets as --console-socket (terminal)

    def _own(self, fd):
        self.fds.append(fd)
        return fd

    def open(self):
        scheme, path = parse_uri(self.stdout_path)
        try:
            self._open(scheme, path)
        except BaseException:
            self.close()
            raise
        if not self.pending:
            self.copied.set_result(None)

    def _open(self, scheme, path):
        if scheme == "":
            null = self._own(os.open("/dev/null", os.O_RDWR | _O_CLOEXEC))
            self.child = [null, null, null]
        elif scheme == "fifo":
            self._open_fifos()
        elif scheme == "file":
            self._open_file(path)
        else:
            self._open_binary(scheme)
        self.pending = sum(1 for c in self.copies if c[2])

    def _pipe(self):
        r, w = os.pipe2(_O_CLOEXEC)
        self._own(r)
        self._own(w)
        return r, w

    def _chown(self, fd):
        if self.uid or self.gid:
            os.fchown(fd, self.uid, self.gid)

    def _output(self, index, dst, spliced=True, fifo=False):
        r, w = self._pipe()
        if spliced:
            _native.set_pipe_size(r, output_pipe_size())
        self._chown(w)
        self.child[index] = w
        self.copies.append((r, dst, True, fifo))

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
            self.copies.append((src, w, False, False))
        for index, path in ((1, self.stdout_path), (2, self.stderr_path)):
            if path:
                dst = self._own(os.open(self._path(path), os.O_RDWR | _O_CLOEXEC))
                self._output(index, dst, fifo=True)
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
        regular = _S_ISREG(os.fstat(f).st_mode)
        if not regular:
            # A device or FIFO (file:///dev/null to discard output): O_APPEND
            # means nothing there, and splice(2) refuses an O_APPEND target.
            # The same file again, opened without it:
            g = self._own(os.open("/proc/self/fd/%d" % f, os.O_WRONLY | _O_CLOEXEC))
            self._forget(f)
            f = g
        self.child[0] = self._own(os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC))
        self._output(1, f, spliced=not regular)
        self._output(2, self._own(os.dup(f)), spliced=not regular)

    def _open_binary(self, scheme):
        out_w, err_w = self._open_logger(scheme)
        self.child = [self._own(os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC)), out_w, err_w]

    def _open_logger(self, scheme):
        """Pipes for stdout/stderr whose read ends go to a new logger."""
        if self.reaper is None:
            raise TTRPCError(UNIMPLEMENTED, "%s logging needs the shim's reaper" % scheme)
        from shim.io_logger import Logger
        self.logger = Logger(self.stdout_path, scheme == "binary-v2", self.container_id,
                             self.namespace, self.reaper, self.loop)
        out_r, out_w = self._pipe()
        err_r, err_w = self._pipe()
        self._chown(out_w)
        self._chown(err_w)
        self.logger.spawn(out_r, err_r)
        # The logger holds the read ends now; ours would keep them alive.
        for fd in (out_r, err_r):
            self._forget(fd)
        return out_w, err_w

    async def wait_ready(self):
        """Bounded wait for a binary logger's ready signal (no-op otherwise)."""
        if self.logger is not None and self.logger.ready_r >= 0:
            await self.logger.wait_ready()

    def _forget(self, fd):
        if fd is not None and fd >= 0:
            if fd in self.fds:
                self.fds.remove(fd)
            _close(fd)

    def process_exited(self):
        """The process was reaped (TerminalIO then drains its pty)."""
        self.exited = True

    def resize(self, width, height):
        """ResizePty: no-op without a pty (TerminalIO)."""

    async def receive_console(self, timeout=None):
        """No console socket without a terminal (TerminalIO)."""

    @staticmethod
    def _path(p):
        return p[len("fifo://"):] if p.startswith("fifo://") else p

    def runc_fds(self):
        return list(self.child)

    def start(self):
        """runc has the container-side ends now: drop ours and copy."""
        self.started = True
        for fd in set(fd for fd in self.child if fd is not None):
            if fd in self.fds:
                self.fds.remove(fd)
                _close(fd)
        self.child = [None, None, None]
        for src, dst, is_output, fifo in self.copies:
            self.active.append(self.loop.add_copy(
                src, dst, lambda err, s=src, d=dst, o=is_output, f=fifo: self._copy_done(s, d, o, f)))
        self.copies = []

    def _copy_done(self, src, dst, is_output, fifo):
        # Close both ends now: the reader of dst (client or container) must
        # see EOF as soon as the source ended, not at Delete time.
        self._forget(src)
        if not is_output:
            self._forget(dst)
            self.stdin_pipe_w = -1
            return
        self._release_output(dst, fifo)

    def _release_output(self, dst, fifo):
        """An output ended: close dst; for a client's FIFO, the output is
        finished once the client has read what is left in it (or nobody
        reads it, or FIFO_READ_BOUND passed). Meanwhile a write-only fd of
        ours keeps the reader from EOF and tells whether anyone reads."""
        probe = -1
        if fifo:
            try:
                probe = self._own(os.open("/proc/self/fd/%d" % dst,
                                          os.O_WRONLY | _O_NONBLOCK | _O_CLOEXEC))
            except OSError:
                pass
        self._forget(dst)
        if probe >= 0 and _native.pipe_unread(probe) > 0:
            self.loop.spawn(self._wait_read(probe))
            return
        self._forget(probe)
        self._output_finished()

    async def _wait_read(self, probe):
        deadline = _monotonic() + FIFO_READ_BOUND
        pause = 0.001
        try:
            while probe in self.fds and _monotonic() < deadline \
                    and _native.pipe_unread(probe) > 0:
                await sleep(pause)
                pause = min(pause * 2, 0.02)
        finally:
            self._forget(probe)
            self._output_finished()

    def _output_finished(self):
        self.pending -= 1
        if self.pending <= 0:
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
        if not self.started:
            return True
        if not self.copied.done():
            try:
                await wait_for(self.copied, timeout)
            except TimeoutError:
                return False
        return True

    def close(self):
        self.closed = True
        for c in self.active:
            c.cancel()
        self.active = []
        fds, self.fds = self.fds, []
        for fd in fds:
            _close(fd)
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1
        if self.logger is not None:
            self.logger.stop()
