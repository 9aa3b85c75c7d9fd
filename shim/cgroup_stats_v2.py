"""Stats of a cgroup v2 (unified) Cgroup: io.containerd.cgroups.v2.Metrics,
as github.com/containerd/cgroups 1.0.4 fills it (see shim/cgroups.py).
Imported by Cgroup.metrics() only."""
import os

from shim.cgroups import _MAX64, _fill, _kv, _rdma, _read, _read_uint, _uint


_MEMSTAT_V2 = """anon file kernel_stack slab sock shmem file_mapped file_dirty
file_writeback anon_thp inactive_anon active_anon inactive_file active_file
unevictable slab_reclaimable slab_unreclaimable pgfault pgmajfault
workingset_refault workingset_activate workingset_nodereclaim pgrefill pgscan
pgsteal pgactivate pgdeactivate pglazyfree pglazyfreed thp_fault_alloc
thp_collapse_alloc"""


def _read_max(path):
    """A uint64 file where "max" means no limit (2^64-1, like Go)."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    return _MAX64 if text == "max" else (_uint(text) or 0)


def metrics_v2(d):
    """cgroups2.Metrics of the unified cgroup dir `d`."""
    from shim.pb import cgroups2 as m
    met = m.Metrics()

    cur = _read_uint(d + "/pids.current")
    if cur is not None:
        met.pids = m.PidsStat(current=cur, limit=_read_max(d + "/pids.max") or 0)

    text = _read(d + "/cpu.stat")
    if text is not None:
        met.cpu = m.CPUStat()
        _fill(met.cpu, _kv(text),
              "usage_usec user_usec system_usec nr_periods nr_throttled throttled_usec")

    text = _read(d + "/memory.stat")
    usage = _read_uint(d + "/memory.current")
    if text is not None or usage is not None:
        mem = met.memory = m.MemoryStat(usage=usage or 0)
        _fill(mem, _kv(text), _MEMSTAT_V2)
        mem.usage_limit = _read_max(d + "/memory.max") or 0
        mem.swap_usage = _read_uint(d + "/memory.swap.current") or 0
        mem.swap_limit = _read_max(d + "/memory.swap.max") or 0

    text = _read(d + "/memory.events")
    if text is not None:
        met.memory_events = m.MemoryEvents()
        _fill(met.memory_events, _kv(text), "low high max oom oom_kill")

    text = _read(d + "/io.stat")
    if text is not None:
        met.io = m.IOStat(usage=_io_v2(m, text))

    cur, lim = _read(d + "/rdma.current"), _read(d + "/rdma.max")
    if cur is not None or lim is not None:
        met.rdma = m.RdmaStat(current=_rdma(m.RdmaEntry, cur or ""),
                              limit=_rdma(m.RdmaEntry, lim or ""))

    met.hugetlb = _hugetlb_v2(m, d)
    return met


def _io_v2(m, text):
    """Lines `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 2:
            continue
        maj, _, mi = f[0].partition(":")
        major, minor = _uint(maj), _uint(mi)
        if major is None or minor is None:
            continue
        e = m.IOEntry(major=major, minor=minor)
        for kv in f[1:]:
            k, _, v = kv.partition("=")
            if k in ("rbytes", "wbytes", "rios", "wios"):
                n = _uint(v)
                if n:
                    setattr(e, k, n)
        out.append(e)
    return out


def _hugetlb_v2(m, d):
    try:
        names = os.listdir(d)
    except OSError:
        return []
    sizes = {}
    for name in names:
        f = name.split(".")
        if len(f) == 3 and f[0] == "hugetlb" and f[2] in ("current", "max"):
            v = _read_max("%s/%s" % (d, name))
            if v is None:
                continue
            e = sizes.get(f[1])
            if e is None:
                e = sizes[f[1]] = m.HugeTlbStat(pagesize=f[1])
            if f[2] == "max":
                e.max = v
            else:
                e.current = v
    return [sizes[k] for k in sorted(sizes)]
