"""Mounting CreateTaskRequest.rootfs onto <bundle>/rootfs (spec runc.md §4).

    flags, data, remount_ro, loop = parse_options(["ro", "bind"])
    await mount_all(req.rootfs, rootfs, reaper)   # each has .type, .source, .target, .options
    unmount_all(rootfs)               # umount2 until EINVAL; EBUSY retried
    unmount_recursive(rootfs)         # and every mount below it, deepest first

Beyond plain mount(2): `loop` (shim/loopdev.py), overlays whose lowerdir=
would not fit in a page (relative to their common parent, mounted from a
thread that chdir'd there), uidmap=/gidmap= idmapped mounts (shim/idmap.py)
and FUSE types, made by their mount helper (shim/mount_helper.py).

Blocking calls (mount(2)/umount2(2) are quick) but for the mount helper,
awaited; unmount_all may sleep up to 50 x 50 ms on a busy mount, like
containerd's UnmountAll.
"""
import codecs
import os
import posixpath
import stat
import time

from shim import _native

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

EBUSY = 16
EINVAL = 22
ENOENT = 2
ELOOP = 40

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# word -> (clear, flag), as containerd's mount_linux.go. "defaults" is not
# here on purpose: containerd 1.6 appends it to the data string.
FLAGS = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}


class MountError(OSError):
    def __str__(self):
        return self.strerror or OSError.__str__(self)


def _error(e, what):
    """MountError for OSError `e` raised while doing `what`."""
    if isinstance(e, MountError):
        return e
    err = e.errno or EINVAL
    text = os.strerror(err)
    # Native calls say which step failed (their strerror is that text).
    if e.strerror and e.strerror != text:
        return MountError(err, "%s: %s: %s" % (what, e.strerror, text))
    return MountError(err, "%s: %s" % (what, text))


def split_options(options):
    """(options, uidmap, gidmap): uidmap=/gidmap= taken out (None when not
    given). An X-containerd.* option is containerd's own (for its mount
    manager) and must never reach mount(2): as containerd 2.3+, it is
    refused rather than mounted without."""
    rest = []
    uidmap = gidmap = None
    for o in options or ():
        if o.startswith("X-containerd."):
            raise MountError(EINVAL, 'internal mount option "%s" was not consumed by '
                             "the mount manager" % o)
        if o.startswith("uidmap="):
            uidmap = o[len("uidmap="):]
        elif o.startswith("gidmap="):
            gidmap = o[len("gidmap="):]
        else:
            rest.append(o)
    return rest, uidmap, gidmap


def parse_options(options):
    """Split mount options into (flags, data, needs_remount_ro, loop).

    flags: mount(2) flags; data: comma-joined remaining words (fs options);
    needs_remount_ro: bind + ro needs a second MS_REMOUNT|MS_BIND|MS_RDONLY
    call; loop: the `loop` option was given (attach source to a loop device).
    """
    flags = 0
    data = []
    loop = False
    for o in options or ():
        f = FLAGS.get(o)
        if f is not None:
            if f[0]:
                flags &= ~f[1]
            else:
                flags |= f[1]
        elif o == "loop":
            loop = True
        else:
            data.append(o)
    remount_ro = (flags & (MS_BIND | MS_RDONLY)) == (MS_BIND | MS_RDONLY)
    return flags, ",".join(data), remount_ro, loop


def lowerdirs(options):
    """(index, dirs) of the overlay lowerdir= option; (-1, []) if none."""
    for i, o in enumerate(options):
        if o.startswith("lowerdir="):
            return i, o[len("lowerdir="):].split(":")
    return -1, []


def common_parent(dirs):
    """The directory above the longest common prefix of `dirs` ("" if that
    is "/" or nothing): snapshot dirs are <root>/snapshots/<n>/fs, and
    <n> of 10 and 11 share "1" without sharing a directory."""
    if not dirs:
        return ""
    lo, hi = min(dirs), max(dirs)
    n = 0
    while n < len(lo) and n < len(hi) and lo[n] == hi[n]:
        n += 1
    parent = os.path.dirname(lo[:n])
    return "" if parent in ("", "/", ".") else parent


