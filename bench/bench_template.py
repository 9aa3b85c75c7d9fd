#!/usr/bin/env python3
"""The template process (issue 12) in numbers: `ctr run --rm IMAGE id true`
with the template (the default), without it (PYSHIM_TEMPLATE=0), and with
the Go shim of the same containerd; and memory per container with the
template's own memory counted.

Run (root, against the INSTALLED package, from the repo root):
    python bench/bench_template.py [--runs 15] [-n 10]

Two private containerds (the second one's environment turns the template
off); the Go shim runs on the first. Runs are interleaved (go, warm, cold,
then reversed, ...) so load hits all three alike; medians and ratios to Go
are printed. Memory: N detached `sleep` containers per variant, RSS / PSS /
USS summed over the serving shims (plus the template for `warm`) and
divided by N. Templates this script spawned are ended (by PID) at the end.
"""
import argparse
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))

import memory  # noqa: E402
from support import template  # noqa: E402
from support.containerd import GO_RUNTIME, PY_RUNTIME, Containerd  # noqa: E402


def _containerd(env=None):
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        c = Containerd().start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    c.image = c.import_image()
    return c


def _run_true(c, runtime, cid):
    t0 = time.perf_counter()
    r = c.ctr("run", "--rm", "--runtime", runtime, c.image, cid, "true", check=False,
              timeout=180)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError("%s: %s %s" % (runtime, r.stdout, r.stderr))
    return dt


def _memory(c, runtime, n, with_template):
    ns = memory.namespace_for(c, runtime) + ("-t" if with_template else "")
    try:
        image = c.import_image(namespace=ns)
        for i in range(n):
            c.ctr("run", "-d", "--runtime", runtime, image, "m%d" % i, "sleep", "3600",
                  namespace=ns)
        time.sleep(1.0)
        pids = memory.shim_pids(ns, c.address)
        if with_template:
            pids = pids + template.pids()
        tot = memory.measure(pids)
        return {k: tot[k] / n / 1024.0 for k in ("rss", "pss", "uss")}, len(pids)
    finally:
        memory.remove_namespace_containers(c, ns)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("-n", type=int, default=10)
    a = ap.parse_args(argv)
    before = set(template.pids())
    warm = cold = None
    try:
        warm = _containerd()
        cold = _containerd({"PYSHIM_TEMPLATE": "0"})
        variants = [("go", warm, GO_RUNTIME), ("warm", warm, PY_RUNTIME),
                    ("cold", cold, PY_RUNTIME)]
        for key, c, rt in variants:      # warm-up; spawns the template
            _run_true(c, rt, "w-" + key)
        template.wait_for(template.pids)
        samples = {k: [] for k, _, _ in variants}
        for i in range(a.runs):
            for key, c, rt in (variants if i % 2 == 0 else variants[::-1]):
                samples[key].append(_run_true(c, rt, "t%d-%s" % (i, key)))
        med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        print("ctr run --rm true, median of %d interleaved runs (ms):" % a.runs)
        for k in ("go", "warm", "cold"):
            print("  %-5s %7.1f   %.2fx Go" % (k, med[k], med[k] / med["go"]))
        print("memory per container, N=%d (MiB; warm includes the template):" % a.n)
        mem = {"go": _memory(warm, GO_RUNTIME, a.n, False),
               "warm": _memory(warm, PY_RUNTIME, a.n, True),
               "cold": _memory(cold, PY_RUNTIME, a.n, False)}
        for k in ("go", "warm", "cold"):
            m, procs = mem[k]
            print("  %-5s RSS %5.2f (%.2fx)  PSS %5.2f (%.2fx)  USS %5.2f (%.2fx)  [%d procs]"
                  % (k, m["rss"], m["rss"] / mem["go"][0]["rss"], m["pss"],
                     m["pss"] / mem["go"][0]["pss"], m["uss"], m["uss"] / mem["go"][0]["uss"],
                     procs))
    finally:
        for c in (warm, cold):
            if c is not None:
                problems = c.cleanup()
                if problems:
                    print("cleanup: %s" % problems, file=sys.stderr)
        for pid in set(template.pids()) - before:
            template.end(pid)


if __name__ == "__main__":
    main()
