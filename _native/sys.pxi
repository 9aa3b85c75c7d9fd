# Syscalls the Python standard library lacks (or hides behind heavy modules).

from libc.errno cimport errno, EINTR
from libc.string cimport memset, memcpy, strlen
from libc.stdlib cimport malloc, free
from libc.signal cimport SIGPIPE, SIG_DFL, SIG_IGN
from posix.types cimport pid_t


cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3,
              unsigned long arg4, unsigned long arg5)
    int PR_SET_CHILD_SUBREAPER
    int PR_SET_PDEATHSIG

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)
    int MADV_MERGEABLE

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigemptyset(sigset_t *s)
    int sigfillset(sigset_t *s)
    int sigaddset(sigset_t *s, int signo)
    int sigprocmask(int how, const sigset_t *s, sigset_t *old)
    int SIG_BLOCK
    int SIG_SETMASK
    ctypedef void (*sighandler_t)(int)
    sighandler_t signal(int signum, sighandler_t handler)
    ctypedef struct sigaction_t "struct sigaction":
        sighandler_t sa_handler
    int c_sigaction "sigaction"(int signum, const sigaction_t *act, sigaction_t *old)
    int NSIG "_NSIG"

cdef extern from "<sys/signalfd.h>" nogil:
    struct signalfd_siginfo:
        unsigned int ssi_signo
    int signalfd(int fd, const sigset_t *mask, int flags)
    int SFD_NONBLOCK
    int SFD_CLOEXEC

cdef extern from "<sys/mount.h>" nogil:
    int c_mount "mount"(const char *source, const char *target, const char *fstype,
                        unsigned long flags, const void *data)
    int c_umount2 "umount2"(const char *target, int flags)

cdef extern from "<unistd.h>" nogil:
    pid_t fork()
    pid_t vfork()
    int execve(const char *path, char *const argv[], char *const envp[])
    int execvpe(const char *file, char *const argv[], char *const envp[])
    int dup2(int oldfd, int newfd)
    int close(int fd)
    int chdir(const char *path)
    int setpgid(pid_t pid, pid_t pgid)
    pid_t setsid()
    pid_t getppid()
    int pipe2(int fds[2], int flags)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    void _exit(int status)
    long syscall(long number, ...)

cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int c_open "open"(const char *path, int flags, ...)
    int O_RDWR
    int O_RDONLY
    int O_WRONLY
    int F_DUPFD_CLOEXEC
    int F_GETFD
    int F_SETFD
    int FD_CLOEXEC
    int O_CLOEXEC
    int F_SETPIPE_SZ
    int F_GETPIPE_SZ

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_close_range

cdef enum:
    CLOSE_RANGE_CLOEXEC = 4

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)
    unsigned long TIOCSWINSZ
    struct winsize:
        unsigned short ws_row
        unsigned short ws_col
        unsigned short ws_xpixel
        unsigned short ws_ypixel

cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    ssize_t recvmsg(int sockfd, msghdr *msg, int flags)
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    int SOL_SOCKET
    int SCM_RIGHTS
    int MSG_CMSG_CLOEXEC

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sched.h>" nogil:
    int unshare(int flags)
    int CLONE_FS
    int CLONE_NEWUSER

cdef extern from "<sys/wait.h>" nogil:
    pid_t waitpid(pid_t pid, int *status, int options)

ctypedef void *(*_thread_fn)(void *) noexcept nogil

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, _thread_fn fn, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef extern from "<linux/loop.h>" nogil:
    int LOOP_CTL_GET_FREE
    int LOOP_CONFIGURE
    int LOOP_SET_FD
    int LOOP_CLR_FD
    int LOOP_SET_STATUS64
    int LO_NAME_SIZE
    struct loop_info64:
        unsigned int lo_flags
        unsigned char lo_file_name[64]
    struct loop_config:
        unsigned int fd
        unsigned int block_size
        loop_info64 info


def set_child_subreaper(bint on=True):
    """Make this process a child subreaper (orphans below it re-parent
    here), or stop being one."""
    if prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(errno, "prctl(PR_SET_CHILD_SUBREAPER)")


