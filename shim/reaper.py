"""One owner of waitpid(-1): the shim is a child subreaper, SIGCHLD arrives
through the loop's signalfd, and every exit (runc invocations and container
processes alike) is routed from here, so no exit status is ever stolen."""
import os
import time

from shim import _native
from shim.loop import Future, get_loop

SIGCHLD = 17


def exit_code(status):
    """Wait status -> containerd exit status (128+N for signal N)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


class Reaper:
    def __init__(self, loop=None, subreaper=True):
        self.loop = loop or get_loop()
        self._waiters = {}      # pid -> Future(exit status), claimed pids
        self.on_exit = None     # callable(pid, status, exited_at) for the rest
        if subreaper:
            _native.set_child_subreaper()
        self.loop.add_signal(SIGCHLD, self._on_sigchld)

    def watch(self, pid):
        """Claim pid (a child we spawned): its exit status resolves the
        returned Future instead of going to on_exit. Call right after spawn,
        before returning to the loop, so the exit cannot be missed."""
        fut = self._waiters.get(pid)
        if fut is None:
            fut = self._waiters[pid] = Future()
        return fut

    def _on_sigchld(self, _signo=None):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            code = exit_code(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None:
                fut.set_result(code)
            elif self.on_exit is not None:
                self.on_exit(pid, code, time.time())
