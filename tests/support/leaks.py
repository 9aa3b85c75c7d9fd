"""Leak accounting for a private containerd (support.containerd.Containerd):
what its shims and containers leave on the host, counted before and after.

    before = leaks.snapshot(c)
    ... run containers with ids ...
    left = leaks.settled(c, before, ids)      # {} when nothing was left
    print(leaks.describe(left))

Counted, all scoped to that containerd and its namespace, so that other
containerds on the machine do not disturb the figures:

  shims        live shim processes (-address and -namespace of c)
  sockets      shim sockets of `ids` in /run/containerd/s (their names are
               sha256(<containerd address>/<namespace>/<id>))
  mounts       mount points under c's state dir (bundle rootfs mounts)
  runc         runc state dirs in the namespace's runc root
  cgroups      child cgroups of /<namespace> (v1: the memory hierarchy)
  bundles      task bundle dirs of the namespace
  fds          containerd's own open fds
  zombies      zombie children of containerd or of its shims

stdlib only; needs root.
"""
import hashlib
import os
import time

from .cgroup import ROOT as CGROUP_ROOT, is_v2, systemd_cgroup
from .containerd import SHIM_SOCKET_DIR, mounts_under

KEYS = ("shims", "sockets", "mounts", "runc", "cgroups", "bundles", "fds", "zombies")


def socket_path(c, id, namespace=None):
    """Where a shim of containerd `c` for container `id` listens (both shims)."""
    key = "%s/%s/%s" % (c.address, namespace or c.namespace, id)
    return os.path.join(SHIM_SOCKET_DIR, hashlib.sha256(key.encode()).hexdigest())


def _listdir(path):
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stat_fields(pid):
    """(state, ppid) of a process, or None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return rest[0], int(rest[1])


def zombies_of(parents):
    """PIDs of zombie processes whose parent is one of `parents`."""
    parents = set(parents)
    out = []
    for name in _listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat_fields(int(name))
        if st and st[0] == "Z" and st[1] in parents:
            out.append(int(name))
    return out


def cgroup_parent_dir(c):
    """The cgroup dir that holds the namespace's container cgroups."""
    if systemd_cgroup():
        return None         # scopes in a slice: counted by the slice's cleanup
    if is_v2():
        return os.path.join(CGROUP_ROOT, c.namespace)
    return os.path.join(CGROUP_ROOT, "memory", c.namespace)


def fd_count(pid):
    return len(_listdir("/proc/%d/fd" % pid))


def snapshot(c, ids=()):
    """{key: (count, [names])} for KEYS (module docstring)."""
    shims = [p for p, _ in c.shims()]
    sockets = [socket_path(c, id) for id in ids if os.path.exists(socket_path(c, id))]
    cg = cgroup_parent_dir(c)
    cgroups = [d for d in _listdir(cg) if os.path.isdir(os.path.join(cg, d))] if cg else []
    parents = shims + ([c.pid] if c.pid else [])
    snap = {
        "shims": shims,
        "sockets": sockets,
        "mounts": mounts_under(c.state),
        "runc": _listdir(c.runc_root),
        "cgroups": cgroups,
        "bundles": _listdir(os.path.join(c.state, "io.containerd.runtime.v2.task",
                                         c.namespace)),
        "fds": fd_count(c.pid) if c.pid else 0,
        "zombies": zombies_of(parents),
    }
    return {k: (v if isinstance(v, int) else len(v), v) for k, v in snap.items()}


def diff(before, after):
    """{key: (increase, names)} for every count that grew."""
    out = {}
    for k in KEYS:
        grew = after[k][0] - before[k][0]
        if grew > 0:
            names = after[k][1]
            if not isinstance(names, int):
                names = sorted(set(names) - set(before[k][1]), key=str)
            out[k] = (grew, names)
    return out


def settled(c, before, ids=(), timeout=10.0):
    """diff(before, snapshot(c, ids)) once nothing is left, or after
    `timeout` seconds of waiting for things to go (containerd closes its
    connections and the shims exit a little after the last call)."""
    deadline = time.monotonic() + timeout
    while True:
        left = diff(before, snapshot(c, ids))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def describe(left):
    """'0' or 'shims +2, fds +1' for a diff()."""
    if not left:
        return "0"
    return ", ".join("%s +%d" % (k, n) for k, (n, _names) in left.items())
