"""pyshim vs the Go shim (io.containerd.runc.v2), side by side in one run.

Run (root, from the repo root, against the INSTALLED package):
    pip install --no-build-isolation .
    pytest bench/bench_shim.py [--benchmark-only] [-k state]
    PYSHIM_BENCH_WRITE=1 pytest bench/bench_shim.py   # also writes bench/results.md

One private containerd serves the whole session (bench/conftest.py). Every
metric is a pytest-benchmark group holding one test per runtime ("go",
"py"); the end of the session prints a compact table of both runtimes and
the ratio pyshim/Go (bench/conftest.py). See bench/README.md for what each
metric measures. Latency and throughput samples of the two runtimes are
taken interleaved in one loop (go, py, py, go, ...) by a session fixture,
then replayed into pytest-benchmark (the `replay` fixture of bench/conftest.py), so machine load hits
both runtimes alike.
"""
import os
import statistics
import subprocess
import tempfile
import threading
import time

import pytest

import memory  # bench/memory.py (bench/conftest.py puts bench/ on sys.path)
from support.containerd import GO_RUNTIME, PY_RUNTIME

RUNTIMES = (("go", GO_RUNTIME), ("py", PY_RUNTIME))
IDS = [k for k, _ in RUNTIMES]

SETTLE = 1.0            # seconds between starting containers and reading memory
MEM_SAMPLES = 5         # memory readings (0.2 s apart) per runtime
STATE_WARMUP = 200      # State calls per runtime before measuring
STATE_BLOCKS = 30       # interleaved blocks ...
STATE_PER_BLOCK = 100   # ... of this many State calls per runtime
N_CONTAINERS = 10       # metric 3
RUN_PAIRS = 20          # metric 4: `ctr run --rm true` runs per runtime
HEAD_RUNS = 5           # metric 5a runs per runtime
DD_RUNS = 5             # metric 5b/5c runs per runtime
STDOUT_BYTES = 256 << 20
FILE_BYTES = 1 << 30    # 5c: more data, as only the shim copies it
RUN_TIMEOUT = 180


def _med(xs):
    return statistics.median(xs)


def _interleaved(n, fn):
    """{rt: [fn(rt, i) ...]} with runs alternating go,py / py,go."""
    out = {k: [] for k in IDS}
    for i in range(n):
        order = RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]
        for key, rt in order:
            out[key].append(fn(key, rt, i))
    return out


def _serving_pid(containerd, cid):
    pids = [p for p, argv in containerd.shims(id=cid) if argv[-1] not in memory.ACTIONS]
    assert len(pids) == 1, "expected one serving shim for %s: %s" % (cid, containerd.shims(id=cid))
    return pids[0]


def _mem_snapshot(pids):
    tot = memory.measure(pids)
    assert tot["procs"] == len(pids), "shim process went away: %s" % (pids,)
    return tot


# ===================================================================== 3
# Memory per container with N detached sleep containers per runtime. Runs
# first (fixture order in the file) and removes its containers right away.

@pytest.fixture(scope="session")
def per_container(containerd, bench_results):
    res = {}
    try:
        for key, rt in RUNTIMES:
            r = memory.bench_runtime(containerd, rt, N_CONTAINERS, settle=SETTLE)
            if "error" in r:
                pytest.fail("%s: %s" % (rt, r["error"]), pytrace=False)
            res[key] = {"ns": memory.namespace_for(containerd, rt), "samples": [r]}
        for _ in range(MEM_SAMPLES - 1):
            time.sleep(0.2)
            for key, _rt in RUNTIMES:
                pids = memory.shim_pids(res[key]["ns"], containerd.address)
                tot = _mem_snapshot(pids)
                s = {k: v / N_CONTAINERS for k, v in tot.items()}
                s["shims"] = tot["procs"]
                res[key]["samples"].append(s)
    finally:
        for _key, rt in RUNTIMES:
            memory.remove_namespace_containers(containerd, memory.namespace_for(containerd, rt))
    return res


