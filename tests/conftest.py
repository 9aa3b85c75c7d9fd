"""Shared fixtures. Integration tests run against a private containerd.

Fixtures (see tests/support/containerd.py for the Containerd API):

  containerd     session: a running private containerd (own root, state,
                 socket, namespace). Skipped when not root or containerd/ctr/
                 runc are missing (fails instead when CI is set). At session
                 end all containers are removed and the session errors if a
                 shim process, runc container, mount or cgroup is left over.
  fresh_containerd  function: a separate private containerd for tests that
                 need to stop/kill/restart it destructively.
  image          session: ref of the offline busybox image, imported.
  cid            function: a unique container id; the container (and its
                 task) is removed after the test if it still exists.
  make_cid       function: factory for more ids, all removed after the test.
  ctr_run        function: run(*cmd, runtime=..., ...) -> CompletedProcess
                 wrapper for `ctr run` (see below).
  runtime        parametrized over both runtimes (ids "go" and "py"), for
                 tests that must behave identically on the Go shim and pyshim.
  pyshim_binary  path of the installed containerd-shim-pyshim-v1 (fails if
                 `pip install .` was not done).
  sleeper        function: a running detached `sleep 3600` container on
                 `runtime` (so parametrized go/py); its id. Killed after.

Tests under tests/integration/ are marked `integration` automatically.

Runtime and cgroup driver (tests/support/cgroup.py): PYSHIM_TEST_RUNC=runc|crun
(default runc) and PYSHIM_TEST_CGROUP_DRIVER=cgroupfs|systemd (default
cgroupfs) choose BinaryName and SystemdCgroup of the runc options that the
CRI handlers, ctr_run (and so sleeper) and test_runc_driver's Runc use, with
systemd cgroup paths (`slice:prefix:id`) under the systemd driver. Tests that
read cgroup files branch on the host: cgroup v2 when
/sys/fs/cgroup/cgroup.controllers exists, else v1 / hybrid.
"""
import itertools
import os
import re
import shutil
import time
import warnings

import pytest

from support.cgroup import RUNC_ENV, runc_name
from support.containerd import (GO_RUNTIME, PY_RUNTIME, SHIM_SOCKET_DIR, Containerd,
                                find_pyshim_binary)

_ids = itertools.count(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = str(getattr(item, "path", getattr(item, "fspath", ""))).split(os.sep)
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing test that used a private containerd shows the end of its log
    # (shim logs end up there too, through the bundle's `log` FIFO).
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("call", "setup"):
        # fresh_containerd and containerd, and a module's own (e.g. criu_containerd).
        for name, c in sorted(getattr(item, "funcargs", {}).items()):
            if isinstance(c, Containerd):
                rep.sections.append(("%s log (%s, last 40 lines)" % (name, c.log_path),
                                     c.log_text(tail=40)))


def _unavailable():
    if os.geteuid() != 0:
        return "integration tests need root (they start a private containerd)"
    for b in ("containerd", "ctr", "runc"):
        if shutil.which(b) is None:
            return "%s not found on PATH (apt-get install containerd runc)" % b
    if shutil.which(runc_name()) is None:
        return "%s=%s not found" % (RUNC_ENV, runc_name())
    if not os.path.exists("/bin/busybox"):
        return "/bin/busybox missing (apt-get install busybox-static)"
    return None


def _skip_or_fail(reason):
    # On CI a silently skipped integration suite would look green: fail.
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _new_containerd():
    reason = _unavailable()
    if reason:
        _skip_or_fail(reason)
    c = Containerd()
    try:
        c.start()
    except Exception:
        c.cleanup()
        raise
    return c


def _finish(c):
    problems = c.cleanup()
    if problems:
        pytest.fail("private containerd %s left things behind (cleaned up now):\n  %s"
                    % (c.namespace, "\n  ".join(problems)), pytrace=False)


@pytest.fixture
def busy_cpus():
    """Two busy loops per CPU for the test's duration (killed by PID after)."""
    import subprocess
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
             for _ in range(2 * (os.cpu_count() or 1))]
    yield
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture(scope="session", autouse=True)
def _end_templates():
    """Templates (shim/template.py) that this session's starts spawned are
    ended (by PID) at its end, and their socket removed; one that was
    running before the session is left alone."""
    try:
        from support import template
        before = set(template.pids())
    except Exception:   # no installed build (unit tests of a source tree)
        yield
        return
    yield
    for pid in set(template.pids()) - before:
        template.end(pid)


