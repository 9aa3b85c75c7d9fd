"""The native poller, copier, spawn and signalfd, and the Python loop on top."""
import hashlib
import os
import time

import pytest

from shim import _native
from shim.loop import Future, get_loop, sleep, wait_for
from shim.reaper import Reaper, exit_code
from support.helpers import tracer_pid

loop = get_loop()


def run(coro, timeout=20):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


@pytest.fixture(scope="module")
def reaper():
    # Not a subreaper: the test runner must keep its normal parentage.
    return Reaper(loop, subreaper=False)


def spawn_sh(script, fds):
    return _native.spawn("sh", ["sh", "-c", script], [b"PATH=/usr/bin:/bin"], fds)


def test_spawn_exit_status_and_signal(reaper):
    async def go():
        a = reaper.watch(spawn_sh("exit 7", [None, None, None]))
        b = reaper.watch(spawn_sh("kill -TERM $$", [None, None, None]))
        return await a, await b
    assert run(go()) == (7, 143)


def test_spawn_missing_binary_raises():
    with pytest.raises(OSError) as e:
        _native.spawn("/nonexistent/bin", ["x"], [], [None, None, None])
    assert e.value.errno == 2


def test_spawn_fd_map_and_env(reaper):
    r, w = os.pipe()
    pid = spawn_sh('echo "$FOO" >&3; echo out', [None, w, None, w])
    # fd 3 in the child is our w as well; env is exactly what we passed.
    os.close(w)
    st = run(_await(reaper.watch(pid)))
    data = os.read(r, 100)
    os.close(r)
    assert st == 0
    assert sorted(data.split()) == [b"out"]


async def _await(f):
    return await f


def child_status(reaper, field):
    """`field` of /proc/self/status in a spawned child (hex bytes)."""
    r, w = os.pipe()
    pid = spawn_sh("grep %s /proc/self/status" % field, [None, w, None])
    os.close(w)
    run(_await(reaper.watch(pid)))
    line = os.read(r, 200)
    os.close(r)
    return line.split()[1]


def test_spawn_child_has_clean_signal_mask(reaper):
    # The loop blocks SIGCHLD for its signalfd; children must not inherit it.
    assert child_status(reaper, "SigBlk") == b"0000000000000000"


def test_spawn_keeps_the_parents_mask_and_handlers(reaper):
    """spawn vforks: the signals it blocks around vfork are unblocked again
    in the parent, its handlers stay; the child keeps ignoring what the
    parent ignores (as after fork+exec), SIGPIPE aside (default)."""
    import signal
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handler = signal.signal(signal.SIGUSR2, lambda *a: None)
    ignored = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        ign = int(child_status(reaper, "SigIgn"), 16)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == blocked
        assert signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL
        assert ign & (1 << (signal.SIGHUP - 1))
        assert not ign & (1 << (signal.SIGPIPE - 1))
    finally:
        signal.signal(signal.SIGUSR2, handler)
        signal.signal(signal.SIGHUP, ignored)


F_GETPIPE_SZ = 1032


def test_set_pipe_size_grows_or_leaves_the_pipe_as_it_was():
    r, w = os.pipe()
    try:
        assert _native.set_pipe_size(r, 1 << 20) == 1 << 20
        import fcntl
        assert fcntl.fcntl(w, F_GETPIPE_SZ) == 1 << 20
        # A size the kernel refuses (over 2 GiB: EINVAL here; EPERM over
        # fs.pipe-max-size without CAP_SYS_RESOURCE) keeps the size it had.
        assert _native.set_pipe_size(r, -1) == 1 << 20
        assert fcntl.fcntl(w, F_GETPIPE_SZ) == 1 << 20
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("pipe_size", [0, 1 << 20])
@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 1024 * 1024 + 3])
def test_copy_pipe_to_pipe_exact(size, pipe_size):
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    if pipe_size:
        _native.set_pipe_size(src_r, pipe_size)   # as io.py does for outputs
    payload = os.urandom(size)
    done = Future()
    c = loop.add_copy(src_r, dst_w, done.set_result)
    os.set_blocking(dst_r, False)
    os.set_blocking(src_w, False)
    got = bytearray()

    def on_read():
        try:
            got.extend(os.read(dst_r, 1 << 16))
        except BlockingIOError:
            pass
    loop.add_reader(dst_r, on_read)

    async def writer():
        view = memoryview(payload)
        while view:
            try:
                view = view[os.write(src_w, view[:65536]):]
            except BlockingIOError:
                await sleep(0.0005)
        os.close(src_w)
        return await wait_for(done, 10)
    assert run(writer()) == 0
    while len(got) < c.copied:
        loop.run_once()
    loop.remove_reader(dst_r)
    for fd in (src_r, dst_r, dst_w):
        os.close(fd)
    assert c.copied == size
    assert bytes(got) == payload
    assert not c.buffered


