"""Terminal stdio (spec io.md §7): a pty from runc through a console socket.

The console socket is a listening unix socket in a fresh temp dir: runc
sends the master with SCM_RIGHTS, the shim copies stdin FIFO -> master and
master -> stdout. Reading a master returns EIO while no slave is open; the
copy then ends with EIO and is re-armed after a short pause while the
process lives. Once the process has exited, the master is drained until it
has nothing more (drain mode of the native copy) and the output is complete.

ProcessIO(..., terminal=True) makes a TerminalIO; this module is imported
only then.
"""
import os

from shim import _native
from shim.io import ProcessIO, _close
from shim.loop import Future, wait_for
from shim.errors import UNKNOWN, Error as TTRPCError

_O_CLOEXEC = os.O_CLOEXEC
_O_NONBLOCK = os.O_NONBLOCK
_EAGAIN = 11
_EIO = 5
CONSOLE_TIMEOUT = 30.0       # seconds to wait for runc to send the pty master
TTY_REARM_MIN = 0.05         # pause before reading a master again after EIO
TTY_DRAIN_PAUSE = 0.02       # between drain passes of a master after exit
TTY_REARM_MAX = 1.0


class TerminalIO(ProcessIO):
    """stdio of a process with a terminal: the pty master runc hands over
    replaces the pipes (receive_console() between runc's start and start())."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
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
        self._tty_fifo = False   # tty_out is a client's FIFO

    def _open(self, scheme, path):
        if scheme == "fifo":
            if self.stdin_path:
                p = self._path(self.stdin_path)
                self.tty_src = self._own(os.open(p, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC))
                self.stdin_keepalive = self._own(
                    os.open(p, os.O_WRONLY | _O_NONBLOCK | _O_CLOEXEC))
            self.tty_out = self._own(os.open(self._path(path), os.O_RDWR | _O_CLOEXEC))
            self._tty_fifo = True
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
        if self.master >= 0:
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
        self._release_output(out, self._tty_fifo)

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

    def start(self):
        """runc has the pty master to us now: copy both ways."""
        self.started = True
        self._start_terminal()

    def process_exited(self):
        """The process was reaped: drain the master and end the output copy
        (its other holders may keep the slave open)."""
        super().process_exited()
        if not self.started:
            return
        if self.tty_copy is not None:
            self.tty_copy.set_drain()
        elif self._tty_timer is not None:
            self._tty_timer.cancel()
            self._arm_tty()

    def resize(self, width, height):
        """ResizePty: TIOCSWINSZ on the master."""
        if self.master >= 0:
            _native.set_winsize(self.master, height, width)

    def close(self):
        self.closed = True
        for c in self.active:
            c.cancel()
        self.active = []
        self._close_master()
        self._remove_console_socket()
        super().close()
        self.tty_src = self.tty_out = -1
