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
the metrics readers (shim/cgroup_stats_v1.py, shim/cgroup_stats_v2.py) and
the message modules are imported inside stats(), one version per host.
"""
import os

from shim import _native

ROOT = "/sys/fs/cgroup"
PROC = "/proc"
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
        if self.version == 2:
            from shim.cgroup_stats_v2 import metrics_v2
            return metrics_v2(self.path)
        from shim.cgroup_stats_v1 import metrics_v1
        return metrics_v1(self)

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


def _events_oom_kills(path):
    """oom_kill of the v2 cgroup dir `path`'s memory.events (hierarchical:
    it counts the kills of the whole subtree), or None."""
    text = _read(path + "/memory.events")
    return None if text is None else _kv(text).get("oom_kill", 0)


def _ancestor_oom_kills(path):
    """[(dir, oom_kill)] of the v2 cgroup's ancestors, nearest first, up to
    (not including) the root cgroup, which has no memory.events."""
    found = []
    d = os.path.dirname(path)
    while d != os.path.dirname(d):
        n = _events_oom_kills(d)
        if n is None:
            break
        found.append((d, n))
        d = os.path.dirname(d)
    return found


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
    __slots__ = ("cgroup", "loop", "on_oom", "fd", "dir", "last", "base", "reported",
                 "ancestor_bases")

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
        self.ancestor_bases = _ancestor_oom_kills(self.dir) if cgroup.version == 2 else []
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
            if n == self.base and self._ancestor_saw_a_kill():
                n = self.base + 1
        if n > self.base and not self.reported:
            self._report()
        return n

    def _ancestor_saw_a_kill(self):
        """v2, the cgroup already removed (the systemd driver: systemd
        removes the scope as soon as it is empty, which can beat both the
        rate-limited inotify wake-up and this exit): the nearest ancestor
        still there counts its subtree's kills in memory.events, so a rise
        there since the watch began is taken as ours (a sibling's kill in
        the same moment is the only way to be wrong). Nearest still there,
        not the parent: crun's systemd driver runs the container in a
        `container` cgroup inside the scope, and the scope goes with it."""
        for d, base in self.ancestor_bases:
            n = _events_oom_kills(d)
            if n is not None:
                return n > base
        return False

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
