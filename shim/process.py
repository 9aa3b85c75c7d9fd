"""Process state: the init process of a container and its execs.

One table per kind of process says, for every operation and every state,
whether it is allowed or the error it gets: the Go runc shim's texts
(spec task-service.md §2-3), state errors being code 2 (Unknown) with bare
text. `Process.require(op)` checks it and `Process.to(state)` moves, so an
illegal operation or transition is raised from here only.

`starting` is the one transient flag beside the state: a Start is in
flight (its exit is held back, see shim.exits); it makes `start`, and an
exec's `delete`, see the process as running.
"""
import os
import time

try:
    from _signal import pidfd_send_signal as _pidfd_send_signal
except ImportError:          # Python < 3.9
    _pidfd_send_signal = None

from shim.errors import FAILED_PRECONDITION, NOT_FOUND, UNKNOWN, Error
from shim.loop import Future

# The first five are the wire values of containerd's task Status.
CREATED = 1
RUNNING = 2
STOPPED = 3
PAUSED = 4
PAUSING = 5
CREATED_CHECKPOINT = 6      # Create from a checkpoint: runc restore at Start
DELETED = 7                 # Delete done; a handler may still hold it

STATE_NAMES = {CREATED: "created", RUNNING: "running", STOPPED: "stopped",
               PAUSED: "paused", PAUSING: "pausing",
               CREATED_CHECKPOINT: "created (checkpoint)", DELETED: "deleted"}
INIT_STATES = (CREATED, CREATED_CHECKPOINT, RUNNING, PAUSING, PAUSED, STOPPED, DELETED)
EXEC_STATES = (CREATED, RUNNING, STOPPED, DELETED)

# Go emits "not exited yet" timestamps as 0001-01-01T00:00:00Z.
ZERO_TIME = -62135596800


class StateError(Error):
    """An operation the process's state does not allow."""

    def __init__(self, text, code=UNKNOWN):
        Error.__init__(self, code, text)


OK = None
_DELETED_KILL = (NOT_FOUND, "cannot kill a deleted process: not found")

# Each cell: OK, or the error: a text (code Unknown) or (code, text).
# Init columns, as INIT_STATES: created, created from a checkpoint, running,
# pausing, paused, stopped, deleted.
_INIT_TABLE = {
    "start": (OK, OK, "cannot start a running process", "cannot start a pausing process",
              "cannot start a paused process", "cannot start a stopped process",
              "cannot start a deleted process"),
    "delete": (OK, OK, "cannot delete a running process", "cannot delete a pausing process",
               "cannot delete a paused process", OK, "cannot delete a deleted process"),
    "kill": (OK, OK, OK, OK, OK, OK, _DELETED_KILL),
    "pause": ("cannot pause task in created state", "cannot pause task in created state", OK,
              "cannot pause a pausing container", "cannot pause a paused container",
              "cannot pause a stopped container", "cannot pause a deleted process"),
    "resume": ("cannot resume task in created state", "cannot resume task in created state",
               "cannot resume a running process", "cannot resume a pausing container", OK,
               "cannot resume a stopped container", "cannot resume a deleted process"),
    "update": (OK, OK, OK, OK, OK, "cannot update a stopped container",
               "cannot update a deleted process"),
    "checkpoint": ("cannot checkpoint a task in created state",
                   "cannot checkpoint a task in created state", OK, OK, OK,
                   "cannot checkpoint a stopped container",
                   "cannot checkpoint a deleted process"),
    # An Exec, or an exec's Start, in this state of the init.
    "exec": (OK, "cannot exec in a created state", OK, "cannot exec in a paused state",
             "cannot exec in a paused state", "cannot exec in a stopped state",
             "cannot exec in a deleted state"),
    "resize": (OK, OK, OK, OK, OK, OK, "cannot resize a deleted process"),
}
# op -> {state: cell}
INIT_RULES = {op: dict(zip(INIT_STATES, row)) for op, row in _INIT_TABLE.items()}

