"""Names operators look for (issue 12, item 3): node tooling counts shims by
name (`pgrep -f containerd-shim-runc-v2`, `ps -C containerd-shim`, `pidof`).
A serving shim must show the name containerd ran it under, as the Go shim
does: /proc/PID/cmdline = that path and the serve flags, /proc/PID/comm =
its basename cut to 15 bytes. Checked for the Go shim (the reference),
pyshim by its own name, and pyshim installed as containerd-shim-runc-v2."""
import os
import subprocess

import pytest

from support.containerd import GO_RUNTIME, PY_RUNTIME, Containerd
from support.helpers import wait_status

pytestmark = pytest.mark.integration

COMM = "containerd-shim"        # what the kernel makes of either binary name


@pytest.fixture(scope="module")
def dropin(tmp_path_factory, pyshim_binary):
    """A private containerd whose PATH starts with pyshim installed as
    containerd-shim-runc-v2 (a symlink, as docs/drop-in.md installs it)."""
    bindir = tmp_path_factory.mktemp("dropin-bin")
    os.symlink(pyshim_binary, str(bindir / "containerd-shim-runc-v2"))
    c = Containerd(extra_path=[str(bindir)])
    try:
        c.start()
        c.image = c.import_image()
        yield c, str(bindir / "containerd-shim-runc-v2")
    finally:
        problems = c.cleanup()
    assert not problems, problems


def _serving_shim(c, id):
    shims = [(pid, argv) for pid, argv in c.shims(id=id) if argv[-1] not in ("start", "delete")]
    assert len(shims) == 1, shims
    return shims[0][0]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _pids(argv):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                       timeout=30)
    return {int(p) for p in r.stdout.split()}


def _check_names(c, id, binary):
    """The serving shim of `id` shows `binary` (a path, as containerd ran it
    for pyshim, the resolved executable for Go) and the serve flags."""
    pid = _serving_shim(c, id)
    raw = _read("/proc/%d/cmdline" % pid)
    assert raw.endswith(b"\0") and not raw.endswith(b"\0\0"), raw     # exact, as Go's
    argv = raw[:-1].decode().split("\0")
    assert argv[0] == binary, argv
    assert argv[1:7] == ["-namespace", c.namespace, "-id", id, "-address", c.address], argv
    assert argv[7:] in ([], ["-debug"]), argv
    assert _read("/proc/%d/comm" % pid) == (COMM + "\n").encode()
    name = os.path.basename(binary)
    assert pid in _pids(["pgrep", "-f", name])
    assert pid in _pids(["pgrep", "-x", COMM])
    assert pid in _pids(["ps", "-C", COMM, "-o", "pid="])
    assert pid in _pids(["pidof", name])
    return pid


def _run_detached(c, runtime, id, image):
    c.ctr("run", "-d", "--runtime", runtime, *c.run_args(runtime, id), image, id, "sleep", "60")
    assert wait_status(c, id, "RUNNING") == "RUNNING"


def test_go_shim_reference(containerd, image, make_cid):
    id = make_cid()
    _run_detached(containerd, GO_RUNTIME, id, image)
    pid = _serving_shim(containerd, id)
    # Go execs itself by os.Executable(): the resolved path of its binary.
    exe = os.readlink("/proc/%d/exe" % pid)
    assert os.path.basename(exe) == "containerd-shim-runc-v2"
    _check_names(containerd, id, exe)


def test_pyshim_own_name(containerd, image, make_cid, pyshim_binary):
    id = make_cid()
    _run_detached(containerd, PY_RUNTIME, id, image)
    pid = _check_names(containerd, id, pyshim_binary)
    # Still pyshim under the name: a Python interpreter runs it.
    assert "python" in os.path.basename(os.readlink("/proc/%d/exe" % pid))


def test_pyshim_drop_in_name(dropin):
    c, link = dropin
    id = "names-dropin"
    _run_detached(c, GO_RUNTIME, id, c.image)
    try:
        pid = _check_names(c, id, link)
        assert "python" in os.path.basename(os.readlink("/proc/%d/exe" % pid))
        # What node tooling runs: the shim is counted among runc-v2 shims.
        assert pid in _pids(["pgrep", "-f", "containerd-shim-runc-v2"])
    finally:
        c.remove_container(id)
