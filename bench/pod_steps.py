#!/usr/bin/env python3
"""Where a CRI pod start's time goes, step by step, both shims.

    python bench/pod_steps.py [--pods 16] [--loaded]   # root; grpcio (test extras)

Pods as bench_pod.start_pod makes them (a sandbox and 3 `sleep`
containers, host network), interleaved Go shim / pyshim. For each CRI
call (RunPodSandbox, then CreateContainer and StartContainer x 3) it prints
the median wall time, the part of it spent in runc, and the rest: what
containerd and the shim do themselves. runc's part is timed by a wrapper
that both CRI handlers run as their runc (BinaryName, through
PYSHIM_TEST_RUNC): a bash script that adds ~1-2 ms to each runc call, the
same for both shims. A shim can only move the rest. --loaded: beside
bench_warm.py's load (a busy loop per core, a tar of /usr, an fsync'd
writer), as its podloaded row.
"""
import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import bench_pod  # noqa: E402
from bench_warm import Load  # noqa: E402
from support import template  # noqa: E402
from support.cgroup import RUNC_ENV, runc_binary  # noqa: E402
from support.containerd import CRI_GO_HANDLER, CRI_PY_HANDLER, Containerd  # noqa: E402

STEPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "CreateContainer",
         "StartContainer", "CreateContainer", "StartContainer")
RUNC_VERBS = ("create", "start", "exec", "state", "kill", "delete", "features", "ps",
              "update", "events")

# One line per runc call: start and end (epoch seconds), then runc's argv.
WRAPPER = """#!/bin/bash
t0=$EPOCHREALTIME
"%s" "$@"
rc=$?
echo "$t0 $EPOCHREALTIME $*" >> "%s"
exit $rc
"""


def write_wrapper(d, runc):
    path = os.path.join(d, "runc-timed")
    log = os.path.join(d, "runc.log")
    with open(path, "w") as f:
        f.write(WRAPPER % (runc, log))
    os.chmod(path, 0o755)
    return path, log


def take_runc_calls(log):
    """[(start, end, verb)] logged since the last call; empties the log."""
    calls = []
    try:
        with open(log) as f:
            lines = f.readlines()
        os.unlink(log)
    except FileNotFoundError:
        return calls
    for line in lines:
        words = line.split()
        verb = next((w for w in words[2:] if w in RUNC_VERBS), "?")
        calls.append((float(words[0]), float(words[1]), verb))
    return calls


def pod_steps(c, name, handler, log):
    """[(wall s, runc s, runc verbs)] for each of STEPS; the pod is removed."""
    config = bench_pod.pod_config(c, name)
    take_runc_calls(log)
    marks = [time.time()]
    pod = c.cri.run_pod_sandbox(config, runtime_handler=handler)
    marks.append(time.time())
    try:
        for n in range(3):
            cid = c.cri.create_container(pod, bench_pod.container_config(c, n), config)
            marks.append(time.time())
            c.cri.start_container(cid)
            marks.append(time.time())
        calls = take_runc_calls(log)
    finally:
        bench_pod.remove_pod(c, pod)
        bench_pod.wait_no_shims(c)
    out = []
    for t0, t1 in zip(marks, marks[1:]):
        inside = [(a, b, v) for a, b, v in calls if t0 <= a and b <= t1]
        out.append((t1 - t0, sum(b - a for a, b, _ in inside), " ".join(v for *_, v in inside)))
    return out


def _step(sample, j):
    """(wall s, runc s, verbs) of step j of one pod; j None: the whole pod."""
    if j is not None:
        return sample[j]
    return sum(x[0] for x in sample), sum(x[1] for x in sample), ""


def table(samples):
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    lines = ["median ms over %d pods each | wall: Go, pyshim, ratio | runc | rest "
             "(containerd + shim)" % len(samples["go"]),
             "%-16s %7s %7s %6s | %6s %6s | %6s %6s %6s  %s" % (
                 "step", "Go", "pyshim", "ratio", "Go", "pyshim", "Go", "pyshim", "ratio",
                 "runc calls")]
    for j, name in list(enumerate(STEPS)) + [(None, "total")]:
        g = [_step(s, j) for s in samples["go"]]
        p = [_step(s, j) for s in samples["py"]]
        wg, wp = ms(x[0] for x in g), ms(x[0] for x in p)
        rg, rp = ms(x[1] for x in g), ms(x[1] for x in p)
        restg, restp = ms(x[0] - x[1] for x in g), ms(x[0] - x[1] for x in p)
        lines.append("%-16s %7.1f %7.1f %5.2fx | %6.1f %6.1f | %6.1f %6.1f %5.2fx  %s" % (
            name, wg, wp, wp / wg, rg, rp, restg, restp, restp / restg if restg else 0,
            p[0][2]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=16, help="pods per shim (default 16)")
    ap.add_argument("--loaded", action="store_true", help="beside bench_warm.py's load")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (starts a private containerd)")
    d = tempfile.mkdtemp(prefix="pyshim-podsteps-")
    wrapper, log = write_wrapper(d, runc_binary())
    os.environ[RUNC_ENV] = wrapper       # BinaryName of both CRI handlers
    before = set(template.pids())
    c = Containerd(cri=True)
    samples = {"go": [], "py": []}
    try:
        c.start()
        c.import_cri_images()
        handlers = (("go", CRI_GO_HANDLER), ("py", CRI_PY_HANDLER))
        for key, h in handlers:                         # warm-up
            pod_steps(c, "warm-" + key, h, log)
        with Load(c.dir) if a.loaded else contextlib.nullcontext():
            for i in range(a.pods):
                for key, h in (handlers if i % 2 == 0 else handlers[::-1]):
                    samples[key].append(pod_steps(c, "steps-%s-%d" % (key, i), h, log))
    finally:
        problems = c.cleanup()
        shutil.rmtree(d, ignore_errors=True)
        for pid in set(template.pids()) - before:      # the one our first pod spawned
            template.end(pid)
    print("containerd %s%s" % (".".join(map(str, c.version)),
                                ", machine loaded" if a.loaded else ""))
    print(table(samples))
    for p in problems:
        print("cleanup: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
