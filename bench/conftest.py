"""Fixtures and reporting for the benchmarks in bench/ (see bench/README.md).

Fixtures:
  containerd     session: one private containerd (tests/support/containerd.py)
                 for the whole bench session; skipped when not root or when
                 containerd/ctr/runc/busybox are missing; fails when pyshim is
                 not installed. At the end everything is removed and the
                 session errors if a shim, mount or cgroup was left behind.
  image          session: the offline busybox image, imported.
  bench_results  session: Results, the side-by-side numbers (Go shim and
                 pyshim) printed as one compact table with ratios by
                 pytest_terminal_summary below, and written to
                 bench/results.md when PYSHIM_BENCH_WRITE=1.
  replay         the function replay(benchmark, group, samples, unit=None):
                 hands samples measured elsewhere (interleaved Go/pyshim) to
                 pytest-benchmark, so its table shows exactly those samples
                 (see _replay).
"""
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (os.path.join(REPO, "tests"), HERE):  # support.containerd; bench/memory.py
    if _p not in sys.path:
        sys.path.insert(0, _p)

from support.containerd import Containerd, find_pyshim_binary  # noqa: E402

WRITE_ENV = "PYSHIM_BENCH_WRITE"
RESULTS_MD = os.path.join(HERE, "results.md")


# ---------------------------------------------------------------- collection
def pytest_collect_file(file_path, parent):
    # `pytest bench` collects bench/bench_*.py (pytest only collects test_*.py
    # from directories; a file named on the command line is collected anyway).
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and str(file_path.parent) == HERE and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing benchmark shows the end of the private containerd's log (the
    # shims log there too, through the bundle's `log` FIFO).
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("call", "setup"):
        c = getattr(item, "funcargs", {}).get("containerd")
        if isinstance(c, Containerd):
            rep.sections.append(("containerd log (%s, last 60 lines)" % c.log_path,
                                 c.log_text(tail=60)))


# ---------------------------------------------------------------- results
class Results:
    """Numbers per metric and runtime ("go" / "py"), rendered side by side.

    define(key, order, label, fmt, budget=None, higher_better=False)
    put(key, runtime, value)
    note(order, text)            a line of its own in the table
    """

    def __init__(self):
        self.metrics = {}
        self.values = {}
        self.notes = []
        self.info = {}

    def define(self, key, order, label, fmt="%.2f", budget=None, higher_better=False):
        self.metrics[key] = dict(order=order, label=label, fmt=fmt, budget=budget,
                                 higher_better=higher_better)

    def put(self, key, runtime, value):
        self.values[(key, runtime)] = value

    def note(self, order, text):
        if (order, text) not in self.notes:
            self.notes.append((order, text))

    def __bool__(self):
        return bool(self.values)

    def rows(self):
        """[(label, go, py, ratio, budget)] as strings, in metric order."""
        out = []
        items = [(m["order"], key) for key, m in self.metrics.items()
                 if (key, "go") in self.values or (key, "py") in self.values]
        items += [(order, None, text) for order, text in self.notes]
        for entry in sorted(items, key=lambda e: (str(e[0]), e[1] or "")):
            if len(entry) == 3:
                out.append((entry[2],))
                continue
            key = entry[1]
            m = self.metrics[key]
            go, py = self.values.get((key, "go")), self.values.get((key, "py"))
            ratio = py / go if go and py is not None else None
            budget = ""
            if m["budget"] is not None:
                op = ">=" if m["higher_better"] else "<="
                if ratio is None:
                    verdict = ""
                elif m["higher_better"]:
                    verdict = "ok" if ratio >= m["budget"] else "MISS"
                else:
                    verdict = "ok" if ratio <= m["budget"] else "OVER"
                budget = ("%s%.1fx %s" % (op, m["budget"], verdict)).strip()
            out.append(("%s %s" % (m["order"], m["label"]),
                        m["fmt"] % go if go is not None else "-",
                        m["fmt"] % py if py is not None else "-",
                        "%.2fx" % ratio if ratio is not None else "-",
                        budget))
        return out

    def table_lines(self, skipped=()):
        rows = self.rows() + [("skipped: %s (%s)" % s,) for s in skipped]
        hdr = ("metric (ratio = pyshim/Go)", "Go shim", "pyshim", "ratio", "budget")
        full = [r for r in rows if len(r) == 5]
        w = [max([len(hdr[i])] + [len(r[i]) for r in full]) for i in range(5)]

        def fmt(r):
            if len(r) == 1:
                return r[0]
            return "  ".join([r[0].ljust(w[0])] + [r[i].rjust(w[i]) for i in range(1, 4)]
                             + [r[4].ljust(w[4])]).rstrip()
        return [fmt(hdr)] + [fmt(r) for r in rows]