MEM_QUANT = {  # quantity -> (label, unit, value from a per-container sample)
    "rss": ("RSS", "MiB", lambda s: s["rss"] / 1024.0),
    "pss": ("PSS", "MiB", lambda s: s["pss"] / 1024.0),
    "uss": ("USS", "MiB", lambda s: s["uss"] / 1024.0),
    "threads": ("threads", "", lambda s: s["threads"]),
}
PER_CONTAINER_BUDGET = {"rss": 1.5, "pss": 2.0, "uss": 2.0}


@pytest.mark.parametrize("rt", IDS)
@pytest.mark.parametrize("q", list(MEM_QUANT))
def test_memory_per_container(benchmark, replay, per_container, bench_results, q, rt):
    label, unit, get = MEM_QUANT[q]
    samples = per_container[rt]["samples"]
    if q == "threads":  # threads per shim process
        vals = [s["threads"] * N_CONTAINERS / s["shims"] for s in samples]
        mlabel = "threads per shim, %d containers" % N_CONTAINERS
    else:
        vals = [get(s) for s in samples]
        mlabel = "%s per container MiB, %d containers" % (label, N_CONTAINERS)
    key = "3" + "abcd"["rss pss uss threads".split().index(q)]
    bench_results.define(key, key, mlabel, "%.2f" if unit else "%.1f",
                         budget=PER_CONTAINER_BUDGET.get(q))
    bench_results.put(key, rt, _med(vals))
    table_vals = vals if q == "threads" else [v * 1024 for v in vals]
    replay(benchmark, "%s memory per container (%d containers): %s [%s in the time columns]"
           % (key, N_CONTAINERS, label, "count" if q == "threads" else "KiB"),
           table_vals, unit="count" if q == "threads" else "KiB",
           shims=samples[0]["shims"], namespace=per_container[rt]["ns"])


# ===================================================================== 1, 2
# One detached `sleep 3600` container per runtime: idle memory of its shim
# (read before anything talks to the shim), then State round trips.

@pytest.fixture(scope="session")
def sleepers(containerd, image):
    out = {}
    try:
        for key, rt in RUNTIMES:
            cid = "bench-idle-%s" % key
            containerd.ctr("run", "-d", "--runtime", rt, image, cid, "sleep", "3600")
            with open(os.path.join(containerd.bundle(cid), "address")) as f:
                address = f.read().strip()
            out[key] = {"cid": cid, "address": address, "pid": _serving_pid(containerd, cid),
                        "mem": []}
        time.sleep(SETTLE)
        for i in range(MEM_SAMPLES):
            if i:
                time.sleep(0.2)
            for key in IDS:
                out[key]["mem"].append(_mem_snapshot([out[key]["pid"]]))
        yield out
    finally:
        for key in IDS:
            if key in out:
                containerd.remove_container(out[key]["cid"])


@pytest.mark.parametrize("rt", IDS)
@pytest.mark.parametrize("q", list(MEM_QUANT))
def test_memory_idle_process(benchmark, replay, sleepers, bench_results, q, rt):
    label, unit, _ = MEM_QUANT[q]
    samples = sleepers[rt]["mem"]  # sums over one process: kB
    if q == "threads":
        vals = [s["threads"] for s in samples]
    else:
        vals = [s[q] for s in samples]
    key = "2" + "abcd"["rss pss uss threads".split().index(q)]
    bench_results.define(key, key, "idle serving process %s%s" % (label, " MiB" if unit else ""),
                         "%.2f" if unit else "%.0f")
    bench_results.put(key, rt, _med(vals) / (1024.0 if unit else 1))
    replay(benchmark, "%s idle serving process (one sleep container): %s [%s in the time columns]"
           % (key, label, "count" if q == "threads" else "KiB"),
           vals, unit="count" if q == "threads" else "KiB", pid=sleepers[rt]["pid"])


