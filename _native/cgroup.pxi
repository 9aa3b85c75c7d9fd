# inotify for cgroup v2 OOM watching (memory.events): Python has no inotify.
# Used by shim/cgroups.py; the fd goes on the loop like any other reader.

from libc.errno cimport errno, EINTR, EAGAIN

cdef extern from "<sys/inotify.h>" nogil:
    struct inotify_event:
        int wd
        unsigned int mask
        unsigned int cookie
        unsigned int len
    int c_inotify_init1 "inotify_init1"(int flags)
    int c_inotify_add_watch "inotify_add_watch"(int fd, const char *path, unsigned int mask)
    int c_inotify_rm_watch "inotify_rm_watch"(int fd, int wd)
    unsigned int IN_NONBLOCK
    unsigned int IN_CLOEXEC
    unsigned int c_IN_MODIFY "IN_MODIFY"
    unsigned int c_IN_IGNORED "IN_IGNORED"
    unsigned int c_IN_Q_OVERFLOW "IN_Q_OVERFLOW"

cdef extern from "<unistd.h>" nogil:
    ssize_t _ino_read "read"(int fd, void *buf, size_t n)

IN_MODIFY = c_IN_MODIFY
IN_IGNORED = c_IN_IGNORED          # the watch is gone (file removed, cgroup rmdir'ed)
IN_Q_OVERFLOW = c_IN_Q_OVERFLOW


def inotify_init():
    """A new non-blocking, close-on-exec inotify fd."""
    cdef int fd = c_inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(errno, "inotify_init1")
    return fd


def inotify_add_watch(int fd, path, unsigned int mask):
    """Watch `path` for the events in `mask`; returns the watch descriptor."""
    cdef bytes bp = _b(path)
    cdef int wd = c_inotify_add_watch(fd, bp, mask)
    if wd < 0:
        raise OSError(errno, "inotify_add_watch %s" % (path,))
    return wd


def inotify_rm_watch(int fd, int wd):
    if c_inotify_rm_watch(fd, wd) != 0:
        raise OSError(errno, "inotify_rm_watch")


def inotify_read(int fd):
    """Drain the inotify fd: list of (wd, mask), in order (names are dropped;
    cgroup watches are on files). Empty when nothing is pending."""
    cdef unsigned long long abuf[512]     # 4 KiB, aligned for inotify_event
    cdef char *buf = <char *>abuf
    cdef ssize_t n, off
    cdef inotify_event *ev
    out = []
    while True:
        n = _ino_read(fd, buf, sizeof(abuf))
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                break
            raise OSError(errno, "read inotify")
        if n == 0:
            break
        off = 0
        while off + <ssize_t>sizeof(inotify_event) <= n:
            ev = <inotify_event *>(buf + off)
            out.append((ev.wd, ev.mask))
            off += sizeof(inotify_event) + ev.len
    return out
