"""Exec processes (`ctr task exec` and raw Task RPCs) on pyshim and, as the
reference, on the Go shim (`runtime` is parametrized over both)."""
import json
import os
import subprocess
import time

import pytest

from shim import ttrpc, ttrpc_client
from shim.pb import task as pb
from shim.pb import wkt
from support.containerd import PY_RUNTIME, task_service
from support.helpers import address_of, ctr_events, open_writer, read_until, wait_status

pytestmark = pytest.mark.integration

TASK = task_service()
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


def exec_(containerd, cid, *cmd, exec_id="e1", args=(), **kw):
    return containerd.ctr("task", "exec", "--exec-id", exec_id, *args, cid, *cmd,
                          check=False, **kw)


def process_spec(containerd, cid, args, terminal=False):
    """The container's OCI process with other args, as ExecProcessRequest.spec."""
    with open(os.path.join(containerd.bundle(cid), "config.json")) as f:
        proc = json.load(f)["process"]
    proc["args"] = list(args)
    proc["terminal"] = terminal
    return wkt.Any(type_url=PROCESS_URL, value=json.dumps(proc).encode())


def call(cl, method, req, resp_cls=None):
    return cl.call(TASK, method, req, resp_cls)


def rpc_error(cl, method, req):
    with pytest.raises(ttrpc.TTRPCError) as e:
        call(cl, method, req)
    return e.value.code, e.value.message


@pytest.mark.parametrize("code", [0, 5, 42])
def test_exec_streams_and_exit_code(containerd, sleeper, code):
    r = exec_(containerd, sleeper, "sh", "-c",
              "echo out; echo err >&2; printf last; exit %d" % code)
    assert (r.stdout, r.stderr, r.returncode) == ("out\nlast", "err\n", code)


def test_exec_killed_by_signal_status(containerd, sleeper):
    r = exec_(containerd, sleeper, "sh", "-c", "echo before; kill -KILL $$")
    assert (r.stdout, r.returncode) == ("before\n", 137)


def test_exec_stdin_round_trip(containerd, sleeper):
    data = "".join("line %d\n" % i for i in range(3000))
    r = exec_(containerd, sleeper, "head", "-c", str(len(data)), input=data)
    assert (r.stdout, r.returncode) == (data, 0), r.stderr


def test_exec_output_before_exit_not_lost(containerd, sleeper):
    r = exec_(containerd, sleeper, "sh", "-c", "seq 1 20000; echo tail >&2")
    assert r.returncode == 0
    assert r.stdout == "".join("%d\n" % i for i in range(1, 20001))
    assert r.stderr == "tail\n"


def test_exec_ids_reusable_after_exit(containerd, sleeper):
    for i in range(3):
        r = exec_(containerd, sleeper, "sh", "-c", "echo %d" % i, exec_id="same")
        assert (r.stdout, r.returncode) == ("%d\n" % i, 0), r.stderr


def test_exec_into_paused_container_refused(containerd, sleeper):
    containerd.ctr("task", "pause", sleeper)
    try:
        assert wait_status(containerd, sleeper, "PAUSED") == "PAUSED"
        r = exec_(containerd, sleeper, "true", timeout=30)
        assert r.returncode != 0
        assert "cannot exec in a paused state" in r.stderr
    finally:
        containerd.ctr("task", "resume", sleeper)
    r = exec_(containerd, sleeper, "echo", "ok", exec_id="e2")
    assert (r.stdout, r.returncode) == ("ok\n", 0)


def test_exec_missing_binary_errors_without_hanging(containerd, sleeper):
    t0 = time.monotonic()
    r = exec_(containerd, sleeper, "/bin/nope", timeout=30)
    assert r.returncode != 0
    assert 'exec: "/bin/nope": stat /bin/nope: no such file or directory' in r.stderr
    assert time.monotonic() - t0 < 20
    # The container is unharmed, and the id can be used again.
    assert containerd.tasks()[sleeper][1] == "RUNNING"
    r = exec_(containerd, sleeper, "echo", "still", exec_id="e1")
    assert (r.stdout, r.returncode) == ("still\n", 0), r.stderr


