"""Process stdio between containerd's FIFOs (or a file) and runc.

Non-terminal processes get one pipe per stream. The shim opens the client
FIFOs so that nothing ever blocks and nothing is lost (spec io.md §3):
stdout/stderr FIFOs O_RDWR (the shim is writer and keep-alive reader at
once), stdin FIFO O_RDONLY|O_NONBLOCK plus a keep-alive O_WRONLY writer that
only CloseIO drops. The bytes are moved by the native copier in the loop.

Terminal processes (spec io.md §7) get a pty from runc through a console
socket (a listening unix socket in a fresh temp dir): runc sends the master
with SCM_RIGHTS, the shim copies stdin FIFO -> master and master -> stdout.
Reading a master returns EIO while no slave is open; the copy then ends with
EIO and is re-armed after a short pause while the process lives. Once the
process has exited, the master is drained until it has nothing more (drain
mode of the native copy) and the output is complete.

binary:// and binary-v2:// loggers (spec io.md §5) are spawned by the shim
with the read ends of the stdout/stderr pipes as fds 3/4 and the write end
of a ready pipe as fd 5; the container writes straight into the pipes (no
copy in the shim). The wait for ready is bounded, unlike Go's.
"""
import os
from stat import S_ISREG as _S_ISREG   # loaded with os already
from time import monotonic as _monotonic

from shim import _native
from shim.loop import Future, get_loop, wait_for
from shim.ttrpc import TTRPCError, INVALID_ARGUMENT, UNIMPLEMENTED, UNKNOWN

_O_CLOEXEC = os.O_CLOEXEC
_O_NONBLOCK = os.O_NONBLOCK
_EAGAIN = 11
_EIO = 5
CONSOLE_TIMEOUT = 30.0       # seconds to wait for runc to send the pty master
TTY_REARM_MIN = 0.05         # pause before reading a master again after EIO
TTY_DRAIN_PAUSE = 0.02       # between drain passes of a master after exit
TTY_REARM_MAX = 1.0
LOGGER_READY_TIMEOUT = 30.0  # seconds a binary logger has to signal ready
LOGGER_KILL_DELAY = 12.0     # SIGTERM at close, SIGKILL this much later
_SIGTERM, _SIGKILL = 15, 9
# Buffer of the output pipes the shim copies from (Linux's default is 64 KiB):
# a producer writing big blocks wakes the copy once per block instead of 16
# times, and one splice moves it all. Bounded by fs.pipe-max-size.
PIPE_SIZE = 1 << 20
PIPE_MAX_SIZE_PATH = "/proc/sys/fs/pipe-max-size"
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