def compact_lowerdirs(options):
    """(dir, options) with lowerdir= made relative to `dir`, the common
    parent of the lowerdirs; ("", options) when they cannot be."""
    i, dirs = lowerdirs(options)
    if len(dirs) < 2:
        return "", options
    parent = common_parent(dirs)
    if not parent:
        return "", options
    cut = len(parent) + 1
    if any(len(d) <= cut or d[cut - 1] != "/" for d in dirs):
        return "", options
    rel = "lowerdir=" + ":".join(d[cut:] for d in dirs)
    return parent, options[:i] + [rel] + options[i + 1:]


def is_fuse(mtype):
    """fuse.<subtype> / fuse3.<subtype>: mounted by mount.fuse / mount.fuse3."""
    return mtype.startswith(("fuse.", "fuse3."))


def mount_one(m, target):
    """Mount one containerd Mount (type/source/options) on target.
    Returns the number of mounts stacked on target."""
    mtype = getattr(m, "type", "") or ""
    source = getattr(m, "source", "") or ""
    options = list(getattr(m, "options", None) or ())
    if is_fuse(mtype):
        raise MountError(EINVAL, "mount %s on %s: %s is mounted by its helper (mount_all)"
                         % (source, target, mtype))
    options, uidmap, gidmap = split_options(options)
    if uidmap is None and gidmap is None:
        return mount_plain(mtype, source, options, target)
    # Imported here: only user-namespaced containers pay for it.
    from shim import idmap
    return idmap.mount_idmapped(mtype, source, options, target, uidmap, gidmap)


def mount_plain(mtype, source, options, target):
    """mount_one without uidmap/gidmap. Returns the mounts stacked (0/1)."""
    flags, data, remount_ro, loop = parse_options(options)
    chdir = ""
    # containerd's margin: compact well before the page is full.
    if mtype == "overlay" and len(data) >= PAGE_SIZE - 512:
        chdir, options = compact_lowerdirs(options)
        if chdir:
            flags, data, remount_ro, loop = parse_options(options)
    # mount(2) reads one page of data and cuts its last byte for the NUL.
    if len(data) >= PAGE_SIZE:
        raise MountError(EINVAL, "mount %s on %s: mount options is too long (%d bytes, "
                         "mount(2) takes %d)" % (source, target, len(data), PAGE_SIZE - 1))
    stacked = 0
    if not (flags & MS_REMOUNT) or data:
        if loop:
            _mount_loop(source, target, mtype, flags, data)
        else:
            _mount(source, target, mtype, flags, data, chdir)
        stacked = 0 if flags & MS_REMOUNT else 1
    if remount_ro:
        try:
            _mount("", target, "", flags | MS_REMOUNT, "", what=source + " (read-only remount)")
        except OSError:
            if stacked:
                _umount_quiet(target)
            raise
    return stacked


def _mount(source, target, mtype, flags, data, chdir="", what=None):
    """mount(2), from `chdir` if given; a MountError says what was asked."""
    try:
        if chdir:
            _native.mount_in_dir(chdir, source, target, mtype, flags, data)
        else:
            _native.mount(source, target, mtype, flags, data)
    except OSError as e:
        err = e.errno or EINVAL
        raise MountError(err, "mount %s on %s: %s (type %s, flags %#x, data %r%s)" % (
            what or source, target, os.strerror(err), mtype, flags, data,
            ", lowerdirs relative to " + chdir if chdir else ""))


def _mount_loop(source, target, mtype, flags, data):
    """Mount the image file `source` through a loop device (autoclear: the
    kernel detaches it when the mount goes, or at our close if the mount
    failed)."""
    from shim import loopdev        # only image-file snapshotters need it
    words = data.split(",") if data else []
    direct_io = "direct-io" in words
    if direct_io:
        data = ",".join(w for w in words if w != "direct-io")
    try:
        fd, dev = loopdev.attach(source, readonly=bool(flags & MS_RDONLY), direct_io=direct_io)
    except OSError as e:
        raise _error(e, "mount %s on %s: attach %s to a loop device" % (source, target, source))
    try:
        _mount(dev, target, mtype, flags, data, what="%s (loop device for %s)" % (dev, source))
    finally:
        os.close(fd)


