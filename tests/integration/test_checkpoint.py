"""Checkpoint and restore (spec task-service.md Checkpoint, runc.md).

criu cannot dump on this machine's kernel, so what is checked here is every
argument the shim gives runc (through a BinaryName wrapper that logs its
argv and runs the real runc), the state rules and every error path, on real
containers. The successful dump/restore is covered by containerd's own
TestCheckpoint* tests, which the conformance suite skips where criu does not
work (as here)."""
import json
import os
import shutil

import pytest

from shim import ttrpc
from shim.pb import runc as runc_pb
from shim.pb import runctypes
from shim.pb import task as pb
from shim.pb import wkt
from support.containerd import PY_RUNTIME
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
    cl = ttrpc.SyncClient(address_of(containerd, host), timeout=60)
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


def rpc_error(cl, method, req):
    with pytest.raises(ttrpc.TTRPCError) as e:
        cl.call(TASK, method, req)
    return e.value.code, e.value.message


def state(cl, id):
    return cl.call(TASK, "State", pb.StateRequest(id=id), pb.StateResponse)


def test_checkpoint_state_rules_and_runc_arguments(raw, wrapper, tmp_path):
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
