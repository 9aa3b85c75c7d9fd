"""Kubernetes CRI through containerd's CRI plugin with pyshim as the runtime
handler "pyshim" (runtime_type io.containerd.pyshim.v1, runc options from a
ConfigPath TOML), beside the Go shim as handler "runc" where the behaviour
must be the same.

One private CRI-mode containerd for the module (support.containerd,
Containerd(cri=True)); it is called `containerd` here so that conftest shows
its log when a test fails. Pods use the host network (no CNI) and a
cgroup_parent under the containerd's private cgroup root (a systemd slice
with PYSHIM_TEST_CGROUP_DRIVER=systemd; PYSHIM_TEST_RUNC picks the handlers'
BinaryName). Cgroup files are read where the host has them: v1 / hybrid
(memory.limit_in_bytes, cpu.shares, ...) or v2 (memory.max, cpu.max, ...). Each test removes
its pods and checks that their shims are gone; the module teardown checks
that nothing (shim, runc state, mount, cgroup) is left.
"""
import itertools
import json
import math
import os
import re
import shutil
import time

import pytest

from support.containerd import (CRI_GO_HANDLER, CRI_NAMESPACE, CRI_PY_HANDLER, PY_RUNTIME,
                                Containerd, find_pyshim_binary, mounts_under, pid_alive,
                                proc_argv)
from support.cgroup import is_v2, runc_name, systemd_cgroup, systemd_scope_dir, v2_file
# support.cri needs grpcio only for CRIClient (checked by the fixture).
from support.cri import (CONTAINER_EXITED, CONTAINER_RUNNING, NS_NODE, SANDBOX_NOTREADY,
                         SANDBOX_READY, CRIError, StreamClient, StreamError)
from support.helpers import address_of

pytestmark = pytest.mark.integration

HANDLERS = [CRI_GO_HANDLER, CRI_PY_HANDLER]
HANDLER_IDS = ["go", "py"]
CG = "/sys/fs/cgroup"
MiB = 1 << 20
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) "
                      r"(stdout|stderr) ([FP]) (.*)$")
SLEEP = ["sleep", "1000"]
_names = itertools.count(1)


def _skip_or_fail(reason):
    # Like tests/conftest.py: on CI a missing prerequisite fails.
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _prerequisites():
    if os.geteuid() != 0:
        return "CRI tests need root (they start a private containerd)"
    for b in ("containerd", "ctr", runc_name(), "protoc"):
        if shutil.which(b) is None:
            return "%s not found on PATH (apt-get install containerd runc protobuf-compiler)" % b
    if not os.path.exists("/bin/busybox"):
        return "/bin/busybox missing (apt-get install busybox-static)"
    if find_pyshim_binary() is None:
        return "containerd-shim-pyshim-v1 is not installed: run `pip install .`"
    if not is_v2() and not os.path.isdir(CG + "/memory"):
        return "these tests read memory cgroup files: no v1 memory controller"
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "grpcio is not installed (pip install '.[test]')"
    from support import cri
    try:
        cri.cri_pb2()
    except cri.CRISetupError as e:
        return "CRI api.proto unavailable: %s" % e
    return None


@pytest.fixture(scope="module")
def containerd():
    """The module's private CRI-mode containerd, images imported."""
    reason = _prerequisites()
    if reason:
        _skip_or_fail(reason)
    c = Containerd(cri=True)
    try:
        c.start()
        c.import_cri_images()
    except Exception:
        c.cleanup()
        raise
    yield c
    problems = c.cleanup()
    if problems:
        pytest.fail("CRI containerd left things behind (cleaned up now):\n  %s"
                    % "\n  ".join(problems), pytrace=False)


@pytest.fixture(params=HANDLERS, ids=HANDLER_IDS)
def handler(request):
    return request.param


# ------------------------------------------------------------------ helpers

