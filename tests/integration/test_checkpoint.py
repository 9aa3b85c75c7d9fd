"""Checkpoint and restore (spec task-service.md Checkpoint, runc.md).

Debian bookworm's criu 3.17 (the system's, on containerd's default PATH)
cannot dump on this machine's kernel. With it, the first tests check every
argument the shim gives runc (through a BinaryName wrapper that logs its
argv and runs the real runc), the state rules and every error path, on real
containers, and that ctr reports criu's failure as for the Go shim. Where
the system's criu works (the cgroup v2 node: trixie's criu 4.1 installed),
the two that need criu to fail skip.

The last tests do real checkpoints and restores, on both shims, with a
private containerd whose PATH starts with a working criu >= 4
(support/criu.py: Debian trixie's criu 4.1, unpacked privately on a
bookworm host; skipped, or failed on CI, when it cannot be had):

  * `ctr container checkpoint --task --image --rw` of a running container,
    then `ctr container restore --live --rw` after it was deleted;
  * `ctr task checkpoint --exit`, then the task created from that image and
    started through containerd's Tasks API (support/tasks_api.py).

Each time the restored task runs under a new pid and a counter kept in its
shell's memory goes on from the checkpointed value. The containers get
c.run_args() (PYSHIM_TEST_CGROUP_DRIVER / PYSHIM_TEST_RUNC), so that with
the systemd driver they are checkpointed from and restored into systemd
scopes (.ci/v2node runs these two tests in its systemd+runc pass)."""
import itertools
import json
import os
import shutil
import time

import pytest

from shim import ttrpc, ttrpc_client
from shim.pb import runc as runc_pb
from shim.pb import runctypes
from shim.pb import task as pb
from shim.pb import wkt
from support.containerd import GO_RUNTIME, PY_RUNTIME, Containerd
from support.criu import CriuUnavailable, check as check_criu, criu_dir
from support.helpers import address_of, wait_status

pytestmark = pytest.mark.integration

TASK = "containerd.task.v2.Task"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


def any_of(msg):
    return wkt.Any(type_url=msg.FULL_NAME, value=msg.encode())


@pytest.fixture
def wrapper(tmp_path):
    """A runc wrapper (Options.binary_name) that appends its argv, one JSON
    list per line, to tmp_path/argv.log and execs the real runc."""
    log = tmp_path / "argv.log"
    path = tmp_path / "runc-wrapper"
    path.write_text("#!/bin/sh\nprintf '%%s\\0' \"$@\" >> %s\nprintf '\\n' >> %s\n"
                    "exec %s \"$@\"\n" % (log, log, shutil.which("runc")))
    path.chmod(0o755)

    def calls(sub):
        if not log.exists():
            return []
        out = []
        for line in log.read_bytes().split(b"\n"):
            argv = [a.decode() for a in line.split(b"\0")[:-1]]
            if sub in argv:
                out.append(argv[argv.index(sub):])
        return out
    return str(path), calls