@pytest.fixture(scope="session")
def state_samples(sleepers):
    from shim import ttrpc_client
    from shim.pb import task as pbtask
    req = {k: pbtask.StateRequest(id=sleepers[k]["cid"]) for k in IDS}
    clients = {k: ttrpc_client.SyncClient(sleepers[k]["address"]) for k in IDS}
    Resp = pbtask.StateResponse
    try:
        for k in IDS:
            r = clients[k].call("containerd.task.v2.Task", "State", req[k], Resp)
            assert r.id == sleepers[k]["cid"] and r.pid > 0, r
            for _ in range(STATE_WARMUP):
                clients[k].call("containerd.task.v2.Task", "State", req[k], Resp)
        clock = time.perf_counter

        def block(key, rt, i):
            call, rq, out = clients[key].call, req[key], []
            for _ in range(STATE_PER_BLOCK):
                t0 = clock()
                call("containerd.task.v2.Task", "State", rq, Resp)
                out.append(clock() - t0)
            return out
        blocks = _interleaved(STATE_BLOCKS, block)
    finally:
        for c in clients.values():
            c.close()
    return {k: [x for b in v for x in b] for k, v in blocks.items()}


@pytest.mark.parametrize("rt", IDS)
def test_state_rtt(benchmark, replay, state_samples, bench_results, rt):
    s = state_samples[rt]
    bench_results.define("1", "1", "State round trip, median us (ttrpc SyncClient)", "%.1f")
    bench_results.put("1", rt, _med(s) * 1e6)
    bench_results.define("1m", "1'", "State round trip, fastest us (least disturbed by load)",
                         "%.1f")
    bench_results.put("1m", rt, min(s) * 1e6)
    replay(benchmark, "1 State round trip (same Python ttrpc client)", s)


# ===================================================================== 4
_seq = iter(range(1, 1 << 30))


def _cid(prefix, key):
    return "bench-%s-%s-%d" % (prefix, key, next(_seq))


@pytest.fixture(scope="session")
def true_samples(containerd, image):
    def run(key, rt, i):
        cid = _cid("true", key)
        t0 = time.perf_counter()
        r = containerd.ctr("run", "--rm", "--runtime", rt, image, cid, "true",
                           check=False, timeout=RUN_TIMEOUT)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            containerd.remove_container(cid)
            pytest.fail("%s: ctr run true exit %d: %s %s" % (rt, r.returncode, r.stdout, r.stderr),
                        pytrace=False)
        return dt
    _interleaved(1, run)  # warm up (page cache, snapshots)
    return _interleaved(RUN_PAIRS, run)


@pytest.mark.parametrize("rt", IDS)
def test_ctr_run_true(benchmark, replay, true_samples, bench_results, rt):
    s = true_samples[rt]
    bench_results.define("4", "4", "ctr run --rm IMAGE id true, median ms (%d runs)" % len(s),
                         "%.0f", budget=1.3)
    bench_results.put("4", rt, _med(s) * 1e3)
    replay(benchmark, "4 ctr run --rm true (interleaved)", s)


