"""Stats of a cgroup v1 (or hybrid) Cgroup: io.containerd.cgroups.v1.Metrics,
as github.com/containerd/cgroups 1.0.4 fills it (see shim/cgroups.py).
Imported by Cgroup.metrics() only."""
import os

from shim.cgroups import _fill, _kv, _rdma, _read, _read_uint, _uint

USER_HZ = 100            # cpuacct.stat unit; Go hard-codes it too
_NS_PER_TICK = 1000000000 // USER_HZ


def metrics_v1(cg):
    """cgroups1.Metrics of a v1 (or hybrid) Cgroup."""
    from shim.pb import cgroups1 as m
    met = m.Metrics()
    p = cg.paths

    d = p.get("pids")
    if d:
        cur = _read_uint(d + "/pids.current")
        if cur is not None:
            # v1: "max" (no limit) is reported as 0.
            met.pids = m.PidsStat(current=cur, limit=_read_uint(d + "/pids.max") or 0)

    cpu_d, acct_d = p.get("cpu"), p.get("cpuacct")
    usage, thr, seen = m.CPUUsage(), m.Throttle(), False
    if acct_d:
        total = _read_uint(acct_d + "/cpuacct.usage")
        if total is not None:
            usage.total, seen = total, True
        text = _read(acct_d + "/cpuacct.stat")
        if text is not None:
            seen = True
            f = text.split()
            # "user N system N", in USER_HZ ticks
            if len(f) == 4 and f[0] == "user" and f[2] == "system":
                usage.user = (_uint(f[1]) or 0) * _NS_PER_TICK
                usage.kernel = (_uint(f[3]) or 0) * _NS_PER_TICK
        text = _read(acct_d + "/cpuacct.usage_percpu")
        if text is not None:
            usage.per_cpu, seen = [_uint(x) or 0 for x in text.split()], True
    if cpu_d:
        text = _read(cpu_d + "/cpu.stat")
        if text is not None:
            seen = True
            _fill(thr, _kv(text),
                  "periods=nr_periods throttled_periods=nr_throttled throttled_time")
    if seen:
        met.cpu = m.CPUStat(usage=usage, throttling=thr)

    d = p.get("memory")
    if d:
        text = _read(d + "/memory.stat")
        if text is not None:
            mem = met.memory = m.MemoryStat()
            _fill(mem, _kv(text), _MEMSTAT_V1)
            for field, prefix in (("usage", "memory."), ("swap", "memory.memsw."),
                                  ("kernel", "memory.kmem."), ("kernel_tcp", "memory.kmem.tcp.")):
                usage = _read_uint(d + "/" + prefix + "usage_in_bytes")
                if usage is None:
                    continue        # e.g. no swap accounting: no memsw.* files
                setattr(mem, field, m.MemoryEntry(
                    usage=usage,
                    max=_read_uint(d + "/" + prefix + "max_usage_in_bytes") or 0,
                    failcnt=_read_uint(d + "/" + prefix + "failcnt") or 0,
                    limit=_read_uint(d + "/" + prefix + "limit_in_bytes") or 0))
        text = _read(d + "/memory.oom_control")
        if text is not None:
            met.memory_oom_control = m.MemoryOomControl()
            _fill(met.memory_oom_control, _kv(text), "oom_kill_disable under_oom oom_kill")

    d = p.get("blkio")
    if d:
        met.blkio = _blkio_v1(m, d, cg.proc)

    d = p.get("hugetlb")
    if d:
        met.hugetlb = _hugetlb_v1(m, d)

    d = p.get("rdma")
    if d:
        cur, lim = _read(d + "/rdma.current"), _read(d + "/rdma.max")
        if cur is not None and lim is not None \
                and len(cur.split("\n")) == len(lim.split("\n")):
            met.rdma = m.RdmaStat(current=_rdma(m.RdmaEntry, cur),
                                  limit=_rdma(m.RdmaEntry, lim))
    return met


