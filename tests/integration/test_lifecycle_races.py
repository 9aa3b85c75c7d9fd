"""Races between a container's lifecycle steps, on pyshim and the Go shim.

The requests go straight to the shim of a running host container (`sleeper`,
on either runtime) over ttrpc, for a second container whose runc is a
wrapper (Options.binary_name) that holds one runc step until the test lets
it go, so each window is as wide as the test wants."""
import json
import os
import time

import pytest

from shim import ttrpc, ttrpc_client
from shim.pb import runc as runc_pb
from shim.pb import task as pb
from shim.pb import wkt
from support.containerd import GO_RUNTIME
from support.helpers import address_of, holding_runc, wait_file

pytestmark = pytest.mark.integration

PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
NOT_FOUND, FAILED_PRECONDITION = 5, 9


def any_of(msg):
    return wkt.Any(type_url=msg.FULL_NAME, value=msg.encode())


class Shim:
    """A ttrpc client on the host's shim, and bundles beside the host's."""

    def __init__(self, containerd, host, tmp_path):
        self.c = containerd
        self.service = containerd.task_service
        self.cl = ttrpc_client.SyncClient(address_of(containerd, host), timeout=60)
        self.dir = str(tmp_path)
        self.created = []
        with open(os.path.join(containerd.bundle(host), "config.json")) as f:
            self.base = json.load(f)
        self.host_rootfs = os.path.join(containerd.bundle(host), "rootfs")

    def bundle(self, id, args):
        b = os.path.join(self.dir, "bundle-" + id)
        os.mkdir(b)
        spec = json.loads(json.dumps(self.base))
        spec["root"] = {"path": self.host_rootfs, "readonly": True}
        spec["process"]["args"] = list(args)
        spec["linux"]["cgroupsPath"] = "/%s/%s" % (self.c.namespace, id)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        self.created.append(id)
        return b

    def exec_spec(self, args):
        proc = dict(self.base["process"], args=list(args), terminal=False)
        return wkt.Any(type_url=PROCESS_URL, value=json.dumps(proc).encode())

    def call(self, method, req, resp_cls=None):
        return self.cl.call(self.service, method, req, resp_cls)

    def send(self, method, req):
        return self.cl.send_raw_request(self.service, method, req.encode())

    def reply(self, sid, resp_cls=None):
        """(code, message or decoded response) of request `sid`."""
        r = self.cl.recv_response(sid)
        if r.status is not None and r.status.code:
            return r.status.code, r.status.message
        return 0, resp_cls.decode(r.payload) if resp_cls else r.payload

    def error(self, method, req):
        with pytest.raises(ttrpc.TTRPCError) as e:
            self.call(method, req)
        return e.value.code, e.value.message

    def close(self):
        for id in self.created:
            for method, req in (("Kill", pb.KillRequest(id=id, signal=9, all=True)),
                                ("Delete", pb.DeleteRequest(id=id))):
                try:
                    self.call(method, req)
                except ttrpc.TTRPCError:
                    pass
        self.cl.close()


@pytest.fixture
def shim(containerd, sleeper, tmp_path):
    s = Shim(containerd, sleeper, tmp_path)
    yield s
    open(os.path.join(s.dir, "exec-go"), "w").close()
    open(os.path.join(s.dir, "create-go"), "w").close()
    s.close()


def test_exec_racing_init_exit(containerd, runtime, shim):
    """containerd issue 10589 (its TestIssue10589, by hand): the init is
    killed while exec1 is inside `runc exec`. Until exec1 has settled the
    init is still running, so a new Exec is accepted, but starting it is
    refused; both execs end up created, never started, and the init's exit
    comes last."""
    if runtime == GO_RUNTIME and containerd.version < (1, 7, 0):
        pytest.skip("containerd %s's Go shim predates the fix of containerd#10589"
                    % ".".join(map(str, containerd.version)))
    id = "race-exec"
    opts = any_of(runc_pb.Options(binary_name=holding_runc(shim.dir, "exec")))
    shim.call("Create", pb.CreateTaskRequest(id=id, bundle=shim.bundle(id, ["sleep", "3600"]),
                                             options=opts), pb.CreateTaskResponse)
    init_pid = shim.call("Start", pb.StartRequest(id=id), pb.StartResponse).pid
    shim.call("Exec", pb.ExecProcessRequest(id=id, exec_id="exec1",
                                            spec=shim.exec_spec(["sleep", "301"])))
    start1 = shim.send("Start", pb.StartRequest(id=id, exec_id="exec1"))
    wait_file(os.path.join(shim.dir, "exec-ready-1"))

    os.kill(init_pid, 9)
    time.sleep(0.5)         # the shim has reaped the init by now
    wait_sid = shim.send("Wait", pb.WaitRequest(id=id))
    st = shim.call("State", pb.StateRequest(id=id), pb.StateResponse)
    assert st.status == 2, st          # still running while exec1 is starting

    shim.call("Exec", pb.ExecProcessRequest(id=id, exec_id="exec2",
                                            spec=shim.exec_spec(["sleep", "302"])))
    code, msg = shim.error("Start", pb.StartRequest(id=id, exec_id="exec2"))
    assert code == FAILED_PRECONDITION and "init process is not running" in msg, (code, msg)

    open(os.path.join(shim.dir, "exec-go"), "w").close()
    code, _ = shim.reply(start1)
    assert code != 0                    # runc exec into a dead container fails
    code, w = shim.reply(wait_sid, pb.WaitResponse)
    assert (code, w.exit_status) == (0, 137)
    for eid in ("exec1", "exec2"):
        assert shim.call("State", pb.StateRequest(id=id, exec_id=eid),
                         pb.StateResponse).status == 1          # created
    assert shim.call("State", pb.StateRequest(id=id), pb.StateResponse).status == 3
    for eid in ("exec1", "exec2"):
        shim.call("Delete", pb.DeleteRequest(id=id, exec_id=eid))
    d = shim.call("Delete", pb.DeleteRequest(id=id), pb.DeleteResponse)
    assert d.exit_status == 137


