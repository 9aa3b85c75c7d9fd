"""cgroup discovery, Stats metrics and OOM watching for a container's init.

    cg = find(init_pid)          # Cgroup, version 1 (v1/hybrid) or 2 (unified)
    any_ = cg.stats()            # wkt.Any: io.containerd.cgroups.v1.Metrics / v2.Metrics
    h = watch_oom(cg, loop, on_oom)   # on_oom() per OOM; h.poll(), h.at_exit(), h.close()
    n = oom_kills(cg)            # the memory cgroup's OOM kill count

Metrics follow github.com/containerd/cgroups 1.0.4 (what the Go runc shim of
containerd 1.6 returns), field for field. One deliberate difference: a file
that is missing leaves its part of the message unset instead of failing (or
zero-filling) the whole Stats.

Imported lazily by the serving shim: stdlib `os` and `shim._native` only;
the message modules are imported inside stats().
"""
import os

from shim import _native

ROOT = "/sys/fs/cgroup"
PROC = "/proc"
USER_HZ = 100            # cpuacct.stat unit; Go hard-codes it too
_NS_PER_TICK = 1000000000 // USER_HZ
_MAX64 = (1 << 64) - 1
_MAX32 = (1 << 32) - 1


# ---------------------------------------------------------------- reading

def _read(path):
    """File contents as str, or None if it cannot be read (missing file,
    controller absent, cgroup removed meanwhile: ENOENT/ENODEV/...)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("latin-1")


def _uint(s):
    """Go's parseUint: a decimal uint64; negative numbers give 0; anything
    else (e.g. "max") None."""
    try:
        v = int(s)
    except ValueError:
        return None
    if v < 0:
        return 0
    return v if v <= _MAX64 else None


def _read_uint(path):
    text = _read(path)
    return None if text is None else _uint(text.strip())


def _kv(text):
    """`key value` lines -> {key: int}; lines that are not two fields with a
    number are skipped."""
    out = {}
    if text:
        for line in text.splitlines():
            f = line.split()
            if len(f) == 2:
                v = _uint(f[1])
                if v is not None:
                    out[f[0]] = v
    return out


def _fill(msg, raw, names):
    """msg.<field> = raw[key] for each `field` or `field=key` in names."""
    for name in names.split():
        field, _, key = name.partition("=")
        v = raw.get(key or field)
        if v:
            setattr(msg, field, v)


# ---------------------------------------------------------------- discovery

class Cgroup:
    """A process's cgroup.

    version  1 (cgroup v1 or hybrid) or 2 (unified)
    paths    v1: {controller: absolute dir} for each controller whose dir
             exists (e.g. paths["memory"] = "/sys/fs/cgroup/memory/ns/id");
             v2: {} (see path)
    path     v2: the absolute cgroup dir; v1: the memory dir (None if the
             memory controller is absent)
    proc     the /proc used (blkio device names come from <proc>/partitions)
    """
    __slots__ = ("version", "paths", "path", "proc")

    def __init__(self, version, paths, path, proc=PROC):
        self.version = version
        self.paths = paths
        self.path = path
        self.proc = proc

    def __repr__(self):
        if self.version == 2:
            return "Cgroup(v2 %s)" % self.path
        return "Cgroup(v1 %r)" % (self.paths,)

    def exists(self):
        """False once the cgroup has been removed (from every hierarchy)."""
        if self.version == 2:
            return os.path.isdir(self.path)
        for d in self.paths.values():
            if os.path.isdir(d):
                return True
        return False

    def metrics(self):
        """The Metrics message (cgroups1.Metrics or cgroups2.Metrics)."""
        return _metrics_v2(self.path) if self.version == 2 else _metrics_v1(self)

    def stats(self):
        """wkt.Any for StatsResponse.stats, type_url
        io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics.
        Never fails for missing files; if the whole cgroup is gone the
        message is simply empty (check exists() to report NotFound)."""
        from shim.pb import any_pack
        return any_pack(self.metrics())

    def oom_stats(self, oom_kill):
        """Stats (wkt.Any as stats()) holding only an OOM kill count: what
        is left to tell of a stopped container whose cgroup was removed
        (containerd's CRI reads it after an exit with 137)."""
        from shim.pb import any_pack
        if self.version == 2:
            from shim.pb import cgroups2 as m
            met = m.Metrics(memory_events=m.MemoryEvents(oom_kill=oom_kill))
        else:
            from shim.pb import cgroups1 as m
            met = m.Metrics(memory_oom_control=m.MemoryOomControl(oom_kill=oom_kill))
        return any_pack(met)


def _mount_roots(proc):
    """{controller: root of its v1 mount} from <proc>/self/mountinfo, for
    mounts of a cgroup subtree (a container bind-mounting its own cgroup):
    /proc/<pid>/cgroup paths are then relative to that root."""
    out = {}
    text = _read(proc + "/self/mountinfo")
    if not text:
        return out
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        f = pre.split()
        p = post.split()
        if not sep or len(f) < 5 or len(p) < 3 or p[0] != "cgroup":
            continue
        for opt in p[2].split(","):
            out[opt] = f[3]
    return out


def find(pid, root=ROOT, proc=PROC):
    """Locate the cgroup of `pid` from <proc>/<pid>/cgroup.

    Unified v2 if <root>/cgroup.controllers exists (the `0::/path` line,
    dir <root>/path); otherwise v1: one `N:ctrl[,ctrl]:/path` line per
    hierarchy, dir <root>/<ctrl>/path (or <root>/<ctrl,ctrl>/path);
    `name=...` hierarchies are ignored, as is the v2 line on hybrid hosts.

    Raises ProcessLookupError if the process is gone, FileNotFoundError if
    none of its cgroup dirs exists (cgroup removed). `root`/`proc` are for
    tests (fixture trees)."""
    text = _read("%s/%d/cgroup" % (proc, pid))
    if text is None:
        raise ProcessLookupError(3, "process %d not found: cannot locate its cgroup" % pid)
    lines = [line.split(":", 2) for line in text.splitlines()]
    if os.path.exists(root + "/cgroup.controllers"):
        for f in lines:
            if len(f) == 3 and f[0] == "0" and f[1] == "":
                d = os.path.normpath(root + "/" + f[2].lstrip("/"))
                if os.path.isdir(d):
                    return Cgroup(2, {}, d, proc)
                raise FileNotFoundError(2, "cgroup %s of process %d does not exist" % (d, pid))
        raise FileNotFoundError(2, "process %d has no cgroup v2 entry" % pid)
    mroots = None
    paths = {}
    for f in lines:
        if len(f) != 3 or not f[1]:
            continue
        rel = f[2]
        for ctrl in f[1].split(","):
            if ctrl.startswith("name="):
                continue
            if mroots is None:
                mroots = _mount_roots(proc)
            mr = mroots.get(ctrl, "/")
            r = rel
            if mr != "/" and (r == mr or r.startswith(mr + "/")):
                r = r[len(mr):] or "/"
            for base in (ctrl, f[1]):
                d = os.path.normpath("%s/%s/%s" % (root, base, r.lstrip("/")))
                if os.path.isdir(d):
                    paths[ctrl] = d
                    break
    if not paths:
        raise FileNotFoundError(2, "cgroup of process %d does not exist" % pid)
    return Cgroup(1, paths, paths.get("memory"), proc)


# ---------------------------------------------------------------- v1 stats

def _metrics_v1(cg):
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


def _rdma(entry_cls, text):
    """Lines `<device> hca_handle=N hca_object=N` ("max" = 2^32-1)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) != 3:
            continue
        e = entry_cls(device=f[0])
        for kv in f[1:]:
            k, _, v = kv.partition("=")
            n = _MAX32 if v == "max" else _uint(v)
            if n is None or n > _MAX32:
                continue
            if k == "hca_handle":
                e.hca_handles = n
            elif k == "hca_object":
                e.hca_objects = n
        out.append(e)
    return out


# ---------------------------------------------------------------- v2 stats

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


def _metrics_v2(d):
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


# ---------------------------------------------------------------- OOM watch

def oom_kills(cgroup):
    """The memory cgroup's count of OOM kills (v1: memory.oom_control,
    v2: memory.events `oom_kill`), or None if it cannot be read."""
    if cgroup.path is None:
        return None
    name = "/memory.events" if cgroup.version == 2 else "/memory.oom_control"
    text = _read(cgroup.path + name)
    if text is None:
        return None
    return _kv(text).get("oom_kill")


class OomWatch:
    """A running OOM watch (from watch_oom): calls on_oom() on the loop for
    each OOM notification. close() stops it (idempotent). v1: it also stops
    by itself when the cgroup is removed. v2: removing a cgroup sends no
    inotify event on cgroupfs (seen on Linux 6.12), so it only notices at
    its next poll() (the shim closes it at Delete anyway).

    v1: an eventfd registered through cgroup.event_control for
    memory.oom_control. The kernel signals it when a charge fails under OOM,
    just *before* the OOM killer runs (so the wake-up precedes the victim's
    exit), possibly several times for one kill (each failing charge of each
    process in the cgroup), and when the cgroup is removed. Every wake-up
    while the cgroup dir exists is one on_oom() (the Go shim's rule); the
    removal wake-up closes the watch.
    v2: inotify IN_MODIFY on memory.events; one on_oom() each time its
    `oom_kill` count is seen to grow. The kernel rate-limits that inotify
    event (up to 10 ms late), so it may come after the victim's exit.

    Either way, call at_exit() right before publishing the init's exit: an
    OOM is then reported before the exit it caused, even one whose wake-up
    is late or was missed.
    """
    __slots__ = ("cgroup", "loop", "on_oom", "fd", "dir", "last", "base", "reported")

    def __init__(self, cgroup, loop, on_oom):
        self.cgroup = cgroup
        self.loop = loop
        self.on_oom = on_oom
        self.fd = -1
        self.dir = cgroup.path
        self.last = 0
        self.reported = 0       # on_oom() calls so far
        if self.dir is None:
            raise FileNotFoundError(2, "no memory cgroup to watch for OOM")
        if cgroup.version == 2:
            self._start_v2()
        else:
            self._start_v1()
        # OOM kills before the watch (none for a new container) are not ours.
        self.base = self.last = oom_kills(cgroup) or 0
        loop.add_reader(self.fd, self.poll)

    @property
    def closed(self):
        return self.fd < 0

    def _report(self):
        self.reported += 1
        self.on_oom()

    def _start_v1(self):
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(self.dir + "/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                cfd = os.open(self.dir + "/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(cfd, b"%d %d" % (efd, ofd))
                finally:
                    os.close(cfd)
            finally:
                os.close(ofd)   # the kernel keeps its own reference
        except BaseException:
            os.close(efd)
            raise
        self.fd = efd

    def _start_v2(self):
        fd = _native.inotify_init()
        try:
            _native.inotify_add_watch(fd, self.dir + "/memory.events", _native.IN_MODIFY)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def poll(self):
        """Handle what is pending now, without blocking (the loop calls it on
        readiness)."""
        if self.fd < 0:
            return
        if self.cgroup.version == 2:
            return self._poll_v2()
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return
        if os.path.isdir(self.dir):
            self._report()
        else:
            self.close()            # the wake-up of the cgroup's removal

    def _poll_v2(self):
        events = _native.inotify_read(self.fd)
        text = _read(self.dir + "/memory.events")
        if text is not None:
            n = _kv(text).get("oom_kill", 0)
            if n > self.last:
                self.last = n
                self._report()
        gone = text is None and not os.path.isdir(self.dir)
        for _, mask in events:
            if mask & _native.IN_IGNORED:
                gone = True
        if gone:
            self.close()

    def at_exit(self):
        """The init exited: handle pending wake-ups (poll()); then, if the
        cgroup's oom_kill count rose since the watch began but nothing was
        reported (a wake-up lost or still on its way), report one OOM.
        Returns the oom_kill count; if the cgroup is gone already (systemd
        removes a scope's cgroup once it is empty), the best the watch
        knows: an OOM it reported counts as a kill."""
        self.poll()
        n = oom_kills(self.cgroup)
        if n is None:
            n = max(self.last, self.base + (1 if self.reported else 0))
        if n > self.base and not self.reported:
            self._report()
        return n

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            self.loop.remove_reader(fd)
            os.close(fd)


def watch_oom(cgroup, loop, on_oom):
    """Watch `cgroup` (from find()) for OOMs on `loop`; returns an
    OomWatch (poll(), close()). Raises OSError if the memory cgroup cannot
    be watched (no memory controller, cgroup gone)."""
    return OomWatch(cgroup, loop, on_oom)
