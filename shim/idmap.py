"""uidmap=/gidmap= mount options: idmapped rootfs mounts for containers in
a user namespace (containerd 2.x).

    n = mount_idmapped("overlay", "overlay", options, target,
                       "0:100000:65536", "0:100000:65536")

A user namespace with those mappings is made (_native.userns_fd), then
  * overlay: the lowerdirs' common parent is cloned idmapped and read-only
    onto a temporary dir beside target, the overlay is mounted with its
    lowerdirs through that clone, and the clone goes again (overlay keeps
    its own references to its layers). The upperdir is not idmapped: it is
    the container's, created for the mapped ids already.
  * any other type: mounted as usual, then the mount on target is cloned
    idmapped on top of itself (one more mount stacked on target).

A file owned by id N on disk shows as the host id N maps to (with
"0:100000:65536", root's files show as 100000), which is id N again inside
the container's user namespace.

Imported only when a mount has uidmap=/gidmap= (shim/mount.py).
"""
import os

from shim import _native
from shim.mount import (EINVAL, MNT_DETACH, MountError, _error, _umount_quiet,
                        common_parent, lowerdirs, mount_plain)

MOUNT_ATTR_RDONLY = 0x1


def map_text(spec, name="uidmap"):
    """containerd's "inside:outside:count[,...]" -> /proc/<pid>/uid_map
    text, one "inside outside count" line per mapping."""
    lines = []
    for part in spec.split(","):
        f = part.split(":")
        if len(f) != 3 or not all(x.isascii() and x.isdigit() for x in f):
            raise MountError(EINVAL, "%s=%s: mappings must be container-id:host-id:size "
                             "(non-negative integers), comma-separated" % (name, spec))
        if int(f[2]) == 0:
            raise MountError(EINVAL, "%s=%s: a mapping of size 0" % (name, spec))
        lines.append("%d %d %d\n" % (int(f[0]), int(f[1]), int(f[2])))
    return "".join(lines)


def mount_idmapped(mtype, source, options, target, uidmap, gidmap):
    """Mount with ids mapped as uidmap/gidmap say (options without them).
    Returns the number of mounts stacked on target."""
    where = "mount %s on %s" % (source, target)
    if not uidmap or not gidmap:
        # containerd silently ignores one without the other; a rootfs that
        # is not mapped as asked is better refused.
        raise MountError(EINVAL, "%s: uidmap= and gidmap= must be given together" % where)
    uids, gids = map_text(uidmap, "uidmap"), map_text(gidmap, "gidmap")
    try:
        userns = _native.userns_fd(uids, gids)
    except OSError as e:
        raise _error(e, "%s: user namespace for uidmap=%s gidmap=%s" % (where, uidmap, gidmap))
    try:
        if mtype == "overlay":
            return _overlay(source, options, target, userns, where)
        n = mount_plain(mtype, source, options, target)
        try:
            _native.idmap_clone(target, target, userns)
        except OSError as e:
            for _ in range(n):
                _umount_quiet(target)
            raise _error(e, "%s: idmap it" % where)
        return n + 1
    finally:
        os.close(userns)


def _overlay(source, options, target, userns, where):
    i, dirs = lowerdirs(options)
    if i < 0:
        raise MountError(EINVAL, "%s: idmapped overlay without lowerdir=" % where)
    common = common_parent(dirs)
    if not common:
        raise MountError(EINVAL, "%s: the lowerdirs have no common parent to idmap "
                         "(other than /)" % where)
    tmp = _tempdir(target)
    try:
        try:
            _native.idmap_clone(common, tmp, userns, MOUNT_ATTR_RDONLY)
        except OSError as e:
            raise _error(e, "%s: idmap %s" % (where, common))
        try:
            mapped = "lowerdir=" + ":".join(tmp + d[len(common):] for d in dirs)
            return mount_plain("overlay", source, options[:i] + [mapped] + options[i + 1:],
                               target)
        finally:
            # Detached, not unmounted: the clone may hold submounts.
            _quiet(_native.umount2, tmp, MNT_DETACH)
    finally:
        _quiet(os.rmdir, tmp)


def _tempdir(target):
    """A new empty dir beside target (in the bundle) for the idmapped clone."""
    base = os.path.join(os.path.dirname(target), ".idmapped-lowers.%d." % os.getpid())
    n = 0
    while True:
        try:
            os.mkdir(base + str(n), 0o700)
            return base + str(n)
        except FileExistsError:
            n += 1


def _quiet(fn, *args):
    # Clean-up after the overlay mount (or its failure): a failure here must
    # not hide the mount's own result; the detach cannot fail on a mount we
    # just made.
    try:
        fn(*args)
    except OSError:
        pass
