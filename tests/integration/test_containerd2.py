"""What containerd 1.7/2.x do differently (spec shim-binary.md §3-4, §9-10),
driven by hand: only containerd 1.6.20 exists on this machine, so the
installed shim binary is started as containerd 2.3 starts it (a
BootstrapParams on stdin), and its socket is then used as 2.x uses it:
task API v3 names, and a second (pod) container sent straight to the
sandbox's shim with no `start` of its own. Events go to the session
containerd's real ttrpc events service, where `ctr events` shows them."""
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from shim import ttrpc, ttrpc_client
from shim.pb import bootstrap, task as pb, wkt
from shim.pb import runc as runc_pb
from support.bundle import busybox_rootfs, write_bundle
from support.containerd import proc_argv, shim_processes, wait_pids_gone

pytestmark = pytest.mark.integration

V3 = "containerd.task.v3.Task"
V2 = "containerd.task.v2.Task"


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="pyshim-2x-", dir="/run")
    yield d
    subprocess.run(["umount", "-R", d], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def options_any(root):
    o = runc_pb.Options(root=root)
    return wkt.Any(type_url=o.FULL_NAME, value=o.encode())


def test_bootstrap_start_v3_api_and_pod_container_without_start(
        containerd, pyshim_binary, workdir):
    ns = containerd.namespace
    rootfs = busybox_rootfs(os.path.join(workdir, "rootfs"))
    runc_root = os.path.join(workdir, "runc")
    sock_dir = os.path.join(workdir, "s")
    sandbox, app = "sb-%d" % os.getpid(), "app-%d" % os.getpid()
    b1, b2 = os.path.join(workdir, sandbox), os.path.join(workdir, app)
    write_bundle(b1, rootfs, ["sleep", "3600"])
    write_bundle(b2, rootfs, ["sh", "-c", "echo app; exit 6"])
    opts = options_any(runc_root)
    params = bootstrap.BootstrapParams(
        instance_id=sandbox, namespace=ns, log_level=-4,     # debug
        containerd_version="2.3.0", containerd_ttrpc_address=containerd.ttrpc_address,
        containerd_grpc_address=containerd.address,
        extensions=[bootstrap.Extension(value=opts)], socket_dir=sock_dir)
    events = containerd.ctr_popen("events", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    serve_pid = None
    try:
        env = dict(os.environ)
        env.pop("TTRPC_ADDRESS", None)      # 2.3 passes it in the params too
        r = subprocess.run([pyshim_binary, "-namespace", ns, "-address", containerd.address,
                            "-publish-binary", "/usr/bin/containerd", "-id", sandbox, "start"],
                           cwd=b1, input=params.encode(), capture_output=True, env=env,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        res = bootstrap.BootstrapResult.decode(r.stdout)
        h = hashlib.sha256(("%s/%s/%s" % (containerd.address, ns, sandbox)).encode()).hexdigest()
        assert (res.version, res.protocol, res.address) == \
            (3, "ttrpc", "unix://%s/%s" % (sock_dir, h))
        with open(os.path.join(b1, "address")) as f:
            assert f.read() == res.address
        serving = [p for p, a in shim_processes(ns, containerd.address, sandbox)
                   if "start" not in a]
        assert len(serving) == 1
        serve_pid = serving[0]
        assert "-debug" in proc_argv(serve_pid)

        with ttrpc_client.SyncClient(res.address, timeout=30) as cl:
            c = cl.call(V3, "Connect", pb.ConnectRequest(id=sandbox), pb.ConnectResponse)
            assert c.shim_pid == serve_pid
            # The sandbox (pause) container, created through the v3 names.
            cr = cl.call(V3, "Create", pb.CreateTaskRequest(id=sandbox, bundle=b1, options=opts),
                         pb.CreateTaskResponse)
            cl.call(V3, "Start", pb.StartRequest(id=sandbox), pb.StartResponse)
            # 2.x reload rule: Pids must list the init of a live container.
            pids = cl.call(V3, "Pids", pb.PidsRequest(id=sandbox), pb.PidsResponse)
            assert cr.pid in [p.pid for p in pids.processes]
            # An app container of the pod: no `start`, just Create on this socket.
            out = os.path.join(workdir, "app.out")
            cl.call(V3, "Create", pb.CreateTaskRequest(
                id=app, bundle=b2, options=opts, stdout="file://" + out), pb.CreateTaskResponse)
            sid = cl.send_raw_request(V3, "Wait", pb.WaitRequest(id=app).encode())
            cl.call(V3, "Start", pb.StartRequest(id=app), pb.StartResponse)
            assert pb.WaitResponse.decode(cl.recv_response(sid).payload).exit_status == 6
            with open(out) as f:
                assert f.read() == "app\n"
            # v2 and v3 names reach the same tasks.
            st = cl.call(V2, "State", pb.StateRequest(id=sandbox), pb.StateResponse)
            assert (st.pid, st.status) == (cr.pid, 2)
            cl.call(V3, "Delete", pb.DeleteRequest(id=app), pb.DeleteResponse)
            # Shutdown while the sandbox lives: the shim stays (it is
            # remembered: the shim exits after the last Delete).
            cl.call(V3, "Shutdown", pb.ShutdownRequest(id=app))
            time.sleep(0.2)
            assert cl.call(V3, "State", pb.StateRequest(id=sandbox), pb.StateResponse).status == 2
            cl.call(V3, "Kill", pb.KillRequest(id=sandbox, signal=9))
            sid = cl.send_raw_request(V3, "Wait", pb.WaitRequest(id=sandbox).encode())
            assert pb.WaitResponse.decode(cl.recv_response(sid).payload).exit_status == 137
            cl.call(V3, "Delete", pb.DeleteRequest(id=sandbox), pb.DeleteResponse)
            # The remembered Shutdown makes the shim exit after this Delete:
            # containerd's own Shutdown may then find the connection closed
            # (it ignores ttrpc's ErrClosed), or be answered if it is first.
            try:
                cl.call(V3, "Shutdown", pb.ShutdownRequest(id=sandbox))
            except (OSError, ttrpc.TTRPCError) as e:
                assert not isinstance(e, ttrpc.TTRPCError) or e.code == ttrpc.UNAVAILABLE, e
        assert not wait_pids_gone([serve_pid], 10), "shim did not exit after Shutdown"
        assert not os.path.exists(res.address[len("unix://"):])
        serve_pid = None
        # Events reached containerd through the address from the params.
        time.sleep(0.5)
        events.terminate()
        seen = events.communicate(timeout=10)[0].decode()
        for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"):
            assert topic in seen, seen
        assert app in seen and sandbox in seen
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
        if serve_pid is not None:
            try:
                os.kill(serve_pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["runc", "--root", os.path.join(runc_root, ns), "delete", "--force",
                        sandbox], capture_output=True)
        subprocess.run(["runc", "--root", os.path.join(runc_root, ns), "delete", "--force",
                        app], capture_output=True)


def test_bootstrap_params_for_another_id_are_options(containerd, pyshim_binary, workdir):
    """Params whose instance_id is not -id are not ours: read as an Any (it
    is no options type), and the reply is the plain address 1.6-2.2 expect."""
    ns = containerd.namespace
    cid = "other-%d" % os.getpid()
    b = os.path.join(workdir, cid)
    os.makedirs(b)
    with open(os.path.join(b, "config.json"), "w") as f:
        f.write('{"ociVersion": "1.0.2"}')
    params = bootstrap.BootstrapParams(instance_id="someone-else", namespace=ns,
                                       socket_dir=os.path.join(workdir, "s"))
    r = subprocess.run([pyshim_binary, "-namespace", ns, "-address", containerd.address,
                        "-id", cid, "start"], cwd=b, input=params.encode(),
                       capture_output=True, timeout=20)
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"unix:///run/containerd/s/")
    finally:
        for pid, argv in shim_processes(ns, containerd.address, cid):
            if "start" not in argv:
                os.kill(pid, 15)
                wait_pids_gone([pid], 10)
    # SIGTERM right after start (before the loop reads signals) still ends
    # the shim cleanly: its socket file is gone.
    assert not os.path.exists(r.stdout.decode()[len("unix://"):])