@pytest.fixture
def host(containerd, ctr_run, cid):
    """A running pyshim container whose shim the raw requests go to."""
    ctr_run("sleep", "3600", runtime=PY_RUNTIME, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    yield cid
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    wait_status(containerd, cid, "STOPPED")


@pytest.fixture
def raw(containerd, host, tmp_path):
    """(client, make_bundle) on the host's shim. make_bundle(id, args) writes
    a bundle sharing the host's rootfs read-only. Containers created through
    the client are deleted (killed first) at the end."""
    created = []
    cl = ttrpc_client.SyncClient(address_of(containerd, host), timeout=60)
    host_bundle = containerd.bundle(host)
    with open(os.path.join(host_bundle, "config.json")) as f:
        base = json.load(f)

    def make_bundle(id, args):
        b = tmp_path / ("bundle-" + id)
        b.mkdir()
        spec = json.loads(json.dumps(base))
        spec["root"] = {"path": os.path.join(host_bundle, "rootfs"), "readonly": True}
        spec["process"]["args"] = list(args)
        spec["linux"]["cgroupsPath"] = "/%s/%s" % (containerd.namespace, id)
        (b / "config.json").write_text(json.dumps(spec))
        created.append(id)
        return str(b)

    yield cl, make_bundle
    for id in created:
        for method, req in (("Kill", pb.KillRequest(id=id, signal=9, all=True)),
                            ("Delete", pb.DeleteRequest(id=id))):
            try:
                cl.call(TASK, method, req)
            except ttrpc.TTRPCError:
                pass
    cl.close()


_system_criu = []


def skip_if_system_criu_works():
    """The error-path tests need the criu that the session containerd's
    runc finds (the system's) to fail, as bookworm's 3.17 does here."""
    if not _system_criu:
        criu = shutil.which("criu", path=os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
        version, problem = check_criu(criu) if criu else (None, "no criu")
        _system_criu.append((criu, version, problem))
    criu, version, problem = _system_criu[0]
    if problem is None:
        pytest.skip("the system's criu (%s, %s) works here: these tests need one that "
                    "cannot dump" % (criu, ".".join(map(str, version))))


def rpc_error(cl, method, req):
    with pytest.raises(ttrpc.TTRPCError) as e:
        cl.call(TASK, method, req)
    return e.value.code, e.value.message


def state(cl, id):
    return cl.call(TASK, "State", pb.StateRequest(id=id), pb.StateResponse)


def test_checkpoint_state_rules_and_runc_arguments(raw, wrapper, tmp_path):
    skip_if_system_criu_works()
    cl, make_bundle = raw
    binary, calls = wrapper
    id = "ckpt-args"
    bundle = make_bundle(id, ["sleep", "3600"])
    opts = any_of(runc_pb.Options(binary_name=binary))
    r = cl.call(TASK, "Create", pb.CreateTaskRequest(id=id, bundle=bundle, options=opts),
                pb.CreateTaskResponse)
    assert r.pid > 0
    assert rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(id=id, path=str(tmp_path / "i"))) \
        == (2, "cannot checkpoint a task in created state")
    cl.call(TASK, "Start", pb.StartRequest(id=id), pb.StartResponse)

    # Every CheckpointOptions field becomes its runc flag; the failure (criu
    # cannot dump here) comes back as Go's "<runc error> path= <bundle>/criu-dump.log".
    work = tmp_path / "work"
    ck = runc_pb.CheckpointOptions(exit=False, open_tcp=True, external_unix_sockets=True,
                                   terminal=True, file_locks=True,
                                   empty_namespaces=["network", "uts"], work_path=str(work))
    image = str(tmp_path / "image")
    code, msg = rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(
        id=id, path=image, options=any_of(ck)))
    got = calls("checkpoint")
    if code == 0:           # pragma: no cover - only where criu works
        pytest.skip("criu can dump on this kernel")
    assert code == 2 and msg.endswith(" path= %s/criu-dump.log" % bundle), msg
    assert got == [["checkpoint", "--image-path", image, "--work-path", str(work),
                    "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
                    "--empty-ns", "network", "--empty-ns", "uts", "--leave-running", id]]
    # criu's dump.log is copied into the bundle, as the error says.
    if (work / "dump.log").exists():
        assert os.path.exists(os.path.join(bundle, "criu-dump.log"))
    assert state(cl, id).status == 2        # still running (leave-running)

    # Legacy options type (what ctr sends to a runtime not named io.containerd.runc.*),
    # exit=true, default work dir: <bundle>/work/criu-work, removed afterwards.
    ck = runctypes.CheckpointOptions(exit=True)
    code, msg = rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(
        id=id, path=image, options=any_of(ck)))
    assert code == 2
    default_work = os.path.join(bundle, "work", "criu-work")
    assert calls("checkpoint")[-1] == ["checkpoint", "--image-path", image,
                                       "--work-path", default_work, id]
    assert not os.path.exists(default_work)

    # An options type the shim does not know: a clear InvalidArgument.
    code, msg = rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(
        id=id, path=image, options=wkt.Any(type_url="example.com/Bogus", value=b"")))
    assert code == 3 and "unsupported checkpoint options type example.com/Bogus" in msg

    cl.call(TASK, "Kill", pb.KillRequest(id=id, signal=9))
    cl.call(TASK, "Wait", pb.WaitRequest(id=id), pb.WaitResponse)
    assert rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(id=id, path=image)) \
        == (2, "cannot checkpoint a stopped container")
    assert rpc_error(cl, "Checkpoint", pb.CheckpointTaskRequest(id="nope", path=image))[0] == 5