def test_fifty_concurrent_execs(containerd, sleeper):
    # The leading sleep is for ctr 1.6.20, not the shim: ctr opens its FIFO
    # readers in background goroutines and cancels a not yet finished open
    # when the process is already gone; with 50 ctr processes on a small
    # machine a process that exits at once loses its output in ctr on
    # either shim.
    procs = []
    try:
        for i in range(50):
            procs.append(containerd.ctr_popen(
                "task", "exec", "--exec-id", "c%d" % i, sleeper, "sh", "-c",
                "sleep 2; echo out%d; echo err%d >&2; exit %d" % (i, i, i % 7),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True))
        results = [p.communicate(timeout=180) + (p.returncode,) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert results == [("out%d\n" % i, "err%d\n" % i, i % 7) for i in range(50)]
    assert containerd.tasks()[sleeper][1] == "RUNNING"


def test_kill_exec_with_ctr(containerd, sleeper):
    p = containerd.ctr_popen("task", "exec", "--exec-id", "k1", sleeper, "sleep", "3600",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            ps = containerd.ctr("task", "ps", sleeper).stdout
            if "k1" in ps or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "k1" in ps, ps       # Pids: the exec's pid carries its exec id
        containerd.ctr("task", "kill", "--exec-id", "k1", "-s", "SIGTERM", sleeper)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143
    assert containerd.tasks()[sleeper][1] == "RUNNING"


def test_exec_events_in_order(containerd, sleeper):
    with ctr_events(containerd) as events:
        r = exec_(containerd, sleeper, "sh", "-c", "exit 4", exec_id="ev1")
        assert r.returncode == 4
    out = events[0]
    lines = [line for line in out.splitlines()
             if sleeper in line and line.split()[5].startswith("/tasks/")]
    topics = [line.split()[5] for line in lines]
    assert topics == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"], out
    assert '"exec_id":"ev1"' in lines[0] and '"exec_id":"ev1"' in lines[1]
    assert '"id":"ev1"' in lines[2] and '"exit_status":4' in lines[2]


def test_init_exit_published_after_its_execs(containerd, sleeper):
    # A running exec is killed with its container (private pid namespace):
    # its /tasks/exit comes before the init's.
    r = containerd.ctr("task", "exec", "-d", "--exec-id", "bg", sleeper, "sleep", "3600",
                       check=False)
    assert r.returncode == 0, r.stderr
    with ctr_events(containerd) as events:
        containerd.ctr("task", "kill", "-s", "SIGKILL", sleeper)
        assert wait_status(containerd, sleeper, "STOPPED") == "STOPPED"
    out = events[0]
    exits = [line for line in out.splitlines() if sleeper in line and "/tasks/exit" in line]
    ids = [line.split('"id":"')[1].split('"')[0] for line in exits]
    assert ids == ["bg", sleeper], out


# ---- raw Task RPCs (same wire on both shims) --------------------------------

def test_exec_rpc_error_matrix(containerd, sleeper):
    cid = sleeper
    with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
        spec = process_spec(containerd, cid, ["sh", "-c", "exit 6"])
        call(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="x1", spec=spec))
        assert rpc_error(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="x1", spec=spec)) \
            == (ttrpc.ALREADY_EXISTS, "id x1: already exists")
        st = call(cl, "State", pb.StateRequest(id=cid, exec_id="x1"), pb.StateResponse)
        assert (st.id, st.pid, st.status) == ("x1", 0, 1)       # created
        assert rpc_error(cl, "Kill", pb.KillRequest(id=cid, exec_id="x1", signal=9)) \
            == (ttrpc.FAILED_PRECONDITION, "process not created: failed precondition")
        # ResizePty of a created exec without a pty is fine.
        call(cl, "ResizePty", pb.ResizePtyRequest(id=cid, exec_id="x1", width=80, height=24))
        sid = cl.send_raw_request(TASK, "Wait", pb.WaitRequest(id=cid, exec_id="x1").encode())
        pid = call(cl, "Start", pb.StartRequest(id=cid, exec_id="x1"), pb.StartResponse).pid
        assert pid > 0
        w = pb.WaitResponse.decode(cl.recv_response(sid).payload)
        assert w.exit_status == 6 and w.exited_at.seconds > 0
        st = call(cl, "State", pb.StateRequest(id=cid, exec_id="x1"), pb.StateResponse)
        assert (st.pid, st.status, st.exit_status) == (pid, 3, 6)
        assert rpc_error(cl, "Start", pb.StartRequest(id=cid, exec_id="x1")) \
            == (ttrpc.UNKNOWN, "cannot start a stopped process")
        assert rpc_error(cl, "Kill", pb.KillRequest(id=cid, exec_id="x1", signal=9)) \
            == (ttrpc.NOT_FOUND, "process already finished: not found")
        assert rpc_error(cl, "ResizePty", pb.ResizePtyRequest(id=cid, exec_id="x1",
                                                              width=80, height=24)) \
            == (ttrpc.UNKNOWN, "cannot resize a stopped container")
        d = call(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="x1"), pb.DeleteResponse)
        assert (d.pid, d.exit_status, d.exited_at) == (pid, 6, w.exited_at)
        assert rpc_error(cl, "State", pb.StateRequest(id=cid, exec_id="x1")) \
            == (ttrpc.NOT_FOUND, "process does not exist x1: not found")
        assert rpc_error(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="x1")) \
            == (ttrpc.NOT_FOUND, "process does not exist x1: not found")
        # Never-started exec: deleted with zeros.
        call(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="x2", spec=spec))
        d = call(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="x2"), pb.DeleteResponse)
        assert (d.pid, d.exit_status) == (0, 0)


