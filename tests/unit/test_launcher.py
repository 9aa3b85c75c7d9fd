"""The native launcher (_native/launcher.c), installed as
containerd-shim-pyshim-v1 next to the Python launcher `pyshim-launcher`:
what it does itself (the `delete` fast path) matches the Python action,
and everything else reaches the Python launcher."""
import os
import subprocess
import time

import pytest

from shim.pb import task
from support.containerd import find_pyshim_binary

BINARY = find_pyshim_binary()


def _is_native(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


pytestmark = pytest.mark.skipif(BINARY is None or not _is_native(BINARY),
                                reason="the native launcher is not installed")
PY_LAUNCHER = os.path.join(os.path.dirname(BINARY or ""), "pyshim-launcher")


def _run(binary, args, cwd=None):
    return subprocess.run([binary] + args, capture_output=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def _dead_socket(path):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()          # the file stays: what a killed shim leaves


def _bundle(tmp_path, name, deleted=True, pid=b"4242\n"):
    b = tmp_path / name
    b.mkdir()
    (b / "rootfs").mkdir()
    if deleted:
        (b / ".pyshim-deleted").write_bytes(b"")
    if pid is not None:
        (b / "init.pid").write_bytes(pid)
    sock = str(tmp_path / ("s-" + name))
    _dead_socket(sock)
    (b / "address").write_text("unix://" + sock)
    return b, sock


@pytest.mark.parametrize("binary", ["native", "python"])
def test_delete_fast_path_as_python(tmp_path, binary):
    exe = BINARY if binary == "native" else PY_LAUNCHER
    b, sock = _bundle(tmp_path, "c1")
    before = time.time()
    r = _run(exe, ["-namespace", "ns", "-id", "c1", "-bundle", str(b), "delete"])
    assert (r.returncode, r.stderr) == (0, b"")
    m = task.DeleteResponse.decode(r.stdout)
    assert (m.pid, m.exit_status) == (4242, 137)
    at = m.exited_at.seconds + m.exited_at.nanos / 1e9
    assert before - 1 <= at <= time.time() + 1
    assert not os.path.exists(sock)             # a dead shim's socket is removed


def test_delete_bundle_from_cwd(tmp_path):
    b, _ = _bundle(tmp_path, "c2")
    r = _run(BINARY, ["-namespace", "ns", "-id", "c2", "delete"], cwd=str(b))
    assert r.returncode == 0
    assert task.DeleteResponse.decode(r.stdout).pid == 4242


@pytest.mark.parametrize("deleted,pid", [(False, b"4242"), (True, None), (True, b"junk")])
def test_delete_otherwise_through_python(tmp_path, deleted, pid):
    # No mark (runc delete still to do), or no/odd init.pid: the Python
    # action runs, with its warnings.
    b, _ = _bundle(tmp_path, "c3", deleted=deleted, pid=pid)
    r = _run(BINARY, ["-namespace", "ns", "-id", "c3", "-bundle", str(b), "delete"])
    assert r.returncode == 0
    assert b"level=warning" in r.stderr
    assert task.DeleteResponse.decode(r.stdout).exit_status == 137


def test_other_modes_reach_python():
    r = _run(BINARY, ["-v"])
    assert r.returncode == 0 and r.stdout.startswith(b"containerd-shim-pyshim-v1:")
    r = _run(BINARY, ["-id", "x", "start"])            # no namespace: Python's error
    assert r.returncode == 1 and b"shim namespace cannot be empty" in r.stderr
    r = _run(BINARY, ["-namespace", "n", "bogus"])
    assert r.returncode == 1 and b"unknown action" in r.stderr