# Exec columns: created, running, stopped, deleted (an exec is never paused
# itself; State shows its init's pause).
EXEC_RULES = {
    "start": {CREATED: OK, RUNNING: "cannot start a running process",
              STOPPED: "cannot start a stopped process",
              DELETED: "cannot start a deleted process"},
    "delete": {CREATED: OK, RUNNING: "cannot delete a running process", STOPPED: OK,
               DELETED: "cannot delete a deleted process"},
    "kill": {CREATED: (FAILED_PRECONDITION, "process not created: failed precondition"),
             RUNNING: OK, STOPPED: (NOT_FOUND, "process already finished: not found"),
             DELETED: _DELETED_KILL},
    "resize": {CREATED: OK, RUNNING: OK, STOPPED: "cannot resize a stopped container",
               DELETED: "cannot resize a deleted process"},
}

# state -> the states it may move to
MOVES = {
    CREATED: (RUNNING, STOPPED, DELETED),
    CREATED_CHECKPOINT: (RUNNING, STOPPED, DELETED),
    RUNNING: (PAUSING, STOPPED),
    PAUSING: (PAUSED, RUNNING, STOPPED),
    PAUSED: (RUNNING, STOPPED),
    STOPPED: (DELETED,),
    DELETED: (),
}


def check(rules, op, state):
    """None if `op` is allowed in `state`, else the StateError to raise."""
    rule = rules[op][state]
    if rule is None:
        return None
    if isinstance(rule, tuple):
        return StateError(rule[1], rule[0])
    return StateError(rule)


class Process:
    """One process: the init (exec_id "") or an exec."""

    def __init__(self, container, exec_id, stdin, stdout, stderr, terminal, io,
                 status=CREATED):
        self.container = container
        self.exec_id = exec_id
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.terminal = terminal
        self.io = io
        self.pid = 0
        self.status = status           # CREATED, or CREATED_CHECKPOINT
        self.exit_status = 0
        self.exited_at = None          # float time, None while not exited
        self.exited = Future()         # resolved (after /tasks/exit) on exit
        self.starting = False          # Start in flight: hold the exit back
        self.held_exit = None          # (status, when) reaped during Start
        self.reaped = False
        self.spec = None               # exec: OCI Process JSON (str) for runc
        self.pidfd = -1                # exec: pidfd while running (kill w/o pid reuse)

    @property
    def id(self):
        return self.exec_id or self.container.id

    @property
    def wire_status(self):
        """The Status containerd sees."""
        if self.status == CREATED_CHECKPOINT:
            return CREATED
        if self.status == DELETED:
            return STOPPED
        return self.status

    def require(self, op):
        """Raise the state's error unless `op` is allowed now."""
        state = self.status
        if self.starting and state in (CREATED, CREATED_CHECKPOINT) and (
                op == "start" or (op == "delete" and self.exec_id)):
            state = RUNNING             # its Start is in flight
        elif op == "kill" and self.exec_id and state == RUNNING \
                and self.held_exit is not None:
            state = STOPPED             # exited, not yet published
        err = check(EXEC_RULES if self.exec_id else INIT_RULES, op, state)
        if err is not None:
            raise err

    def to(self, state):
        if state not in MOVES[self.status] or (
                self.exec_id and state not in EXEC_STATES):
            raise StateError("%s: illegal transition %s -> %s" % (
                self.id, STATE_NAMES[self.status], STATE_NAMES[state]))
        self.status = state

    def close_pidfd(self):
        fd, self.pidfd = self.pidfd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def signal(self, signum):
        """kill(2) an exec's process: through its pidfd when there is one (the
        pid cannot have been reused), else by pid. OSError as from kill."""
        if self.pidfd >= 0 and _pidfd_send_signal is not None:
            _pidfd_send_signal(self.pidfd, signum)
        else:
            os.kill(self.pid, signum)

    def record_exit(self, status, when=None):
        self.close_pidfd()
        self.reaped = True
        if self.status not in (STOPPED, DELETED):
            self.to(STOPPED)
        self.exit_status = status
        self.exited_at = when if when is not None else time.time()
