"""A Kubernetes pod through containerd's CRI plugin: pyshim (runtime handler
"pyshim") beside the Go shim (handler "runc"), in the same run.

Run (root, installed package, test extras for grpcio):
    pytest bench/bench_pod.py

A pod is 1 sandbox (pause) + 3 `sleep` containers, host network. For each
runtime, interleaved (go, py, py, go, ...):
  7a  pod start: RunPodSandbox, then CreateContainer+StartContainer x 3,
      wall time as the kubelet would see it (ms)
  7b  total PSS of the shim processes serving the pod (MiB)
  7c  total RssAnon of those processes (MiB): private anonymous memory,
      what each extra pod costs whatever else shares the binaries
  7d  shim processes per pod (1 for both: grouping by sandbox id)
Memory is read SETTLE seconds after the last StartContainer, before the pod
is removed; only one pod exists at a time, so every shim of the CRI
namespace belongs to it.
"""
import concurrent.futures
import statistics
import time

import pytest

import memory  # bench/memory.py (bench/conftest.py puts bench/ on sys.path)
from support.containerd import CRI_GO_HANDLER, CRI_NAMESPACE, CRI_PY_HANDLER, Containerd
from support.helpers import status_field

HANDLERS = (("go", CRI_GO_HANDLER), ("py", CRI_PY_HANDLER))
IDS = [k for k, _ in HANDLERS]
PAIRS = 10
SETTLE = 1.0
IMAGE = "docker.io/library/pyshim-busybox:latest"


def _interleaved(n, fn):
    out = {k: [] for k in IDS}
    for i in range(n):
        order = HANDLERS if i % 2 == 0 else HANDLERS[::-1]
        for key, h in order:
            out[key].append(fn(key, h, i))
    return out


def pod_config(c, name):
    """The bench's pod: host network, its own cgroup parent."""
    pb = c.cri.pb
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid="uid-" + name, namespace="bench"),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=c.cgroup_parent(name),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=2))))   # NODE


def container_config(c, n):
    """The pod's container n: `sleep 3600`."""
    pb = c.cri.pb
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c%d" % n),
                              image=pb.ImageSpec(image=IMAGE), command=["sleep", "3600"])


def start_pod(c, name, handler):
    """RunPodSandbox, then CreateContainer+StartContainer x 3 (`sleep`
    containers), as a kubelet does; returns (pod id, seconds it took)."""
    config = pod_config(c, name)
    t0 = time.perf_counter()
    pod = c.cri.run_pod_sandbox(config, runtime_handler=handler)
    try:
        for n in range(3):
            cid = c.cri.create_container(pod, container_config(c, n), config)
            c.cri.start_container(cid)
    except BaseException:
        remove_pod(c, pod)
        raise
    return pod, time.perf_counter() - t0


def remove_pod(c, pod):
    c.cri.stop_pod_sandbox(pod)
    c.cri.remove_pod_sandbox(pod)


def wait_no_shims(c):
    """Until the removed pods' shims have exited (10 s at most)."""
    deadline = time.monotonic() + 10
    while c.shims(CRI_NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_pod(c, key, handler, i, settle=SETTLE):
    """One pod (sandbox + 3 `sleep` containers) through CRI on Containerd c
    (CRI mode); returns {"start": s, "pss": KiB, "anon": KiB, "procs": n}
    measured `settle` s after the last StartContainer; the pod is removed."""
    pod, dt = start_pod(c, "bench-%s-%d" % (key, i), handler)
    try:
        time.sleep(settle)
        pids = [p for p, a in c.shims(CRI_NAMESPACE) if a[-1] not in memory.ACTIONS]
        tot = memory.measure(pids)
        anon = sum(status_field(p, "RssAnon") for p in pids)
    finally:
        remove_pod(c, pod)
    wait_no_shims(c)
    return {"start": dt, "pss": tot["pss"], "anon": anon, "procs": tot["procs"]}


def run_pods_at_once(c, key, handler, i, n=10):
    """n pods started at once (a thread each, as a kubelet starts the pods
    scheduled to its node): seconds until the last has its 3 containers
    started. All are removed after."""
    started = []

    def one(j):
        pod, _ = start_pod(c, "many-%s-%d-%d" % (key, i, j), handler)
        started.append(pod)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        try:
            list(pool.map(one, range(n)))
            return time.perf_counter() - t0
        finally:
            list(pool.map(lambda pod: remove_pod(c, pod), list(started)))
            wait_no_shims(c)


@pytest.fixture(scope="module")
def cri_containerd(bench_results):
    try:
        import grpc  # noqa: F401
    except ImportError:
        pytest.skip("grpcio is not installed (pip install '.[test]')")
    c = Containerd(cri=True)
    try:
        c.start()
        c.import_cri_images()
        yield c
    finally:
        problems = c.cleanup()
    assert not problems, problems


@pytest.fixture(scope="module")
def pod_samples(cri_containerd):
    c = cri_containerd

    def one_pod(key, handler, i):
        return run_pod(c, key, handler, i)

    one_pod("go", CRI_GO_HANDLER, 999)     # warm up (page cache, snapshots)
    one_pod("py", CRI_PY_HANDLER, 999)
    return _interleaved(PAIRS, one_pod)


@pytest.mark.parametrize("rt", IDS)
def test_pod_start(benchmark, replay, pod_samples, bench_results, rt):
    s = [x["start"] for x in pod_samples[rt]]
    bench_results.define("7a", "7a", "pod start, RunPodSandbox + 3x Create/StartContainer, "
                         "median ms (%d pods)" % len(s), "%.0f")
    bench_results.put("7a", rt, statistics.median(s) * 1e3)
    replay(benchmark, "7a pod start (RunPodSandbox + 3 containers, interleaved)", s)


@pytest.mark.parametrize("rt", IDS)
@pytest.mark.parametrize("q", ["pss", "anon", "procs"])
def test_pod_memory(benchmark, replay, pod_samples, bench_results, q, rt):
    vals = [x[q] for x in pod_samples[rt]]
    key, label = {"pss": ("7b", "shim PSS per pod (1 sandbox + 3 containers) MiB"),
                  "anon": ("7c", "shim RssAnon per pod MiB"),
                  "procs": ("7d", "shim processes per pod")}[q]
    unit = q != "procs"
    bench_results.define(key, key, label, "%.2f" if unit else "%.0f")
    bench_results.put(key, rt, statistics.median(vals) / (1024.0 if unit else 1))
    replay(benchmark, "%s %s [%s in the time columns]" % (key, label, "KiB" if unit else "count"),
           vals, unit="KiB" if unit else "count")
