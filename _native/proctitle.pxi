# The serving shim's name as process tools see it (ps, pgrep, pidof,
# monitoring agents): /proc/self/comm and /proc/self/cmdline.
# Uses prctl(), syscall() and _b() from sys.pxi (one module: included after it).

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "<sys/prctl.h>" nogil:
    int PR_SET_NAME
    int PR_SET_MM
    int PR_SET_MM_MAP

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_brk

cdef struct prctl_mm_map:
    uint64_t start_code
    uint64_t end_code
    uint64_t start_data
    uint64_t end_data
    uint64_t start_brk
    uint64_t brk
    uint64_t start_stack
    uint64_t arg_start
    uint64_t arg_end
    uint64_t env_start
    uint64_t env_end
    uint64_t *auxv
    uint32_t auxv_size
    uint32_t exe_fd

# The buffer /proc/self/cmdline shows after set_cmdline_buffer(): the
# kernel reads it from our memory on every read, so it is never freed.
cdef char *_cmdline_buf = NULL
cdef char *_environ_buf = NULL


def set_comm(name):
    """prctl(PR_SET_NAME): /proc/self/comm, what `ps -C`, `pgrep` without
    -f and top match. The kernel keeps the first 15 bytes."""
    cdef bytes b = _b(name)[:15]
    if prctl(PR_SET_NAME, <unsigned long><const char *>b, 0, 0, 0) != 0:
        raise OSError(errno, "prctl(PR_SET_NAME)")


def set_cmdline_buffer(args, environ=None):
    """Point the kernel's argv area at a new buffer holding args, each NUL
    terminated: /proc/self/cmdline then reads exactly args, of any length.

    prctl(PR_SET_MM, PR_SET_MM_MAP) with every other field as it is (from
    /proc/self/stat; brk read right before the call): unlike the single
    PR_SET_MM_ARG_START/ARG_END, which need CAP_SYS_RESOURCE, it needs no
    capability while /proc/self/exe is kept, and moves both ends in one
    checked step. OSError when the kernel refuses (built without
    CONFIG_CHECKPOINT_RESTORE: EINVAL), nothing changed then.

    environ: a list of "KEY=VALUE" entries /proc/self/environ then shows
    (a process forked from the template process, whose own environment is
    not the one it serves with), in the same step; None: unchanged."""
    global _cmdline_buf, _environ_buf
    cdef bytes data = b"\0".join(_b(a) for a in args) + b"\0"
    cdef size_t n = len(data)
    cdef bytes edata = b""
    cdef size_t en = 0
    cdef char *ebuf = NULL
    if environ is not None:
        edata = b"".join(_b(e) + b"\0" for e in environ) or b"\0"
        en = len(edata)
    cdef prctl_mm_map m
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # After "comm) ": fields[0] is field 3 (state), so field k is fields[k - 3].
    fields = stat[stat.rindex(b")") + 2:].split()
    m.start_code = int(fields[23])
    m.end_code = int(fields[24])
    m.start_stack = int(fields[25])
    m.start_data = int(fields[42])
    m.end_data = int(fields[43])
    m.start_brk = int(fields[44])
    m.env_start = int(fields[47])
    m.env_end = int(fields[48])
    if m.start_code <= 1 or m.start_stack == 0 or m.env_end == 0:
        raise OSError(1, "/proc/self/stat hides the memory layout")
    m.auxv = NULL
    m.auxv_size = 0
    m.exe_fd = <uint32_t>-1
    cdef char *buf = <char *>malloc(n)
    if buf == NULL:
        raise MemoryError()
    memcpy(buf, <const char *>data, n)
    m.arg_start = <uint64_t>buf
    m.arg_end = m.arg_start + n
    if en:
        ebuf = <char *>malloc(en)
        if ebuf == NULL:
            free(buf)
            raise MemoryError()
        memcpy(ebuf, <const char *>edata, en)
        m.env_start = <uint64_t>ebuf
        m.env_end = m.env_start + en
    # No allocation from here on: the heap end given must be the current one.
    m.brk = <uint64_t>syscall(SYS_brk, 0)
    if prctl(PR_SET_MM, PR_SET_MM_MAP, <unsigned long>&m, sizeof(m), 0) != 0:
        e = errno
        free(buf)
        if ebuf != NULL:
            free(ebuf)
        raise OSError(e, "prctl(PR_SET_MM_MAP)")
    _cmdline_buf = buf      # a previous buffer stays allocated: small, and safe
    if ebuf != NULL:
        _environ_buf = ebuf
    return True
