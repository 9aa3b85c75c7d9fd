#!/usr/bin/env python3
"""Warm start (issue 12) as a report: pyshim (template process on, the
default) beside the Go shim of the same containerd, every row in one run,
samples interleaved, ratios pyshim/Go against the budgets; writes
OUT/warm-containerd-X.Y.md and, when matplotlib is installed (`pip install
.[plots]`, never loaded by the shim), plots as PNG files.

Run (root, installed package, from the repo root):
    python bench/bench_warm.py [--runs 15] [--mem-n 1,10,50] [--out bench/report]
                               [--rows run,loaded,exec,updown,pod,pods,podloaded,cpu,stdout,memory] [--ksm]
                               [--tag-python]
    PYSHIM_CONTAINERD_BIN=$(../shared/containerd-release/containerd-release 2.1) \\
        python bench/bench_warm.py            # the same on containerd 2.1
    --tag-python names the report warm-containerd-X.Y-pythonA.B (pyshim
    installed for another Python than the system's, e.g. trixie's 3.13).

Rows (latency rows: --runs interleaved Go/pyshim samples each; run,
loaded, exec, pod and podloaded, cheap and noisy, 3x that):
  run      `ctr run --rm IMAGE id true`, median ms
  loaded   the same with the machine loaded: a busy loop per core, a tar of
           /usr to /dev/null (page-cache churn) and an fsync'd writer
  exec     `ctr task exec` of `true` into an idle container, median ms
  updown   20 `ctr run -d` at once (up), then 20 `ctr task rm -f` +
           `ctr c rm` at once (down), wall s of each half
  pod      CRI pod start (sandbox + 3 containers; a second, CRI-mode
           containerd), median ms
  pods     10 CRI pods started at once (a thread each, as a kubelet
           starting the pods scheduled to its node), wall s until all run
           (--runs samples)
  podloaded  the pod row beside the `loaded` row's load (a busy node)
  cpu      shim CPU per `ctr run --rm true` lifecycle: every process of the
           runtime (start/delete actions, serving shim, runc they run, the
           template) own + reaped children; see cpu_block()
  stdout   256 MiB through ctr (`dd bs=1M`), MB/s; and the shim's own copy:
           1 GiB to file:///dev/null, net MB/s
  memory   N detached containers per runtime: RSS / PSS / USS summed over
           every process the runtime keeps alive (the template included) / N;
           with --ksm once more with ksmd running (the bench turns it on,
           waits for 3 full scans, then puts /sys/kernel/mm/ksm/run back)
"""
import argparse
import concurrent.futures
import contextlib
import ctypes
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import memory  # noqa: E402
from support import template  # noqa: E402
from support.ksm import Ksmd  # noqa: E402
from support.containerd import (CRI_GO_HANDLER, CRI_PY_HANDLER, GO_RUNTIME,  # noqa: E402
                                PY_RUNTIME, Containerd, containerd_build)

RUNTIMES = (("go", GO_RUNTIME), ("py", PY_RUNTIME))
QUICK_ROWS_FACTOR = 3       # run, loaded, exec, pod, podloaded: --runs x this
PODS_AT_ONCE = 10
PR_SET_CHILD_SUBREAPER = 36
CLK_TCK = os.sysconf("SC_CLK_TCK")
# (row, label, unit, budget): budget ("<=", x) or (">=", x) on pyshim/Go.
ROWS = [
    ("run", "ctr run --rm true, median ms", "ms", ("<=", 0.9)),
    ("loaded", "ctr run --rm true, machine loaded, median ms", "ms", ("<=", 1.0)),
    ("exec", "ctr task exec true, median ms", "ms", ("<=", 1.0)),
    ("up", "20 containers up (ctr run -d, at once), median s", "s", ("<=", 1.0)),
    ("down", "20 containers down (task rm -f + c rm, at once), median s", "s", ("<=", 1.0)),
    ("pod", "CRI pod start (sandbox + 3 containers), median ms", "ms", ("<=", 0.9)),
    ("pods", "10 CRI pods started at once (each sandbox + 3 containers), median s", "s",
     ("<=", 1.0)),
    ("podloaded", "CRI pod start, machine loaded, median ms", "ms", ("<=", 1.0)),
    ("cpu", "shim CPU per run --rm lifecycle (own + children), ms", "ms", ("<=", 1.0)),
    ("stdout", "stdout 256 MiB via ctr (dd bs=1M), median MB/s", "MB/s", (">=", 1.2)),
    ("copy", "shim copy only, 1 GiB to file:///dev/null, net MB/s", "MB/s", (">=", 1.0)),
]


