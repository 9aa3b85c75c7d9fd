"""Loop devices for `loop` mounts (image-file snapshotters such as EROFS).

    fd, dev = attach("/x/layer.erofs", readonly=True)   # "/dev/loopN"
    mount(dev, ...)
    os.close(fd)

The device is set up with LO_FLAGS_AUTOCLEAR: the kernel detaches it when
its last user closes it, i.e. when the mount on it goes, or at os.close(fd)
if the mount failed. Nothing else needs to remember it.

Imported only on the loop path (mount.py), so a shim that never mounts an
image file does not pay for it.
"""
import os
import time

from shim import _native

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16

EBUSY = 16
TRIES = 100


def attach(backing, readonly=False, direct_io=False):
    """Attach file `backing` to a free loop device. Returns (fd, path) of
    the device, open; the caller closes fd once it has mounted it."""
    mode = os.O_RDONLY if readonly else os.O_RDWR
    lo_flags = LO_FLAGS_AUTOCLEAR
    if readonly:
        lo_flags |= LO_FLAGS_READ_ONLY
    if direct_io:
        lo_flags |= LO_FLAGS_DIRECT_IO
    back = os.open(backing, mode | os.O_CLOEXEC)
    try:
        for attempt in range(TRIES):
            dev = "/dev/loop%d" % _native.loop_get_free()
            fd = os.open(dev, mode | os.O_CLOEXEC)
            try:
                _native.loop_configure(fd, back, backing, lo_flags)
                return fd, dev
            except OSError as e:
                os.close(fd)
                # Another process (losetup, containerd) took the same free
                # device between GET_FREE and CONFIGURE: take another one.
                if e.errno != EBUSY:
                    raise OSError(e.errno, "%s on %s" % (e.strerror, dev))
            time.sleep(0.001 * attempt)
        raise OSError(EBUSY, "no free loop device after %d tries" % TRIES)
    finally:
        os.close(back)
