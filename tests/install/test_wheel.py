"""Installing on many nodes: a wheel built once (`pip wheel .`) installs on
a machine with no compiler and runs containers (docs/kubernetes.md §1).

Built from the source tree these tests belong to, installed into a fresh
virtual environment (no system site-packages) with no compiler reachable,
then used by a private containerd for a real container."""
import os
import shutil
import subprocess
import sys

import pytest

from support import template
from support.containerd import PY_RUNTIME, Containerd
from support.helpers import wait_status

pytestmark = pytest.mark.integration

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not os.path.exists(os.path.join(SRC, "setup.py")):
        pytest.skip("not run from a source tree")
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        SRC], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return os.path.join(out, wheels[0])


def test_wheel_installs_without_compiler_and_runs_a_container(wheel, tmp_path):
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    # The compiled extension and the generated message code are in the wheel.
    assert any(n.startswith("shim/_native") and n.endswith(".so") for n in names), names
    assert "shim/pb/task.py" in names, names
    # The native launcher, compiled at build time, and the Python one.
    scripts = {n.rsplit("/", 1)[1]: n for n in names if "/scripts/" in n}
    assert set(scripts) >= {"containerd-shim-pyshim-v1", "pyshim-launcher"}, names
    assert zipfile.ZipFile(wheel).read(scripts["containerd-shim-pyshim-v1"])[:4] == b"\x7fELF"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = str(venv / "bin")
    # No compiler on PATH and none named: only the venv's own programs.
    env = {"PATH": bin_dir, "CC": "/nonexistent/cc", "HOME": str(tmp_path),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run([os.path.join(bin_dir, "python"), "-m", "pip", "install", "--no-index",
                        "-q", wheel], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    shim = os.path.join(bin_dir, "containerd-shim-pyshim-v1")
    r = subprocess.run([shim, "-v"], stdout=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0 and "containerd-shim-pyshim-v1" in r.stdout, r.stdout

    # containerd finds the venv's shim first on its PATH.
    c = Containerd(extra_path=[bin_dir])
    try:
        c.start()
        image = c.import_image()
        r = c.ctr("run", "--rm", "--runtime", PY_RUNTIME, image, "wheel1", "echo", "from wheel",
                  check=False)
        assert (r.returncode, r.stdout) == (0, "from wheel\n"), r.stderr
        c.ctr("run", "-d", "--runtime", PY_RUNTIME, image, "wheel2", "sleep", "60")
        assert wait_status(c, "wheel2", "RUNNING") == "RUNNING"
        serving = c.shims(id="wheel2")
        assert serving and all(any(a.startswith(bin_dir) for a in argv)
                               for _pid, argv in serving), serving
        # ... and runs the wheel's code: its native module is mapped from the venv.
        for pid, _argv in serving:
            with open("/proc/%d/maps" % pid) as f:
                native = {line.split()[-1] for line in f if "/shim/_native" in line}
            assert native and all(m.startswith(str(venv)) for m in native), native
    finally:
        problems = c.cleanup()
        # The template process this install's starts spawned (its build is
        # the wheel's, not the suite's): ended here, by PID.
        build = _build_id(venv)
        for pid in (template.pids(build) if build else ()):
            template.end(pid, build)
    assert not problems, problems
    shutil.rmtree(venv, ignore_errors=True)


def _build_id(venv):
    import glob
    for path in glob.glob(str(venv / "lib" / "python*" / "site-packages" / "shim" / "_build.py")):
        with open(path) as f:
            for line in f:
                if line.startswith("BUILD_ID = "):
                    return line.split("=", 1)[1].strip().strip("'\"")
    return ""
