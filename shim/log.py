"""Tiny non-blocking logger of the serve process (spec shim-binary.md §7).

containerd creates the FIFO `<bundle>/log` and copies whatever arrives there
into its own log, so lines are written like logrus' text formatter:

    time="2024-05-01T10:00:00.123456789Z" level=info msg="..." runtime=io.containerd.pyshim.v1

Writes never block: the FIFO is opened O_NONBLOCK, and a line that does not
fit (no reader while containerd restarts, full pipe) is dropped.

    from shim.log import log
    log.configure(bundle, debug)          # once, in serve mode
    log.info("text"); log.debug("text", id="c1")   # keyword args become fields
"""
import os
import time

RUNTIME = "io.containerd.pyshim.v1"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")


def _quote(s):
    """logrus quotes a value unless it is made of 'safe' characters only."""
    if s and all(c in _SAFE for c in s):
        return s
    out = ['"']
    for c in s:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c < " " or c == "\x7f":
            out.append("\\x%02x" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _timestamp(t):
    """RFC3339 with nanoseconds in UTC (containerd's RFC3339NanoFixed)."""
    ns = int(t * 1e9)
    sec, frac = divmod(ns, 1000000000)
    tm = time.gmtime(sec)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (
        tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac)


def format_line(level, msg, fields=None, t=None):
    """One logrus-style text line (bytes, newline-terminated)."""
    parts = ["time=" + _quote(_timestamp(time.time() if t is None else t)),
             "level=" + level,
             "msg=" + _quote(str(msg))]
    if fields:
        for k in sorted(fields):
            parts.append("%s=%s" % (k, _quote(str(fields[k]))))
    parts.append("runtime=" + RUNTIME)
    return ("%s\n" % " ".join(parts)).encode("utf-8", "replace")


class Logger:
    def __init__(self, fd=2):
        self.fd = fd
        self._own_fd = False
        self.debug_enabled = False

    def configure(self, bundle=None, debug=False):
        """Log to `<bundle>/log` when that FIFO exists, else to stderr."""
        self.debug_enabled = bool(debug)
        fd = -1
        if bundle:
            path = os.path.join(bundle, "log")
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(path, flags)
            except OSError as e:
                if e.errno == 6:   # ENXIO: a FIFO without a reader right now
                    try:
                        # Keep a reader ourselves so the FIFO stays usable;
                        # containerd (re)opens its end when it (re)starts.
                        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                    except OSError:
                        fd = -1
        if self._own_fd and self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        if fd >= 0:
            self.fd = fd
            self._own_fd = True
        else:
            self.fd = 2
            self._own_fd = False

    def close(self):
        if self._own_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = 2
        self._own_fd = False

    def write(self, data):
        """Write bytes without ever blocking; whatever does not fit is lost."""
        fd = self.fd
        while data:
            try:
                n = os.write(fd, data)
            except InterruptedError:
                continue
            except OSError:     # EAGAIN (full), EPIPE (no reader), EBADF ...
                return
            if n <= 0:
                return
            data = data[n:]

    def log(self, level, msg, fields=None):
        self.write(format_line(level, msg, fields))

    def debug(self, msg, **fields):
        if self.debug_enabled:
            self.write(format_line("debug", msg, fields))

    def info(self, msg, **fields):
        self.write(format_line("info", msg, fields))

    def warning(self, msg, **fields):
        self.write(format_line("warning", msg, fields))

    warn = warning

    def error(self, msg, **fields):
        self.write(format_line("error", msg, fields))


log = Logger()
