"""Process state: the init process of a container and its execs.

States and error texts follow the Go runc shim (spec task-service.md §2-3):
state errors are code 2 (Unknown) with bare text.
"""
import os
import time

try:
    from _signal import pidfd_send_signal as _pidfd_send_signal
except ImportError:          # Python < 3.9
    _pidfd_send_signal = None

from shim.errors import UNKNOWN, Error as TTRPCError
from shim.loop import Future

CREATED = 1
RUNNING = 2
STOPPED = 3
PAUSED = 4
PAUSING = 5

STATE_NAMES = {CREATED: "created", RUNNING: "running", STOPPED: "stopped",
               PAUSED: "paused", PAUSING: "pausing"}

# Go emits "not exited yet" timestamps as 0001-01-01T00:00:00Z.
ZERO_TIME = -62135596800


def state_error(text):
    return TTRPCError(UNKNOWN, text)


class Process:
    """One process: the init (exec_id "") or an exec."""

    def __init__(self, container, exec_id, stdin, stdout, stderr, terminal, io):
        self.container = container
        self.exec_id = exec_id
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.terminal = terminal
        self.io = io
        self.pid = 0
        self.status = CREATED
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

    def check_start(self):
        if self.starting and self.status == CREATED:
            raise state_error("cannot start a running process")
        if self.status != CREATED:
            raise state_error("cannot start a %s process" % STATE_NAMES[self.status])

    def check_delete(self):
        if self.starting and self.exec_id:
            raise state_error("cannot delete a running process")
        if self.status in (RUNNING, PAUSED, PAUSING):
            raise state_error("cannot delete a %s process" % STATE_NAMES[self.status])

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
        self.status = STOPPED
        self.exit_status = status
        self.exited_at = when if when is not None else time.time()