def sched_core_create():
    """prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, PIDTYPE_PGID): a new
    core-scheduling cookie for this process group; children inherit it
    (containerd's SCHED_CORE=1). OSError (EINVAL on kernels without core
    scheduling) is the caller's to judge."""
    if prctl(62, 1, 0, 2, 0) != 0:
        raise OSError(errno, "prctl(PR_SCHED_CORE_CREATE)")


def set_cmdline(args):
    """Rewrite what /proc/self/cmdline shows (ps, tools that look for the
    serving shim by its argv) in place, in the original argv area, as
    setproctitle does. The new argv (NUL-separated) must fit in the old one;
    the rest is zeroed. Returns False (nothing changed) if it does not fit."""
    cdef bytes buf = b"\0".join(_b(a) for a in args) + b"\0"
    cdef size_t start, end, n = len(buf)
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): arg_start/arg_end are fields 48/49.
    start = int(fields[45])
    end = int(fields[46])
    if start == 0 or end <= start or n > end - start:
        return False
    memcpy(<void *>start, <const char *>buf, n)
    memset(<void *>(start + n), 0, end - start - n)
    return True


def share_identical_pages():
    """Offer this process's private writable memory (the heap, the Python
    arenas, the libraries' data) to the kernel's samepage merging: where
    ksmd runs, pages that are byte-identical in several processes are then
    kept once. madvise(MADV_MERGEABLE) marks the mappings, not the process
    (as prctl(PR_SET_MEMORY_MERGE) would): forks inherit the marks, exec
    drops them, so runc and containers are never offered. Returns the
    bytes marked (0 on a kernel without KSM)."""
    cdef unsigned long lo, hi, marked = 0
    with open("/proc/self/maps", "rb") as f:
        maps = f.read().splitlines()
    for line in maps:
        fields = line.split()
        if fields[1][:2] != b"rw" or fields[1][3:4] != b"p":
            continue
        if len(fields) > 5 and fields[5][:1] == b"[" and fields[5] != b"[heap]":
            continue        # the stack, vdso/vvar: not shared, or not ours to mark
        lo, hi = [int(x, 16) for x in fields[0].split(b"-")]
        if madvise(<void *>lo, hi - lo, MADV_MERGEABLE) == 0:
            marked += hi - lo
    return marked


def signalfd_open(signals):
    """Block `signals` process-wide and return a non-blocking signalfd for them."""
    cdef sigset_t mask
    sigemptyset(&mask)
    for s in signals:
        sigaddset(&mask, <int>s)
    if sigprocmask(SIG_BLOCK, &mask, NULL) != 0:
        raise OSError(errno, "sigprocmask")
    cdef int fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)
    if fd < 0:
        raise OSError(errno, "signalfd")
    return fd


def signalfd_read(int fd):
    """Drain a signalfd; return the list of signal numbers read (may be empty)."""
    cdef signalfd_siginfo info
    cdef ssize_t n
    out = []
    while True:
        n = read(fd, &info, sizeof(info))
        if n != sizeof(info):
            break
        out.append(info.ssi_signo)
    return out


def mount(source, target, fstype, unsigned long flags, data):
    cdef bytes bs = _b(source), bt = _b(target), bf = _b(fstype), bd = _b(data)
    cdef const char *ps = bs
    cdef const char *pt = bt
    cdef const char *pf = bf
    cdef const char *pd = bd
    cdef int rc
    with nogil:
        rc = c_mount(ps, pt, pf, flags, pd)
    if rc != 0:
        raise OSError(errno, "mount %s on %s failed" % (source, target))


def umount2(target, int flags=0):
    cdef bytes bt = _b(target)
    cdef const char *pt = bt
    cdef int rc
    with nogil:
        rc = c_umount2(pt, flags)
    if rc != 0:
        raise OSError(errno, "umount %s failed" % (target,))


def set_winsize(int fd, int rows, int cols):
    cdef winsize ws
    memset(&ws, 0, sizeof(ws))
    ws.ws_row = rows
    ws.ws_col = cols
    if ioctl(fd, TIOCSWINSZ, &ws) != 0:
        raise OSError(errno, "TIOCSWINSZ")