def test_exec_rpc_running_kill_delete_and_paused_state(containerd, sleeper):
    cid = sleeper
    with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
        spec = process_spec(containerd, cid, ["sleep", "3600"])
        call(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="r1", spec=spec))
        pid = call(cl, "Start", pb.StartRequest(id=cid, exec_id="r1"), pb.StartResponse).pid
        assert rpc_error(cl, "Start", pb.StartRequest(id=cid, exec_id="r1")) \
            == (ttrpc.UNKNOWN, "cannot start a running process")
        assert rpc_error(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="r1")) \
            == (ttrpc.UNKNOWN, "cannot delete a running process")
        pids = call(cl, "Pids", pb.PidsRequest(id=cid), pb.PidsResponse).processes
        mine = [p for p in pids if p.pid == pid]
        assert mine and mine[0].info.type_url == "containerd.runc.v1.ProcessDetails"
        call(cl, "Pause", pb.PauseRequest(id=cid))
        try:
            st = call(cl, "State", pb.StateRequest(id=cid, exec_id="r1"), pb.StateResponse)
            assert st.status == 4                                   # paused
            assert rpc_error(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="r2", spec=spec)) \
                == (ttrpc.UNKNOWN, "cannot exec in a paused state")
        finally:
            call(cl, "Resume", pb.ResumeRequest(id=cid))
        st = call(cl, "State", pb.StateRequest(id=cid, exec_id="r1"), pb.StateResponse)
        assert st.status == 2
        sid = cl.send_raw_request(TASK, "Wait", pb.WaitRequest(id=cid, exec_id="r1").encode())
        call(cl, "Kill", pb.KillRequest(id=cid, exec_id="r1", signal=15))
        w = pb.WaitResponse.decode(cl.recv_response(sid).payload)
        assert w.exit_status == 143
        call(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="r1"), pb.DeleteResponse)


def test_exec_rpc_start_failure_leaves_it_created(containerd, sleeper):
    cid = sleeper
    with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
        spec = process_spec(containerd, cid, ["/bin/nope"])
        call(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="f1", spec=spec))
        code, msg = rpc_error(cl, "Start", pb.StartRequest(id=cid, exec_id="f1"))
        assert code == ttrpc.UNKNOWN
        assert msg.startswith("OCI runtime exec failed: ")
        assert 'exec: "/bin/nope": stat /bin/nope: no such file or directory' in msg
        st = call(cl, "State", pb.StateRequest(id=cid, exec_id="f1"), pb.StateResponse)
        assert st.status == 1                                       # created
        w = call(cl, "Wait", pb.WaitRequest(id=cid, exec_id="f1"), pb.WaitResponse)
        assert w.exit_status == 0
        call(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="f1"), pb.DeleteResponse)
        st = call(cl, "State", pb.StateRequest(id=cid), pb.StateResponse)
        assert st.status == 2


