"""Process stdio: the native copy's drain mode, pty masters (EIO while no
slave is open) and ProcessIO's terminal path with a fake runc that sends a
pty master over the console socket."""
import errno
import fcntl
import os
import socket
import time

import pytest

from shim import _native
from shim.io import ProcessIO
from shim.loop import Future, get_loop, sleep, wait_for
from shim.ttrpc import TTRPCError
from support.helpers import open_writer

loop = get_loop()


def run(coro, timeout=20):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


def settle(seconds=0.05):
    loop.run_until_complete(sleep(seconds), timeout=5)


def read_all(fd):
    out = bytearray()
    while True:
        try:
            b = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            break
        if not b:
            break
        out += b
    return bytes(out)


def raw(fd):
    import tty
    tty.setraw(fd)


# ---- native copy: drain mode and pty masters --------------------------------

def test_drain_mode_ends_at_eagain_without_eof():
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.write(src_w, b"x" * 1000)
    done = Future()
    c = loop.add_copy(src_r, dst_w, done.set_result)
    assert not c.draining
    c.set_drain()
    assert c.draining
    assert run(wait_for(done, 5)) == 0      # the writer is still open
    os.set_blocking(dst_r, False)
    assert read_all(dst_r) == b"x" * 1000
    for fd in (src_r, src_w, dst_r, dst_w):
        os.close(fd)