def test_create_from_checkpoint_restores_at_start(raw, wrapper, tmp_path):
    cl, make_bundle = raw
    binary, calls = wrapper
    id = "restore-args"
    bundle = make_bundle(id, ["sleep", "3600"])
    image = tmp_path / "image"
    image.mkdir()                   # no criu images in it: restore must fail
    parent = str(tmp_path / "parent")
    opts = any_of(runc_pb.Options(binary_name=binary, no_pivot_root=True))
    r = cl.call(TASK, "Create", pb.CreateTaskRequest(
        id=id, bundle=bundle, options=opts, checkpoint=str(image), parent_checkpoint=parent),
        pb.CreateTaskResponse)
    # Nothing runs before Start: pid 0, created, no runc create.
    assert r.pid == 0
    st = state(cl, id)
    assert (st.status, st.pid) == (1, 0)
    assert calls("create") == []
    spec = wkt.Any(type_url=PROCESS_URL, value=json.dumps({"args": ["true"], "cwd": "/"}).encode())
    assert rpc_error(cl, "Exec", pb.ExecProcessRequest(id=id, exec_id="e", spec=spec)) \
        == (2, "cannot exec in a created state")

    code, msg = rpc_error(cl, "Start", pb.StartRequest(id=id))
    assert code == 2 and msg.startswith("OCI runtime restore failed: "), msg
    assert calls("restore") == [[
        "restore", "--image-path", str(image), "--work-path", os.path.join(bundle, "work"),
        "--parent-path", parent, "--detach", "--pid-file", os.path.join(bundle, "init.pid"),
        "--no-pivot", "-no-subreaper", "--bundle", bundle, id]]
    assert state(cl, id).status == 1        # still created: Delete cleans up

    sid = cl.send_raw_request(TASK, "Wait", pb.WaitRequest(id=id).encode())
    d = cl.call(TASK, "Delete", pb.DeleteRequest(id=id), pb.DeleteResponse)
    assert d.exit_status == 0
    assert pb.WaitResponse.decode(cl.recv_response(sid).payload).exit_status == 0
    assert rpc_error(cl, "State", pb.StateRequest(id=id))[0] == 5