# ---- helpers --------------------------------------------------------------

def interleaved(runs, fn):
    """{key: [sample]} of fn(key, runtime, i), go/py then py/go, ..."""
    out = {k: [] for k, _ in RUNTIMES}
    for i in range(runs):
        for key, rt in (RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]):
            out[key].append(fn(key, rt, i))
    return out


def timed_ctr(c, *args, timeout=180):
    t0 = time.perf_counter()
    r = c.ctr(*args, check=False, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError("ctr %s: %s %s" % (" ".join(args), r.stdout, r.stderr))
    return dt


def run_true(c, rt, cid):
    return timed_ctr(c, "run", "--rm", "--runtime", rt, *c.run_args(rt, cid), c.image, cid,
                     "true")


class Load:
    """What the `loaded` row runs beside the lifecycles: a busy loop per
    core, a tar of /usr into /dev/null, a writer that fsyncs 64 MiB files.
    Our own children, ended by PID."""

    def __init__(self, scratch):
        self.scratch = scratch
        self.procs = []

    def __enter__(self):
        scripts = ["while :; do :; done"] * (os.cpu_count() or 1) + [
            "while :; do tar cf - /usr 2>/dev/null | cat >/dev/null; done",
            'while :; do dd if=/dev/zero of="$0/fsync.dat" bs=1M count=64 conv=fsync '
            '2>/dev/null; done']
        for script in scripts:
            # each loop in a session of its own: its group (tar, cat, dd
            # included) is ended at once by __exit__
            self.procs.append(subprocess.Popen(["sh", "-c", script, self.scratch],
                                               start_new_session=True))
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(30)
        _reap_orphans(set(), settle=0.5)
        try:
            os.unlink(os.path.join(self.scratch, "fsync.dat"))
        except OSError:
            pass
        os.sync()       # the writer's dirty pages, not left to whatever runs next


# ---- CPU accounting -------------------------------------------------------

def _stat_cpu(pid, children=True):
    """utime+stime (+ cutime+cstime) of pid in seconds, 0 if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _reap_orphans(keep, settle=3.0):
    """Reap our children other than `keep` (shims reparented to us, the
    subreaper) until none exits for a while; their CPU lands in our
    RUSAGE_CHILDREN."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            time.sleep(0.05)
            continue
        if info.si_pid in keep:
            return      # not ours to reap (containerd, load): stop here
        os.waitpid(info.si_pid, 0)
        deadline = time.monotonic() + 0.5


def cpu_block(c, rt, n, tag):
    """CPU seconds all processes of `rt` spent on n `ctr run --rm true`:
    this bench is a child subreaper (main()), so serving shims (orphaned
    by their `start`) are reparented to it and reaped here: their CPU and
    that of what they reaped (runc, the container) is in our
    RUSAGE_CHILDREN, minus what ctr itself spent (wait4 per ctr). The
    start/delete actions are containerd's children: its cutime+cstime. The
    template (alive): its own and reaped CPU, by /proc."""
    keep = {c.proc.pid}
    tpl = template.pids()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_cd = _stat_cpu(c.proc.pid) - _stat_cpu(c.proc.pid, children=False)
    before_tpl = sum(_stat_cpu(p) for p in tpl)
    ctr_cpu = 0.0
    for i in range(n):
        cid = "cpu-%s-%s-%d" % (tag, rt.split(".")[-2], i)
        p = c.ctr_popen("run", "--rm", "--runtime", rt, *c.run_args(rt, cid), c.image, cid,
                        "true", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise RuntimeError("ctr run --rm %s exited %d" % (cid, p.returncode))
        ctr_cpu += ru.ru_utime + ru.ru_stime
    _reap_orphans(keep)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after_children.ru_utime + after_children.ru_stime
              - before_children.ru_utime - before_children.ru_stime)
    cd = _stat_cpu(c.proc.pid) - _stat_cpu(c.proc.pid, children=False) - before_cd
    tpl_cpu = sum(_stat_cpu(p) for p in tpl) - before_tpl
    return reaped - ctr_cpu + cd + tpl_cpu


# ---- rows -----------------------------------------------------------------

def row_run(c, runs, res):
    res["run"] = interleaved(runs, lambda k, rt, i: run_true(c, rt, "r%d-%s" % (i, k)))


def row_loaded(c, runs, res, scratch):
    with Load(scratch):
        res["loaded"] = interleaved(runs, lambda k, rt, i: run_true(c, rt, "l%d-%s" % (i, k)))


def row_exec(c, runs, res):
    for key, rt in RUNTIMES:
        cid = "idle-" + key
        c.ctr("run", "-d", "--runtime", rt, *c.run_args(rt, cid), c.image, cid, "sleep", "3600")
    try:
        res["exec"] = interleaved(runs, lambda k, rt, i: timed_ctr(
            c, "task", "exec", "--exec-id", "e%d" % i, "idle-" + k, "true"))
    finally:
        for key, _ in RUNTIMES:
            c.remove_container("idle-" + key)


def _updown(c, rt, key, i, n=20):
    ids = ["u%d-%s-%d" % (i, key, j) for j in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda cid: timed_ctr(c, "run", "-d", "--runtime", rt,
                                            *c.run_args(rt, cid), c.image, cid,
                                            "sleep", "3600"), ids))
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(lambda cid: (timed_ctr(c, "task", "rm", "-f", cid),
                                   timed_ctr(c, "container", "rm", cid)), ids))
        down = time.perf_counter() - t0
    return up, down


