"""Mounting CreateTaskRequest.rootfs onto <bundle>/rootfs (spec runc.md §4).

    flags, data, remount_ro, loop = parse_options(["ro", "bind"])
    mount_all(req.rootfs, rootfs)     # each has .type, .source, .options
    unmount_all(rootfs)               # umount2 until EINVAL; EBUSY retried

Blocking calls (mount(2)/umount2(2) are quick); unmount_all may sleep up to
50 x 50 ms on a busy mount, like containerd's UnmountAll.
"""
import os
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


def mount_one(m, target):
    """Mount one containerd Mount (type/source/options) on target.
    Returns the number of mounts stacked on target (0 or 1)."""
    mtype = getattr(m, "type", "") or ""
    source = getattr(m, "source", "") or ""
    options = list(getattr(m, "options", None) or ())
    if mtype.startswith("fuse.") or mtype.startswith("fuse3."):
        # TODO: run mount.fuse / mount.fuse3 <source> <target> -o ... -t <subtype>
        raise MountError(95, "mount %s on %s: fuse mounts (%s) are not supported yet"
                         % (source, target, mtype))
    flags, data, remount_ro, loop = parse_options(options)
    if loop:
        # TODO: attach source to a loop device (LOOP_CTL_GET_FREE, autoclear).
        raise MountError(95, "mount %s on %s: loop mounts are not supported yet"
                         % (source, target))
    if len(data) > PAGE_SIZE:
        # TODO: overlay with a long lowerdir= (Go chdir's to the common parent
        # in a child and passes relative lowerdirs).
        raise MountError(EINVAL, "mount options is too long")
    stacked = 0
    if not (flags & MS_REMOUNT) or data:
        _native.mount(source, target, mtype, flags, data)
        stacked = 0 if flags & MS_REMOUNT else 1
    if remount_ro:
        try:
            _native.mount("", target, "", flags | MS_REMOUNT, "")
        except OSError:
            if stacked:
                _umount_quiet(target)
            raise
    return stacked


def mount_all(mounts, target):
    """Mount each entry on target in order. On failure, unmount what this
    call mounted and re-raise."""
    done = 0
    try:
        for m in mounts:
            done += mount_one(m, target)
    except BaseException:
        for _ in range(done):
            _umount_quiet(target)
        raise


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
