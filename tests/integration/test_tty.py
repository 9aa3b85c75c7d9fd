"""Terminals: `ctr run -t` / `ctr task exec -t` (and raw ResizePty) on pyshim
and, as the reference, on the Go shim (`runtime` is parametrized over both).

ctr only allocates a terminal when its own stdio is one, so each ctr runs on
a pty created here (`pty.openpty`); what the container prints through its
pty comes back through ctr (raw mode) to our master."""
import fcntl
import hashlib
import os
import pty
import select
import struct
import subprocess
import termios
import time
import tty

import pytest

from shim import ttrpc_client
from shim.pb import task as pb

from support.containerd import GO_RUNTIME, QUIET_ENV, task_service
from support.helpers import address_of, open_writer, read_until, wait_status

pytestmark = pytest.mark.integration

TASK = task_service()


class TtyCtr:
    """`ctr ...` with stdin/stdout/stderr on a fresh pty of rows x cols."""

    def __init__(self, containerd, *args, rows=24, cols=80):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # Our side must pass bytes through untouched. ctr's SetRaw turns
        # OPOST back on (containerd/console does), so clear ONLCR as well.
        tty.setraw(slave)
        mode = termios.tcgetattr(slave)
        mode[1] &= ~(termios.ONLCR | termios.OCRNL | termios.ONLRET)
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env.update(QUIET_ENV)
        env["TERM"] = "xterm"
        try:
            self.proc = subprocess.Popen(containerd._ctr_argv(None, args), stdin=slave,
                                         stdout=slave, stderr=slave, env=env,
                                         start_new_session=True)
        finally:
            os.close(slave)
        self.out = bytearray()
        self.eof = False

    def read_some(self, timeout):
        """Read what arrives within timeout; False at EOF."""
        if self.eof:
            return False
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                b = os.read(self.master, 1 << 16)
            except OSError:          # EIO: every slave fd is closed
                b = b""
            if not b:
                self.eof = True
                return False
            self.out += b
        return True

    def read_until(self, want, timeout=30):
        deadline = time.monotonic() + timeout
        while want not in self.out and time.monotonic() < deadline:
            if not self.read_some(0.1):
                break
        return want in self.out

    def write(self, data):
        os.write(self.master, data)

    def finish(self, timeout=120):
        """Read to EOF, reap ctr; (output bytes, exit code)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.read_some(0.2) and self.proc.poll() is not None:
                    break
            self.proc.wait(max(1, deadline - time.monotonic()))
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)
        return bytes(self.out), self.proc.returncode


def ctr_tty(containerd, *args, rows=24, cols=80, timeout=120):
    return TtyCtr(containerd, *args, rows=rows, cols=cols).finish(timeout)


def test_run_tty_output_and_exit_code(containerd, image, cid, runtime):
    out, code = ctr_tty(containerd, "run", "--rm", "-t", "--runtime", runtime, image, cid,
                        "sh", "-c", "echo hello; tty; test -t 0 && test -t 2 && exit 3")
    assert code == 3, out
    assert out == b"hello\r\n/dev/pts/0\r\n", out


def test_run_tty_window_size_from_ctr(containerd, image, cid, runtime):
    # ctr sends its terminal's size with ResizePty right after Start.
    out, code = ctr_tty(containerd, "run", "--rm", "-t", "--runtime", runtime, image, cid,
                        "sh", "-c", "sleep 0.5; stty size", rows=37, cols=123)
    assert (out, code) == (b"37 123\r\n", 0)


def test_run_tty_stdin(containerd, image, cid, runtime):
    t = TtyCtr(containerd, "run", "--rm", "-t", "--runtime", runtime, image, cid,
               "sh", "-c", 'echo ready; read x; echo "got:$x"')
    assert t.read_until(b"ready\r\n"), t.out
    t.write(b"hello\r")
    out, code = t.finish()
    assert code == 0
    assert out.endswith(b"got:hello\r\n"), out


def test_exec_tty_output_exit_code_and_size(containerd, sleeper):
    out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "t1", sleeper,
                        "sh", "-c", "sleep 0.5; tty; stty size; exit 7", rows=41, cols=99)
    assert (out, code) == (b"/dev/pts/0\r\n41 99\r\n", 7)


def test_exec_tty_stdin(containerd, sleeper):
    t = TtyCtr(containerd, "task", "exec", "-t", "--exec-id", "t2", sleeper,
               "sh", "-c", 'echo ready; read x; echo "got:$x"')
    assert t.read_until(b"ready\r\n"), t.out
    t.write(b"world\r")
    out, code = t.finish()
    assert code == 0
    # (ctr 1.6 may also log a failed late "resize pty" on either shim)
    assert out.startswith(b"ready\r\nworld\r\ngot:world\r\n"), out


def test_exec_tty_missing_binary(containerd, sleeper):
    out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "t3", sleeper,
                        "/bin/nope", timeout=30)
    assert code != 0
    assert b'exec: "/bin/nope": stat /bin/nope: no such file or directory' in out


def test_resize_pty_rpc(containerd, sleeper):
    # An attached tty exec waits for /tmp/go; meanwhile ResizePty goes
    # straight to the shim; then the exec prints its size.
    t = TtyCtr(containerd, "task", "exec", "-t", "--exec-id", "rz", sleeper, "sh", "-c",
               "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; stty size",
               rows=24, cols=80)
    try:
        assert t.read_until(b"ready\r\n"), t.out
        time.sleep(0.3)         # let ctr's own initial resize land first
        with ttrpc_client.SyncClient(address_of(containerd, sleeper), timeout=30) as cl:
            cl.call(TASK, "ResizePty", pb.ResizePtyRequest(id=sleeper, exec_id="rz",
                                                           width=91, height=29))
        containerd.ctr("task", "exec", "--exec-id", "go", sleeper, "touch", "/tmp/go")
    finally:
        out, code = t.finish()
    assert code == 0
    assert out == b"ready\r\n29 91\r\n", out


@pytest.mark.parametrize("how", ["run", "exec"])
def test_tty_large_output_not_lost(containerd, image, make_cid, runtime, how):
    # ~27 MB through the pty (onlcr turns each \n into \r\n).
    n = 3000000
    expected = "".join("%d\r\n" % i for i in range(1, n + 1)).encode()
    cmd = ("sh", "-c", "seq 1 %d" % n)
    cid = make_cid()
    if how == "run":
        out, code = ctr_tty(containerd, "run", "--rm", "-t", "--runtime", runtime, image, cid,
                            *cmd, timeout=240)
    else:
        containerd.ctr("run", "-d", "--runtime", runtime, image, cid, "sleep", "3600")
        try:
            out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "big", cid, *cmd,
                                timeout=240)
        finally:
            containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            wait_status(containerd, cid, "STOPPED")
    assert code == 0
    if runtime == GO_RUNTIME and len(out) < len(expected):
        # The Go shim may drop the tail of a tty's output when the machine
        # is busy (seen in CI with containerd 1.6.20 and 2.3.4): what it
        # delivered must still be an exact prefix. pyshim must lose nothing.
        assert expected.startswith(out) and len(out) > len(expected) // 2, len(out)
        return
    assert len(out) == len(expected)
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_tty_exec_detached_background_keeps_working(containerd, sleeper):
    # A tty exec whose child keeps the slave open after it exits: the exec's
    # exit is still reported and ctr returns.
    out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "bgc", sleeper,
                        "sh", "-c", "sleep 30 & echo started; exit 2", timeout=30)
    assert code == 2
    assert out.startswith(b"started\r\n"), out


def test_tty_exec_close_io_hangs_up(containerd, sleeper, tmp_path):
    # Raw Exec with a terminal and a stdin FIFO: once the client closed its
    # writer and CloseIO dropped the shim's, stdin has ended, and like the Go
    # shim pyshim then closes the console: the tty hangs up (SIGHUP).
    import json
    from shim.pb import wkt
    cid = sleeper
    fifo_in, fifo_out = str(tmp_path / "in"), str(tmp_path / "out")
    os.mkfifo(fifo_in)
    os.mkfifo(fifo_out)
    out = os.open(fifo_out, os.O_RDONLY | os.O_NONBLOCK)
    with open(os.path.join(containerd.bundle(cid), "config.json")) as f:
        proc = json.load(f)["process"]
    proc["args"] = ["sh", "-c", "echo ready; cat; echo after-eof"]
    spec = wkt.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                   value=json.dumps(proc).encode())
    try:
        with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
            cl.call(TASK, "Exec", pb.ExecProcessRequest(id=cid, exec_id="cio", terminal=True,
                                                       spec=spec, stdin=fifo_in,
                                                       stdout=fifo_out))
            sid = cl.send_raw_request(TASK, "Wait",
                                      pb.WaitRequest(id=cid, exec_id="cio").encode())
            cl.call(TASK, "Start", pb.StartRequest(id=cid, exec_id="cio"), pb.StartResponse)
            assert read_until(out, b"ready\r\n", 10) == b"ready\r\n"
            w = open_writer(fifo_in)
            os.write(w, b"typed\r")
            os.close(w)
            # the tty echoes the input, then cat prints it
            assert read_until(out, b"typed\r\ntyped\r\n", 10) == b"typed\r\ntyped\r\n"
            time.sleep(0.3)
            st = cl.call(TASK, "State", pb.StateRequest(id=cid, exec_id="cio"),
                         pb.StateResponse)
            assert st.status == 2 and st.terminal
            cl.call(TASK, "CloseIO", pb.CloseIORequest(id=cid, exec_id="cio", stdin=True))
            wr = pb.WaitResponse.decode(cl.recv_response(sid).payload)
            rest = read_until(out, b"\n", 2)
            cl.call(TASK, "Delete", pb.DeleteRequest(id=cid, exec_id="cio"), pb.DeleteResponse)
    finally:
        os.close(out)
    assert wr.exit_status == 129, (wr.exit_status, rest)     # SIGHUP
    assert b"after-eof" not in rest


def test_tty_execs_leak_no_fds_or_console_dirs(containerd, ctr_run, cid):
    from support.containerd import PY_RUNTIME
    ctr_run("sleep", "3600", runtime=PY_RUNTIME, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    shim = containerd.shims(id=cid)[0][0]

    def nfds():
        return len(os.listdir("/proc/%d/fd" % shim))

    with open("/proc/%d/environ" % shim, "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    tmp = (env.get(b"XDG_RUNTIME_DIR") or env.get(b"TMPDIR") or b"/tmp").decode()

    def pty_dirs():
        return sorted(d for d in os.listdir(tmp) if d.startswith("pty"))
    ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "warm", cid, "true")
    before, dirs = nfds(), pty_dirs()
    for i in range(5):
        out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "x%d" % i, cid,
                            "sh", "-c", "echo %d; exit %d" % (i, i))
        # (ctr 1.6 may log a late failed resize of the finished exec)
        assert out.startswith(b"%d\r\n" % i) and code == i, out
    out, code = ctr_tty(containerd, "task", "exec", "-t", "--exec-id", "bad", cid, "/bin/nope")
    assert code != 0
    time.sleep(0.3)
    assert nfds() <= before
    assert pty_dirs() == dirs
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
    wait_status(containerd, cid, "STOPPED")