def test_ctr_checkpoint_error_matches_go(containerd, ctr_run, make_cid, runtime, tmp_path):
    """`ctr task checkpoint` on a running container where criu cannot dump:
    both shims fail with the criu-dump.log path, and the task keeps running
    (ctr paused it around the call and resumed it)."""
    skip_if_system_criu_works()
    cid = make_cid()
    ctr_run("sleep", "3600", runtime=runtime, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    image = tmp_path / "img"
    r = containerd.ctr("task", "checkpoint", "--image-path", str(image), cid, check=False)
    if r.returncode == 0:           # pragma: no cover - only where criu works
        pytest.skip("criu can dump on this kernel")
    assert "path= %s/criu-dump.log" % containerd.bundle(cid) in r.stderr, r.stderr
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    assert wait_status(containerd, cid, "STOPPED") == "STOPPED"


# ------------------------------------------------ real checkpoint / restore

# A counter kept in the shell's memory, written to a file of the rw layer
# every 0.1 s; /tmp/starts gets one line per start of the shell.
COUNTER = ["sh", "-c", "echo start >> /tmp/starts; i=0; "
           "while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"]
_execs = itertools.count(1)


def _skip_or_fail(reason):
    # Like tests/conftest.py: on CI a missing prerequisite fails.
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def criu_containerd():
    """A private containerd whose PATH starts with the directory of a
    working criu >= 4 (support/criu.py: the system's, or Debian trixie's
    unpacked privately), so that the shims' runc runs that criu; the busybox
    image imported (c.image). The session `containerd` of the tests above
    keeps the system criu."""
    if os.geteuid() != 0:
        _skip_or_fail("checkpoint tests need root")
    try:
        d = criu_dir()
    except CriuUnavailable as e:
        _skip_or_fail("no working criu >= 4: %s" % e)
    c = Containerd(extra_path=[d])
    try:
        c.start()
        c.image = c.import_image()
    except Exception:
        c.cleanup()
        raise
    yield c
    problems = c.cleanup()
    if problems:
        pytest.fail("criu containerd left things behind (cleaned up now):\n  %s"
                    % "\n  ".join(problems), pytrace=False)


def counter(c, id, timeout=20):
    """The container's /tmp/count, read with an exec (retried while the file
    is being rewritten)."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.ctr("task", "exec", "--exec-id", "count-%d" % next(_execs), id,
                  "cat", "/tmp/count", check=False)
        if r.returncode == 0 and r.stdout.strip().isdigit():
            return int(r.stdout)
        assert time.monotonic() < deadline, (r.returncode, r.stdout, r.stderr)
        time.sleep(0.1)


def starts(c, id):
    r = c.ctr("task", "exec", "--exec-id", "starts-%d" % next(_execs), id,
              "cat", "/tmp/starts")
    return r.stdout.split()


def run_counter(c, runtime, id, at_least=20):
    """Start the COUNTER container `id`; returns its pid once the counter
    reached `at_least` (so that a restarted shell could not catch up soon)."""
    c.ctr("run", "-d", "--runtime", runtime, *c.run_args(runtime, id), c.image, id,
          *COUNTER)
    assert wait_status(c, id, "RUNNING") == "RUNNING"
    deadline = time.monotonic() + 30
    while counter(c, id) < at_least:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return c.tasks()[id][0]


def assert_continued(c, id, before, old_pid):
    """The restored task runs under a new pid and its counter went on from
    where it was at the checkpoint (>= `before`, still growing, the shell
    never started again)."""
    assert wait_status(c, id, "RUNNING") == "RUNNING"
    pid = c.tasks()[id][0]
    assert pid > 0 and pid != old_pid
    first = counter(c, id)
    assert first >= before, (first, before)
    deadline = time.monotonic() + 20
    while counter(c, id) <= first:
        assert time.monotonic() < deadline, "the counter stopped at %d" % first
        time.sleep(0.2)
    assert starts(c, id) == ["start"]


def remove(c, id, *images):
    c.remove_container(id)
    for ref in images:
        c.ctr("image", "rm", ref, check=False)


def test_container_checkpoint_and_live_restore(criu_containerd, runtime):
    """`ctr container checkpoint --task --image --rw` of a running container
    (it keeps running), kill and delete it, `ctr container restore --live
    --rw`: the container is back and its task runs on from the checkpoint."""
    c = criu_containerd
    id = "ckpt-c-" + ("go" if runtime == GO_RUNTIME else "py")
    ref = "pyshim.test/checkpoint/%s:1" % id
    try:
        old_pid = run_counter(c, runtime, id)
        before = counter(c, id)
        r = c.ctr("container", "checkpoint", "--task", "--image", "--rw", id, ref,
                  check=False, timeout=120)
        assert r.returncode == 0, r.stderr
        assert ref in c.ctr("image", "ls", "-q").stdout.split()
        assert c.tasks()[id] == (old_pid, "RUNNING")        # leave-running

        c.ctr("task", "kill", "-s", "SIGKILL", id)
        assert wait_status(c, id, "STOPPED") == "STOPPED"
        c.ctr("task", "delete", id)
        c.ctr("container", "delete", id)

        r = c.ctr("container", "restore", "--live", "--rw", id, ref, check=False, timeout=120)
        assert r.returncode == 0, r.stderr
        assert_continued(c, id, before, old_pid)

        c.ctr("task", "kill", "-s", "SIGKILL", id)
        assert wait_status(c, id, "STOPPED") == "STOPPED"
        c.ctr("task", "delete", id)
        c.ctr("container", "delete", id)
        assert id not in c.containers()
    finally:
        remove(c, id, ref)


def test_task_checkpoint_exit_and_restore(criu_containerd, runtime):
    """`ctr task checkpoint --exit` of a running task: a checkpoint image
    in the content store and the task stopped; then the task is created from
    that image and started (what the Go client's NewTask(WithTaskCheckpoint)
    does; ctr has no command for it, see support/tasks_api.py): it runs on
    from the checkpoint.

    ctr before 2.0 sends checkpoint options (exit, image/work path) only to
    runtimes named io.containerd.runc.*: for pyshim's own name --exit is
    lost, the task is left running as by any shim, and the test stops it."""
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")
    from support.tasks_api import restore_task
    c = criu_containerd
    id = "ckpt-t-" + ("go" if runtime == GO_RUNTIME else "py")
    ref = None
    try:
        old_pid = run_counter(c, runtime, id)
        before = counter(c, id)
        r = c.ctr("task", "checkpoint", "--exit", id, check=False, timeout=120)
        assert r.returncode == 0, r.stderr
        ref = r.stdout.strip()
        assert ref.startswith("containerd.io/checkpoint/%s:" % id), r.stdout
        assert ref in c.ctr("image", "ls", "-q").stdout.split()
        if runtime == GO_RUNTIME or c.version >= (2, 0, 0):
            assert wait_status(c, id, "STOPPED") == "STOPPED"
        else:
            assert c.tasks()[id] == (old_pid, "RUNNING")
            c.ctr("task", "kill", "-s", "SIGKILL", id)
            assert wait_status(c, id, "STOPPED") == "STOPPED"
        c.ctr("task", "delete", id)

        restore_task(c, id, ref)
        assert_continued(c, id, before, old_pid)

        c.ctr("task", "kill", "-s", "SIGKILL", id)
        assert wait_status(c, id, "STOPPED") == "STOPPED"
        c.ctr("task", "delete", id)
        c.ctr("container", "delete", id)
    finally:
        remove(c, id, *([ref] if ref else []))