def shim_pids(c, kind="py"):
    """PIDs of the serving shim processes of c's "k8s.io" namespace: kind
    "py" = pyshim (a python executable), "go" = containerd-shim-runc-v2.
    Transient `start`/`delete` invocations are left out."""
    out = []
    for pid, argv in c.shims(CRI_NAMESPACE):
        if "start" in argv or "delete" in argv:
            continue
        try:
            exe = os.path.basename(os.readlink("/proc/%d/exe" % pid))
        except OSError:
            continue
        if (kind == "py") == exe.startswith("python"):
            out.append(pid)
    return sorted(out)


def wait_for(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def cgroup_dir(c, controller, pod, cid):
    """The container's cgroup: v1 its dir in `controller`'s hierarchy; v2
    (controller unused) <parent>/<id>, or with systemd the scope CRI asks
    runc for (cgroupsPath <pod slice>:cri-containerd:<id>)."""
    if not is_v2():
        return os.path.join(CG, controller, pod.cgroup_parent.lstrip("/"), cid)
    if systemd_cgroup():
        return systemd_scope_dir(pod.cgroup_parent, "cri-containerd", cid)
    return os.path.join(CG, pod.cgroup_parent.lstrip("/"), cid)


def cgroup_procs(d):
    """PIDs in cgroup d and below (crun's systemd driver puts them in a
    "container" sub-cgroup of the scope)."""
    pids = []
    for sub, _, files in os.walk(d):
        if "cgroup.procs" in files:
            pids += read_text(os.path.join(sub, "cgroup.procs")).split()
    return pids


def memory_limit(d):
    return int(v2_file(d, "memory.max") if is_v2() else read_text(d + "/memory.limit_in_bytes"))


def memory_usage(d):
    return int(v2_file(d, "memory.current") if is_v2() else read_text(d + "/memory.usage_in_bytes"))


def cpu_weights(shares):
    """cpu.weight values runtimes derive from cpu.shares: the linear map of
    runc <= 1.3 and crun, or the log-scale one of newer runc."""
    linear = 1 + ((shares - 2) * 9999) // 262142
    lg = math.log2(shares)
    return {linear, math.ceil(10 ** ((lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0))}


def read_text(path):
    with open(path) as f:
        return f.read()


def parse_log(path):
    """[(time, stream, tag, text)] of a CRI log file; every line must parse."""
    out = []
    for line in read_text(path).splitlines():
        m = LOG_LINE.match(line)
        assert m, "not a CRI log line: %r" % line
        out.append(m.groups())
    return out


class Pod:
    def __init__(self, id, config, handler, log_dir, cgroup_parent):
        self.id, self.config, self.handler = id, config, handler
        self.log_dir, self.cgroup_parent = log_dir, cgroup_parent
        self.containers = []


class Pods:
    """Creates pods and containers through CRI; remove() stops and removes
    every pod made (CRI removes their containers too)."""

    def __init__(self, c, base):
        self.c, self.base = c, base
        self.made = []

    @property
    def cri(self):
        return self.c.cri        # re-created after a containerd restart

    @property
    def pb(self):
        return self.c.cri.pb

    def pod(self, handler=CRI_PY_HANDLER):
        pb = self.pb
        name = "%s-%d" % (self.base, next(_names))
        log_dir = os.path.join(self.c.dir, "pod-logs", name)
        os.makedirs(log_dir)
        cgp = self.c.cgroup_parent(name)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid="uid-" + name, namespace="pyshim"),
            log_directory=log_dir,
            labels={"pyshim-test": self.base},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgp,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=NS_NODE))))
        pid = self.cri.run_pod_sandbox(config, runtime_handler=handler)
        pod = Pod(pid, config, handler, log_dir, cgp)
        self.made.append(pod)
        return pod

    def container(self, pod, cmd, name=None, stdin=False, tty=False, memory=0, start=True):
        pb = self.pb
        name = name or "c%d" % (len(pod.containers) + 1)
        linux = None
        if memory:
            linux = pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(memory_limit_in_bytes=memory))
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image="docker.io/library/pyshim-busybox:latest"),
            command=list(cmd), log_path=name + ".log", stdin=stdin, tty=tty, linux=linux)
        cid = self.cri.create_container(pod.id, config, pod.config)
        pod.containers.append(cid)
        if start:
            self.cri.start_container(cid)
        return cid

    def log_path(self, pod, cid):
        return self.cri.container_status(cid).log_path

    def wait_state(self, cid, state, timeout=20):
        return wait_for(lambda: (lambda s: s if s.state == state else None)(
            self.cri.container_status(cid)), timeout, "container %s state %d" % (cid, state))

    def remove(self, pod):
        self.cri.stop_pod_sandbox(pod.id)
        self.cri.remove_pod_sandbox(pod.id)
        self.made.remove(pod)

    def remove_all(self):
        errors = []
        for pod in list(self.made):
            try:
                self.remove(pod)
            except Exception as e:
                errors.append("%s: %s" % (pod.id, e))
        return errors