def set_pipe_size(int fd, int size):
    """F_SETPIPE_SZ: ask for a pipe buffer of `size` bytes. Returns the size
    the pipe has afterwards: the kernel rounds up to a power of two pages,
    and a refusal (EPERM over fs.pipe-max-size or the user's pipe pages
    without CAP_SYS_RESOURCE, ENOMEM) leaves the pipe as it was."""
    cdef int n = fcntl(fd, F_SETPIPE_SZ, size)
    if n >= 0:
        return n
    n = fcntl(fd, F_GETPIPE_SZ)
    if n < 0:
        raise OSError(errno, "F_GETPIPE_SZ")
    return n


def recv_fd(int sock, size_t maxname=4096):
    """Receive one message carrying exactly one fd (SCM_RIGHTS), as runc's
    --console-socket sends the pty master. Returns (fd, data)."""
    cdef msghdr msg
    cdef iovec iov
    cdef char *buf = <char *>malloc(maxname)
    cdef char ctl[64]
    cdef cmsghdr *c
    cdef int fd = -1
    cdef ssize_t n
    if buf == NULL:
        raise MemoryError()
    try:
        memset(&msg, 0, sizeof(msg))
        iov.iov_base = buf
        iov.iov_len = maxname
        msg.msg_iov = &iov
        msg.msg_iovlen = 1
        msg.msg_control = ctl
        msg.msg_controllen = CMSG_SPACE(sizeof(int))
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)
        if n < 0:
            raise OSError(errno, "recvmsg")
        c = CMSG_FIRSTHDR(&msg)
        if c == NULL or c.cmsg_level != SOL_SOCKET or c.cmsg_type != SCM_RIGHTS \
                or c.cmsg_len != CMSG_LEN(sizeof(int)):
            raise OSError(22, "expected exactly one fd over SCM_RIGHTS")
        memcpy(&fd, CMSG_DATA(c), sizeof(int))
        return fd, buf[:n]
    finally:
        free(buf)


def loop_get_free():
    """LOOP_CTL_GET_FREE: the number of a free loop device (the kernel adds
    one if none is free)."""
    cdef int ctl = c_open(b"/dev/loop-control", O_RDWR | O_CLOEXEC)
    if ctl < 0:
        raise OSError(errno, "open /dev/loop-control failed")
    cdef int n = ioctl(ctl, LOOP_CTL_GET_FREE)
    cdef int err = errno
    close(ctl)
    if n < 0:
        raise OSError(err, "LOOP_CTL_GET_FREE failed")
    return n


def loop_configure(int loop_fd, int backing_fd, name, unsigned int flags):
    """Bind backing_fd to the open loop device loop_fd with lo_flags `flags`
    (LO_FLAGS_*), in one LOOP_CONFIGURE (Linux 5.8+) or, where the kernel
    lacks it, LOOP_SET_FD + LOOP_SET_STATUS64 (undone if the second fails).
    `name` is what /sys/block/loopN/loop/backing_file reports."""
    cdef loop_config cfg
    cdef bytes bn = _b(name)[:LO_NAME_SIZE - 1]
    cdef int err
    memset(&cfg, 0, sizeof(cfg))
    cfg.fd = backing_fd
    cfg.info.lo_flags = flags
    memcpy(cfg.info.lo_file_name, <const char *>bn, len(bn))
    if ioctl(loop_fd, LOOP_CONFIGURE, &cfg) == 0:
        return
    err = errno
    if err != 22 and err != 25:          # EINVAL/ENOTTY: no LOOP_CONFIGURE
        raise OSError(err, "LOOP_CONFIGURE failed")
    if ioctl(loop_fd, LOOP_SET_FD, backing_fd) != 0:
        raise OSError(errno, "LOOP_SET_FD failed")
    if ioctl(loop_fd, LOOP_SET_STATUS64, &cfg.info) != 0:
        err = errno
        ioctl(loop_fd, LOOP_CLR_FD, 0)
        raise OSError(err, "LOOP_SET_STATUS64 failed")


