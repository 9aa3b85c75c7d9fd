"""A shim under stress or left alone: requests in flight when it exits, a
client that floods it without reading, a shim whose containerd never sends
Create.

Standalone shims are started with the installed binary's `start` action as
containerd starts them (cwd = bundle, -namespace/-address/-id, events to the
session containerd's ttrpc socket), containers run from a private runc root."""
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from shim import frame, ttrpc, ttrpc_client
from shim.pb import runc as runc_pb
from shim.pb import task as pb
from shim.pb import ttrpc as pb_ttrpc
from shim.pb import wkt
from support import leaks
from support.bundle import busybox_rootfs, write_bundle
from support.containerd import PY_RUNTIME, kill_pids, pid_alive, shim_processes, \
    wait_pids_gone
from support.helpers import address_of, holding_runc, wait_file, wait_status
from support.shimwire import send_until_stalled

pytestmark = pytest.mark.integration

TASK = "containerd.task.v2.Task"
RUNNING = 2


def any_of(msg):
    return wkt.Any(type_url=msg.FULL_NAME, value=msg.encode())


class Standalone:
    """Shims started by hand, bundles on a shared busybox rootfs."""

    def __init__(self, containerd, binary):
        self.c = containerd
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="pyshim-rel-", dir="/run")
        self.rootfs = busybox_rootfs(os.path.join(self.dir, "rootfs"))
        self.runc_root = os.path.join(self.dir, "runc")
        self.pids = []
        self.sockets = []
        self.ids = []

    def bundle(self, id, args):
        b = os.path.join(self.dir, id)
        spec = write_bundle(b, self.rootfs, args)
        spec["linux"]["cgroupsPath"] = "/%s/%s" % (self.c.namespace, id)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        self.ids.append(id)
        return b

    def options(self, binary_name=""):
        return any_of(runc_pb.Options(root=self.runc_root, binary_name=binary_name))

    def start(self, id, args=("sleep", "3600"), env=None):
        """`start` a shim for a new bundle `id`; (bundle, address, serve pid)."""
        b = self.bundle(id, args)
        e = dict(os.environ, TTRPC_ADDRESS=self.c.ttrpc_address)
        e.update(env or {})
        r = subprocess.run([self.binary, "-namespace", self.c.namespace, "-address",
                            self.c.address, "-publish-binary", "/usr/bin/containerd",
                            "-id", id, "start"], cwd=b, input=b"", capture_output=True,
                           env=e, timeout=30)
        assert r.returncode == 0, r.stderr
        address = r.stdout.decode()
        self.sockets.append(address[len("unix://"):])
        pids = [p for p, a in shim_processes(self.c.namespace, self.c.address, id)
                if "start" not in a]
        assert len(pids) == 1, pids
        self.pids += pids
        return b, address, pids[0]

    def cleanup(self):
        # Only shims of ours still running: a PID that ended may be reused.
        kill_pids([p for p, _ in shim_processes(self.c.namespace, self.c.address)
                   if p in self.pids])
        for p in self.pids:
            try:
                os.waitpid(p, os.WNOHANG)   # ours if pytest is a subreaper
            except ChildProcessError:
                pass
        root = os.path.join(self.runc_root, self.c.namespace)
        for id in self.ids:
            subprocess.run(["runc", "--root", root, "delete", "--force", id],
                           capture_output=True, timeout=30)
        for path in self.sockets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        subprocess.run(["umount", "-R", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def standalone(containerd, pyshim_binary):
    s = Standalone(containerd, pyshim_binary)
    yield s
    s.cleanup()


def wrapper(dir, step, script):
    """A runc (Options.binary_name) that runs `script` (sh; $RUNC is the
    real runc, "$@" its argv) for `runc <step>`, the real runc otherwise."""
    path = os.path.join(dir, "runc-" + step)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nRUNC=%s\nfor a in "$@"; do\n  if [ "$a" = %s ]; then\n%s\n'
                '  fi\ndone\nexec "$RUNC" "$@"\n' % (shutil.which("runc"), step, script))
    os.chmod(path, 0o755)
    return path


# ---- shutdown with requests in flight ----------------------------------------

def test_shutdown_lets_requests_in_flight_finish(standalone):
    """A Kill still waiting for `runc kill` when the container exits, is
    deleted and the shim is told to shut down gets its reply (Go's ttrpc
    server waits for active connections), then the shim exits and removes
    its socket."""
    done = os.path.join(standalone.dir, "kill-done")
    slow_kill = wrapper(standalone.dir, "kill",
                        '"$RUNC" "$@"; rc=$?; sleep 5; : > %s; exit $rc' % done)
    id = "drain"
    bundle, address, pid = standalone.start(id)
    with ttrpc_client.SyncClient(address, timeout=30) as a, ttrpc_client.SyncClient(address, timeout=30) as b:
        a.call(TASK, "Create", pb.CreateTaskRequest(
            id=id, bundle=bundle, options=standalone.options(slow_kill)), pb.CreateTaskResponse)
        a.call(TASK, "Start", pb.StartRequest(id=id), pb.StartResponse)
        wait = b.send_raw_request(TASK, "Wait", pb.WaitRequest(id=id).encode())
        kill = a.send_raw_request(TASK, "Kill", pb.KillRequest(id=id, signal=9).encode())
        # The container dies at once; runc kill "returns" 5 s later.
        assert pb.WaitResponse.decode(b.recv_response(wait).payload).exit_status == 137
        assert b.call(TASK, "Delete", pb.DeleteRequest(id=id),
                      pb.DeleteResponse).exit_status == 137
        b.call(TASK, "Shutdown", pb.ShutdownRequest(id=id))
        assert not os.path.exists(done), "runc kill ended before Shutdown: no race"
        # Still answering meanwhile, but making no task that would die with it.
        late = standalone.bundle("late", ["true"])
        with pytest.raises(ttrpc.TTRPCError) as e:
            b.call(TASK, "Create", pb.CreateTaskRequest(
                id="late", bundle=late, options=standalone.options()))
        assert (e.value.code, e.value.message) == (9, "shim is shutting down: failed precondition")
        r = a.recv_response(kill)           # not "ttrpc: closed"
        assert os.path.exists(done)
    assert r.status is None or r.status.code == 0, r.status
    assert not wait_pids_gone([pid], 15), "shim did not exit after Shutdown"
    assert not os.path.exists(address[len("unix://"):])


# ---- a client that never reads ---------------------------------------------------

def memory_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for %d" % (field, pid))


def reset_peak(pid):
    """Reset VmHWM (peak RSS) to the current RSS; False if the kernel refuses."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def state_frames(cid, n):
    req = pb_ttrpc.Request(service=TASK, method="State",
                           payload=pb.StateRequest(id=cid).encode()).encode()
    return b"".join(frame.encode_frame(2 * i + 1, frame.TYPE_REQUEST, 0, req)
                    for i in range(n))


@pytest.mark.parametrize("then", ["read", "close"])
def test_state_flood_without_reading_keeps_the_shim_small(containerd, ctr_run, cid, then):
    """100k State requests from a client that does not read the replies:
    the shim stops reading that connection instead of queueing replies
    (this grew it from 9 to 43 MiB); once the client reads, every reply
    arrives; when it closes instead, the shim goes on serving, and what it
    keeps (its allocators' high-water mark, ~1.3 MiB) does not add up over
    floods."""
    ctr_run("sleep", "3600", runtime=PY_RUNTIME, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    address = address_of(containerd, cid)
    with ttrpc_client.SyncClient(address) as cl:
        pid = cl.call(TASK, "Connect", pb.ConnectRequest(id=cid), pb.ConnectResponse).shim_pid
        for _ in range(2000):               # warm up: a normal client's working set
            cl.call(TASK, "State", pb.StateRequest(id=cid), pb.StateResponse)
    n = 100000
    data = state_frames(cid, n)
    base = memory_kib(pid, "VmRSS")
    exact_peak = reset_peak(pid)
    peak = base
    deadline = time.monotonic() + 120

    def sample():
        nonlocal peak
        peak = max(peak, memory_kib(pid, "VmRSS"))

    def flood():
        """Sends until the shim has taken nothing for 1 s (or everything)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[len("unix://"):])
        s.setblocking(False)
        sent = send_until_stalled(s, data, deadline, sample)
        assert time.monotonic() < deadline, "flood never stalled"
        assert sent < len(data), "the shim took 100k requests without their replies being read"
        return s, sent

    s, sent = flood()
    if then == "close":
        s.close()
        time.sleep(1)
        # What the shim keeps is a high-water mark of its allocators, not a
        # leak: a second flood leaves it where the first did.
        after_one = memory_kib(pid, "VmRSS")
        s, sent = flood()
        s.close()
        time.sleep(1)
        after_two = memory_kib(pid, "VmRSS")
        print("shim RSS after the floods closed: %+.2f, %+.2f MiB"
              % ((after_one - base) / 1024.0, (after_two - base) / 1024.0))
        assert (after_one - base) / 1024.0 < 2.5, "kept %d KiB" % (after_one - base)
        assert after_two - after_one < 512, "a second flood kept %d KiB more" % (
            after_two - after_one)
    else:
        reader = frame.FrameReader()
        seen = set()
        while len(seen) < n:
            assert time.monotonic() < deadline, "only %d of %d replies" % (len(seen), n)
            want_write = [s] if sent < len(data) else []
            r, w, _ = select.select([s], want_write, [], 1.0)
            if w:
                try:
                    sent += s.send(data[sent:sent + 65536])
                except BlockingIOError:
                    pass
            if r:
                chunk = s.recv(1 << 16)
                assert chunk, "shim closed the connection"
                for sid, mtype, _flags, payload, _len in reader.feed(chunk):
                    assert mtype == frame.TYPE_RESPONSE and sid % 2 == 1 and sid not in seen
                    resp = pb_ttrpc.Response.decode(payload)
                    assert resp.status is None, resp.status
                    st = pb.StateResponse.decode(resp.payload)
                    assert (st.id, st.status) == (cid, RUNNING)
                    seen.add(sid)
            peak = max(peak, memory_kib(pid, "VmRSS"))
        assert sent == len(data) and len(seen) == n
        s.close()
    if exact_peak:
        peak = max(peak, memory_kib(pid, "VmHWM"))
    growth = (peak - base) / 1024.0
    print("shim RSS %.1f MiB, peak growth %.2f MiB (%s)" % (base / 1024.0, growth, then))
    assert growth < 5, "shim grew by %.1f MiB" % growth
    assert pid_alive(pid)
    with ttrpc_client.SyncClient(address) as cl:
        st = cl.call(TASK, "State", pb.StateRequest(id=cid), pb.StateResponse)
        assert (st.id, st.status) == (cid, RUNNING)


# ---- a shim that containerd forgot ------------------------------------------------

IDLE_ENV = "PYSHIM_IDLE_EXIT_SECONDS"


def test_shim_without_create_exits_and_removes_its_socket(standalone):
    """containerd died between `start` and Create: the shim does not stay
    behind for ever."""
    t0 = time.monotonic()
    _, address, pid = standalone.start("orphan", env={IDLE_ENV: "2"})
    path = address[len("unix://"):]
    time.sleep(0.5)
    assert pid_alive(pid) and os.path.exists(path)
    assert not wait_pids_gone([pid], 20), "shim without Create still running"
    assert time.monotonic() - t0 >= 2
    assert not os.path.exists(path)


def test_shim_whose_create_failed_exits(standalone):
    """containerd died while a Create was in flight, and the Create then
    failed (here as when ctr has removed its stdio FIFOs): no task was made,
    so the shim still leaves once the bound has passed. (Counting the Create
    as served left such shims behind after containerd crashes.)"""
    id = "create-failed"
    bundle, address, pid = standalone.start(id, env={IDLE_ENV: "2"})
    gone_fifo = os.path.join(standalone.dir, "no-such-fifo", "stdout")
    with ttrpc_client.SyncClient(address, timeout=30) as cl:
        with pytest.raises(ttrpc.TTRPCError):
            cl.call(TASK, "Create", pb.CreateTaskRequest(
                id=id, bundle=bundle, stdout=gone_fifo, options=standalone.options()),
                pb.CreateTaskResponse)
        assert cl.call(TASK, "Connect", pb.ConnectRequest(id=id),
                       pb.ConnectResponse).task_pid == 0
    assert not wait_pids_gone([pid], 20), "shim whose only Create failed still running"
    assert not os.path.exists(address[len("unix://"):])


def test_containerd_killed_with_a_create_in_flight(fresh_containerd, make_cid, runtime,
                                                  tmp_path):
    """containerd SIGKILLed while a Create waits in `runc create`, restarted,
    then the Create completes. On its restart containerd 2.x asks each shim
    for its Pids to tell a shim that serves a task from a leaked one (whose
    shim it deletes): pyshim answers once the Create has settled, as the Go
    shim before 2.3 did (that of 2.3+ answers NotFound and exits, its Create
    lost), so the task is kept, listed and removable. No shim is left
    serving a task containerd does not know (answering NotFound at once had
    containerd delete the shim as leaked while the Create went on: the shim
    then stayed for ever with a created runc container)."""
    c = fresh_containerd
    image = c.import_image()
    cid = make_cid()
    go = str(tmp_path / "create-go")
    runc = holding_runc(str(tmp_path), "create")
    run = c.ctr_popen("run", "-d", "--runtime", runtime, *c.run_args(runtime, cid, runc),
                      image, cid, "sleep", "3600", stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    release = threading.Timer(2.0, lambda: open(go, "w").close())
    try:
        wait_file(str(tmp_path / "create-ready-1"), timeout=30)
        shims = [p for p, _a in c.shims(id=cid)]
        assert len(shims) == 1, shims
        c.proc.kill()
        c.proc.wait(10)
        c.stop()
        run.wait(30)
        release.start()         # containerd 2.x waits for the Pids while it loads
        c.start(timeout=60)
    finally:
        release.cancel()
        open(go, "w").close()
        if run.poll() is None:
            run.kill()
            run.wait()
    deadline = time.monotonic() + 20
    while True:
        task = c.tasks().get(cid)
        alive = [p for p in shims if pid_alive(p)]
        if task is not None and task[1] == "CREATED" or not alive:
            break
        if time.monotonic() > deadline:
            if runtime != PY_RUNTIME:
                # seen on 1.6.20: recorded, then removed here by PID
                kill_pids(alive)
                subprocess.run(["runc", "--root", c.runc_root, "delete", "--force", cid],
                               capture_output=True, timeout=30)
                try:
                    os.unlink(leaks.socket_path(c, cid))    # killed, it could not
                except FileNotFoundError:
                    pass
                pytest.skip("Go shim left serving a task containerd does not list")
            raise AssertionError("shim %s alive, task %s not listed" % (alive, cid))
        time.sleep(0.1)
    c.ctr("task", "rm", "-f", cid, check=False)
    c.ctr("container", "rm", cid)
    assert wait_pids_gone(shims, 15) == []
    assert cid not in c.tasks()
    assert not os.path.exists(os.path.join(c.runc_root, cid))
    if runtime == PY_RUNTIME:
        assert not os.path.exists(leaks.socket_path(c, cid))


def test_shim_with_create_stays(standalone):
    id = "adopted"
    bundle, address, pid = standalone.start(id, env={IDLE_ENV: "1"})
    with ttrpc_client.SyncClient(address, timeout=30) as cl:
        cl.call(TASK, "Create", pb.CreateTaskRequest(
            id=id, bundle=bundle, options=standalone.options()), pb.CreateTaskResponse)
        time.sleep(3)
        assert pid_alive(pid)
        assert cl.call(TASK, "State", pb.StateRequest(id=id), pb.StateResponse).status == 1
        cl.call(TASK, "Delete", pb.DeleteRequest(id=id), pb.DeleteResponse)
        # Even with no task left: it got a Create, so only Shutdown ends it.
        time.sleep(1.5)
        assert pid_alive(pid)
        cl.call(TASK, "Shutdown", pb.ShutdownRequest(id=id))
    assert not wait_pids_gone([pid], 15)
    assert not os.path.exists(address[len("unix://"):])


# ---- callers other than root -----------------------------------------------

def test_non_root_caller_is_refused(standalone, tmp_path):
    """The socket is 0600 in a 0700 dir; even if a caller of another uid
    reached it (here: a hard link in an open dir, the inode made 0666 for
    this test), the shim drops the connection unanswered (SO_PEERCRED, as
    Go's ttrpc does), and goes on serving root."""
    _b, address, pid = standalone.start("peer")
    path = address[len("unix://"):]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    open_dir = tempfile.mkdtemp(prefix="pyshim-peer-", dir="/run")
    link = os.path.join(open_dir, "s")
    try:
        os.chmod(open_dir, 0o755)
        os.link(path, link)
        os.chmod(link, 0o666)
        req = pb_ttrpc.Request(service=TASK, method="Connect",
                               payload=pb.ConnectRequest(id="peer").encode()).encode()
        r, w = os.pipe()
        child = os.fork()
        if child == 0:          # nobody: connect, send a request, report what came back
            code = 2
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(link)
                try:
                    s.sendall(frame.encode_frame(1, frame.TYPE_REQUEST, 0, req))
                    got = s.recv(100)
                except OSError:
                    got = b""
                os.write(w, b"connected:%d" % len(got))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(child, 0)
        with os.fdopen(r, "rb") as f:
            said = f.read()
        assert os.waitstatus_to_exitcode(status) == 0 and said == b"connected:0", said
    finally:
        os.chmod(path, 0o600)
        shutil.rmtree(open_dir, ignore_errors=True)
    # Root is still answered.
    with ttrpc_client.SyncClient(address) as cl:
        r = cl.call(TASK, "Connect", pb.ConnectRequest(id="peer"), pb.ConnectResponse)
    assert r.shim_pid == pid