def test_copy_large_with_slow_reader(reaper):
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    pid = spawn_sh("head -c 8388608 /dev/urandom", [None, src_w, None])
    os.close(src_w)
    reaper.watch(pid)
    done = Future()
    c = loop.add_copy(src_r, dst_w, done.set_result)
    os.set_blocking(dst_r, False)
    got = bytearray()

    def on_read():
        try:
            got.extend(os.read(dst_r, 4096))   # small reads: dst fills up
        except BlockingIOError:
            pass
    loop.add_reader(dst_r, on_read)
    run(wait_for(done, 20))
    while len(got) < c.copied:
        loop.run_once()
    loop.remove_reader(dst_r)
    for fd in (src_r, dst_r, dst_w):
        os.close(fd)
    assert done.result() == 0
    assert len(got) == c.copied == 8388608


# Run traced: the copy's ioctl(FIONREAD) returns 300 ms late (strace's
# delay injection), time in which the writer writes the rest and exits.
_LATE_WRITER = r"""
import os, sys
from shim import _native
from shim.loop import Future, get_loop, wait_for
loop = get_loop()
src_r, src_w = os.pipe()
dst_r, dst_w = os.pipe()
for fd in (src_r, dst_r):
    _native.set_pipe_size(fd, 1 << 20)      # as io.py: the writer never blocks
print(os.getpid(), flush=True)
sys.stdin.read(1)                           # strace is attached now
pid = _native.spawn("sh", ["sh", "-c", "printf A; sleep 0.1; head -c 99999 /dev/zero"],
                    [b"PATH=/usr/bin:/bin"], [None, src_w, None])
os.close(src_w)
done = Future()
c = loop.add_copy(src_r, dst_w, done.set_result)
err = loop.run_until_complete(loop.spawn(wait_for(done, 10)), timeout=20)
print(err, c.copied, flush=True)
"""


def test_copy_keeps_what_arrives_as_the_writer_hangs_up():
    # The race behind a lost tail of output on a loaded node: the source
    # pipe was empty (splice: EAGAIN, FIONREAD: 0), then the writer wrote
    # its last bytes and exited before the copy asked whether it had hung
    # up. A hung-up pipe still holding data is not the end of the copy
    # (before the fix: "0 1", the 99999 bytes lost).
    import shutil
    import subprocess
    import sys
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    # cwd /: the installed shim package, not a source tree's (no _native)
    helper = subprocess.Popen([sys.executable, "-c", _LATE_WRITER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd="/")
    tracer = None
    try:
        line = helper.stdout.readline()
        assert line.strip().isdigit(), helper.stderr.read() if helper.poll() is not None else line
        pid = int(line)
        tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-e", "trace=ioctl",
                                   "-e", "inject=ioctl:delay_exit=300000", "-p", str(pid)])
        deadline = time.monotonic() + 10
        while tracer_pid(pid) == 0:
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.01)
        out, err = helper.communicate("g", timeout=30)
    finally:
        for p in (helper, tracer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert out.split() == ["0", "100000"], (out, err)


def test_copy_to_a_device_that_cannot_be_polled(reaper):
    # splice(2) into /dev/null (opened without O_APPEND, as io.py does): a
    # splice that finds src empty, then data arriving before FIONREAD, looks
    # like a full dst, and /dev/null cannot be waited on (epoll_ctl: EPERM).
    # A fast writer of small blocks opens that window often (before the
    # fix, about one 64 MiB run in five failed).
    for _ in range(8):
        src_r, src_w = os.pipe()
        dst = os.open("/dev/null", os.O_WRONLY)
        pid = spawn_sh("dd if=/dev/zero bs=4096 count=16384 2>/dev/null", [None, src_w, None])
        os.close(src_w)
        exited = reaper.watch(pid)
        done = Future()
        c = loop.add_copy(src_r, dst, done.set_result)
        assert run(wait_for(done, 20)) == 0
        run(wait_for(exited, 20))
        os.close(src_r)
        os.close(dst)
        assert c.copied == 64 << 20 and not c.buffered


def test_copy_to_regular_file(tmp_path, reaper):
    src_r, src_w = os.pipe()
    path = tmp_path / "out"
    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    data = os.urandom(300000)
    done = Future()
    loop.add_copy(src_r, f, done.set_result)

    async def writer():
        view = memoryview(data)
        os.set_blocking(src_w, False)
        while view:
            try:
                n = os.write(src_w, view[:65536])
                view = view[n:]
            except BlockingIOError:
                await sleep(0.001)
        os.close(src_w)
        return await done
    assert run(writer()) == 0
    os.close(src_r)
    os.close(f)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_timers_order_and_cancel():
    seen = []
    loop.call_later(0.03, seen.append, 3)
    loop.call_later(0.01, seen.append, 1)
    h = loop.call_later(0.02, seen.append, 2)
    h.cancel()
    loop.run_until_complete(sleep(0.06), timeout=5)
    assert seen == [1, 3]


def test_wait_for_timeout():
    async def go():
        with pytest.raises(TimeoutError):
            await wait_for(Future(), 0.05)
        return await wait_for(sleep(0.01, "x"), 1)
    t0 = time.monotonic()
    assert run(go()) == "x"
    assert time.monotonic() - t0 < 2


def test_task_exception_propagates():
    async def boom():
        await sleep(0)
        raise ValueError("boom")

    async def go():
        with pytest.raises(ValueError):
            await loop.spawn(boom())
        return True
    assert run(go())


def test_exit_code_mapping():
    assert exit_code(7 << 8) == 7
    assert exit_code(9) == 137
    assert exit_code(15) == 143