_RESULTS = pytest.StashKey[Results]()


@pytest.fixture(scope="session")
def bench_results(request):
    r = request.config.stash.get(_RESULTS, None)
    if r is None:
        r = request.config.stash[_RESULTS] = Results()
    return r


@pytest.fixture
def replay():
    """The function _replay below."""
    return _replay


def _replay(benchmark, group, samples, unit=None, **extra_info):
    """Give pytest-benchmark `samples` measured by the caller, one round each.

    The Go shim and pyshim are measured interleaved (go, py, py, go, ...) in
    one loop, so that load from other processes on the machine hits both
    alike; pytest-benchmark can only time one callable per test. So each
    test replays its runtime's samples through benchmark.pedantic() with a
    timer that returns 0 at the start and the sample at the end of each
    round: the statistics pytest-benchmark computes and prints are exactly
    those of the measured samples. unit: None for seconds; else the samples
    are not times (e.g. "KiB") and the table shows them unscaled (see
    pytest_benchmark_scale_unit below; the group name says the unit).
    """
    samples = list(samples)
    benchmark.group = group
    benchmark.extra_info.update(extra_info)
    benchmark.extra_info["measured"] = "interleaved Go/pyshim, replayed (bench/conftest.py)"
    if unit:
        benchmark.extra_info["replayed_unit"] = unit
    if not hasattr(benchmark, "_timer"):
        pytest.fail("this pytest-benchmark has no BenchmarkFixture._timer; replay() needs it")
    state = {"i": 0, "end": False}

    def replayed_samples():
        if not state["end"]:
            state["end"] = True
            return 0.0
        state["end"] = False
        v = samples[state["i"]]
        state["i"] += 1
        return v

    benchmark._timer = replayed_samples
    benchmark.pedantic(lambda: None, rounds=len(samples), iterations=1, warmup_rounds=0)


def pytest_benchmark_scale_unit(config, unit, benchmarks, best, worst, sort):
    # groups of replayed non-time samples (KiB, thread counts): no scaling
    if benchmarks and all((b.get("extra_info") or {}).get("replayed_unit") for b in benchmarks):
        return "", 1.0
    return None


# ---------------------------------------------------------------- containerd
def _unavailable():
    if os.geteuid() != 0:
        return "the shim benchmarks need root (they start a private containerd)"
    for b in ("containerd", "ctr", "runc"):
        if shutil.which(b) is None:
            return "%s not found on PATH (apt-get install containerd runc)" % b
    if not os.path.exists("/bin/busybox"):
        return "/bin/busybox missing (apt-get install busybox-static)"
    return None


def _version(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=10)
        return r.stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        return "?"


@pytest.fixture(scope="session")
def containerd(bench_results):
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    if find_pyshim_binary() is None:
        pytest.fail("containerd-shim-pyshim-v1 is not installed: run "
                    "`pip install --no-build-isolation .` (benchmarks use the installed package)",
                    pytrace=False)
    bench_results.info["load_start"] = os.getloadavg()
    c = Containerd()
    try:
        c.start()
    except Exception:
        c.cleanup()
        raise
    yield c
    bench_results.info["log_problems"] = [
        line for line in c.log_text().splitlines()
        if "level=error" in line or "level=warning" in line or "level=fatal" in line]
    problems = c.cleanup()
    if problems:
        pytest.fail("private containerd %s left things behind (cleaned up now):\n  %s"
                    % (c.namespace, "\n  ".join(problems)), pytrace=False)


@pytest.fixture(scope="session")
def image(containerd):
    return containerd.import_image()


