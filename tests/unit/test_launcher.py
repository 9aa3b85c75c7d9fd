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


# ---- start: a live shim of the group answers itself ---------------------------

def _listen(path):
    import socket
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def _start(exe, bundle, args, stdin=b"", prefix=()):
    env = dict(os.environ, PYSHIM_TEMPLATE="0")     # never spawn a template here
    if exe == "alone":
        # The native launcher with no Python to exec (no pyshim-launcher or
        # python3 beside it, none on PATH): only what it answers itself.
        exe = str(bundle.parent / "alone" / "containerd-shim-pyshim-v1")
        if not os.path.exists(exe):
            os.makedirs(os.path.dirname(exe))
            import shutil
            shutil.copy2(BINARY, exe)
        env["PATH"] = "/nonexistent"
    return subprocess.run(list(prefix) + [exe] + args + ["start"], input=stdin,
                          capture_output=True, timeout=60, cwd=str(bundle), env=env)


def _live_group(tmp_path, spec, ns="ns-launcher", id="c1", socket_dir=None):
    """A bundle with config.json = spec, and a listener on the socket the
    group's shim would have (the shim of an address unique to this test)."""
    from shim.manager import group_key
    from shim.sockets import socket_path
    import json
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    address = "/run/pyshim-launcher-test-%d/%s/c.sock" % (os.getpid(), tmp_path.name)
    group = group_key(json.loads(spec) if isinstance(spec, str) else spec, id)
    path = socket_path(address, ns, group, socket_dir or "/run/containerd/s")
    return bundle, ["-namespace", ns, "-address", address, "-publish-binary", "containerd",
                    "-id", id], path


ANN = {"io.containerd.runc.v2.group": "grp", "io.kubernetes.cri.sandbox-id": "sbx"}


@pytest.mark.parametrize("spec", [
    {"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.sandbox-id": "sbx-1"}},
    {"annotations": ANN},                                    # the group annotation first
    {"annotations": {"io.containerd.runc.v2.group": 7,       # not a string: the next one
                     "io.kubernetes.cri.sandbox-id": "sbx"}},
    {"process": {"args": ["sleep", "1"]}, "annotations": {}},       # no group: the id
    '{"annotations": {"io.kubernetes.cri.sandbox-id": "first"},'
    ' "annotations": {"io.kubernetes.cri.sandbox-id": "last"}}',    # the last one counts
    '{"annot\\u0061tions": {"io.kubernetes.cri.sandbox-id": "caf\\u00e9\\/\\ud83d\\ude00"},'
    ' "n": [1, -2.5e3, true, false, null, {"a": []}]}',            # escapes, every value type
    {"annotations": {"io.kubernetes.cri.sandbox-id": "x" * 300}},
])
def test_start_in_a_live_group_as_python(tmp_path, spec):
    bundle, args, path = _live_group(tmp_path, spec)
    with _listen(path):
        try:
            out = {}
            for name, exe in (("native", "alone"), ("python", PY_LAUNCHER)):
                r = _start(exe, bundle, args)
                address = (bundle / "address").read_bytes()
                (bundle / "address").unlink()
                out[name] = (r.returncode, r.stdout, r.stderr, address)
            assert out["native"] == out["python"] == (0, b"unix://" + path.encode(), b"",
                                                      b"unix://" + path.encode())
        finally:
            os.unlink(path)


def test_start_in_a_live_group_stdin(tmp_path):
    """Runtime options (an Any) on stdin, and containerd 2.3's
    BootstrapParams with a socket dir: BootstrapResult, byte for byte."""
    from shim.pb import bootstrap, runc, wkt
    opts = wkt.Any(type_url="containerd.runc.v1.Options",
                   value=runc.Options(binary_name="runc").encode())
    bundle, args, path = _live_group(tmp_path, {"annotations": ANN})
    with _listen(path):
        try:
            for stdin in (opts.encode(), b""):
                rs = [_start(exe, bundle, args, stdin) for exe in ("alone", PY_LAUNCHER)]
                assert [(r.returncode, r.stdout) for r in rs] == \
                    [(0, b"unix://" + path.encode())] * 2, rs
        finally:
            os.unlink(path)
    import shutil
    import tempfile
    sdir = tempfile.mkdtemp(prefix="pst-", dir="/run")     # short: sun_path
    try:
        bundle, args, path = _live_group(tmp_path, {"annotations": ANN}, socket_dir=sdir)
        bp = bootstrap.BootstrapParams(instance_id="c1", namespace="ns-launcher",
                                       socket_dir=sdir + "/",
                                       containerd_ttrpc_address="/x.ttrpc",
                                       extensions=[bootstrap.Extension(value=opts)])
        with _listen(path):
            rs = [_start(exe, bundle, args, bp.encode()) for exe in ("alone", PY_LAUNCHER)]
    finally:
        shutil.rmtree(sdir)
    assert rs[0].stdout == rs[1].stdout, rs
    res = bootstrap.BootstrapResult.decode(rs[0].stdout)
    assert (rs[0].returncode, res.version, res.address, res.protocol) == \
        (0, 3, "unix://" + path, "ttrpc")


@pytest.mark.parametrize("spec,stdin", [
    ('{"annotations": ', b""),                           # not JSON
    ('{"annotations": {}} x', b""),                      # extra data
    ({"annotations": ANN}, b"\x0a\x05ab"),               # truncated protobuf
])
def test_start_odd_input_left_to_python(tmp_path, spec, stdin):
    """What the native launcher does not read as Python does reaches
    Python, stdin unread: both answer alike (here: the same error)."""
    bundle, args, path = _live_group(tmp_path, spec if isinstance(spec, dict) else
                                     {"annotations": ANN})
    (bundle / "config.json").write_text(spec if isinstance(spec, str) else
                                        __import__("json").dumps(spec))
    with _listen(path):
        try:
            rs = [_start(exe, bundle, args, stdin) for exe in (BINARY, PY_LAUNCHER, "alone")]
        finally:
            os.unlink(path)
    assert rs[2].returncode == 127 and b"no python3" in rs[2].stderr     # not answered natively
    assert rs[0].returncode == rs[1].returncode == 1, rs
    assert rs[0].stderr == rs[1].stderr and rs[0].stderr, rs
    assert rs[0].stdout == rs[1].stdout == b""


SYNC_CALLS = ("fsync", "fdatasync", "sync", "syncfs", "sync_file_range")


def test_start_waits_for_no_disk(tmp_path):
    """`start` writes <bundle>/address without O_SYNC and syncs nothing
    (the Go shim's O_SYNC made every start wait for a journal commit where
    the bundle is on disk, 20-180 ms beside an fsync-heavy writer; the file
    names a live process's socket, which no machine crash leaves behind)."""
    import shutil
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    bundle, args, path = _live_group(tmp_path, {"annotations": ANN})
    log = tmp_path / "trace"
    with _listen(path):
        try:
            for exe in ("alone", PY_LAUNCHER):
                trace = [strace, "-f", "-qq", "-o", str(log),
                         "-e", "trace=open,openat," + ",".join(SYNC_CALLS)]
                r = _start(exe, bundle, args, prefix=trace)
                assert (r.returncode, r.stdout) == (0, b"unix://" + path.encode()), r
                lines = log.read_text().splitlines()
                assert [ln for ln in lines if ".address" in ln], lines      # traced
                assert [ln for ln in lines if "O_SYNC" in ln or "O_DSYNC" in ln
                        or ln.split(None, 1)[-1].startswith(SYNC_CALLS)] == [], exe
                (bundle / "address").unlink()
        finally:
            os.unlink(path)