def loop_clear(int loop_fd):
    """LOOP_CLR_FD: detach the backing file (or, on a mounted device with
    autoclear, detach once the last user closes it)."""
    if ioctl(loop_fd, LOOP_CLR_FD, 0) != 0:
        raise OSError(errno, "LOOP_CLR_FD failed")


cdef struct _mount_args:
    const char *dir
    const char *source
    const char *target
    const char *fstype
    const char *data
    unsigned long flags
    int err


cdef void *_mount_in_dir(void *p) noexcept nogil:
    # A thread of its own with its own cwd (unshare(CLONE_FS)): the serving
    # process's cwd never moves. The thread ends right after.
    cdef _mount_args *a = <_mount_args *>p
    a.err = 0
    if unshare(CLONE_FS) != 0 or chdir(a.dir) != 0 \
            or c_mount(a.source, a.target, a.fstype, a.flags, a.data) != 0:
        a.err = errno
    return NULL


def mount_in_dir(dir, source, target, fstype, unsigned long flags, data):
    """mount(2) with relative paths in `data` resolved from `dir`: done on a
    short-lived native thread that chdir's there (overlay lowerdirs that
    would not fit in one page as absolute paths)."""
    cdef bytes bdir = _b(dir), bs = _b(source), bt = _b(target), bf = _b(fstype), bd = _b(data)
    cdef _mount_args a
    cdef pthread_t t
    cdef int rc
    a.dir = bdir
    a.source = bs
    a.target = bt
    a.fstype = bf
    a.data = bd
    a.flags = flags
    a.err = 0
    with nogil:
        rc = pthread_create(&t, NULL, _mount_in_dir, &a)
        if rc == 0:
            pthread_join(t, NULL)
    if rc != 0:
        raise OSError(rc, "pthread_create failed")
    if a.err != 0:
        raise OSError(a.err, "mount %s on %s (in %s) failed" % (source, target, dir))


def userns_fd(uid_map, gid_map):
    """An fd of a new user namespace with these mappings (text in
    /proc/<pid>/uid_map format, one "inside outside count" line each).

    A forked child unshares CLONE_NEWUSER and waits on a pipe while this
    process writes its maps and opens its ns/user; then the child is let go
    and reaped here, before the event loop runs again (so the reaper never
    sees it). The fd keeps the namespace alive after the child is gone."""
    cdef bytes bu = _b(uid_map), bg = _b(gid_map)
    cdef int ready[2]
    cdef int hold[2]
    cdef int err = 0, status
    cdef pid_t pid
    cdef char c
    cdef ssize_t n
    if pipe2(ready, O_CLOEXEC) != 0:
        raise OSError(errno, "pipe2")
    if pipe2(hold, O_CLOEXEC) != 0:
        err = errno
        close(ready[0])
        close(ready[1])
        raise OSError(err, "pipe2")
    pid = fork()
    if pid == 0:
        # Child: async-signal-safe calls only.
        close(hold[1])
        prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if unshare(CLONE_NEWUSER) != 0:
            err = errno
        write(ready[1], &err, sizeof(int))
        while read(hold[0], &c, 1) < 0 and errno == EINTR:
            pass
        _exit(0)
    err = errno
    close(ready[1])
    close(hold[0])
    if pid < 0:
        close(ready[0])
        close(hold[1])
        raise OSError(err, "fork")
    fd = -1
    try:
        err = 0
        while True:
            n = read(ready[0], &err, sizeof(int))
            if n >= 0 or errno != EINTR:
                break
        if n != sizeof(int):
            raise OSError(5, "user namespace helper died")
        if err != 0:
            raise OSError(err, "unshare(CLONE_NEWUSER) failed")
        _write_file(b"/proc/%d/uid_map" % pid, bu)
        _write_file(b"/proc/%d/gid_map" % pid, bg)
        fd = c_open(b"/proc/%d/ns/user" % pid, O_RDONLY | O_CLOEXEC)
        if fd < 0:
            raise OSError(errno, "open /proc/%d/ns/user failed" % pid)
        return fd
    finally:
        close(ready[0])
        close(hold[1])
        with nogil:
            while waitpid(pid, &status, 0) < 0 and errno == EINTR:
                pass