_MEMSTAT_V1 = """cache rss rss_huge mapped_file dirty writeback pg_pg_in=pgpgin
pg_pg_out=pgpgout pg_fault=pgfault pg_maj_fault=pgmajfault inactive_anon active_anon
inactive_file active_file unevictable hierarchical_memory_limit
hierarchical_swap_limit=hierarchical_memsw_limit total_cache total_rss total_rss_huge
total_mapped_file total_dirty total_writeback total_pg_pg_in=total_pgpgin
total_pg_pg_out=total_pgpgout total_pg_fault=total_pgfault
total_pg_maj_fault=total_pgmajfault total_inactive_anon total_active_anon
total_inactive_file total_active_file total_unevictable"""

# (field, file) in the order the Go library reads them.
_BLKIO_CFQ = (
    ("sectors_recursive", "sectors_recursive"),
    ("io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("io_serviced_recursive", "io_serviced_recursive"),
    ("io_queued_recursive", "io_queued_recursive"),
    ("io_service_time_recursive", "io_service_time_recursive"),
    ("io_wait_time_recursive", "io_wait_time_recursive"),
    ("io_merged_recursive", "io_merged_recursive"),
    ("io_time_recursive", "time_recursive"),
)
_BLKIO_THROTTLE = (
    ("io_serviced_recursive", "throttle.io_serviced"),
    ("io_service_bytes_recursive", "throttle.io_service_bytes"),
)


def _devices(proc):
    """{(major, minor): "/dev/<name>"} from <proc>/partitions."""
    out = {}
    for line in (_read(proc + "/partitions") or "").splitlines()[2:]:
        f = line.split()
        if len(f) >= 4 and f[0].isdigit() and f[1].isdigit():
            out.setdefault((int(f[0]), int(f[1])), "/dev/" + f[3])
    return out


def _blkio_entries(m, text, devices):
    out = []
    for line in (text or "").splitlines():
        f = line.replace(":", " ").split()
        if len(f) not in (3, 4):
            continue        # "Total N" and anything unexpected
        major, minor, value = _uint(f[0]), _uint(f[1]), _uint(f[-1])
        if major is None or minor is None or value is None:
            continue
        out.append(m.BlkIOEntry(op=f[2] if len(f) == 4 else "",
                                device=devices.get((major, minor), ""),
                                major=major, minor=minor, value=value))
    return out


def _blkio_v1(m, d, proc):
    """BlkIOStat, or None if the cgroup has no blkio stat files."""
    st = m.BlkIOStat()
    devices = None
    # CFQ stats where the kernel has them; otherwise (blk-mq kernels) the
    # throttle.* files, which every kernel has.
    if os.path.exists(d + "/blkio.io_serviced_recursive"):
        devices = _devices(proc)
        n = 0
        for field, name in _BLKIO_CFQ:
            entries = _blkio_entries(m, _read(d + "/blkio." + name), devices)
            setattr(st, field, entries)
            n += len(entries)
        if n:
            return st
    for field, name in _BLKIO_THROTTLE:
        text = _read(d + "/blkio." + name)
        if text is None:
            continue
        if devices is None:
            devices = _devices(proc)
        getattr(st, field).extend(_blkio_entries(m, text, devices))
    return None if devices is None else st


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def _hugetlb_v1(m, d):
    try:
        names = os.listdir(d)
    except OSError:
        return []
    sizes = []
    for name in names:
        f = name.split(".")
        if len(f) == 3 and f[0] == "hugetlb" and f[2] == "usage_in_bytes":
            sizes.append(f[1])

    def go_order(size):
        # Go lists /sys/kernel/mm/hugepages (hugepages-<N>kB) in name order.
        num = size.rstrip("KMGTPB")
        mult = _UNITS.get(size[len(num):], 0)
        return "hugepages-%dkB" % (int(float(num or 0) * mult) // 1024)

    out = []
    for size in sorted(sizes, key=go_order):
        pre = "%s/hugetlb.%s." % (d, size)
        out.append(m.HugetlbStat(pagesize=size,
                                 usage=_read_uint(pre + "usage_in_bytes") or 0,
                                 max=_read_uint(pre + "max_usage_in_bytes") or 0,
                                 failcnt=_read_uint(pre + "failcnt") or 0))
    return out