async def mount_all(mounts, root, reaper=None):
    """Mount each entry in order on root, or on its `target` below root
    (containerd 2.x: a path inside the rootfs, see root_path); FUSE types
    by their helper (shim/mount_helper.py), run through `reaper`: the one
    step that awaits. On failure, unmount what this call mounted and
    re-raise."""
    done = []                   # mount points, one per mount stacked
    try:
        for m in mounts:
            target = root_path(root, getattr(m, "target", "") or "")
            mtype = getattr(m, "type", "") or ""
            if reaper is not None and is_fuse(mtype):
                from shim import mount_helper       # only FUSE mounts need it
                await mount_helper.run(reaper, mount_helper.helper_argv(
                    mtype, getattr(m, "source", "") or "",
                    list(getattr(m, "options", None) or ()), target))
                done.append(target)
            elif mount_one(m, target):
                done.append(target)
    except BaseException:
        for target in reversed(done):
            _umount_quiet(target)
        raise


def root_path(root, path):
    """`path` inside `root`, its symlinks resolved as if root were `/`, so
    that it cannot lead out of root (continuity's fs.RootPath, which
    containerd 2.x joins a Mount's target with). Components that do not
    exist are taken as they are."""
    if not path:
        return root
    path = _clean(path)                         # lexically first, as Go's Join
    for _ in range(256):                        # symlinks followed, at most
        link = _first_link(root, path)
        if link is None:
            return root if path == "/" else root + path
        at, to = link
        # The link's text replaces its own component: relative to its
        # directory, or to root if absolute; then the rest follows.
        base = "/" if to.startswith("/") else posixpath.dirname(at)
        path = _clean(posixpath.join(base, to, posixpath.relpath(path, at)))
    raise MountError(ELOOP, "resolve %s in %s: too many links" % (path, root))


def _clean(path):
    """Absolute and normalized (normpath keeps a leading "//")."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _first_link(root, path):
    """(prefix of path, its link text) for the first symlink along path
    (absolute, normalized) inside root, or None."""
    prefix = ""
    for name in path.split("/")[1:]:
        prefix += "/" + name
        try:
            st = os.lstat(root + prefix)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _error(e, "resolve %s in %s" % (path, root))
        if stat.S_ISLNK(st.st_mode):
            return prefix, os.readlink(root + prefix)
    return None


def _umount_quiet(target):
    try:
        unmount(target)
    except OSError:
        pass


def unmount(target, flags=0):
    """One umount2, retrying EBUSY up to 50 x 50 ms."""
    for attempt in range(50):
        try:
            _native.umount2(target, flags)
            return
        except OSError as e:
            if e.errno != EBUSY or attempt == 49:
                raise
        time.sleep(0.05)


def unmount_all(target, flags=0):
    """Unmount every mount stacked on target (until EINVAL: not a mount
    point). A missing target is fine."""
    for _ in range(1000):
        try:
            unmount(target, flags)
        except OSError as e:
            if e.errno in (EINVAL, ENOENT):
                return
            raise
    raise MountError(EBUSY, "unmount %s: too many stacked mounts" % target)


def unmount_recursive(root, flags=0):
    """Unmount everything at or below root, deepest first, as containerd
    1.7+ does at delete (a Mount's target mounted below the rootfs, or a
    mount propagated there). Only root's own failure is raised: it fails
    on whatever is left below it."""
    try:
        root = os.path.realpath(root, strict=True)
    except FileNotFoundError:
        return                  # nothing can be mounted there
    except OSError:
        # Unmounted all the same (a dead FUSE mount answers ENOTCONN below
        # its root): the path as far as it resolves.
        root = os.path.realpath(root)
    for point in mounts_below(root):
        try:
            unmount_all(point, flags)
        except OSError:
            pass
    unmount_all(root, flags)


def mounts_below(root):
    """Mount points strictly below `root` (canonical), deepest first, from
    /proc/self/mountinfo (scanned as bytes: most lines name other paths)."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    prefix = _mountinfo_escape(os.fsencode(root)) + b"/"
    if b" " + prefix not in data:
        return []
    points = set()
    for line in data.split(b"\n"):
        fields = line.split(b" ", 5)
        if len(fields) > 4 and fields[4].startswith(prefix):
            points.add(os.fsdecode(codecs.escape_decode(fields[4])[0]))
    return sorted(points, key=len, reverse=True)


def _mountinfo_escape(path):
    """`path` as the kernel writes it in mountinfo (octal escapes)."""
    for c in b"\\ \t\n":
        path = path.replace(bytes((c,)), b"\\%03o" % c)
    return path
