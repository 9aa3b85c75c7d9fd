"""A long-lived shim across a few hundred execs: every exit status right,
memory (RSS, PSS from /proc/PID/smaps_rollup) and fds flat from start to end.
The execs go straight to the shim over ttrpc (no stdio), so the figures are
the shim's alone."""
import os

from shim import ttrpc_client
from support import reltable
from support.shimwire import exec_once, fd_count, memory_kib, process_spec, shim_pid, state

EXECS = int(os.environ.get("PYSHIM_EXEC_COUNT", "300"))
WARMUP = 20
MAX_GROWTH_KIB = 1024       # pyshim: RSS and PSS growth over EXECS execs


def test_long_lived_shim_memory_across_execs(containerd, live, runtime):
    cid, address, svc = live
    rt = reltable.runtime_key(runtime)
    with ttrpc_client.SyncClient(address, timeout=30) as cl:
        pid = shim_pid(cl, svc, cid)
        proc = process_spec(containerd.bundle(cid), ["sh", "-c", "exit 0"])
        for i in range(WARMUP):
            assert exec_once(cl, svc, cid, proc, "w%d" % i) == 0
        m0, fd0 = memory_kib(pid), fd_count(pid)
        wrong = []
        for i in range(EXECS):
            proc["args"] = ["sh", "-c", "exit %d" % (i % 7)]
            got = exec_once(cl, svc, cid, proc, "x%d" % i)
            if got != i % 7:
                wrong.append((i, got))
        m1, fd1 = memory_kib(pid), fd_count(pid)
        assert state(cl, svc, cid).status == 2
    rss = (m1["Rss"] - m0["Rss"])
    pss = (m1["Pss"] - m0["Pss"])
    reltable.record("execs: %d into one container, wrong exit codes" % EXECS, rt, len(wrong))
    reltable.record("execs: shim RSS MiB start -> end", rt,
                    "%.1f -> %.1f" % (m0["Rss"] / 1024, m1["Rss"] / 1024))
    reltable.record("execs: shim PSS MiB start -> end", rt,
                    "%.1f -> %.1f" % (m0["Pss"] / 1024, m1["Pss"] / 1024))
    reltable.record("execs: shim fds start -> end", rt, "%d -> %d" % (fd0, fd1))
    assert not wrong, wrong[:5]
    if rt == "py":      # the Go shim's figures are recorded, not judged
        assert rss < MAX_GROWTH_KIB and pss < MAX_GROWTH_KIB, (m0, m1)
        assert fd1 <= fd0
