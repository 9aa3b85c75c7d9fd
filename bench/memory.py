#!/usr/bin/env python3
"""Memory of shim processes, per container, for one or more runtimes.

Library:
    smaps_rollup(pid) -> {"Rss": kB, "Pss": kB, "Private_Clean": kB, ...}
    uss(pid) -> kB (Private_Clean + Private_Dirty)
    threads(pid) -> int
    shim_pids(namespace, address=None) -> [pid]   serving shim processes
    measure(pids) -> {"rss", "pss", "uss", "pss_anon", "threads", "procs"} (kB sums)

Script (root; starts its own private containerd, cleans up everything):
    python bench/memory.py --runtime io.containerd.runc.v2 \\
        --runtime io.containerd.pyshim.v1 -n 10 [--group] [--json]

For each runtime it runs N detached `sleep 3600` containers (in a namespace
of their own), sums RSS / PSS / USS (= Private_Clean + Private_Dirty) and
threads over all shim processes of that namespace, divides by N and prints
a table plus the ratio of the second runtime to the first. A runtime that
is not installed or fails gets a FAILED row; the others are still measured.
--group puts all N containers of a runtime into one shim (OCI annotation
io.containerd.runc.v2.group), as CRI does for a pod.
"""
import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

from support.containerd import (GO_RUNTIME, PY_RUNTIME, Containerd,  # noqa: E402
                                find_pyshim_binary, shim_processes)
from support.helpers import status_field  # noqa: E402

ACTIONS = ("start", "delete")


def smaps_rollup(pid):
    """/proc/PID/smaps_rollup as {field: kB}."""
    res = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                res[parts[0][:-1]] = int(parts[1])
    return res


def uss(pid):
    s = smaps_rollup(pid)
    return s.get("Private_Clean", 0) + s.get("Private_Dirty", 0)


def threads(pid):
    return status_field(pid, "Threads")


def shim_pids(namespace, address=None):
    """PIDs of serving shim processes (any runtime) whose argv has
    `-namespace NAMESPACE` (and `-address ADDRESS` if given); transient
    `start`/`delete` invocations are left out."""
    return [pid for pid, argv in shim_processes(namespace, address)
            if argv[-1] not in ACTIONS]


def measure(pids):
    tot = {"rss": 0, "pss": 0, "uss": 0, "pss_anon": 0, "swap": 0, "threads": 0, "procs": 0}
    for pid in pids:
        try:
            s = smaps_rollup(pid)
            t = threads(pid)
        except OSError:
            continue
        tot["rss"] += s.get("Rss", 0)
        tot["pss"] += s.get("Pss", 0)
        tot["uss"] += s.get("Private_Clean", 0) + s.get("Private_Dirty", 0)
        tot["pss_anon"] += s.get("Pss_Anon", 0)
        tot["swap"] += s.get("Swap", 0)
        tot["threads"] += t
        tot["procs"] += 1
    return tot


def _short(runtime):
    return runtime.split(".")[-2] if runtime.count(".") >= 2 else runtime.replace("/", "_")


def namespace_for(c, runtime):
    """The namespace bench_runtime() uses for `runtime` on Containerd c."""
    return "%s-%s" % (c.namespace, _short(runtime))


def remove_namespace_containers(c, ns, timeout=60):
    """Best effort: kill and delete every task and container in namespace ns."""
    ids = c.containers(namespace=ns)
    if ids:
        c.ctr("task", "delete", "-f", *ids, check=False, namespace=ns, timeout=timeout)
        c.ctr("container", "delete", *ids, check=False, namespace=ns, timeout=timeout)
    for id in c.containers(namespace=ns):  # whatever the batch left
        c.remove_container(id, ns, timeout)