cdef _write_file(bytes path, bytes data):
    cdef int fd = c_open(path, O_WRONLY | O_CLOEXEC)
    cdef ssize_t n
    cdef int err
    if fd < 0:
        raise OSError(errno, "open %s failed" % path.decode())
    n = write(fd, <const char *>data, len(data))
    err = errno
    close(fd)
    if n != <ssize_t>len(data):
        raise OSError(err if n < 0 else 5, "write %s failed" % path.decode())


cdef struct _mount_attr:
    unsigned long long attr_set
    unsigned long long attr_clr
    unsigned long long propagation
    unsigned long long userns_fd

# The new mount API: the same syscall numbers on every architecture (5.2+).
cdef enum:
    _SYS_open_tree = 428
    _SYS_move_mount = 429
    _SYS_mount_setattr = 442
    _AT_FDCWD = -100
    _AT_EMPTY_PATH = 0x1000
    _AT_RECURSIVE = 0x8000
    _OPEN_TREE_CLONE = 1
    _MOVE_MOUNT_F_EMPTY_PATH = 4
    _MOUNT_ATTR_IDMAP = 0x100000
    _MS_PRIVATE = 1 << 18


def idmap_clone(source, target, int userns, unsigned long long attr_set=0):
    """Clone the mount tree at `source` (open_tree OPEN_TREE_CLONE|
    AT_RECURSIVE), idmap it to user namespace fd `userns` plus MOUNT_ATTR_*
    `attr_set` (mount_setattr, private propagation) and attach it on
    `target` (move_mount)."""
    cdef bytes bs = _b(source), bt = _b(target)
    cdef _mount_attr attr
    cdef long fd
    cdef int err
    fd = syscall(_SYS_open_tree, <int>_AT_FDCWD, <const char *>bs,
                 <unsigned int>(_OPEN_TREE_CLONE | O_CLOEXEC | _AT_RECURSIVE))
    if fd < 0:
        raise OSError(errno, "open_tree %s failed" % (source,))
    memset(&attr, 0, sizeof(attr))
    attr.attr_set = _MOUNT_ATTR_IDMAP | attr_set
    attr.propagation = _MS_PRIVATE
    attr.userns_fd = userns
    try:
        if syscall(_SYS_mount_setattr, <int>fd, <const char *>b"",
                   <unsigned int>(_AT_EMPTY_PATH | _AT_RECURSIVE), &attr, sizeof(attr)) != 0:
            raise OSError(errno, "mount_setattr(MOUNT_ATTR_IDMAP) on %s failed" % (source,))
        if syscall(_SYS_move_mount, <int>fd, <const char *>b"", <int>_AT_FDCWD,
                   <const char *>bt, <unsigned int>_MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise OSError(errno, "move_mount %s to %s failed" % (source, target))
    finally:
        close(fd)


cdef bytes _b(s):
    if s is None:
        return b""
    if isinstance(s, bytes):
        return <bytes>s
    return (<str>s).encode("utf-8", "surrogateescape")


cdef char **_cstrv(list items, list keep) except NULL:
    cdef char **v = <char **>malloc((len(items) + 1) * sizeof(char *))
    if v == NULL:
        raise MemoryError()
    cdef Py_ssize_t i
    for i in range(len(items)):
        b = _b(items[i])
        keep.append(b)
        v[i] = <char *>(<bytes>b)
    v[len(items)] = NULL
    return v


def spawn(path, argv, env, fds, cwd=None, bint new_pgrp=False, bint new_session=False,
          int pdeathsig=0, bint search_path=True):
    """vfork+exec a child and return its pid.

    vfork, as Go's os/exec and Python's subprocess: no copy of this
    process's page tables and no copy-on-write faults after it, on every
    runc call. The child borrows this process's memory until it execs: it
    only makes syscalls, and runs no signal handler of ours (all signals
    blocked around vfork, caught ones reset to default in the child).

    fds: list; the child's fd i is a dup of fds[i] (i = 0, 1, 2, ...). Every
    other fd is closed in the child. The child gets an empty signal mask and
    default SIGPIPE (the shim blocks/ignores signals for its own loop), an
    optional new process group or session, and an optional parent-death
    signal. Exec failure raises OSError in the parent (reported over a
    CLOEXEC pipe), so a missing binary is never a silent child exit.
    """
    cdef list keep = []
    cdef char **cargv = NULL
    cdef char **cenv = NULL
    cdef int nfds = len(fds)
    cdef int *cfds = <int *>malloc((nfds + 1) * sizeof(int))
    cdef int errpipe[2]
    cdef int i, rc, err = 0
    cdef pid_t pid
    cdef sigset_t empty, every, saved
    cdef sigaction_t act
    cdef int signo
    cdef bytes bpath = _b(path)
    cdef bytes bcwd = _b(cwd) if cwd else None
    cdef const char *ppath = bpath
    cdef const char *pcwd = NULL
    cdef ssize_t n
    if cfds == NULL:
        raise MemoryError()
    if bcwd is not None:
        pcwd = bcwd
    try:
        for i in range(nfds):
            cfds[i] = -1 if fds[i] is None else <int>fds[i]
        cargv = _cstrv(list(argv), keep)
        cenv = _cstrv(list(env), keep)
        if pipe2(errpipe, O_CLOEXEC) != 0:
            raise OSError(errno, "pipe2")
        sigemptyset(&empty)
        sigfillset(&every)
        sigprocmask(SIG_SETMASK, &every, &saved)
        pid = vfork()
        if pid == 0:
            # Child, in the parent's memory: syscalls only, then exec.
            for signo in range(1, NSIG):
                if (c_sigaction(signo, NULL, &act) == 0 and act.sa_handler != SIG_DFL
                        and act.sa_handler != SIG_IGN):
                    signal(signo, <sighandler_t>SIG_DFL)
            sigprocmask(SIG_SETMASK, &empty, NULL)
            signal(SIGPIPE, <sighandler_t>SIG_DFL)
            if new_session:
                setsid()
            elif new_pgrp:
                setpgid(0, 0)
            if pdeathsig:
                prctl(PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0)
            # Move every source fd above the target range first, so that a
            # dup2 never clobbers a source that is still needed.
            for i in range(nfds):
                if cfds[i] >= 0:
                    cfds[i] = fcntl(cfds[i], F_DUPFD_CLOEXEC, nfds + 3)
                    if cfds[i] < 0:
                        _child_fail(errpipe[1], errno)
            for i in range(nfds):
                if cfds[i] >= 0:
                    if dup2(cfds[i], i) < 0:
                        _child_fail(errpipe[1], errno)
                else:
                    close(i)
            # Everything else closes at exec (errpipe too: it is CLOEXEC and
            # must stay open until then to report a failed exec).
            if syscall(SYS_close_range, nfds, <unsigned int>0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) != 0:
                for i in range(nfds, 4096):
                    if i != errpipe[1]:
                        close(i)
            if pcwd != NULL and chdir(pcwd) != 0:
                _child_fail(errpipe[1], errno)
            if search_path:
                execvpe(ppath, cargv, cenv)
            else:
                execve(ppath, cargv, cenv)
            _child_fail(errpipe[1], errno)
        err = errno
        sigprocmask(SIG_SETMASK, &saved, NULL)
        if pid < 0:
            close(errpipe[0])
            close(errpipe[1])
            raise OSError(err, "vfork")
        close(errpipe[1])
        while True:
            n = read(errpipe[0], &err, sizeof(int))
            if n < 0 and errno == EINTR:
                continue
            break
        close(errpipe[0])
        if n == sizeof(int):
            # The child has _exit()ed; the reaper collects it like any child.
            raise OSError(err, "exec %s failed" % (path,))
        return pid
    finally:
        free(cfds)
        free(cargv)
        free(cenv)


cdef void _child_fail(int fd, int err) noexcept nogil:
    write(fd, &err, sizeof(int))
    _exit(127)