def test_drain_mode_waits_for_a_full_destination():
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    payload = os.urandom(200000)             # > the 64 KiB pipe buffer
    os.set_blocking(src_w, False)
    fcntl.fcntl(src_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    os.write(src_w, payload)
    done = Future()
    c = loop.poller.add_copy(src_r, dst_w, done.set_result, True)
    assert not done.done() and c.draining
    got = bytearray()
    os.set_blocking(dst_r, False)

    async def reader():
        # Slow client: small reads, so the copy keeps waiting for dst.
        while len(got) < len(payload):
            try:
                got.extend(os.read(dst_r, 4096))
            except BlockingIOError:
                await sleep(0.001)
        return await wait_for(done, 5)
    assert run(reader()) == 0
    assert bytes(got) == payload
    for fd in (src_r, src_w, dst_r, dst_w):
        os.close(fd)


def test_pty_master_eio_after_slave_closed_keeps_all_data():
    master, slave = os.openpty()
    raw(slave)
    dst_r, dst_w = os.pipe()
    os.write(slave, b"hello pty")
    os.close(slave)
    done = Future()
    loop.add_copy(master, dst_w, done.set_result)
    # No slave: the copy ends with EIO (not a busy loop), data delivered.
    assert run(wait_for(done, 5)) == errno.EIO
    os.set_blocking(dst_r, False)
    assert read_all(dst_r) == b"hello pty"
    # Copying the same master again later is fine (nothing buffered lost).
    again = Future()
    loop.add_copy(master, dst_w, again.set_result)
    assert run(wait_for(again, 5)) == errno.EIO
    # Drain mode treats EIO as the end.
    third = Future()
    loop.poller.add_copy(master, dst_w, third.set_result, True)
    assert run(wait_for(third, 5)) == 0
    for fd in (master, dst_r, dst_w):
        os.close(fd)


def test_pty_copy_does_not_spin_on_hup():
    # A level-triggered epoll reports EPOLLHUP all the time on a master with
    # no slave: a copy must not stay registered on it.
    master, slave = os.openpty()
    os.close(slave)
    dst_r, dst_w = os.pipe()
    done = Future()
    loop.add_copy(master, dst_w, done.set_result)
    run(wait_for(done, 5))
    t0 = time.process_time()
    settle(0.3)
    assert time.process_time() - t0 < 0.15
    for fd in (master, dst_r, dst_w):
        os.close(fd)


# ---- ProcessIO terminal path -------------------------------------------------

def fake_runc_send_master(path, master):
    """What runc does with --console-socket: connect, send the master."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socket.send_fds(s, [b"/dev/ptmx"], [master])
    s.close()


@pytest.fixture
def fifos(tmp_path):
    paths = {n: str(tmp_path / n) for n in ("stdin", "stdout")}
    for p in paths.values():
        os.mkfifo(p)
    # Client ends: our reader of stdout is open before the shim starts.
    out = os.open(paths["stdout"], os.O_RDONLY | os.O_NONBLOCK)
    yield paths, out
    os.close(out)


def start_tty_io(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    io = ProcessIO(paths["stdin"], paths["stdout"], "", terminal=True)
    io.open()
    assert io.runc_fds  # not used for terminals
    d = os.path.dirname(io.console_path)
    assert os.path.basename(io.console_path) == "pty.sock"
    assert os.path.dirname(d) == str(tmp_path) and os.path.basename(d).startswith("pty")
    master, slave = os.openpty()
    fake_runc_send_master(io.console_path, master)
    os.close(master)
    run(io.receive_console(5))
    assert not os.path.exists(d)               # socket dir removed
    io.start()
    return io, slave


def read_fifo(fd, want, timeout=5):
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < len(want) and time.monotonic() < deadline:
        settle(0.01)
        try:
            got += os.read(fd, 1 << 16)
        except BlockingIOError:
            pass
    return bytes(got)


def test_terminal_io_both_directions_and_resize(fifos, tmp_path, monkeypatch):
    paths, out = fifos
    io, slave = start_tty_io(paths, tmp_path, monkeypatch)
    raw(slave)
    try:
        os.write(slave, b"from container")
        assert read_fifo(out, b"from container") == b"from container"
        w = open_writer(paths["stdin"], timeout=5)
        os.write(w, b"typed")
        os.close(w)
        got = b""
        deadline = time.monotonic() + 5
        os.set_blocking(slave, False)
        while got != b"typed" and time.monotonic() < deadline:
            settle(0.01)
            try:
                got += os.read(slave, 100)
            except BlockingIOError:
                pass
        assert got == b"typed"
        io.resize(width=132, height=43)
        import fcntl
        import struct
        import termios
        ws = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        assert struct.unpack("HHHH", ws)[:2] == (43, 132)
    finally:
        os.close(slave)
        io.close()


def test_terminal_output_rearmed_while_no_slave_then_drained_at_exit(fifos, tmp_path,
                                                                       monkeypatch):
    paths, out = fifos
    io, slave = start_tty_io(paths, tmp_path, monkeypatch)
    raw(slave)
    name = os.ttyname(slave)
    try:
        os.write(slave, b"one ")
        os.close(slave)            # between programs: no slave open -> EIO
        assert read_fifo(out, b"one ") == b"one "
        settle(0.2)
        assert not io.copied.done() and io.tty_copy is None   # waiting to re-arm
        slave = os.open(name, os.O_RDWR | os.O_NOCTTY)
        raw(slave)
        os.write(slave, b"two ")
        assert read_fifo(out, b"two ", timeout=5) == b"two "
        os.write(slave, b"three")
        # The process exits (its children may keep the slave open): drain.
        io.process_exited()
        assert run(io.wait_copied(5)) is True
        assert read_fifo(out, b"three") == b"three"
    finally:
        os.close(slave)
        io.close()


def test_terminal_large_output_through_a_slow_client(fifos, tmp_path, monkeypatch):
    paths, out = fifos
    io, slave = start_tty_io(paths, tmp_path, monkeypatch)
    raw(slave)
    os.set_blocking(slave, False)
    payload = os.urandom(3 << 20)
    view = memoryview(payload)
    got = bytearray()
    try:
        deadline = time.monotonic() + 30
        while (view or len(got) < len(payload)) and time.monotonic() < deadline:
            if view:
                try:
                    view = view[os.write(slave, view[:65536]):]
                except BlockingIOError:
                    pass
            loop.run_until_complete(sleep(0), timeout=5)
            try:
                got += os.read(out, 8192)
            except BlockingIOError:
                pass
        assert bytes(got) == payload
    finally:
        os.close(slave)
        io.close()


def test_terminal_stdin_eof_hangs_up_after_draining(fifos, tmp_path, monkeypatch):
    # Like Go: when stdin ends (client closed it and CloseIO), the console
    # is closed; output written before is still delivered.
    paths, out = fifos
    io, slave = start_tty_io(paths, tmp_path, monkeypatch)
    raw(slave)
    try:
        os.write(slave, b"before")
        w = open_writer(paths["stdin"], timeout=5)
        os.close(w)
        io.close_stdin()
        assert run(io.wait_copied(5)) is True
        assert read_fifo(out, b"before") == b"before"
        assert io.master == -1 and io.master_in == -1
        os.set_blocking(slave, False)
        with pytest.raises(OSError):
            os.write(slave, b"x")   # hung up: EIO
    finally:
        os.close(slave)
        io.close()


def test_receive_console_timeout_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    io = ProcessIO("", "", "", terminal=True)
    io.open()
    d = os.path.dirname(io.console_path)
    assert os.path.isdir(d)
    with pytest.raises(TTRPCError) as e:
        run(io.receive_console(0.2))
    assert "pty master" in e.value.message
    assert not os.path.exists(d)
    io.close()


def test_close_before_start_removes_console_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    io = ProcessIO("", "", "", terminal=True)
    io.open()
    d = os.path.dirname(io.console_path)
    io.close()
    assert not os.path.exists(d)
    assert os.listdir(tmp_path) == []


def test_unopened_io_counts_as_copied():
    io = ProcessIO("", "", "")
    assert run(io.wait_copied(0.1)) is True


def test_copy_into_pty_master_without_slave_ends_instead_of_spinning():
    # A master with no slave open takes ~12 KiB, then EAGAIN while epoll
    # keeps reporting EPOLLOUT|EPOLLHUP: the copy must end (EIO).
    master, slave = os.openpty()
    os.close(slave)
    src_r, src_w = os.pipe()
    os.set_blocking(src_w, False)
    # More than the tty layer ever buffers (64 KiB): with 60000 bytes the
    # kernel's flip-buffer work could take them all under load, and the copy
    # then rightly waited on src.
    fcntl.fcntl(src_w, 1031, 1 << 20)           # F_SETPIPE_SZ
    os.write(src_w, b"y" * (512 << 10))
    done = Future()
    loop.add_copy(src_r, master, done.set_result)
    t0 = time.process_time()
    assert run(wait_for(done, 5)) == errno.EIO
    settle(0.2)
    assert time.process_time() - t0 < 0.15
    for fd in (master, src_r, src_w):
        os.close(fd)


def test_eof_with_a_full_destination_does_not_spin():
    # The writer is gone and the source empty, but dst is full: splice then
    # says EAGAIN (not 0); the copy must end (EOF) instead of waiting on the
    # hung-up source, which epoll reports ready forever.
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.set_blocking(src_w, False)
    os.write(src_w, b"x" * 65536)
    done = Future()
    c = loop.add_copy(src_r, dst_w, done.set_result)   # dst is full now
    os.close(src_w)
    t0 = time.process_time()
    assert run(wait_for(done, 5)) == 0
    settle(0.2)
    assert time.process_time() - t0 < 0.15
    assert c.copied == 65536
    os.set_blocking(dst_r, False)
    assert read_all(dst_r) == b"x" * 65536
    for fd in (src_r, dst_r, dst_w):
        os.close(fd)


def test_wait_copied_waits_for_output_copies(tmp_path):
    # Output copies are pending from open(): wait_copied() must wait for
    # the container side to reach EOF, not return at once.
    paths = [str(tmp_path / n) for n in ("out", "err")]
    readers = []
    for p in paths:
        os.mkfifo(p)
        readers.append(os.open(p, os.O_RDONLY | os.O_NONBLOCK))
    io = ProcessIO("", paths[0], paths[1])
    io.open()
    assert not io.copied.done()
    fds = io.runc_fds()
    w1, w2 = os.dup(fds[1]), os.dup(fds[2])     # "the container"
    io.start()
    try:
        assert run(io.wait_copied(0.2)) is False
        os.write(w1, b"out")
        os.close(w1)
        assert run(io.wait_copied(0.2)) is False
        os.close(w2)
        assert read_fifo(readers[0], b"out") == b"out"
        assert run(io.wait_copied(5)) is True
    finally:
        io.close()
        for fd in readers:
            os.close(fd)


def _fifo_output(tmp_path, reader=True):
    """A ProcessIO whose stdout is a client's FIFO (with the client's reader
    open if `reader`), started; returns (io, container's writer, reader)."""
    path = str(tmp_path / "out")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    io = ProcessIO("", path, "")
    io.open()
    w = os.dup(io.runc_fds()[1])
    io.start()
    return io, w, r


def test_output_ends_once_the_client_has_read_its_fifo(tmp_path):
    # The exit event waits (wait_copied) until the client has read what the
    # copy left in its FIFO: containerd 1.6's client closes its FIFOs when
    # it deletes the task, before reading them to the end, and lost the
    # output's tail on a loaded node. (Before: done once the copy had
    # written it, unread.)
    io, w, r = _fifo_output(tmp_path)
    try:
        os.write(w, b"tail")
        os.close(w)
        assert run(io.wait_copied(0.3)) is False
        assert read_fifo(r, b"tail") == b"tail"
        assert run(io.wait_copied(2)) is True
        assert os.read(r, 16) == b""        # EOF: nothing of ours holds it open
    finally:
        io.close()
        os.close(r)


def test_output_ends_at_once_when_nobody_reads_its_fifo(tmp_path):
    io, w, _ = _fifo_output(tmp_path, reader=False)
    try:
        os.write(w, b"lost on any shim")
        os.close(w)
        t0 = time.monotonic()
        assert run(io.wait_copied(2)) is True
        assert time.monotonic() - t0 < 0.5
    finally:
        io.close()


def test_output_waits_for_a_reader_that_does_not_read_only_so_long(tmp_path, monkeypatch):
    from shim import io as shim_io
    monkeypatch.setattr(shim_io, "FIFO_READ_BOUND", 0.2)
    io, w, r = _fifo_output(tmp_path)
    try:
        os.write(w, b"late")
        os.close(w)
        t0 = time.monotonic()
        assert run(io.wait_copied(5)) is True
        assert 0.15 < time.monotonic() - t0 < 2
        assert read_fifo(r, b"late") == b"late"     # still there for it
        assert os.read(r, 16) == b""
    finally:
        io.close()
        os.close(r)


def test_pipe_unread_counts_bytes_or_says_no_reader():
    r, w = os.pipe()
    try:
        assert _native.pipe_unread(w) == 0
        os.write(w, b"12345")
        assert _native.pipe_unread(w) == 5
        os.close(r)
        r = -1
        assert _native.pipe_unread(w) == -1
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


# ---- output pipes and file:// targets ---------------------------------------

F_GETPIPE_SZ = 1032


def test_spliced_output_pipes_get_a_bigger_buffer(tmp_path, monkeypatch):
    from shim import io as shim_io
    monkeypatch.setattr(shim_io, "_pipe_size", None)
    limit = int(open("/proc/sys/fs/pipe-max-size").read())
    p = ProcessIO("", "file:///dev/null", "")
    p.open()
    try:
        fds = p.runc_fds()
        assert fcntl.fcntl(fds[1], F_GETPIPE_SZ) == min(shim_io.PIPE_SIZE, limit) \
            == shim_io.output_pipe_size()
        assert fcntl.fcntl(fds[2], F_GETPIPE_SZ) == shim_io.output_pipe_size()
    finally:
        p.close()
    # A regular log file is copied through a buffer: default pipes.
    p = ProcessIO("", "file://%s" % (tmp_path / "log"), "")
    p.open()
    try:
        assert [fcntl.fcntl(fd, F_GETPIPE_SZ) for fd in p.runc_fds()[1:]] == [65536, 65536]
    finally:
        p.close()
    # fs.pipe-max-size below PIPE_SIZE bounds it.
    lim = tmp_path / "pipe-max-size"
    lim.write_text("131072\n")
    monkeypatch.setattr(shim_io, "PIPE_MAX_SIZE_PATH", str(lim))
    monkeypatch.setattr(shim_io, "_pipe_size", None)
    p = ProcessIO("", "file:///dev/null", "")
    p.open()
    try:
        assert fcntl.fcntl(p.runc_fds()[1], F_GETPIPE_SZ) == 131072
    finally:
        p.close()


def _copy_through(p, data):
    """Write data as the container's stdout, then EOF on both outputs.
    Returns the copies and the file status flags of their destinations."""
    p.open()
    fds = p.runc_fds()
    w1, w2 = os.dup(fds[1]), os.dup(fds[2])
    p.start()

    async def container():
        view = memoryview(data)
        os.set_blocking(w1, False)
        while view:
            try:
                view = view[os.write(w1, view[:1 << 20]):]
            except BlockingIOError:
                await sleep(0.001)
        os.close(w1)
        os.close(w2)
        return await p.wait_copied(10)
    copies = list(p.active)
    flags = [fcntl.fcntl(c.dst, fcntl.F_GETFL) for c in copies]
    assert run(container()) is True
    return copies, flags


def test_file_uri_to_a_device_is_spliced_not_copied():
    # file:///dev/null (discarding output): opened without O_APPEND, which
    # means nothing for a device, so splice(2) moves the bytes.
    p = ProcessIO("", "file:///dev/null", "")
    try:
        copies, flags = _copy_through(p, b"x" * (3 << 20))
        assert [c.copied for c in copies] == [3 << 20, 0]
        assert not any(c.buffered for c in copies)
        assert not any(f & os.O_APPEND for f in flags)
    finally:
        p.close()


def test_file_uri_to_a_regular_file_still_appends(tmp_path):
    out = tmp_path / "log"
    out.write_bytes(b"before\n")
    p = ProcessIO("", "file://%s" % out, "")
    data = os.urandom((2 << 20) + 5)
    try:
        copies, flags = _copy_through(p, data)
        assert copies[0].buffered          # splice refuses O_APPEND targets
        assert all(f & os.O_APPEND for f in flags)
    finally:
        p.close()
    assert out.read_bytes() == b"before\n" + data