class ProcessIO:
    """stdio of one process. Usage: open() before runc, runc_fds() for runc,
    start() after runc returned, wait_copied() at exit, close() at delete."""

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
        self.copies = []         # (src, dst) to start after runc returned
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1   # our write end of the container's stdin pipe
        self.pending = 0
        self.copied = Future()   # resolved when stdout/stderr copies are done
        self.active = []
        self.started = False
        self.closed = False
        self.exited = False      # the process was reaped
        # terminal only
        self.console_dir = None  # temp dir holding the console socket
        self.console_path = None # what runc gets as --console-socket
        self._console = None     # listening _socket.socket
        self.master = -1         # pty master (output side, resize)
        self.master_in = -1      # dup of the master for the stdin copy
        self.tty_out = -1        # where the pty output goes
        self.tty_src = -1        # stdin FIFO read end (terminal)
        self.tty_copy = None     # running master -> tty_out copy
        self._tty_timer = None
        self._empty_drains = 0   # drain passes in a row that found nothing
        self._stdin_timer = None
        self._tty_delay = TTY_REARM_MIN
        self._hangup = False     # stdin ended: close the master after draining

    def _own(self, fd):
        self.fds.append(fd)
        return fd

    def open(self):
        scheme, path = parse_uri(self.stdout_path)
        try:
            if self.terminal:
                self._open_terminal(scheme, path)
            elif scheme == "":
                null = self._own(os.open("/dev/null", os.O_RDWR | _O_CLOEXEC))
                self.child = [null, null, null]
            elif scheme == "fifo":
                self._open_fifos()
            elif scheme == "file":
                self._open_file(path)
            else:
                self._open_binary(scheme)
        except BaseException:
            self.close()
            raise
        if not self.terminal:
            self.pending = sum(1 for c in self.copies if c[2])
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
        _native.set_pipe_size(r, output_pipe_size())
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
        if not _S_ISREG(os.fstat(f).st_mode):
            # A device or FIFO (file:///dev/null to discard output): O_APPEND
            # means nothing there, and splice(2) refuses an O_APPEND target.
            # The same file again, opened without it:
            g = self._own(os.open("/proc/self/fd/%d" % f, os.O_WRONLY | _O_CLOEXEC))
            self._forget(f)
            f = g
        self.child[0] = self._own(os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC))
        self._output(1, f)
        self._output(2, self._own(os.dup(f)))

    def _open_binary(self, scheme):
        out_w, err_w = self._open_logger(scheme)
        self.child = [self._own(os.open("/dev/null", os.O_RDONLY | _O_CLOEXEC)), out_w, err_w]

    def _open_logger(self, scheme):
        """Pipes for stdout/stderr whose read ends go to a new logger."""
        if self.reaper is None:
            raise TTRPCError(UNIMPLEMENTED, "%s logging needs the shim's reaper" % scheme)
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

    # ---- terminal ----------------------------------------------------------
    def _open_terminal(self, scheme, path):
        if scheme == "fifo":
            if self.stdin_path:
                p = self._path(self.stdin_path)
                self.tty_src = self._own(os.open(p, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC))
                self.stdin_keepalive = self._own(
                    os.open(p, os.O_WRONLY | _O_NONBLOCK | _O_CLOEXEC))
            self.tty_out = self._own(os.open(self._path(path), os.O_RDWR | _O_CLOEXEC))
        elif scheme == "file":
            d = os.path.dirname(path)
            if d:
                os.makedirs(d, 0o755, exist_ok=True)
            self.tty_out = self._own(
                os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o644))
        elif scheme == "":
            self.tty_out = self._own(os.open("/dev/null", os.O_WRONLY | _O_CLOEXEC))
        else:
            # The pty output goes to the logger's stdout; its stderr stays empty.
            out_w, err_w = self._open_logger(scheme)
            self._forget(err_w)
            self.tty_out = out_w
        self._open_console_socket()
        self.pending = 1

    def _open_console_socket(self):
        import _socket
        base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
        for _ in range(100):
            d = os.path.join(base, "pty%d" % int.from_bytes(os.urandom(4), "little"))
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            break
        else:
            raise OSError(17, "cannot create a console socket directory in %s" % base)
        self.console_dir = d
        path = os.path.join(d, "pty.sock")
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.bind(path)
            s.listen(1)
        except BaseException:
            s.close()
            raise
        self._console = s
        self.console_path = path

    def _remove_console_socket(self):
        s, self._console = self._console, None
        if s is not None:
            try:
                self.loop.remove_reader(s.fileno())
            except (OSError, ValueError):
                pass
            s.close()
        d, self.console_dir = self.console_dir, None
        if d is not None:
            try:
                os.unlink(os.path.join(d, "pty.sock"))
            except OSError:
                pass
            try:
                os.rmdir(d)
            except OSError:
                pass

    async def receive_console(self, timeout=CONSOLE_TIMEOUT):
        """Accept runc's connection on the console socket and take the pty
        master it sends (without blocking the loop; bounded by timeout).
        Then the socket and its directory are removed."""
        if not self.terminal or self.master >= 0:
            return
        loop = self.loop
        sock = self._console
        lfd = sock.fileno()
        fut = Future()
        conn = [-1]

        def on_conn():
            try:
                fd, _name = _native.recv_fd(conn[0])
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == _EAGAIN:
                    return
                fut.set_exception(e)
            else:
                fut.set_result(fd)
            loop.remove_reader(conn[0])

        def on_listen():
            try:
                fd, _addr = sock._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                fut.set_exception(e)
                loop.remove_reader(lfd)
                return
            loop.remove_reader(lfd)
            conn[0] = fd
            os.set_blocking(fd, False)
            loop.add_reader(fd, on_conn)
            on_conn()

        loop.add_reader(lfd, on_listen)
        on_listen()
        try:
            try:
                master = await wait_for(fut, timeout)
            except TimeoutError:
                raise TTRPCError(UNKNOWN, "failed to receive the pty master from runc: "
                                 "timed out after %gs" % timeout) from None
            except OSError as e:
                raise TTRPCError(UNKNOWN, "failed to receive the pty master from runc: %s" % e) from None
        finally:
            if conn[0] >= 0:
                try:
                    loop.remove_reader(conn[0])
                except (OSError, ValueError):
                    pass
                _close(conn[0])
            self._remove_console_socket()
        if self.closed:             # closed meanwhile
            _close(master)
            return
        self.master = self._own(master)
        os.set_blocking(master, False)

    def _start_terminal(self):
        if self.master < 0:
            raise TTRPCError(UNKNOWN, "no pty master received from runc")
        if self.tty_src >= 0:
            self.master_in = self._own(os.dup(self.master))
            self._arm_tty_stdin()
        self._arm_tty()

    def _arm_tty_stdin(self):
        self._stdin_timer = None
        if self.tty_src < 0 or self.master_in < 0 or self.closed:
            return
        self.active.append(self.loop.add_copy(self.tty_src, self.master_in,
                                              self._tty_stdin_done))

    def _arm_tty(self):
        self._tty_timer = None
        if self.master < 0 or self.tty_out < 0 or self.tty_copy is not None:
            return
        c = self.tty_copy = self.loop.add_copy(self.master, self.tty_out, self._tty_done)
        if self.exited or self._hangup:
            c.set_drain()

    def _tty_done(self, err):
        c, self.tty_copy = self.tty_copy, None
        if self.master < 0:
            return                  # closed meanwhile
        if c is not None and c.copied:
            self._tty_delay = TTY_REARM_MIN
        if err == _EIO and not self.exited and not self._hangup:
            # No slave open right now, the process still lives: look again
            # later (epoll reports HUP continuously on such a master).
            self._tty_timer = self.loop.call_later(self._tty_delay, self._arm_tty)
            self._tty_delay = min(self._tty_delay * 2, TTY_REARM_MAX)
            return
        if err in (0, _EIO):
            # The tty layer hands the slave's last output to the master
            # asynchronously, after the process is gone: only two drain
            # passes a short pause apart that both find nothing end it.
            self._empty_drains = 0 if c is not None and c.copied else self._empty_drains + 1
            if self._empty_drains < 2:
                self._tty_timer = self.loop.call_later(TTY_DRAIN_PAUSE, self._arm_tty)
                return
        self._tty_output_finished()

    def _tty_output_finished(self):
        if self._hangup:
            # Like Go: stdin ended, the console goes away (the tty hangs up).
            self._close_master()
        # Like Go: the console copy ended, so the client's reader sees EOF
        # now (CRI's exec stream waits for it), not at Delete.
        out, self.tty_out = self.tty_out, -1
        self._forget(out)
        self._output_finished()

    def _tty_stdin_done(self, err):
        if self.closed or self.master_in < 0:
            return
        if err != 0:
            if err == _EIO and not self.exited and not self._hangup:
                # No slave open (input now would be lost on a terminal too):
                # keep the client's stdin open and forward again later.
                self._stdin_timer = self.loop.call_later(TTY_REARM_MAX, self._arm_tty_stdin)
            return
        src, self.tty_src = self.tty_src, -1
        self._forget(src)
        mi, self.master_in = self.master_in, -1
        self._forget(mi)
        # stdin EOF (client closed and CloseIO): Go closes the console. Copy
        # what output is there first, then close the master.
        self._hangup = True
        if self.tty_copy is not None:
            self.tty_copy.set_drain()
        elif self._tty_timer is not None:
            self._tty_timer.cancel()
            self._arm_tty()
        elif self.copied.done() or not self.started:
            self._close_master()

    def _close_master(self):
        for t in (self._tty_timer, self._stdin_timer):
            if t is not None:
                t.cancel()
        self._tty_timer = self._stdin_timer = None
        if self.tty_copy is not None:
            self.tty_copy.cancel()
            self.tty_copy = None
        for name in ("master_in", "master"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            self._forget(fd)

    def _forget(self, fd):
        if fd is not None and fd >= 0:
            if fd in self.fds:
                self.fds.remove(fd)
            _close(fd)

    def process_exited(self):
        """The process was reaped: for a terminal, drain the master and end
        the output copy (its other holders may keep the slave open)."""
        self.exited = True
        if not self.terminal or not self.started:
            return
        if self.tty_copy is not None:
            self.tty_copy.set_drain()
        elif self._tty_timer is not None:
            self._tty_timer.cancel()
            self._arm_tty()

    def resize(self, width, height):
        """ResizePty: TIOCSWINSZ on the master (no-op without a pty)."""
        if self.master >= 0:
            _native.set_winsize(self.master, height, width)

    @staticmethod
    def _path(p):
        return p[len("fifo://"):] if p.startswith("fifo://") else p

    def runc_fds(self):
        return list(self.child)

    def start(self):
        """runc has the container-side ends now: drop ours and copy."""
        self.started = True
        if self.terminal:
            self._start_terminal()
            return
        for fd in set(fd for fd in self.child if fd is not None):
            if fd in self.fds:
                self.fds.remove(fd)
                _close(fd)
        self.child = [None, None, None]
        for src, dst, is_output in self.copies:
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
        self._close_master()
        self._remove_console_socket()
        fds, self.fds = self.fds, []
        for fd in fds:
            _close(fd)
        self.stdin_keepalive = -1
        self.stdin_pipe_w = -1
        self.tty_src = self.tty_out = -1
        if self.logger is not None:
            self.logger.stop()