@pytest.fixture
def pods(containerd, request):
    """Pods of this test; removed afterwards, then no shim may be left."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")
    p = Pods(containerd, base)
    yield p
    if not containerd.running():
        containerd.start()
    errors = p.remove_all()
    assert not errors, "removing pods failed: %s" % errors
    left = []
    try:
        wait_for(lambda: not containerd.shims(CRI_NAMESPACE), 10, "shims to exit")
    except AssertionError:
        left = ["%d %s" % (pid, " ".join(argv)) for pid, argv in containerd.shims(CRI_NAMESPACE)]
    assert not left, "shim processes left after removing the test's pods:\n  %s" % "\n  ".join(left)


def stream(url, **kw):
    return StreamClient(url, **kw)


# ------------------------------------------------------------------ tests

def test_one_pod_three_containers_one_pyshim(containerd, pods):
    c = containerd
    pod = pods.pod()
    ids = [pods.container(pod, SLEEP) for _ in range(3)]
    for cid in ids:
        st = c.cri.container_status(cid)
        assert st.state == CONTAINER_RUNNING, "container %s not RUNNING: %s" % (cid, st)
    assert c.cri.pod_sandbox_status(pod.id).status.state == SANDBOX_READY
    # The containers carry the sandbox id, so pyshim groups them with the
    # sandbox container: one serving process, one socket for all four tasks.
    for cid in ids:
        spec = json.loads(read_text(os.path.join(c.bundle(cid, CRI_NAMESPACE), "config.json")))
        assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == pod.id
    addresses = {address_of(c, i, CRI_NAMESPACE)
                 for i in [pod.id] + ids}
    assert len(addresses) == 1, addresses
    pids = shim_pids(c)
    assert len(pids) == 1, "want exactly one pyshim process for the pod, got %s" % pids
    assert shim_pids(c, "go") == []
    argv = proc_argv(pids[0])
    assert argv[argv.index("-namespace") + 1] == CRI_NAMESPACE
    # runc state lives in the private Root from the ConfigPath TOML.
    root = os.path.join(c.cri_runc_base, CRI_NAMESPACE)
    assert sorted(os.listdir(root)) == sorted([pod.id] + ids)
    # The cgroups are under the pod's cgroup_parent.
    for cid in ids:
        procs = cgroup_procs(cgroup_dir(c, "memory", pod, cid))
        assert procs, "no process in the memory cgroup of %s" % cid


@pytest.mark.parametrize("handler", [CRI_PY_HANDLER, CRI_GO_HANDLER])
def test_pod_containers_join_the_sandbox_shim_as_go(containerd, pods, handler):
    """containerd 2.x hands a pod's containers to the sandbox's shim
    without running `start` for each when that shim announced version 3
    (it then writes <bundle>/sandbox): both shims do, from 2.0 on (2.0-2.2
    by the JSON reply, 2.3+ by BootstrapResult). 1.x runs `start` for each
    and reads every reply as version 2."""
    c = containerd
    pod = pods.pod(handler)
    ids = [pods.container(pod, SLEEP) for _ in range(2)]
    v2 = c.version >= (2, 0, 0)
    for id in [pod.id] + ids:
        bundle = c.bundle(id, CRI_NAMESPACE)
        if v2:
            params = json.loads(read_text(os.path.join(bundle, "bootstrap.json")))
            assert (params["version"], params["protocol"]) == (3, "ttrpc"), (id, params)
        if id != pod.id:
            sandbox = os.path.join(bundle, "sandbox")
            assert (read_text(sandbox) if v2 else os.path.exists(sandbox)) == \
                (pod.id if v2 else False), id
    assert "downgrading client API version" not in c.log_text()
    st = c.cri.container_status(ids[0])
    assert st.state == CONTAINER_RUNNING, st


def test_three_pods_three_pyshims(containerd, pods):
    c = containerd
    py = [pods.pod() for _ in range(3)]
    for pod in py:
        pods.container(pod, SLEEP)
        pods.container(pod, SLEEP)
    go = pods.pod(CRI_GO_HANDLER)
    pods.container(go, SLEEP)
    pids = shim_pids(c)
    assert len(pids) == 3, "want one pyshim process per pod (3), got %s" % pids
    assert len(shim_pids(c, "go")) == 1
    addresses = {address_of(c, p.id, CRI_NAMESPACE) for p in py}
    assert len(addresses) == 3
    for pod in py + [go]:
        for cid in pod.containers:
            assert c.cri.container_status(cid).state == CONTAINER_RUNNING
    # Removing one pod ends exactly its shim.
    pods.remove(py[0])
    wait_for(lambda: len(shim_pids(c)) == 2, 10, "the removed pod's shim to exit")
    assert set(shim_pids(c)) < set(pids)


def test_exec_sync(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, SLEEP)
    r = c.cri.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    r = c.cri.exec_sync(cid, ["true"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"", b"", 0)
    # Bigger output arrives complete and in order.
    r = c.cri.exec_sync(cid, ["seq", "1", "50000"])
    assert r.exit_code == 0
    assert r.stdout == "".join("%d\n" % i for i in range(1, 50001)).encode()
    # The exec sees the container's filesystem and environment.
    r = c.cri.exec_sync(cid, ["sh", "-c", "echo $PATH; cat /etc/hostname"])
    assert r.stdout.splitlines()[0].startswith(b"/usr/local/sbin")
    # A command that does not exist fails the exec (an error or exit 126/127,
    # whatever the Go shim does pyshim must do too: checked by parametrizing).
    try:
        r = c.cri.exec_sync(cid, ["/no/such/binary"])
        outcome = ("exit", r.exit_code)
    except CRIError as e:
        outcome = ("error", e.code.name)
    assert outcome in (("exit", 126), ("exit", 127), ("error", "UNKNOWN")), outcome
    # An exec that outlives its timeout is killed and reported as an error.
    t = time.monotonic()
    with pytest.raises(CRIError) as ei:
        c.cri.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t < 15
    assert "timeout" in ei.value.details.lower() or "deadline" in ei.value.details.lower(), \
        ei.value
    r = wait_for(lambda: (lambda r: r if b"sleep 30" not in r.stdout else None)(
        c.cri.exec_sync(cid, ["ps", "-o", "args"])), 5, "the timed-out exec to be killed")


def test_exec_stream_tty_resize(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, SLEEP)
    url = c.cri.exec(cid, ["sh"], tty=True, stdin=True)
    with stream(url) as ws:
        ws.resize(100, 30)
        ws.send_stdin(b"stty size; echo mark-$((40+2))\n")
        out = ws.read_until(re.compile(rb"mark-42"))
        assert re.search(rb"(?m)^30 100\r$", out), out
        ws.resize(132, 43)
        ws.send_stdin(b"stty size; tty; echo mark-$((40+3))\n")
        out = ws.read_until(re.compile(rb"mark-43"))
        assert re.search(rb"(?m)^43 132\r$", out), out
        assert re.search(rb"(?m)^/dev/pts/\d+\r$", out), out
        assert ws.data.get(2, b"") == b""          # a tty has no separate stderr


@pytest.mark.parametrize("with_stdin", [True, False], ids=["stdin", "nostdin"])
def test_exec_stream_tty_exit_ends_stream(containerd, pods, handler, with_stdin):
    """A tty exec's stream ends with the exit code when the process exits.
    With stdin (kubectl exec -it ... sh; exit) the client still has stdin
    open: containerd's CRI plugin waits for EOF on the exec's stdout FIFO, so
    the shim must close it once the process exited and the pty is drained,
    as the Go shim does. (Without stdin only the end is checked: the output of
    such a short tty exec is lost now and then with either shim.)"""
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, SLEEP)
    if with_stdin:
        url = c.cri.exec(cid, ["sh"], tty=True, stdin=True)
    else:
        url = c.cri.exec(cid, ["sh", "-c", "echo bye-2; exit 5"], tty=True)
    with stream(url) as ws:
        if with_stdin:
            ws.send_stdin(b"echo bye-$((1+1)); exit 5\n")
            ws.read_until(b"bye-2")
        ws.wait_closed(timeout=5)
        assert ws.exit_code() == 5, ws.data


def test_exec_stream_stdin_no_tty(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, SLEEP)
    url = c.cri.exec(cid, ["sh", "-c", "read line; echo got:$line; echo oops >&2; exit 4"],
                     stdin=True)
    with stream(url) as ws:
        ws.send_stdin(b"hello\n")
        data = ws.wait_closed(timeout=10)
        assert data[1] == b"got:hello\n"
        assert data[2] == b"oops\n"
        assert ws.exit_code() == 4
    # A successful exec reports Success on the status channel.
    url = c.cri.exec(cid, ["echo", "fine"])
    with stream(url) as ws:
        data = ws.wait_closed(timeout=10)
        assert data[1] == b"fine\n" and ws.exit_code() == 0


def output_attached(ws, line=None, tries=20):
    """Wait until an attach carries the container's output; returns how
    many lines it typed. containerd's CRI Attach starts copying stdin
    before it adds the stream to the output's readers, whatever the shim:
    what the container prints in between is not sent (seen once with the
    Go shim under load). A line typed until its output comes back closes
    that window: `line` (echoed back as it is, for cat), else a shell's
    echo command."""
    for n in range(tries):
        if line is None:
            ws.send_stdin(b"echo attached-%d-$((%d+1))\n" % (n, n))
            want = b"attached-%d-%d" % (n, n + 1)
        else:
            ws.send_stdin(line)
            want = line
        try:
            ws.read_until(want, timeout=0.5)
            return n + 1
        except StreamError:
            continue
    raise StreamError("no output through the attach after %d lines" % tries)


def test_attach(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    tty_c = pods.container(pod, ["sh"], name="tty", stdin=True, tty=True)
    cat_c = pods.container(pod, ["cat"], name="cat", stdin=True)
    # stdin + tty: an interactive shell.
    with stream(c.cri.attach(tty_c, tty=True)) as ws:
        output_attached(ws)
        ws.resize(90, 20)
        ws.send_stdin(b"echo answer-$((6*7)); stty size\n")
        out = ws.read_until(b"20 90")
        assert b"answer-42" in out
    # stdin only: cat echoes back through stdout, and into the log.
    with stream(c.cri.attach(cat_c)) as ws:
        pings = output_attached(ws, b"ping-1\n")
        ws.send_stdin(b"ping-2\n")
        ws.read_until(b"ping-1\nping-2\n")
    # Detaching leaves both running (stdin_once is false).
    for cid in (tty_c, cat_c):
        assert c.cri.container_status(cid).state == CONTAINER_RUNNING
    log = pods.log_path(pod, cat_c)
    wait_for(lambda: [(s, t, x) for _, s, t, x in parse_log(log)]
             == [("stdout", "F", "ping-1")] * pings + [("stdout", "F", "ping-2")], 5,
             "cat's log")
    # A second attach still works.
    with stream(c.cri.attach(cat_c)) as ws:
        output_attached(ws, b"ping-3\n")


def test_attach_until_exit(containerd, pods, handler):
    """An attach ends when the container's process exits; the exit code is
    the container's."""
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, ["sh"], stdin=True, tty=True)
    with stream(c.cri.attach(cid, tty=True)) as ws:
        output_attached(ws)
        ws.send_stdin(b"echo leaving-$((1+2)); exit 3\n")
        ws.read_until(b"leaving-3")
        ws.wait_closed(timeout=10)
    st = pods.wait_state(cid, CONTAINER_EXITED, timeout=10)
    assert st.exit_code == 3, st


