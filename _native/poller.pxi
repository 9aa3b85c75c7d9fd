# The epoll core of the shim's single event loop.
#
# Python fds get callbacks; stdio copies (src fd -> dst fd) are pumped here in
# C and only surface to Python once, when they finish. Copies out of a pipe
# use splice(2) so container output never passes through user space; where
# the kernel refuses (an O_APPEND file, a tty) the copy reads and writes
# through a buffer of its own.

from libc.errno cimport errno, EAGAIN, EINTR, EINVAL, EIO, EPIPE
from libc.stdlib cimport malloc, free

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    unsigned int EPOLLIN
    unsigned int EPOLLOUT
    unsigned int EPOLLERR
    unsigned int EPOLLHUP

cdef extern from "<fcntl.h>" nogil:
    ssize_t splice(int fd_in, long long *off_in, int fd_out, long long *off_out,
                   size_t len, unsigned int flags)
    unsigned int SPLICE_F_NONBLOCK
    unsigned int SPLICE_F_MOVE
    int F_GETFL
    int F_SETFL
    int O_NONBLOCK

cdef extern from "<sys/ioctl.h>" nogil:
    unsigned long FIONREAD

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int c_poll "poll"(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
    short POLLERR
    short POLLHUP

cdef extern from "<unistd.h>" nogil:
    ssize_t c_read "read"(int fd, void *buf, size_t n)
    ssize_t c_write "write"(int fd, const void *buf, size_t n)

# One splice() asks for up to this much: a length, not a buffer, so a pipe
# the shim enlarged (io.PIPE_SIZE) is emptied in one call.
DEF SPLICE_MAX = 1048576
# read()/write() copies: measured no faster with 256 KiB or 1 MiB (the
# bytes are copied twice either way), so the buffer stays small.
DEF BUF_SIZE = 65536
DEF MAX_ROUNDS = 16      # per wake-up, so one busy copy cannot starve the loop
DEF MAXEVENTS = 64

READABLE = EPOLLIN
WRITABLE = EPOLLOUT


cdef int _set_nonblock(int fd) nogil:
    cdef int fl = fcntl(fd, F_GETFL)
    if fl < 0:
        return -1
    return fcntl(fd, F_SETFL, fl | O_NONBLOCK)


cdef bint _ended(int fd) noexcept nogil:
    """A pipe with no writer left and nothing left to read. POLLHUP alone
    is not that: the writer may have written its last bytes and exited
    since we found the pipe empty."""
    cdef pollfd p
    p.fd = fd
    p.events = POLLIN
    p.revents = 0
    return c_poll(&p, 1, 0) == 1 and (p.revents & POLLHUP) != 0 \
        and (p.revents & POLLIN) == 0


def pipe_unread(int fd):
    """Bytes a pipe (or FIFO) holds unread, or -1 when no reader has it open
    (fd: a write end; poll says POLLERR then)."""
    cdef pollfd p
    cdef int avail = 0
    p.fd = fd
    p.events = POLLOUT
    p.revents = 0
    if c_poll(&p, 1, 0) < 0:
        raise OSError(errno, "poll")
    if p.revents & POLLERR:
        return -1
    if ioctl(fd, FIONREAD, &avail) < 0:
        raise OSError(errno, "FIONREAD")
    return avail


cdef class _FdWatch:
    cdef public object reader
    cdef public object writer


cdef class Copy:
    """A running copy from `src` to `dst`; created by Poller.add_copy."""
    cdef readonly int src
    cdef readonly int dst
    cdef readonly unsigned long long copied
    cdef readonly bint done
    cdef readonly int error
    cdef public object on_done
    cdef int watched          # fd currently registered in epoll (-1: none)
    cdef readonly bint draining   # end (on_done(0)) once src has nothing more now
    cdef readonly bint buffered   # splice not possible: read/write through buf
    cdef char *buf
    cdef Py_ssize_t buf_start, buf_end
    cdef Poller poller

    def __dealloc__(self):
        free(self.buf)

    def cancel(self):
        """Stop copying without calling on_done (fds stay open)."""
        if not self.done:
            self.done = True
            self.poller._unwatch_copy(self)

    def drain(self):
        """Pump once now; on_done (if it ended) runs from the next poll()."""
        if not self.done:
            self._pump()

    def set_drain(self):
        """Drain mode: copy what src holds now (still waiting for dst to take
        it), then end with on_done(0) at the first EAGAIN or EIO from src
        instead of waiting for more. For a pty master after the process
        exited: its slave may never be closed by everyone, and reading it
        returns EIO once no slave is open."""
        if not self.done and not self.draining:
            self.draining = True
            if self.watched != self.dst:
                self._pump()

    cdef int _pump(self) except -1:
        cdef ssize_t n
        cdef int rounds = 0, avail = 0, err
        cdef bint spliced_again = False
        while rounds < MAX_ROUNDS:
            rounds += 1
            if self.buffered:
                if self.buf_start < self.buf_end:
                    n = c_write(self.dst, self.buf + self.buf_start, self.buf_end - self.buf_start)
                    if n < 0:
                        err = errno
                        if err == EINTR:
                            continue
                        if err == EAGAIN:
                            return self._wait(self.dst, EPOLLOUT)
                        return self._finish(err)
                    self.buf_start += n
                    self.copied += n
                    continue
                n = c_read(self.src, self.buf, BUF_SIZE)
                if n < 0:
                    err = errno
                    if err == EINTR:
                        continue
                    if self.draining and (err == EAGAIN or err == EIO):
                        return self._finish(0)
                    if err == EAGAIN:
                        return self._wait(self.src, EPOLLIN)
                    return self._finish(err)
                if n == 0:
                    return self._finish(0)
                self.buf_start = 0
                self.buf_end = n
                continue
            n = splice(self.src, NULL, self.dst, NULL, SPLICE_MAX, SPLICE_F_NONBLOCK | SPLICE_F_MOVE)
            if n > 0:
                self.copied += n
                spliced_again = False
                continue
            if n == 0:
                return self._finish(0)
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                # Either src is empty or dst is full: ask src which.
                if ioctl(self.src, FIONREAD, &avail) == 0 and avail > 0:
                    # Or src was empty and got data right after the splice:
                    # splice once more before taking dst for full (a file or
                    # /dev/null can never be, nor be waited on: EPERM).
                    if not spliced_again:
                        spliced_again = True
                        continue
                    return self._wait(self.dst, EPOLLOUT)
                if self.draining or _ended(self.src):
                    # Empty, and no writer left: that is EOF (splice says
                    # EAGAIN when dst is full even then; waiting on the
                    # hung-up src would spin).
                    return self._finish(0)
                return self._wait(self.src, EPOLLIN)
            if self.draining and err == EIO:
                return self._finish(0)
            if err == EINVAL:
                self._go_buffered()
                continue
            return self._finish(err)
        # Still busy: stay registered on src (level-triggered: fires again).
        if self.draining and self.buf_start >= self.buf_end \
                and ioctl(self.src, FIONREAD, &avail) == 0 and avail == 0:
            return self._finish(0)
        return self._wait(self.src, EPOLLIN)

    cdef int _go_buffered(self) except -1:
        if self.buf == NULL:
            self.buf = <char *>malloc(BUF_SIZE)
            if self.buf == NULL:
                raise MemoryError()
        self.buffered = True
        self.buf_start = self.buf_end = 0
        return 0

    cdef int _wait(self, int fd, unsigned int events) except -1:
        self.poller._watch_copy(self, fd, events)
        return 0

    cdef int _finish(self, int err) except -1:
        self.error = err
        self.done = True
        self.poller._unwatch_copy(self)
        self.poller._finished.append(self)
        return 0


cdef class Poller:
    """epoll with Python callbacks and native copies.

    poll(timeout_ms) waits, pumps ready copies in C, and returns the list of
    Python callables to run now (reader/writer callbacks, and the on_done of
    copies that ended, bound to their error code)."""
    cdef int epfd
    cdef dict fds            # fd -> _FdWatch or Copy
    cdef list _finished

    def __cinit__(self):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        self.fds = {}
        self._finished = []

    def close(self):
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    def fileno(self):
        return self.epfd

    cdef int _ctl(self, int op, int fd, unsigned int events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.fd = fd
        if epoll_ctl(self.epfd, op, fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl(fd=%d)" % fd)
        return 0

    # ---- Python callbacks ------------------------------------------------
    def set_handlers(self, int fd, reader, writer):
        """Install (or, with both None, remove) the callbacks of fd."""
        old = self.fds.get(fd)
        if isinstance(old, Copy):
            raise ValueError("fd %d is used by a copy" % fd)
        cdef unsigned int events = (EPOLLIN if reader is not None else 0) | \
                                   (EPOLLOUT if writer is not None else 0)
        cdef _FdWatch w
        if events == 0:
            if old is not None:
                del self.fds[fd]
                self._ctl(EPOLL_CTL_DEL, fd, 0)
            return
        if old is None:
            w = _FdWatch()
            self._ctl(EPOLL_CTL_ADD, fd, events)
            self.fds[fd] = w
        else:
            w = <_FdWatch>old
            self._ctl(EPOLL_CTL_MOD, fd, events)
        w.reader = reader
        w.writer = writer

    def handlers(self, int fd):
        w = self.fds.get(fd)
        if w is None or isinstance(w, Copy):
            return None, None
        return (<_FdWatch>w).reader, (<_FdWatch>w).writer

    # ---- native copies ---------------------------------------------------
    def add_copy(self, int src, int dst, on_done, bint drain=False):
        """Copy src -> dst until src reaches EOF (or an error). Both fds are
        made non-blocking; neither is closed. on_done(errno or 0) runs once
        from poll(). drain=True: start in drain mode (Copy.set_drain).

        A read error ends the copy with on_done(errno) and nothing buffered
        is lost (reads happen only into an empty buffer): a pty master that
        returns EIO (no slave open) can simply be copied again later."""
        if src in self.fds:
            raise ValueError("fd %d already watched" % src)
        _set_nonblock(src)
        _set_nonblock(dst)
        cdef Copy c = Copy()
        c.src = src
        c.dst = dst
        c.on_done = on_done
        c.watched = -1
        c.poller = self
        c.draining = drain
        c._pump()
        return c

    cdef int _watch_copy(self, Copy c, int fd, unsigned int events) except -1:
        if c.watched == fd:
            return 0
        self._unwatch_copy(c)
        if fd in self.fds:
            raise ValueError("fd %d already watched" % fd)
        self._ctl(EPOLL_CTL_ADD, fd, events)
        self.fds[fd] = c
        c.watched = fd
        return 0

    cdef int _unwatch_copy(self, Copy c) except -1:
        if c.watched >= 0:
            self.fds.pop(c.watched, None)
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.watched, NULL)
            c.watched = -1
        return 0

    def take_finished(self):
        """(on_done, error) pairs of copies that ended outside poll()."""
        cdef list out = []
        cdef Copy c
        for c in self._finished:
            if c.on_done is not None:
                out.append((c.on_done, c.error))
        self._finished = []
        return out

    def __len__(self):
        return len(self.fds)

    def poll(self, int timeout_ms):
        cdef epoll_event evs[MAXEVENTS]
        cdef int n, i, fd
        cdef unsigned int ev
        cdef _FdWatch w
        cdef Copy c
        cdef unsigned long long before
        if self._finished:
            timeout_ms = 0
        with nogil:
            n = epoll_wait(self.epfd, evs, MAXEVENTS, timeout_ms)
        if n < 0:
            if errno == EINTR:
                return []
            raise OSError(errno, "epoll_wait")
        out = []
        for i in range(n):
            fd = evs[i].data.fd
            ev = evs[i].events
            obj = self.fds.get(fd)
            if obj is None:
                continue
            if isinstance(obj, Copy):
                c = <Copy>obj
                before = c.copied
                c._pump()
                if ev & (EPOLLHUP | EPOLLERR) and not c.done \
                        and c.copied == before and c.watched == fd:
                    # Hung up and no progress, yet waiting on the same fd:
                    # level-triggered HUP would wake us forever (a pty
                    # master with no slave open takes no more input).
                    c._finish(EIO)
                continue
            w = <_FdWatch>obj
            if w.reader is not None and ev & (EPOLLIN | EPOLLHUP | EPOLLERR):
                out.append((w.reader, None))
            if w.writer is not None and ev & (EPOLLOUT | EPOLLHUP | EPOLLERR):
                out.append((w.writer, None))
        if self._finished:
            out.extend(self.take_finished())
        return out