def row_updown(c, runs, res):
    s = interleaved(runs, lambda k, rt, i: _updown(c, rt, k, i))
    res["up"] = {k: [u for u, _ in v] for k, v in s.items()}
    res["down"] = {k: [d for _, d in v] for k, v in s.items()}


def row_pod(runs, res, row):
    """A CRI row on a second, CRI-mode containerd: pod (one pod at a time,
    --runs x QUICK_ROWS_FACTOR), pods (PODS_AT_ONCE at once, --runs) or
    podloaded (as pod, beside the `loaded` row's Load: a busy node)."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        print("%s row skipped: grpcio not installed (pip install '.[test]')" % row)
        return
    import bench_pod
    c = Containerd(cri=True)
    try:
        c.start()
        c.import_cri_images()
        handlers = {"go": CRI_GO_HANDLER, "py": CRI_PY_HANDLER}
        for k, h in handlers.items():
            bench_pod.run_pod(c, k, h, 999, settle=0)      # warm-up
        if row == "pods":
            res[row] = interleaved(runs, lambda k, rt, i: bench_pod.run_pods_at_once(
                c, k, handlers[k], i, PODS_AT_ONCE))
            return
        with Load(c.dir) if row == "podloaded" else contextlib.nullcontext():
            res[row] = interleaved(runs * QUICK_ROWS_FACTOR, lambda k, rt, i: bench_pod.run_pod(
                c, k, handlers[k], i, settle=0)["start"])
    finally:
        problems = c.cleanup()
        if problems:
            print("CRI containerd cleanup: %s" % problems, file=sys.stderr)


def row_cpu(c, runs, res):
    blocks = max(2, runs // 5)
    out = {k: [] for k, _ in RUNTIMES}
    for b in range(blocks):
        for key, rt in (RUNTIMES if b % 2 == 0 else RUNTIMES[::-1]):
            out[key].append(cpu_block(c, rt, 5, "%d" % b) / 5)
    res["cpu"] = out


def row_stdout(c, runs, res, run_ms):
    mib = 256

    def via_ctr(k, rt, i):
        cid = "o%d-%s" % (i, k)
        t0 = time.perf_counter()
        p = c.ctr_popen("run", "--rm", "--runtime", rt, *c.run_args(rt, cid), c.image, cid,
                        "dd", "if=/dev/zero", "bs=1048576", "count=%d" % mib,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
        n = 0
        while True:
            b = p.stdout.read1(1 << 20)
            if not b:
                break
            n += len(b)
        p.wait(120)
        if n != mib << 20:
            raise RuntimeError("%s: %d bytes of stdout" % (rt, n))
        return (mib << 20) / 1e6 / (time.perf_counter() - t0)

    def shim_copy(k, rt, i):
        cid = "f%d-%s" % (i, k)
        dt = timed_ctr(c, "run", "--rm", "--runtime", rt, *c.run_args(rt, cid),
                       "--log-uri", "file:///dev/null", c.image, cid,
                       "dd", "if=/dev/zero", "bs=1048576", "count=1024")
        return (1 << 30) / 1e6 / max(dt - run_ms[k] / 1e3, 1e-3)

    n = max(3, runs // 3)
    res["stdout"] = interleaved(n, via_ctr)
    res["copy"] = interleaved(n, shim_copy)


def _per_container(pids, n):
    tot = memory.measure(pids)
    m = {q: tot[q] / n / 1024.0 for q in ("rss", "pss", "uss")}
    m["procs"] = tot["procs"]
    return m


def row_memory(c, ns_list, res, ksm=False):
    """{key: {n: {"rss","pss","uss"} MiB per container}}; with ksm, also
    {"ksm": the same with ksmd running, "ksm_s": seconds to merge,
    "ksmd_cpu": its share of a core meanwhile} per n."""
    out = {k: {} for k, _ in RUNTIMES}
    for n in ns_list:
        for key, rt in RUNTIMES:
            ns = "%s-mem%d-%s" % (c.namespace, n, key)
            try:
                image = c.import_image(namespace=ns)
                for j in range(n):
                    cid = "m%d" % j
                    c.ctr("run", "-d", "--runtime", rt, *c.run_args(rt, cid), image, cid,
                          "sleep", "3600", namespace=ns)
                time.sleep(1.0)
                pids = memory.shim_pids(ns, c.address)
                if key == "py":
                    pids += template.pids()
                out[key][n] = _per_container(pids, n)
                if ksm:
                    k = Ksmd()
                    try:
                        out[key][n]["ksm_s"] = k.merge()
                        out[key][n]["ksm"] = _per_container(pids, n)
                        out[key][n]["ksmd_cpu"] = k.cpu_share(10.0)
                    finally:
                        k.restore()
            finally:
                memory.remove_namespace_containers(c, ns)
    res["memory"] = out


# ---- report ---------------------------------------------------------------

def _verdict(ratio, budget):
    op, x = budget
    ok = ratio <= x if op == "<=" else ratio >= x
    return "%s%.2fx %s" % (op, x, "ok" if ok else "MISSED")


def report(res, meta, out_dir, mem_budget, tag):
    lines = ["# Warm start: pyshim (template on) beside the Go shim", ""]
    lines += ["* %s: %s" % kv for kv in meta.items()]
    lines += ["", "| row | Go shim | pyshim | pyshim/Go | budget |", "|---|---|---|---|---|"]
    for key, label, unit, budget in ROWS:
        s = res.get(key)
        if not s:
            continue
        scale = 1e3 if unit == "ms" else 1     # samples are in s or MB/s
        g, p = (statistics.median(s[k]) * scale for k in ("go", "py"))
        fmt = "%.0f" if unit in ("ms", "MB/s") else "%.2f"
        lines.append("| %s | %s | %s | %.2fx | %s |" % (
            label, fmt % g, fmt % p, p / g, _verdict(p / g, budget)))
    mem = res.get("memory")
    if mem:
        for n in sorted(mem["go"]):
            for q in ("rss", "pss", "uss"):
                g, p = mem["go"][n][q], mem["py"][n][q]
                lines.append("| %s per container, N=%d (template counted), MiB | %.2f | %.2f | "
                             "%.2fx | %s |" % (q.upper(), n, g, p, p / g,
                                               _verdict(p / g, ("<=", mem_budget[q]))))
        for n in sorted(mem["go"]):
            if "ksm" not in mem["py"][n]:
                continue
            for q in ("rss", "pss", "uss"):
                g, p = mem["go"][n]["ksm"][q], mem["py"][n]["ksm"][q]
                lines.append("| %s per container, N=%d, ksmd on, MiB | %.2f | %.2f | "
                             "%.2fx | %s |" % (q.upper(), n, g, p, p / g,
                                               _verdict(p / g, ("<=", mem_budget[q]))))
    if mem and any("ksm" in v for v in mem["py"].values()):
        lines += ["", "ksmd on: the kernel's samepage merging, turned on by the bench "
                  "for those rows (`--ksm`) and off again after; pyshim offers its "
                  "template's and shims' memory to it, the Go shim offers none. "
                  "Seconds to merge (3 full scans) and ksmd's CPU while the containers "
                  "idle, share of one core: " + "; ".join(
                      "N=%d pyshim %.0f s, %.1f%% (Go %.1f%%)" % (
                          n, mem["py"][n]["ksm_s"], 100 * mem["py"][n]["ksmd_cpu"],
                          100 * mem["go"][n]["ksmd_cpu"])
                      for n in sorted(mem["py"]) if "ksm" in mem["py"][n]) + "."]
    counted = ["%s %d" % (k, len(res[k]["go"])) for k, *_ in ROWS if res.get(k)]
    if counted:
        lines += ["", "Samples per row: %s." % ", ".join(counted)]
    plots = plot(res, out_dir, tag)
    if plots:
        lines += [""] + ["![%s](%s)" % (os.path.splitext(p)[0], p) for p in plots]
    else:
        lines += ["", "(no plots: matplotlib is not installed; `pip install .[plots]`)"]
    text = "\n".join(lines) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "warm-%s.md" % tag), "w") as f:
        f.write(text)
    return text


def plot(res, out_dir, tag):
    """PNG files (names relative to out_dir), or [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(out_dir, exist_ok=True)
    done = []
    mem = res.get("memory")
    if mem:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, q in zip(axes, ("rss", "pss", "uss")):
            for key, name in (("go", "Go shim"), ("py", "pyshim")):
                ns = sorted(mem[key])
                ax.plot(ns, [mem[key][n][q] for n in ns], marker="o", label=name)
            merged = sorted(n for n in mem["py"] if "ksm" in mem["py"][n])
            if merged:
                ax.plot(merged, [mem["py"][n]["ksm"][q] for n in merged], marker="o",
                        linestyle="--", label="pyshim, ksmd on")
            ax.set_title("%s per container" % q.upper())
            ax.set_xlabel("containers (N)")
            if max(ns) >= 10 * min(ns):
                ax.set_xscale("log")
            ax.set_ylabel("MiB")
            ax.set_ylim(bottom=0)
            ax.legend()
        fig.tight_layout()
        done.append("memory-%s.png" % tag)
        fig.savefig(os.path.join(out_dir, done[-1]), dpi=90)
        plt.close(fig)
    lat = [(k, unit) for k, _, unit, _ in ROWS if unit in ("ms", "s") and res.get(k)
           and k != "cpu"]
    if lat:
        fig, axes = plt.subplots(1, len(lat), figsize=(3 * len(lat), 3.6))
        for ax, (k, unit) in zip(axes if len(lat) > 1 else [axes], lat):
            scale = 1e3 if unit == "ms" else 1
            ax.boxplot([[x * scale for x in res[k][rt]] for rt in ("go", "py")])
            ax.set_xticks([1, 2], ["Go", "pyshim"])
            ax.set_title(k)
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        done.append("latency-%s.png" % tag)
        fig.savefig(os.path.join(out_dir, done[-1]), dpi=90)
        plt.close(fig)
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mem-n", default="1,10,50")
    ap.add_argument("--rows", default="run,loaded,exec,updown,pod,pods,podloaded,cpu,stdout,memory")
    ap.add_argument("--out", default=os.path.join(_HERE, "report"))
    ap.add_argument("--tag-python", action="store_true",
                    help="name the report after the Python too (warm-containerd-X.Y-pythonA.B)")
    ap.add_argument("--ksm", action="store_true",
                    help="memory rows once more with the kernel's samepage merging "
                    "(ksmd) turned on, then put back as found")
    a = ap.parse_args(argv)
    rows = set(a.rows.split(","))
    # Orphaned shims come to us (cpu_block); the template too, if we spawn it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = set(template.pids())
    if before and "cpu" in rows:
        print("note: a template of this build was already running (pid %s): the forks it "
              "makes are not our descendants, the cpu row would miss them; skipped"
              % sorted(before))
        rows.discard("cpu")
    res = {}
    load0 = os.getloadavg()
    c = Containerd()
    scratch = c.dir
    try:
        c.start()
        c.image = c.import_image()
        for key, rt in RUNTIMES:        # warm-up; the first pyshim start spawns the template
            run_true(c, rt, "warm-" + key)
        template.wait_for(template.pids)
        # The single-lifecycle rows are cheap and move by +-20% between
        # 15-sample runs here (exec: 17-46 ms for either shim), so they take
        # 3x the samples.
        quick = a.runs * QUICK_ROWS_FACTOR
        steps = [("run", lambda: row_run(c, quick, res)),
                 ("exec", lambda: row_exec(c, quick, res)),
                 ("cpu", lambda: row_cpu(c, a.runs, res)),
                 ("updown", lambda: row_updown(c, a.runs, res)),
                 ("stdout", lambda: row_stdout(c, a.runs, res, {
                     k: statistics.median(v) * 1e3 for k, v in res["run"].items()})),
                 ("pod", lambda: row_pod(a.runs, res, "pod")),
                 ("pods", lambda: row_pod(a.runs, res, "pods")),
                 ("memory", lambda: row_memory(c, [int(x) for x in a.mem_n.split(",")], res,
                                               a.ksm)),
                 # last: its load's writeback and page cache churn outlive
                 # it (the pod row, which came after it, read 1.13-1.19x
                 # there against 0.79-0.92x on its own)
                 ("loaded", lambda: row_loaded(c, quick, res, scratch)),
                 ("podloaded", lambda: row_pod(a.runs, res, "podloaded"))]
        for name, fn in steps:
            if name in rows and (name != "stdout" or "run" in res):
                t0 = time.monotonic()
                fn()
                _reap_orphans(set(), settle=0.2)     # shims that exited meanwhile
                print("%s: %.0f s" % (name, time.monotonic() - t0), flush=True)
    finally:
        problems = c.cleanup()
        if problems:
            print("cleanup: %s" % problems, file=sys.stderr)
        for pid in set(template.pids()) - before:
            template.end(pid)
        _reap_orphans(set(), settle=0.5)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "containerd": "%s (%s)" % (".".join(map(str, c.version)), containerd_build(c.binary)),
        "machine": "%d cores, %s, kernel %s" % (os.cpu_count() or 0, platform.machine(),
                                                platform.release()),
        "load average (1 min) at start / end": "%.1f / %.1f" % (load0[0], os.getloadavg()[0]),
        "pyshim's Python": platform.python_version(),
        "runs per latency row (interleaved Go/pyshim)": "%d (run, loaded, exec, pod, podloaded: %d)" % (
            a.runs, a.runs * QUICK_ROWS_FACTOR),
    }
    tag = "containerd-%d.%d" % c.version[:2]
    if a.tag_python:
        tag += "-python%d.%d" % sys.version_info[:2]
    print(report(res, meta, a.out, {"rss": 0.8, "pss": 0.5, "uss": 0.75}, tag))


if __name__ == "__main__":
    main()