# ---------------------------------------------------------------- summary
def _git_head():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no",
                                "--", "shim", "_native", "tools", "proto", "setup.py"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True, timeout=10).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except Exception:  # noqa: BLE001 - informational only
        return "?"
    return head + (" + uncommitted changes in %s" % ", ".join(dirty) if dirty else "")


def _machine_lines(results):
    import shim
    cg = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"
    ls, le = results.info.get("load_start"), os.getloadavg()
    fmt_load = lambda la: "/".join("%.2f" % x for x in la) if la else "?"  # noqa: E731
    return [
        "date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine: %d cores, %s, kernel %s, cgroup %s" % (
            os.cpu_count() or 0, platform.machine(), platform.release(), cg),
        "load average (1/5/15 min): %s at start, %s at end (other work shares the machine)"
        % (fmt_load(ls), fmt_load(le)),
        "%s; %s; Python %s; pyshim from %s" % (
            _version(["containerd", "--version"]).replace("github.com/containerd/containerd ", ""),
            _version(["runc", "--version"]), platform.python_version(),
            os.path.dirname(os.path.dirname(shim.__file__))),
        "repo at summary time: %s" % _git_head(),
    ]


_MSG = re.compile(r'level=(\w+) msg="((?:[^"\\]|\\.)*)"(.*)')


def _log_summary(lines, width=150):
    """Distinct (level, message, runtime) of containerd log lines, with counts."""
    counts = {}
    for line in lines:
        m = _MSG.search(line)
        if not m:
            key = re.sub(r"\d+", "N", line)[:width]
        else:
            rt = re.search(r"runtime=(\S+)", m.group(3))
            key = "%s %s%s" % (m.group(1), re.sub(r"\d+", "N", m.group(2)),
                               " [%s]" % rt.group(1) if rt else "")
        counts[key[:width]] = counts.get(key[:width], 0) + 1
    return ["%4dx %s" % (n, k) for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _skipped(terminalreporter):
    out = []
    for rep in terminalreporter.stats.get("skipped", []):
        if "bench_shim.py" not in rep.nodeid:
            continue
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.replace("Skipped: ", "")
        if "--benchmark-" in reason:
            continue
        out.append((rep.nodeid.split("::")[-1], reason))
    return out


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config.stash.get(_RESULTS, None)
    if not results:
        return
    lines = results.table_lines(_skipped(terminalreporter))
    head = _machine_lines(results)
    tr = terminalreporter
    tr.section("pyshim vs Go shim (same run, same containerd)")
    for line in head + [""] + lines:
        tr.write_line(line)
    logp = results.info.get("log_problems") or []
    log_lines = []
    if logp:
        log_lines = ["containerd log: %d warning/error lines during the run, by message "
                     "(digits shown as N):" % len(logp)]
        log_lines += ["  " + line for line in _log_summary(logp)]
        tr.write_line("")
        for line in log_lines:
            tr.write_line(line)
    if os.environ.get(WRITE_ENV, "") not in ("", "0"):
        _write_md(head, lines, log_lines)
        tr.write_line("")
        tr.write_line("written to %s" % RESULTS_MD)


def _write_md(head, lines, log_lines):
    text = ["# Benchmark results: pyshim vs the Go shim",
            "",
            "Generated by `PYSHIM_BENCH_WRITE=1 pytest bench/bench_shim.py` (see",
            "bench/README.md for what each row measures). Both runtimes are measured",
            "in the same run against the same private containerd; latency and",
            "throughput samples are interleaved Go/pyshim. Values are medians.",
            ""]
    text += ["* " + h for h in head]
    text += ["", "```"] + lines + ["```", ""]
    if log_lines:
        text += ["```"] + log_lines + ["```", ""]
    text += ["Row 5a is bound by the producer (busybox `head -c` alone moves ~150 MB/s",
             "here), 5b by the shim plus `ctr`'s own copy, 5c by the shim alone; see",
             "bench/README.md."]
    with open(RESULTS_MD + ".tmp", "w") as f:
        f.write("\n".join(text).rstrip() + "\n")
    os.replace(RESULTS_MD + ".tmp", RESULTS_MD)