# ===================================================================== 5
def _ctr_stdout(containerd, image, rt, cid, cmd, expect, args=()):
    """Run `ctr run --rm [args] IMAGE cid sh -c cmd`, count its stdout bytes
    (binary, 1 MiB reads). Returns (seconds start..exit, bytes)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = containerd.ctr_popen("run", "--rm", "--runtime", rt, *args, image, cid, "sh", "-c", cmd,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        timer = threading.Timer(RUN_TIMEOUT, p.kill)  # only our own ctr, by its Popen
        timer.start()
        n = 0
        try:
            fd = p.stdout.fileno()
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                n += len(b)
            rc = p.wait()
        finally:
            timer.cancel()
            p.stdout.close()
        dt = time.perf_counter() - t0
        err.seek(0)
        msg = err.read().decode(errors="replace")[-500:]
    if rc != 0 or n != expect:
        containerd.remove_container(cid)
        pytest.fail("%s: `%s`: exit %s, %d of %d bytes after %.1fs: %s"
                    % (rt, cmd, rc, n, expect, dt, msg), pytrace=False)
    return dt, n


HEAD_CMD = "head -c %d /dev/zero" % STDOUT_BYTES
DD_CMD = "dd if=/dev/zero bs=1048576 count=%d 2>/dev/null" % (STDOUT_BYTES >> 20)
FILE_CMD = "dd if=/dev/zero bs=1048576 count=%d 2>/dev/null" % (FILE_BYTES >> 20)


@pytest.fixture(scope="session")
def head_samples(containerd, image):
    return _interleaved(HEAD_RUNS, lambda key, rt, i: _ctr_stdout(
        containerd, image, rt, _cid("head", key), HEAD_CMD, STDOUT_BYTES))


@pytest.fixture(scope="session")
def dd_samples(containerd, image):
    return _interleaved(DD_RUNS, lambda key, rt, i: _ctr_stdout(
        containerd, image, rt, _cid("dd", key), DD_CMD, STDOUT_BYTES))


@pytest.fixture(scope="session")
def file_samples(containerd, image):
    # stdout goes to file:///dev/null: only the shim copies (pipe -> file);
    # ctr is out of the data path and prints nothing.
    return _interleaved(DD_RUNS, lambda key, rt, i: _ctr_stdout(
        containerd, image, rt, _cid("file", key), FILE_CMD, 0,
        args=("--log-uri", "file:///dev/null")))


@pytest.fixture(scope="session")
def logfile_samples(containerd, image):
    # stdout goes to a regular file (tmpfs, so no disk in the way): the
    # file keeps O_APPEND, so both shims copy through user space.
    d = tempfile.mkdtemp(prefix="pyshim-bench-", dir="/dev/shm")
    log = os.path.join(d, "out.log")

    def run(key, rt, i):
        try:
            return _ctr_stdout(containerd, image, rt, _cid("log", key), FILE_CMD, 0,
                               args=("--log-uri", "file://" + log))
        finally:
            # The Go shim publishes the exit before its copy has drained.
            deadline = time.monotonic() + 5
            while True:
                size = os.path.getsize(log) if os.path.exists(log) else -1
                if size >= FILE_BYTES or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if os.path.exists(log):
                os.unlink(log)
            assert size == FILE_BYTES, "%s: the log file has %d bytes" % (rt, size)
    try:
        return _interleaved(DD_RUNS, run)
    finally:
        os.rmdir(d)


def _mbps(nbytes, seconds):
    return nbytes / seconds / 1e6


@pytest.mark.parametrize("rt", IDS)
def test_stdout_head_via_ctr(benchmark, replay, head_samples, bench_results, rt):
    s = head_samples[rt]
    bench_results.define("5a", "5a", "stdout 256 MiB via ctr, `head -c`, median MB/s", "%.0f",
                         budget=1.0, higher_better=True)
    bench_results.put("5a", rt, _mbps(STDOUT_BYTES, _med([t for t, _ in s])))
    replay(benchmark, "5a stdout 256 MiB through ctr: sh -c 'head -c ...' (time per run)",
           [t for t, _ in s], bytes=STDOUT_BYTES)


@pytest.mark.parametrize("rt", IDS)
def test_stdout_dd_via_ctr(benchmark, replay, dd_samples, bench_results, rt):
    s = dd_samples[rt]
    bench_results.define("5b", "5b", "stdout 256 MiB via ctr, `dd bs=1M`, median MB/s", "%.0f")
    bench_results.put("5b", rt, _mbps(STDOUT_BYTES, _med([t for t, _ in s])))
    replay(benchmark, "5b stdout 256 MiB through ctr: dd bs=1M (time per run)",
           [t for t, _ in s], bytes=STDOUT_BYTES)


@pytest.mark.parametrize("rt", IDS)
def test_stdout_shim_copy_to_file(benchmark, replay, file_samples, true_samples, bench_results,
                                  rt):
    s = [t for t, _ in file_samples[rt]]
    base = _med(true_samples[rt])
    net = _med(s) - base
    bench_results.define("5c", "5c", "shim copy only: 1 GiB dd -> file:///dev/null, net MB/s",
                         "%.0f")
    if net > 0.02:
        bench_results.put("5c", rt, _mbps(FILE_BYTES, net))
    replay(benchmark, "5c stdout 1 GiB, shim -> file:///dev/null, no ctr in the data path "
           "(time per run)", s, bytes=FILE_BYTES, true_baseline_s=base,
           whole_run_mbps=_mbps(FILE_BYTES, _med(s)))


@pytest.mark.parametrize("rt", IDS)
def test_stdout_shim_copy_to_regular_file(benchmark, replay, logfile_samples, true_samples,
                                          bench_results, rt):
    s = [t for t, _ in logfile_samples[rt]]
    base = _med(true_samples[rt])
    net = _med(s) - base
    bench_results.define("5d", "5d", "shim copy only: 1 GiB dd -> file:// on tmpfs, net MB/s",
                         "%.0f")
    if net > 0.02:
        bench_results.put("5d", rt, _mbps(FILE_BYTES, net))
    replay(benchmark, "5d stdout 1 GiB, shim -> file:// (regular file, tmpfs), no ctr in the "
           "data path (time per run)", s, bytes=FILE_BYTES, true_baseline_s=base,
           whole_run_mbps=_mbps(FILE_BYTES, _med(s)))


# ===================================================================== 6
# exec latency on the idle `sleep` containers: `ctr task exec ... true` as a
# user sees it, and the shim's own part (Exec+Start+Wait+Delete over one
# ttrpc connection, null IO), interleaved go/py.
EXEC_PAIRS = 20         # ctr task exec runs per runtime
RAW_EXEC_PAIRS = 50     # raw ttrpc exec rounds per runtime


@pytest.fixture(scope="session")
def exec_samples(containerd, sleepers):
    def run(key, rt, i):
        cid = sleepers[key]["cid"]
        t0 = time.perf_counter()
        r = containerd.ctr("task", "exec", "--exec-id", "b%d" % i, cid, "true",
                           check=False, timeout=RUN_TIMEOUT)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            pytest.fail("%s: ctr task exec true exit %d: %s" % (rt, r.returncode, r.stderr),
                        pytrace=False)
        return dt
    _interleaved(1, lambda k, rt, i: run(k, rt, 10000 + i))  # warm up
    return _interleaved(EXEC_PAIRS, run)


@pytest.mark.parametrize("rt", IDS)
def test_exec_latency(benchmark, replay, exec_samples, bench_results, rt):
    s = exec_samples[rt]
    bench_results.define("6", "6", "ctr task exec CID true, median ms (%d runs)" % len(s), "%.0f")
    bench_results.put("6", rt, _med(s) * 1e3)
    replay(benchmark, "6 ctr task exec true (interleaved)", s)


@pytest.fixture(scope="session")
def raw_exec_samples(containerd, sleepers):
    import json
    from shim import ttrpc_client
    from shim.pb import task as pbtask
    from shim.pb import wkt
    task = "containerd.task.v2.Task"
    clients, specs = {}, {}
    try:
        for k in IDS:
            with open(os.path.join(containerd.bundle(sleepers[k]["cid"]), "config.json")) as f:
                proc = json.load(f)["process"]
            proc["args"] = ["true"]
            specs[k] = wkt.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                               value=json.dumps(proc).encode())
            clients[k] = ttrpc_client.SyncClient(sleepers[k]["address"], timeout=60)

        def run(key, rt, i):
            cl, cid, eid = clients[key], sleepers[key]["cid"], "r%d" % i
            t0 = time.perf_counter()
            cl.call(task, "Exec", pbtask.ExecProcessRequest(id=cid, exec_id=eid, spec=specs[key]))
            sid = cl.send_raw_request(task, "Wait",
                                      pbtask.WaitRequest(id=cid, exec_id=eid).encode())
            cl.call(task, "Start", pbtask.StartRequest(id=cid, exec_id=eid), pbtask.StartResponse)
            w = pbtask.WaitResponse.decode(cl.recv_response(sid).payload)
            cl.call(task, "Delete", pbtask.DeleteRequest(id=cid, exec_id=eid),
                    pbtask.DeleteResponse)
            dt = time.perf_counter() - t0
            assert w.exit_status == 0, (rt, w)
            return dt
        _interleaved(2, lambda k, rt, i: run(k, rt, 10000 + i))  # warm up
        return _interleaved(RAW_EXEC_PAIRS, run)
    finally:
        for c in clients.values():
            c.close()


@pytest.mark.parametrize("rt", IDS)
def test_exec_latency_shim_only(benchmark, replay, raw_exec_samples, bench_results, rt):
    s = raw_exec_samples[rt]
    bench_results.define("6s", "6'", "exec round in the shim (Exec+Start+Wait+Delete over "
                         "ttrpc, null IO), median ms (%d runs)" % len(s), "%.1f")
    bench_results.put("6s", rt, _med(s) * 1e3)
    replay(benchmark, "6' exec round over ttrpc, null IO (interleaved)", s)
