"""binary:// and binary-v2:// loggers (spec io.md §5).

The shim spawns the logger with the read ends of the stdout/stderr pipes as
fds 3/4 and the write end of a ready pipe as fd 5; the container writes
straight into the pipes (no copy in the shim). The wait for ready is
bounded, unlike Go's. Imported by shim.io when a process uses a logger.
"""
import os
from time import monotonic as _monotonic

from shim import _native
from shim.io import _close
from shim.loop import Future, wait_for
from shim.errors import UNKNOWN, Error as TTRPCError

_O_CLOEXEC = os.O_CLOEXEC
LOGGER_READY_TIMEOUT = 30.0  # seconds a binary logger has to signal ready
LOGGER_KILL_DELAY = 12.0     # SIGTERM at close, SIGKILL this much later
_SIGTERM, _SIGKILL = 15, 9


def _unquote(s):
    """%XX and '+' decoding of a URI query part (without importing urllib)."""
    if "%" not in s and "+" not in s:
        return s
    b = s.replace("+", " ").encode()
    out = bytearray()
    i = 0
    while i < len(b):
        c = b[i]
        if c == 0x25 and i + 2 < len(b):
            try:
                out.append(int(b[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def logger_argv(uri):
    """argv of a binary:// logger: the path, then each query pair as
    'key value' (a key without a value adds only the key), in URI order."""
    rest = uri.split("://", 1)[1]
    path, _, query = rest.partition("?")
    argv = [_unquote(path)]
    for part in query.split("&") if query else ():
        if not part:
            continue
        k, eq, v = part.partition("=")
        argv.append(_unquote(k))
        if eq and v:
            argv.append(_unquote(v))
    return argv


_live_loggers = set()


async def stop_loggers():
    """The shim is leaving: every logger still running gets SIGTERM (if it
    has not yet) and, as at delete, LOGGER_KILL_DELAY seconds to finish
    before SIGKILL. Go's shim would exit at once and leave a logger that
    ignores SIGTERM behind; this waits for them instead."""
    loggers = list(_live_loggers)
    for lg in loggers:
        lg.stop()
    deadline = _monotonic() + LOGGER_KILL_DELAY + 1.0
    for lg in loggers:
        left = deadline - _monotonic()
        if left > 0 and not lg.exited.done():
            try:
                await wait_for(lg.exited, left)
            except TimeoutError:
                pass
        lg._kill()


class Logger:
    """A running binary:// logger process (spec io.md §5)."""

    def __init__(self, uri, v2, container_id, namespace, reaper, loop):
        self.uri = uri
        self.v2 = v2
        self.loop = loop
        self.reaper = reaper
        self.pid = 0
        self.exited = None          # Future(exit status)
        self.ready_r = -1
        self.env = ["CONTAINER_ID=%s" % container_id,
                    "CONTAINER_NAMESPACE=%s" % namespace]
        self._kill_timer = None

    def spawn(self, out_r, err_r):
        argv = logger_argv(self.uri)
        r, w = os.pipe2(_O_CLOEXEC)
        try:
            null = os.open("/dev/null", os.O_RDWR | _O_CLOEXEC)
            try:
                self.pid = _native.spawn(argv[0], argv, self.env,
                                         [null, null, null, out_r, err_r, w],
                                         search_path=False)
            finally:
                os.close(null)
        except OSError as e:
            os.close(r)
            os.close(w)
            raise TTRPCError(UNKNOWN, "failed to start binary logger %s: %s"
                             % (argv[0], e.strerror or e)) from None
        os.close(w)
        self.ready_r = r
        self.exited = self.reaper.watch(self.pid)
        _live_loggers.add(self)
        self.exited.add_done_callback(self._on_exit)

    def _on_exit(self, _fut):
        _live_loggers.discard(self)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None

    async def wait_ready(self, timeout=LOGGER_READY_TIMEOUT):
        """One byte (binary, binary-v2) or EOF (binary only) on fd 5."""
        loop = self.loop
        fut = Future()
        r = self.ready_r
        os.set_blocking(r, False)

        def on_ready():
            try:
                data = os.read(r, 1)
            except BlockingIOError:
                return
            except OSError as e:
                data = e
            loop.remove_reader(r)
            if not fut.done():
                fut.set_result(data)

        loop.add_reader(r, on_ready)
        try:
            try:
                data = await wait_for(fut, timeout)
            except TimeoutError:
                raise TTRPCError(UNKNOWN, "binary logger %s did not signal ready within %gs"
                                 % (self.uri.split("?", 1)[0], timeout)) from None
        finally:
            try:
                loop.remove_reader(r)
            except (OSError, ValueError):
                pass
            self.ready_r = -1
            _close(r)
        if isinstance(data, OSError):
            raise TTRPCError(UNKNOWN, "reading the ready pipe of binary logger: %s" % data)
        if not data and self.v2:
            raise TTRPCError(UNKNOWN, "binary-v2 logger %s closed its ready pipe without "
                             "signalling ready" % self.uri.split("?", 1)[0])

    def stop(self):
        """SIGTERM now, SIGKILL after LOGGER_KILL_DELAY if still running."""
        if self.ready_r >= 0:
            _close(self.ready_r)
            self.ready_r = -1
        if not self.pid or self.exited is None or self.exited.done():
            return
        try:
            os.kill(self.pid, _SIGTERM)
        except OSError:
            return
        if self._kill_timer is None:
            self._kill_timer = self.loop.call_later(LOGGER_KILL_DELAY, self._kill)

    def _kill(self):
        self._kill_timer = None
        if self.exited is not None and not self.exited.done():
            try:
                os.kill(self.pid, _SIGKILL)
            except OSError:
                pass
