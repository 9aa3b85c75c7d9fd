"""The shim's error type and codes (the role of containerd's errdefs).

Every layer raises `Error` with one of the codes below, or its own domain
error (RuncError, OSError) that the layer above translates here; only the
ttrpc server turns an `Error` into a wire status (its code and message as
they are). The codes are gRPC's, as containerd reads them; the message
suffixes (": not found", ...) are what containerd's errdefs adds in Go.
"""

OK = 0
CANCELED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class Error(Exception):
    """An error with a gRPC status code; `message` is sent as-is."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message


def not_found(msg):
    return Error(NOT_FOUND, msg + ": not found")


def already_exists(msg):
    return Error(ALREADY_EXISTS, msg + ": already exists")


def failed_precondition(msg):
    return Error(FAILED_PRECONDITION, msg + ": failed precondition")


def invalid_argument(msg):
    return Error(INVALID_ARGUMENT, msg + ": invalid argument")


def unimplemented(msg):
    return Error(UNIMPLEMENTED, msg + ": not implemented")


def unknown(msg):
    return Error(UNKNOWN, msg)


# ---- translating runc's failures ----------------------------------------------

def runc_error(context, err):
    """Error(UNKNOWN, "<context>: <runc message>"), e.g. context
    "OCI runtime create failed" (spec runc.md §6)."""
    return Error(UNKNOWN, "%s: %s" % (context, err))


def classify_kill_error(err):
    """Map a kill failure (runc message, RuncError or OSError) to the Go
    shim's error (spec task-service.md §4 Kill)."""
    if isinstance(err, OSError) and err.errno == 3:   # ESRCH
        return Error(NOT_FOUND, "process already finished: not found")
    msg = str(err)
    if ("process already finished" in msg or "container not running" in msg
            or "no such process" in msg.lower()):
        return Error(NOT_FOUND, "process already finished: not found")
    if "does not exist" in msg:
        return Error(NOT_FOUND, "no such container: not found")
    return Error(UNKNOWN, "unknown error after kill: %s" % msg)