def test_requests_racing_slow_create(containerd, runtime, shim):
    """While Create waits in `runc create`, the container does not exist:
    State, Kill, Start, Exec and Delete answer NotFound and Connect no task
    pid, never an internal error; then Create completes as usual (as the Go
    shim of containerd 2.3+). Pids alone waits for the Create: a restarted
    containerd asks it to tell a leaked shim from one with a task (the Go
    shim of 2.3+ answers NotFound, and is then deleted as leaked)."""
    if runtime == GO_RUNTIME and containerd.version < (2, 3, 0):
        pytest.skip("the Go shim before containerd 2.3 holds its service lock through "
                    "Create: requests wait for it")
    id = "race-create"
    opts = any_of(runc_pb.Options(binary_name=holding_runc(shim.dir, "create")))
    create = shim.send("Create", pb.CreateTaskRequest(
        id=id, bundle=shim.bundle(id, ["sleep", "3600"]), options=opts))
    wait_file(os.path.join(shim.dir, "create-ready-1"))
    pids = shim.send("Pids", pb.PidsRequest(id=id))
    for method, req in (("State", pb.StateRequest(id=id)),
                        ("Kill", pb.KillRequest(id=id, signal=9)),
                        ("Start", pb.StartRequest(id=id)),
                        ("Exec", pb.ExecProcessRequest(id=id, exec_id="e",
                                                       spec=shim.exec_spec(["true"]))),
                        ("Stats", pb.StatsRequest(id=id)),
                        ("Delete", pb.DeleteRequest(id=id))):
        code, msg = shim.error(method, req)
        assert code == NOT_FOUND, (method, code, msg)
    r = shim.call("Connect", pb.ConnectRequest(id=id), pb.ConnectResponse)
    assert r.shim_pid > 0 and r.task_pid == 0

    open(os.path.join(shim.dir, "create-go"), "w").close()
    code, created = shim.reply(create, pb.CreateTaskResponse)
    assert code == 0 and created.pid > 0, created
    code, r = shim.reply(pids, pb.PidsResponse)
    if runtime == GO_RUNTIME:
        assert code == NOT_FOUND, (code, r)
    else:
        assert (code, [p.pid for p in r.processes]) == (0, [created.pid]), (code, r)
    st = shim.call("State", pb.StateRequest(id=id), pb.StateResponse)
    assert (st.status, st.pid) == (1, created.pid)
    assert shim.call("Connect", pb.ConnectRequest(id=id), pb.ConnectResponse).task_pid \
        == created.pid


def test_state_pids_kill_connect_during_slow_create_answer_consistently(containerd, runtime,
                                                                         shim):
    """State, Pids, Kill and Connect sent while Create waits in `runc create`,
    on every containerd and both shims: each answer is NotFound (pyshim but
    for Pids, the Go shim of containerd 2.3+) or, where the shim makes them
    wait for Create (pyshim's Pids, the Go shim before 2.3), one that agrees
    with the created task; never an internal or unknown error."""
    id = "race-create-all"
    opts = any_of(runc_pb.Options(binary_name=holding_runc(shim.dir, "create")))
    create = shim.send("Create", pb.CreateTaskRequest(
        id=id, bundle=shim.bundle(id, ["sleep", "3600"]), options=opts))
    wait_file(os.path.join(shim.dir, "create-ready-1"))
    sent = [(method, shim.send(method, req), resp) for method, req, resp in (
        ("State", pb.StateRequest(id=id), pb.StateResponse),
        ("Pids", pb.PidsRequest(id=id), pb.PidsResponse),
        ("Kill", pb.KillRequest(id=id, signal=18), None),     # SIGCONT: harmless
        ("Connect", pb.ConnectRequest(id=id), pb.ConnectResponse))]
    time.sleep(0.3)                     # all of them are in before Create goes on
    open(os.path.join(shim.dir, "create-go"), "w").close()
    code, created = shim.reply(create, pb.CreateTaskResponse)
    assert code == 0 and created.pid > 0, created
    for method, sid, resp in sent:
        code, r = shim.reply(sid, resp)
        if code:
            assert code == NOT_FOUND, (method, code, r)
        elif method == "State":
            assert (r.status, r.pid) == (1, created.pid), r
        elif method == "Pids":
            assert [p.pid for p in r.processes] == [created.pid], r
        elif method == "Connect":
            assert r.shim_pid > 0 and r.task_pid in (0, created.pid), r
    st = shim.call("State", pb.StateRequest(id=id), pb.StateResponse)
    assert (st.status, st.pid) == (1, created.pid)