def test_exec_rpc_stopped_container_refused(containerd, sleeper):
    cid = sleeper
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert wait_status(containerd, cid, "STOPPED") == "STOPPED"
    with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
        spec = process_spec(containerd, cid, ["true"])
        assert rpc_error(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="s1", spec=spec)) \
            == (ttrpc.UNKNOWN, "cannot exec in a stopped state")


def test_exec_close_io_gives_eof(containerd, sleeper, runtime, tmp_path):
    # Raw Exec with a stdin FIFO: the process sees EOF only after the client
    # closed its writer AND CloseIO dropped the shim's keep-alive writer.
    cid = sleeper
    fifo_in, fifo_out, fifo_err = (str(tmp_path / n) for n in ("in", "out", "err"))
    for f in (fifo_in, fifo_out, fifo_err):
        os.mkfifo(f)
    out = os.open(fifo_out, os.O_RDONLY | os.O_NONBLOCK)
    err = os.open(fifo_err, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
            spec = process_spec(containerd, cid, ["sh", "-c", "cat; echo done"])
            call(cl, "Exec", pb.ExecProcessRequest(id=cid, exec_id="io1", spec=spec,
                                                   stdin=fifo_in, stdout=fifo_out,
                                                   stderr=fifo_err))
            sid = cl.send_raw_request(TASK, "Wait",
                                      pb.WaitRequest(id=cid, exec_id="io1").encode())
            call(cl, "Start", pb.StartRequest(id=cid, exec_id="io1"), pb.StartResponse)
            w = open_writer(fifo_in)
            os.write(w, b"hello\n")
            os.close(w)
            got = read_until(out, b"hello\n", 10)
            assert got == b"hello\n"
            time.sleep(0.3)
            st = call(cl, "State", pb.StateRequest(id=cid, exec_id="io1"), pb.StateResponse)
            if runtime != PY_RUNTIME and st.status == 3:
                # Seen once with the Go shim of 2.1.9 (in a run where another
                # of its shims panicked in handleInitExit): recorded, not judged.
                pytest.skip("Go shim: the exec saw EOF when the client closed its writer")
            assert st.status == 2       # still running: the shim keeps stdin open
            call(cl, "CloseIO", pb.CloseIORequest(id=cid, exec_id="io1", stdin=True))
            wr = pb.WaitResponse.decode(cl.recv_response(sid).payload)
            assert wr.exit_status == 0
            assert read_until(out, b"done\n", 10) == b"done\n"
            call(cl, "Delete", pb.DeleteRequest(id=cid, exec_id="io1"), pb.DeleteResponse)
    finally:
        os.close(out)
        os.close(err)


def test_exec_on_pyshim_counts_no_leaked_fds(containerd, ctr_run, cid):
    # After many execs (tty and not) the shim holds no more fds than before.
    ctr_run("sleep", "3600", runtime=PY_RUNTIME, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    shims = containerd.shims(id=cid)
    shim = shims[0][0]

    def nfds():
        return len(os.listdir("/proc/%d/fd" % shim))
    exec_(containerd, cid, "true", exec_id="warm")
    before = nfds()
    for i in range(10):
        r = exec_(containerd, cid, "sh", "-c", "echo %d" % i, exec_id="n%d" % i)
        assert r.returncode == 0
    r = exec_(containerd, cid, "/bin/nope", exec_id="bad")
    assert r.returncode != 0
    time.sleep(0.3)
    assert nfds() <= before
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
    wait_status(containerd, cid, "STOPPED")


def test_exec_background_child_holding_stdout_does_not_block(containerd, runtime, sleeper):
    # The exec exits but its child keeps stdout open: ctr still returns
    # within the shim's bounded drain waits (Go 1.6: 2 s at Delete; the Go
    # shim of 2.x takes ~10 s), not when the child ends (30 s).
    t0 = time.monotonic()
    r = exec_(containerd, sleeper, "sh", "-c", "sleep 30 & echo hi", exec_id="bgout",
              timeout=30)
    took = time.monotonic() - t0
    assert (r.stdout, r.returncode) == ("hi\n", 0), r.stderr
    assert took < (8 if runtime == PY_RUNTIME or containerd.version < (2, 0, 0) else 20), took
