"""shim.runc against the real runc, and the installed binary's start/delete/
-info actions. Needs root, runc and a static /bin/busybox; no containerd.

Every container gets a unique id and a private runc --root under /run; all
containers, mounts, processes and directories are removed afterwards.
PYSHIM_TEST_CGROUP_DRIVER=systemd runs runc with --systemd-cgroup (its
default cgroupsPath is then system.slice:runc:<id>). The tests expect runc's
own messages, so PYSHIM_TEST_RUNC does not apply here."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from shim import errors, mount
from shim import bundle as bundle_files, runc as runc_mod
from shim.loop import get_loop, sleep
from shim.pb import task, types
from shim.reaper import Reaper
from shim.runc import Runc, RuncError
from shim.ttrpc import NOT_FOUND
from support.bundle import busybox_rootfs, write_bundle
from support.cgroup import is_v2, proc_cgroup, systemd_cgroup
from support.containerd import RUNC_ROOT_BASE, find_pyshim_binary, proc_argv

loop = get_loop()
NS = "pyshim-drv-%d" % os.getpid()


def _unavailable():
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("runc") is None:
        return "runc not found on PATH"
    if not os.path.exists("/bin/busybox"):
        return "/bin/busybox missing (apt-get install busybox-static)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def reaper():
    # A subreaper: a container's init is re-parented to us when runc exits.
    r = Reaper(loop, subreaper=True)
    r.exits = {}
    r.on_exit = lambda pid, status, when: r.exits.__setitem__(pid, status)
    yield r
    # Later tests' orphans (shims started by their containerd) must not
    # re-parent to this pytest process, where nobody reaps them.
    from shim import _native
    _native.set_child_subreaper(False)


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="pyshim-drv-", dir="/run")
    yield d
    shutil.rmtree(d, ignore_errors=True)
    # The delete action without options.json runs runc with the default
    # root, which runc creates (empty: it had nothing to delete).
    try:
        os.rmdir(os.path.join(RUNC_ROOT_BASE, NS))
    except FileNotFoundError:
        pass


@pytest.fixture(scope="module")
def rootfs(workdir):
    """A busybox rootfs shared (read-only) by the test bundles."""
    return busybox_rootfs(os.path.join(workdir, "rootfs"))


@pytest.fixture
def make_bundle(workdir, rootfs):
    """make(args) -> (id, bundle): a bundle whose rootfs is the shared busybox
    tree; the container is force-deleted after the test."""
    made = []

    def make(args, **process):
        cid = "drv-%s" % uuid.uuid4().hex[:12]
        bundle = os.path.join(workdir, cid)
        write_bundle(bundle, rootfs, args, **process)
        made.append((cid, bundle))
        return cid, bundle

    yield make
    for cid, bundle in made:
        subprocess.run(["runc", "--root", os.path.join(workdir, "runc", NS), "delete",
                        "--force", cid], capture_output=True, timeout=30)
        mount.unmount_all(os.path.join(bundle, "rootfs"))


@pytest.fixture
def runc(reaper, workdir):
    return Runc(reaper=reaper, namespace=NS, root=os.path.join(workdir, "runc"),
                systemd_cgroup=systemd_cgroup())


def run(coro, timeout=30):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


def wait_exit(reaper, pid, timeout=15):
    async def waiter():
        deadline = time.monotonic() + timeout
        while pid not in reaper.exits:
            if time.monotonic() > deadline:
                raise AssertionError("no exit for pid %d" % pid)
            await sleep(0.02)
        return reaper.exits.pop(pid)
    return run(waiter(), timeout + 5)


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _stdio():
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    rd, wr = os.pipe2(os.O_CLOEXEC)
    return null, rd, wr


# ---- the driver ------------------------------------------------------------------

def test_create_start_exit_status_and_output(runc, reaper, make_bundle):
    cid, bundle = make_bundle(["sh", "-c", "echo hi; exit 3"])
    null, rd, wr = _stdio()
    try:
        pid = run(runc.create(cid, bundle, stdio=(null, wr, wr)))
        os.close(wr)
        wr = -1
        assert pid == runc_mod.read_pid_file(os.path.join(bundle, "init.pid"))
        assert os.path.exists(os.path.join(bundle, "log.json"))
        st = json.loads(subprocess.run(
            ["runc", "--root", runc.root, "state", cid], capture_output=True,
            check=True).stdout)
        assert st["status"] == "created" and st["pid"] == pid
        run(runc.start(cid, bundle))
        assert wait_exit(reaper, pid) == 3
        assert _read_all(rd) == b"hi\n"
        run(runc.delete(cid, bundle))
        run(runc.delete(cid, bundle))       # gone: "does not exist" tolerated
    finally:
        os.close(null)
        os.close(rd)
        if wr >= 0:
            os.close(wr)


def test_nonexistent_command_error(runc, make_bundle):
    cid, bundle = make_bundle(["/bin/nope"])
    null, rd, wr = _stdio()
    try:
        with pytest.raises(RuncError) as ei:
            run(runc.create(cid, bundle, stdio=(null, wr, wr)))
        msg = ei.value.message
        assert 'exec: "/bin/nope": stat /bin/nope: no such file or directory' in msg
        assert msg.startswith("runc create failed: ")
        e = errors.runc_error("OCI runtime create failed", ei.value)
        assert e.message == "OCI runtime create failed: " + msg
    finally:
        for fd in (null, rd, wr):
            os.close(fd)


def test_duplicate_id_error(runc, reaper, make_bundle):
    cid, bundle = make_bundle(["sleep", "30"])
    pid = run(runc.create(cid, bundle, stdio=(None, None, None)))
    try:
        with pytest.raises(RuncError) as ei:
            run(runc.create(cid, bundle, stdio=(None, None, None)))
        assert "container with given ID already exists" in ei.value.message
        # The error of THIS run, not the one before it in the same log.json.
        with pytest.raises(RuncError) as ei:
            run(runc.start(cid + "-x", bundle))
        assert "does not exist" in ei.value.message
        assert "already exists" not in ei.value.message
    finally:
        run(runc.delete(cid, bundle, force=True))
        wait_exit(reaper, pid)


def test_running_container_lifecycle(runc, reaper, make_bundle):
    cid, bundle = make_bundle(["sleep", "60"])
    pid = run(runc.create(cid, bundle, stdio=(None, None, None)))
    try:
        assert run(runc.ps(cid, bundle)) == [pid]
        run(runc.start(cid, bundle))
        assert run(runc.state(cid, bundle))["status"] == "running"
        run(runc.update(cid, bundle, b'{"pids":{"limit":123}}'))
        # the init's own cgroup, wherever runc's driver put it
        pids_max = os.path.join(proc_cgroup(pid, None if is_v2() else "pids"), "pids.max")
        assert open(pids_max).read().strip() == "123"
        run(runc.pause(cid, bundle))
        assert run(runc.state(cid, bundle))["status"] == "paused"
        run(runc.resume(cid, bundle))
        assert run(runc.state(cid, bundle))["status"] == "running"

        # exec: output on our pipe, the exec process is reaped by us.
        null, rd, wr = _stdio()
        try:
            spec = json.dumps({"args": ["sh", "-c", "echo exec-hi; exit 5"], "cwd": "/",
                               "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
                               "terminal": False}).encode()
            epid = run(runc.exec(cid, bundle, spec, "e1", stdio=(null, wr, wr)))
            os.close(wr)
            wr = -1
            assert epid == runc_mod.read_pid_file(os.path.join(bundle, "e1.pid"))
            assert wait_exit(reaper, epid) == 5
            assert _read_all(rd) == b"exec-hi\n"
        finally:
            os.close(null)
            os.close(rd)
            if wr >= 0:
                os.close(wr)

        with pytest.raises(RuncError) as ei:
            run(runc.exec(cid, bundle, b'{"args":["/bin/nope"],"cwd":"/"}', "e2"))
        assert 'exec: "/bin/nope"' in ei.value.message

        run(runc.kill(cid, bundle, 9))
        assert wait_exit(reaper, pid) == 137
        deadline = time.monotonic() + 10
        while run(runc.state(cid, bundle))["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(RuncError) as ei:
            run(runc.kill(cid, bundle, 15))
        assert "container not running" in ei.value.message
        e = errors.classify_kill_error(ei.value)
        assert (e.code, e.message) == (NOT_FOUND, "process already finished: not found")
        run(runc.kill(cid, bundle, 9, all=True))     # runc 1.1: ok on a stopped container
        run(runc.delete(cid, bundle))
        with pytest.raises(RuncError) as ei:
            run(runc.kill(cid, bundle, 9))
        e = errors.classify_kill_error(ei.value)
        assert (e.code, e.message) == (NOT_FOUND, "no such container: not found")
    finally:
        run(runc.delete(cid, bundle, force=True))


def test_created_container_force_delete_kills_init(runc, reaper, make_bundle):
    cid, bundle = make_bundle(["sleep", "60"])
    pid = run(runc.create(cid, bundle, stdio=(None, None, None)))
    run(runc.delete(cid, bundle, force=True))
    assert wait_exit(reaper, pid) == 137


# ---- the installed binary: start / delete / -info -----------------------------------

@pytest.fixture(scope="module")
def binary():
    p = find_pyshim_binary()
    if p is None:
        pytest.fail("containerd-shim-pyshim-v1 is not installed: pip install .", pytrace=False)
    return p


def _shim_pids(namespace):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = proc_argv(int(name))
        if argv and "-namespace" in argv and namespace in argv and "start" not in argv \
                and "delete" not in argv:
            out.append(int(name))
    return out


def _kill_and_reap(pid, timeout=10):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return   # someone else's zombie now
            except OSError:
                return
            time.sleep(0.05)


def test_binary_start(binary, workdir):
    ns = "pyshim-start-%d" % os.getpid()
    cid = "st-%s" % uuid.uuid4().hex[:8]
    bundle = os.path.join(workdir, cid)
    os.makedirs(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump({"ociVersion": "1.0.2", "annotations": {}}, f)
    h = hashlib.sha256(("/tmp/x.sock/%s/%s" % (ns, cid)).encode()).hexdigest()
    want = "unix:///run/containerd/s/" + h
    path = want[len("unix://"):]
    argv = [binary, "-namespace", ns, "-address", "/tmp/x.sock",
            "-publish-binary", "/usr/bin/containerd", "-id", cid, "start"]
    started = []
    try:
        t0 = time.monotonic()
        r = subprocess.run(argv, cwd=bundle, input=b"", stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        elapsed = time.monotonic() - t0
        started = _shim_pids(ns)
        assert r.returncode == 0, r.stdout
        assert r.stdout.decode() == want        # stdout+stderr: only the address
        assert elapsed < 5
        with open(os.path.join(bundle, "address")) as f:
            assert f.read() == want
        assert len(started) == 1
        pid = started[0]
        sargv = proc_argv(pid)
        assert sargv[sargv.index("-namespace"):] == [
            "-namespace", ns, "-id", cid, "-address", "/tmp/x.sock"]
        assert sargv[0] == binary      # the name it was run under, not python3 -I -S
        assert os.readlink("/proc/%d/cwd" % pid) == bundle
        assert os.getsid(pid) == pid
        assert os.readlink("/proc/%d/fd/1" % pid) == "/dev/null"
        with open("/proc/%d/oom_score_adj" % pid) as f:
            score = int(f.read())
        with open("/proc/%d/oom_score_adj" % os.getpid()) as f:
            assert score == min(1000, int(f.read()) + 1)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(path)     # someone listens
        s.close()
        # Same group again: the live shim is reused, no second process.
        r = subprocess.run(argv, cwd=bundle, input=b"", stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        assert (r.returncode, r.stdout.decode()) == (0, want)
        assert _shim_pids(ns) == [pid]
    finally:
        for pid in started + [p for p in _shim_pids(ns) if p not in started]:
            _kill_and_reap(pid)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def test_binary_start_empty_namespace(binary, workdir):
    r = subprocess.run([binary, "-namespace", "", "-id", "x", "-address", "/a", "start"],
                       cwd=workdir, input=b"", capture_output=True, timeout=20)
    assert r.returncode == 1
    assert b"shim namespace cannot be empty" in r.stderr
    assert r.stdout == b""


def test_binary_delete(binary, runc, reaper, make_bundle):
    cid, bundle = make_bundle(["sleep", "60"])
    bundle_files.write_bundle_options(bundle, {"binary_name": "", "root": os.path.dirname(runc.root),
                                           "systemd_cgroup": False, "criu_path": ""})
    pid = run(runc.create(cid, bundle, stdio=(None, None, None)))
    # Two stacked mounts on <bundle>/rootfs (runc already pivoted elsewhere).
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    for size in ("1m", "2m"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", rootfs],
                       check=True)
    argv = [binary, "-namespace", NS, "-address", "/tmp/x.sock", "-publish-binary",
            "/usr/bin/containerd", "-id", cid, "-bundle", bundle, "delete"]
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=bundle, input=b"", capture_output=True, timeout=20)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 5
    m = task.DeleteResponse.decode(r.stdout)
    assert (m.pid, m.exit_status) == (pid, 137)
    assert abs(m.exited_at.seconds - time.time()) < 30
    assert wait_exit(reaper, pid) == 137            # runc delete --force killed it
    st = subprocess.run(["runc", "--root", runc.root, "state", cid], capture_output=True)
    assert st.returncode != 0 and b"does not exist" in st.stderr
    with open("/proc/self/mountinfo") as f:
        assert not any(line.split()[4] == rootfs for line in f)
    # Idempotent: again, now with nothing left to clean.
    r = subprocess.run(argv, cwd=bundle, input=b"", capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert task.DeleteResponse.decode(r.stdout).exit_status == 137


def test_binary_delete_bundle_from_cwd_and_missing_files(binary, workdir):
    cid = "del-%s" % uuid.uuid4().hex[:8]
    bundle = os.path.join(workdir, cid)
    os.makedirs(bundle)
    argv = [binary, "-namespace", NS, "-address", "/tmp/x.sock", "-id", cid, "delete"]
    # No runtime file: Create never ran runc, nothing to delete (the Go shim
    # exits 1 here, which makes containerd keep the bundle).
    r = subprocess.run(argv, cwd=bundle, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert ("open %s/runtime: no such file or directory" % bundle).encode() in r.stderr
    assert task.DeleteResponse.decode(r.stdout).exit_status == 137
    with open(os.path.join(bundle, "runtime"), "w"):
        pass                          # empty: runc; no options.json, no init.pid
    r = subprocess.run(argv, cwd=bundle, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    m = task.DeleteResponse.decode(r.stdout)
    assert (m.pid, m.exit_status) == (0, 137)


def test_binary_delete_after_shim_delete_skips_runc(binary, workdir):
    """The serving shim's Delete marks the bundle (runc delete done, rootfs
    unmounted): the delete action containerd runs after every disconnect
    then starts no runc, and still answers like Go."""
    cid = "delm-%s" % uuid.uuid4().hex[:8]
    bundle = os.path.join(workdir, cid)
    os.makedirs(bundle)
    log = os.path.join(workdir, cid + ".runc-calls")
    fake = os.path.join(workdir, cid + ".fake-runc")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho \"$@\" >> %s\n" % log)
    os.chmod(fake, 0o755)
    with open(os.path.join(bundle, "runtime"), "w") as f:
        f.write(fake)
    with open(os.path.join(bundle, "init.pid"), "w") as f:
        f.write("4242")
    argv = [binary, "-namespace", NS, "-address", "/tmp/x.sock", "-id", cid, "-bundle", bundle,
            "delete"]
    bundle_files.mark_deleted(bundle)
    r = subprocess.run(argv, cwd=bundle, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert (task.DeleteResponse.decode(r.stdout).pid, os.path.exists(log)) == (4242, False)
    # Unmarked (the shim died): runc delete --force runs, as in Go.
    bundle_files.clear_deleted_mark(bundle)
    r = subprocess.run(argv, cwd=bundle, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    with open(log) as f:
        assert "delete --force %s" % cid in f.read()


def test_binary_info(binary, workdir):
    r = subprocess.run([binary, "-info"], cwd=workdir, input=b"", capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    info = types.RuntimeInfo.decode(r.stdout)
    assert info.name == "io.containerd.pyshim.v1"
    assert info.version.version
    assert info.features.type_url == \
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    assert "ociVersionMin" in json.loads(info.features.value)


def test_binary_version(binary):
    r = subprocess.run([binary, "-v"], capture_output=True, timeout=20)
    assert r.returncode == 0
    assert r.stdout.startswith(b"containerd-shim-pyshim-v1")
    assert b"io.containerd.pyshim.v1" in r.stdout


def test_binary_start_sched_core(binary, workdir):
    """SCHED_CORE=1 (containerd's sched_core = true): the serve process gets
    a core-scheduling cookie; where the kernel has no core scheduling (as
    here: EINVAL), start fails with Go's error and starts nothing."""
    ns = "pyshim-sc-%d" % os.getpid()
    cid = "sc-%s" % uuid.uuid4().hex[:8]
    bundle = os.path.join(workdir, cid)
    os.makedirs(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump({"ociVersion": "1.0.2"}, f)
    env = dict(os.environ, SCHED_CORE="1")
    r = subprocess.run([binary, "-namespace", ns, "-address", "/tmp/sc.sock", "-id", cid,
                        "start"], cwd=bundle, input=b"", capture_output=True, env=env,
                       timeout=20, preexec_fn=os.setpgrp)
    pids = _shim_pids(ns)
    try:
        if r.returncode == 0:       # pragma: no cover - kernels with core scheduling
            assert len(pids) == 1
        else:
            assert b"enable sched core support: " in r.stderr, r.stderr
            assert r.stdout == b"" and pids == []
    finally:
        for pid in pids:
            _kill_and_reap(pid)
        h = hashlib.sha256(("/tmp/sc.sock/%s/%s" % (ns, cid)).encode()).hexdigest()
        try:
            os.unlink("/run/containerd/s/" + h)
        except FileNotFoundError:
            pass
