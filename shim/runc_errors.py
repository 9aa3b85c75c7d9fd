"""runc's failures: RuncError, whose message is the `msg` of the last
`"level":"error"` line one invocation appended to log.json, else the output
it printed, else `exit status N`."""
import os


class RuncError(Exception):
    """runc failed. `message` is runc's own error text (see module doc);
    `status` is its exit status (None if it never ran), `output` the bytes
    it printed."""

    def __init__(self, message, status=None, output=b""):
        Exception.__init__(self, message)
        self.message = message
        self.status = status
        self.output = output

    def __str__(self):
        return self.message


def log_size(path):
    """Size of runc's log before an invocation: its own errors are what it
    appends after that."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def last_error_from_log(data):
    """msg of the last line with "level":"error" in runc's JSON log (bytes),
    or None."""
    from shim import jsonlite
    msg = None
    for line in data.splitlines():
        if b"error" not in line:
            continue
        try:
            entry = jsonlite.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and entry.get("level") == "error":
            m = entry.get("msg")
            if isinstance(m, str):
                msg = m
    return msg


def read_log_error(log_path, offset=0):
    """Last runc error message in log_path from byte `offset` on (what one
    invocation appended). If the file shrank, the whole file is read."""
    try:
        with open(log_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset > size:
                offset = 0
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    return last_error_from_log(data)


def error_message(log_msg, output, status):
    if log_msg:
        return log_msg
    if output:
        text = output.decode("utf-8", "replace").strip()
        if text:
            return text
    return "exit status %d" % status


def exec_error(binary, e):
    if e.errno == 2 and "/" not in binary:
        return RuncError('exec: "%s": executable file not found in $PATH' % binary)
    return RuncError("fork/exec %s: %s" % (binary, e.strerror or e))