def bench_runtime(c, runtime, n, group=False, settle=1.0):
    """Run n detached sleep containers with `runtime` in a namespace of their
    own (namespace_for(c, runtime)); returns the per-container numbers (or
    {"error": text}). The containers keep running (Containerd.cleanup() or
    remove_namespace_containers() removes them)."""
    ns = namespace_for(c, runtime)
    try:
        if runtime == PY_RUNTIME and find_pyshim_binary() is None:
            raise RuntimeError("containerd-shim-pyshim-v1 not installed (pip install .)")
        image = c.import_image(namespace=ns)
        extra = ["--annotation", "io.containerd.runc.v2.group=bench"] if group else []
        t0 = time.monotonic()
        for i in range(n):
            c.ctr("run", "-d", "--runtime", runtime, *extra, image, "bench-%d" % i,
                  "sleep", "3600", namespace=ns, timeout=60)
        elapsed = time.monotonic() - t0
        tasks = c.tasks(namespace=ns)
        bad = {k: v for k, v in tasks.items() if v[1] != "RUNNING"}
        if len(tasks) != n or bad:
            raise RuntimeError("tasks not all RUNNING: %s" % tasks)
        time.sleep(settle)
        pids = shim_pids(ns, c.address)
        if not pids:
            raise RuntimeError("no shim process found for namespace %s" % ns)
        tot = measure(pids)
        res = {k: v / n for k, v in tot.items()}
        res["shims"] = tot["procs"]
        res["start_s"] = elapsed / n
        return res
    except Exception as e:  # noqa: BLE001 - report, keep measuring the others
        msg = str(e).strip().splitlines()
        return {"error": " | ".join(line.strip() for line in msg[:6] if line.strip())}


def fmt_table(results, n):
    mib = lambda kb: "%.2f" % (kb / 1024.0)  # noqa: E731
    hdr = ("runtime", "shims", "RSS MiB", "PSS MiB", "USS MiB", "threads", "start s")
    rows = []
    for rt, r in results:
        if "error" in r:
            rows.append((rt, "FAILED: " + r["error"]))
        else:
            rows.append((rt, str(r["shims"]), mib(r["rss"]), mib(r["pss"]), mib(r["uss"]),
                         "%.1f" % r["threads"], "%.2f" % r["start_s"]))
    ok = [(rt, r) for rt, r in results if "error" not in r]
    if len(ok) >= 2:
        (rb, b), (ra, a) = ok[0], ok[1]
        ratio = lambda k: "%.2f" % (a[k] / b[k]) if b[k] else "-"  # noqa: E731
        rows.append(("ratio %s/%s" % (_short(ra), _short(rb)), "", ratio("rss"), ratio("pss"),
                     ratio("uss"), ratio("threads"), ratio("start_s")))
    w0 = max(len(hdr[0]), *(len(r[0]) for r in rows))
    out = ["per container, N=%d (sums over all shim processes / N)" % n]
    line = lambda cells: "  ".join([cells[0].ljust(w0)] + [c.rjust(8) for c in cells[1:]])  # noqa: E731,E501
    out.append(line(hdr))
    for r in rows:
        out.append(line(r) if len(r) > 2 else r[0].ljust(w0) + "  " + r[1])
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="per-container memory of containerd shims")
    ap.add_argument("--runtime", action="append", dest="runtimes",
                    help="runtime to measure (repeatable; default: runc.v2 and pyshim.v1)")
    ap.add_argument("-n", type=int, default=10, help="containers per runtime (default 10)")
    ap.add_argument("--group", action="store_true",
                    help="one shim for all containers of a runtime (group annotation)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before measuring")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    runtimes = args.runtimes or [GO_RUNTIME, PY_RUNTIME]
    if os.geteuid() != 0:
        ap.error("needs root (starts a private containerd)")

    c = Containerd()
    results = []
    try:
        c.start()
        for rt in runtimes:
            results.append((rt, bench_runtime(c, rt, args.n, args.group, args.settle)))
    finally:
        problems = c.cleanup()
    if args.json:
        print(json.dumps({"n": args.n, "group": args.group,
                          "results": {rt: r for rt, r in results}}, indent=2))
    else:
        print(fmt_table(results, args.n))
    for p in problems:
        print("cleanup: " + p, file=sys.stderr)
    return 0 if results and all("error" not in r for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