def test_pause_image_exits_on_sigterm(containerd):
    """The sandbox image (tools/mkimage.py --pause) runs until SIGTERM and
    then exits 0 at once, even as PID 1 of its PID namespace."""
    from support.image import PAUSE_REF, pause_tarball
    c = containerd
    c.ctr("image", "import", pause_tarball())
    id = "pause-sigterm-%d" % os.getpid()
    c.ctr("run", "-d", "--runtime", PY_RUNTIME, *c.run_args(PY_RUNTIME, id), PAUSE_REF, id)
    try:
        time.sleep(0.3)
        assert c.tasks().get(id, (0, None))[1] == "RUNNING"
        t = time.monotonic()
        c.ctr("task", "kill", "-s", "SIGTERM", id)
        wait_for(lambda: c.tasks().get(id, (0, None))[1] == "STOPPED", 5, "pause to exit")
        assert time.monotonic() - t < 3
        r = c.ctr("task", "delete", id)
        assert r.returncode == 0
    finally:
        c.remove_container(id)


def test_stats_and_update_resources(containerd, pods):
    c = containerd
    pod = pods.pod()
    cid = pods.container(pod, ["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; "
                                           "x=$(head -c 8000000 /dev/zero | tr '\\0' a); "
                                           "touch /tmp/ready; while :; do sleep 1000; done"],
                         memory=128 * MiB)
    wait_for(lambda: c.cri.exec_sync(cid, ["test", "-e", "/tmp/ready"]).exit_code == 0, 20,
             "the container to allocate its memory")
    mem_dir = cgroup_dir(c, "memory", pod, cid)
    assert memory_limit(mem_dir) == 128 * MiB
    st = c.cri.container_stats(cid)
    assert st.attributes.id == cid
    assert st.attributes.metadata.name == "c1"
    now_ns = time.time_ns()
    assert abs(now_ns - st.cpu.timestamp) < 60 * 10**9
    # 30000 shell loop iterations take well over a millisecond of CPU.
    assert 10**6 < st.cpu.usage_core_nano_seconds.value < 600 * 10**9, st.cpu
    ws = st.memory.working_set_bytes.value
    usage = memory_usage(mem_dir)
    assert 8 * 10**6 <= ws <= 128 * MiB, st.memory
    assert ws <= usage * 1.5 + 4 * MiB, (ws, usage)
    listed = {s.attributes.id: s for s in c.cri.list_container_stats(pod.id)}
    assert cid in listed
    # UpdateContainerResources: visible in the cgroup files and in status.
    pb = c.cri.pb
    c.cri.update_container_resources(cid, pb.LinuxContainerResources(
        memory_limit_in_bytes=96 * MiB, cpu_shares=256, cpu_period=100000, cpu_quota=50000))
    assert memory_limit(mem_dir) == 96 * MiB
    cpu_dir = cgroup_dir(c, "cpu", pod, cid)
    if is_v2():
        assert v2_file(cpu_dir, "cpu.max") == "50000 100000"
        assert int(v2_file(cpu_dir, "cpu.weight")) in cpu_weights(256)
    else:
        assert int(read_text(cpu_dir + "/cpu.shares")) == 256
        assert int(read_text(cpu_dir + "/cpu.cfs_quota_us")) == 50000
        assert int(read_text(cpu_dir + "/cpu.cfs_period_us")) == 100000
    res = c.cri.container_status(cid).resources.linux
    assert res.memory_limit_in_bytes == 96 * MiB and res.cpu_shares == 256
    # Below the current usage a v1 kernel refuses (EBUSY): the error reaches
    # CRI. (v2 takes any memory.max and reclaims, then OOM-kills.)
    if not is_v2():
        with pytest.raises(CRIError):
            c.cri.update_container_resources(cid, pb.LinuxContainerResources(
                memory_limit_in_bytes=1 * MiB))
    assert c.cri.container_status(cid).state == CONTAINER_RUNNING


