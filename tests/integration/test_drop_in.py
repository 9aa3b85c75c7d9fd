"""Drop-in install (docs/drop-in.md): pyshim installed as
containerd-shim-runc-v2 and containerd-shim-runc-v1 in a directory that comes
first on containerd's PATH. Then every client that asks for the stock runc
runtimes gets pyshim, with the options they send unchanged."""
import os

import pytest

from support.containerd import Containerd, shim_processes, wait_pids_gone
from support.helpers import wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def dropin(tmp_path, pyshim_binary):
    """A private containerd whose PATH starts with a dir holding the
    drop-in symlinks, exactly as the docs install them."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("containerd-shim-runc-v2", "containerd-shim-runc-v1"):
        os.symlink(pyshim_binary, str(bindir / name))
    # A python3 beside the links that is not pyshim's interpreter (think of
    # /usr/local/bin/python3 of another install): the launcher must look
    # for its interpreter next to the real script, not next to the link.
    decoy = bindir / "python3"
    decoy.write_text("#!/bin/sh\necho wrong python >&2\nexit 99\n")
    decoy.chmod(0o755)
    c = Containerd(extra_path=[str(bindir)])
    try:
        c.start()
        c.image = c.import_image()
        yield c
    finally:
        problems = c.cleanup()
    assert not problems, problems


def is_pyshim(pid):
    exe = os.readlink("/proc/%d/exe" % pid)
    return "python" in os.path.basename(exe)


@pytest.mark.parametrize("runtime,args", [
    ("io.containerd.runc.v2", []),
    # ctr sends containerd.runc.v1.Options with BinaryName for this one.
    ("io.containerd.runc.v2", ["--runc-binary", "runc"]),
    # the v1 name: containerd-shim-runc-v1, legacy options
    ("io.containerd.runc.v1", ["--no-pivot"]),
])
def test_stock_runtime_names_run_pyshim(dropin, runtime, args):
    c = dropin
    id = "dropin-%d" % len(args)
    c.ctr("run", "-d", "--runtime", runtime, *args, c.image, id, "sleep", "60")
    try:
        assert wait_status(c, id, "RUNNING") == "RUNNING"
        shims = c.shims(id=id)
        assert len(shims) == 1, shims
        pid, argv = shims[0]
        assert is_pyshim(pid), (pid, argv)
        r = c.ctr("task", "exec", "--exec-id", "e", id, "sh", "-c", "echo from-exec; exit 3",
                  check=False)
        assert (r.stdout, r.returncode) == ("from-exec\n", 3)
    finally:
        c.remove_container(id)
    r = c.ctr("run", "--rm", "--runtime", runtime, *args, c.image, id + "x",
              "sh", "-c", "echo out; echo err >&2; exit 5", check=False)
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 5)
    # The shim exits once it has answered Shutdown; ctr may return first
    # (the native launcher's `delete` action no longer takes ~0.1 s).
    assert wait_pids_gone([p for p, _ in shim_processes(namespace=c.namespace)], 10.0) == []


def test_crun_through_binary_name(dropin, containerd, image, make_cid):
    """Options.BinaryName = crun: pyshim runs crun. On this hybrid cgroup
    host crun refuses every container ("cgroups in hybrid mode not
    supported"), under the Go shim as well: then both must fail alike; where
    crun works, the output must come through."""
    import shutil
    if shutil.which("crun") is None:
        pytest.skip("crun not installed (apt-get install crun)")
    py = dropin.ctr("run", "--rm", "--runc-binary", "crun", dropin.image, "crun-py",
                    "sh", "-c", "echo via-crun", check=False)
    go = containerd.ctr("run", "--rm", "--runtime", "io.containerd.runc.v2",
                        "--runc-binary", "crun", image, make_cid(),
                        "sh", "-c", "echo via-crun", check=False)
    if go.returncode == 0:
        assert (py.returncode, py.stdout) == (0, "via-crun\n"), py.stderr
    else:
        assert py.returncode != 0
        assert "OCI runtime create failed: " in py.stderr
        want = go.stderr.split("OCI runtime create failed: ", 1)[1].strip()
        assert want in py.stderr, (py.stderr, go.stderr)
    dropin.ctr("container", "rm", "crun-py", check=False)