@pytest.fixture(autouse=True)
def _shim_sockets_left(request):
    """A shim socket that appeared in /run/containerd/s during a test and
    that nothing listens on a moment after it (its shim was killed, or
    forgot it: the Go shim of 2.1.9 does in test_exec's paused-state test)
    is said as a warning naming the test, then removed."""
    try:
        from shim.sockets import can_connect
        before = set(os.listdir(SHIM_SOCKET_DIR))
    except (ImportError, OSError):      # no installed build, or no shim ran yet
        yield
        return
    yield
    dead = [os.path.join(SHIM_SOCKET_DIR, n) for n in set(os.listdir(SHIM_SOCKET_DIR)) - before]
    deadline = time.monotonic() + 2.0   # a shim that is exiting removes its own
    while True:
        dead = [p for p in dead if os.path.exists(p) and not can_connect(p)]
        if not dead or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in dead:
        warnings.warn("%s: dead shim socket left: %s (removed)" % (request.node.nodeid, p),
                      stacklevel=2)
        try:
            os.unlink(p)
        except OSError:
            pass


@pytest.fixture(scope="session")
def containerd():
    c = _new_containerd()
    yield c
    _finish(c)


@pytest.fixture
def fresh_containerd():
    c = _new_containerd()
    yield c
    _finish(c)


@pytest.fixture(scope="session")
def image(containerd):
    return containerd.import_image()


@pytest.fixture(scope="session")
def pyshim_binary():
    p = find_pyshim_binary()
    if p is None:
        pytest.fail("containerd-shim-pyshim-v1 is not installed: run `pip install .` "
                    "(tests use the installed package)", pytrace=False)
    return p


@pytest.fixture(params=[GO_RUNTIME, PY_RUNTIME], ids=["go", "py"])
def runtime(request):
    if request.param == PY_RUNTIME:
        request.getfixturevalue("pyshim_binary")
    return request.param


@pytest.fixture
def make_cid(request):
    """make_cid() -> new unique container id. After the test, each id that
    still exists as a container in the test's containerd (session or fresh)
    is removed (task killed and deleted, container deleted)."""
    made = []
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40].strip("-")

    def make():
        id = "t%d-%s" % (next(_ids), base or "c")
        made.append(id)
        return id

    yield make
    if not made:
        return
    for name in ("containerd", "fresh_containerd"):
        if name not in request.fixturenames:
            continue
        try:
            c = request.getfixturevalue(name)
        except Exception:
            continue
        if not c.running():
            continue
        existing = set(c.containers())
        for id in made:
            if id in existing:
                c.remove_container(id)


@pytest.fixture
def cid(make_cid):
    return make_cid()


@pytest.fixture
def ctr_run(containerd, image, make_cid):
    """run(*cmd, runtime=GO_RUNTIME, id=None, detach=False, rm=None, args=(),
           input=None, check=False, timeout=60, image=None, namespace=None)

    Runs `ctr run [--rm] [-d] --runtime RUNTIME *run_args *args IMAGE ID *cmd`
    against the session containerd (run_args: containerd.run_args(), for
    PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER) and returns the
    CompletedProcess (text stdout and stderr kept separate, as ctr without -t
    does) with `.id` set. rm defaults
    to `not detach`. id defaults to a fresh make_cid() id (cleaned up after
    the test)."""

    def run(*cmd, runtime=GO_RUNTIME, id=None, detach=False, rm=None, args=(), input=None,
            check=False, timeout=60, image=image, namespace=None):
        if id is None:
            id = make_cid()
        if rm is None:
            rm = not detach
        argv = ["run"]
        if rm:
            argv.append("--rm")
        if detach:
            argv.append("-d")
        argv += ["--runtime", runtime]
        argv += containerd.run_args(runtime, id)
        argv += list(args)
        argv += [image, id]
        argv += list(cmd)
        r = containerd.ctr(*argv, check=check, input=input, timeout=timeout,
                           namespace=namespace)
        r.id = id
        return r

    return run


@pytest.fixture
def sleeper(containerd, ctr_run, cid, runtime):
    """A running detached container (`sleep 3600`) on `runtime`; its id."""
    from support.helpers import wait_status
    ctr_run("sleep", "3600", runtime=runtime, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    yield cid
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    wait_status(containerd, cid, "STOPPED")