def test_logs_and_exit_codes(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    failing = pods.container(pod, ["sh", "-c", "echo hello-out; echo hello-err >&2; "
                                               "echo second; exit 7"], name="fail")
    ok = pods.container(pod, ["sh", "-c", "echo done"], name="ok")
    st = pods.wait_state(failing, CONTAINER_EXITED)
    assert st.exit_code == 7 and st.reason == "Error", st
    # (finished_at may precede started_at: CRI stamps the start after the
    # Start call returned, the shim stamps the exit when it reaped it.)
    assert st.started_at >= st.created_at > 0 and st.finished_at >= st.created_at
    assert st.log_path == os.path.join(pod.log_dir, "fail.log")
    st = pods.wait_state(ok, CONTAINER_EXITED)
    assert st.exit_code == 0 and st.reason == "Completed", st
    lines = parse_log(os.path.join(pod.log_dir, "fail.log"))
    out = [(s, t, x) for _, s, t, x in lines if s == "stdout"]
    err = [(s, t, x) for _, s, t, x in lines if s == "stderr"]
    assert out == [("stdout", "F", "hello-out"), ("stdout", "F", "second")], lines
    assert err == [("stderr", "F", "hello-err")], lines
    assert [x for _, _, _, x in parse_log(os.path.join(pod.log_dir, "ok.log"))] == ["done"]
    # Exited containers' shims still serve the pod (sandbox alive).
    assert c.cri.pod_sandbox_status(pod.id).status.state == SANDBOX_READY


def test_oom_killed(containerd, pods, handler):
    c = containerd
    pod = pods.pod(handler)
    cid = pods.container(pod, ["sh", "-c", "echo start; x=a; while :; do x=$x$x; done"],
                         memory=32 * MiB)
    st = pods.wait_state(cid, CONTAINER_EXITED, timeout=30)
    assert st.exit_code == 137, st
    if handler == CRI_GO_HANDLER and st.reason != "OOMKilled":
        # The Go shim can miss the OOM when systemd removes the scope first
        # (seen on the v2 node's systemd driver): recorded, not judged.
        pytest.skip("Go shim reported reason %r" % st.reason)
    assert st.reason == "OOMKilled", st
    # (the cgroup may be gone already: a systemd scope ends with its processes)
    d = cgroup_dir(c, "memory", pod, cid)
    if os.path.isdir(d):
        if is_v2():
            events = v2_file(d, "memory.events").split()
            assert int(events[events.index("oom_kill") + 1]) >= 1, events
        else:
            assert int(read_text(d + "/memory.failcnt")) > 0


def test_oom_killed_at_once_under_load(containerd, pods, handler, busy_cpus):
    """critest's OOMKilled spec (`dd bs=20M` under a 15 MiB limit: killed
    in its first milliseconds), two busy loops per CPU: reason OOMKilled
    every time (issue 11: it was Error 2 of 6 times when the OOM watch was
    armed only after runc start). PYSHIM_TEST_OOM_RUNS runs (default 5)."""
    runs = int(os.environ.get("PYSHIM_TEST_OOM_RUNS", "5"))
    seen = []
    for _ in range(runs):
        pod = pods.pod(handler)
        cid = pods.container(pod, ["dd", "if=/dev/zero", "of=/dev/null", "bs=20M"],
                             memory=15 * MiB)
        st = pods.wait_state(cid, CONTAINER_EXITED, timeout=60)
        seen.append((st.exit_code, st.reason))
        pods.remove(pod)
    if handler == CRI_GO_HANDLER and seen != [(137, "OOMKilled")] * runs:
        pytest.skip("Go shim: %s" % seen)      # recorded, not judged
    assert seen == [(137, "OOMKilled")] * runs


def test_stop_remove_leaves_nothing(containerd, pods):
    c = containerd
    pod = pods.pod()
    graceful = pods.container(pod, ["sh", "-c", "trap 'exit 0' TERM; "
                                                "while :; do sleep 0.1; done"], name="graceful")
    stubborn = pods.container(pod, SLEEP, name="stubborn")
    ids = [pod.id, graceful, stubborn]
    [shim] = shim_pids(c)
    address = address_of(c, pod.id, CRI_NAMESPACE)
    sock = address[len("unix://"):]
    assert os.path.exists(sock)
    # SIGTERM first: the trap ends it with 0, well before the grace period
    # (slow machines, e.g. an emulated node, take a few seconds for the stop).
    t = time.monotonic()
    c.cri.stop_container(graceful, grace=10)
    assert time.monotonic() - t < 8
    st = c.cri.container_status(graceful)
    assert (st.state, st.exit_code, st.reason) == (CONTAINER_EXITED, 0, "Completed"), st
    # grace 0: SIGKILL.
    c.cri.stop_container(stubborn, grace=0)
    st = c.cri.container_status(stubborn)
    assert (st.state, st.exit_code) == (CONTAINER_EXITED, 137), st
    for cid in (graceful, stubborn):
        c.cri.remove_container(cid)
    assert c.cri.list_containers(pod.id) == []
    assert shim_pids(c) == [shim], "the sandbox still runs: its shim must stay"
    c.cri.stop_pod_sandbox(pod.id)
    assert c.cri.pod_sandbox_status(pod.id).status.state == SANDBOX_NOTREADY
    c.cri.remove_pod_sandbox(pod.id)
    pods.made.remove(pod)
    assert [p.id for p in c.cri.list_pod_sandbox()] == []
    wait_for(lambda: not pid_alive(shim), 10, "pyshim %d to exit" % shim)
    assert shim_pids(c) == []
    assert not os.path.exists(sock), "shim socket %s left" % sock
    for cid in ids:
        assert not os.path.exists(c.bundle(cid, CRI_NAMESPACE)), cid
        assert not os.path.exists(os.path.join(c.cri_runc_base, CRI_NAMESPACE, cid)), cid
        for controller in ("memory", "cpu", "pids"):
            assert not os.path.exists(cgroup_dir(c, controller, pod, cid)), (controller, cid)
    left = [m for m in mounts_under(c.dir) if any(i in m for i in ids)]
    assert left == [], left
    assert not set(ids) & set(c.containers(CRI_NAMESPACE))
    assert not set(ids) & set(c.tasks(CRI_NAMESPACE))


def test_containerd_restart_with_pod_running(containerd, pods):
    c = containerd
    pod = pods.pod()
    ticker = pods.container(pod, ["sh", "-c", "while :; do echo tick; sleep 0.1; done"],
                            name="ticker")
    sleeper = pods.container(pod, SLEEP, name="sleeper")
    [shim] = shim_pids(c)
    log = os.path.join(pod.log_dir, "ticker.log")
    wait_for(lambda: os.path.exists(log) and len(parse_log(log)) >= 2, 5, "ticks in the log")
    old_pid = c.pid
    c.restart()
    assert c.pid != old_pid
    # CRI recovered the pod from containerd and the shim.
    assert c.cri.pod_sandbox_status(pod.id).status.state == SANDBOX_READY
    for cid in (ticker, sleeper):
        assert c.cri.container_status(cid).state == CONTAINER_RUNNING, cid
    assert shim_pids(c) == [shim], "the same pyshim process must serve the pod"
    r = c.cri.exec_sync(sleeper, ["sh", "-c", "echo after-restart"])
    assert (r.stdout, r.exit_code) == (b"after-restart\n", 0)
    # The log keeps growing: containerd re-opened the container's FIFOs.
    n = len(parse_log(log))
    wait_for(lambda: len(parse_log(log)) > n + 2, 5, "new ticks after the restart")
    # Exits are still seen after the restart.
    c.cri.stop_container(ticker, grace=0)
    st = c.cri.container_status(ticker)
    assert (st.state, st.exit_code) == (CONTAINER_EXITED, 137), st
    pods.remove(pod)
    wait_for(lambda: not pid_alive(shim), 10, "pyshim %d to exit" % shim)
    runc_root = os.path.join(c.cri_runc_base, CRI_NAMESPACE)
    left = set(os.listdir(runc_root)) if os.path.isdir(runc_root) else set()
    assert not left & {pod.id, ticker, sleeper}, left

