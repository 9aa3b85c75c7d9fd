"""Routing the reaper's exits to processes, by pid.

Two races are settled here, so that no exit is lost or published too early:
- early exit: runc create/exec/restore has made the process and it has
  already exited before runc told us its pid. While a `PidWindow` is open,
  exits of unknown pids are kept, and claimed when the pid becomes known.
- held exit: the process exits while its Create/Start is still in flight
  (`hold`); its exit is delivered only at `release`, after the service has
  published /tasks/create, /tasks/start or /tasks/exec-started.
Everything else goes straight to `on_exited(p, status, when)`.
"""


class ExitRouter:
    def __init__(self, on_exited):
        self.on_exited = on_exited
        self.by_pid = {}            # pid -> Process (created/running ones)
        self.windows = 0            # open PidWindows
        self.early = {}             # pid -> (status, when) reaped before known

    def on_exit(self, pid, status, when):
        """The reaper's callback for every pid it did not claim itself."""
        p = self.by_pid.get(pid)
        if p is None:
            if self.windows:
                self.early[pid] = (status, when)
            return
        if p.starting:
            p.held_exit = (status, when)
            return
        self.exited(p, status, when)

    def exited(self, p, status, when):
        if self.by_pid.get(p.pid) is p:
            del self.by_pid[p.pid]
        self.on_exited(p, status, when)

    def window(self, p):
        return PidWindow(self, p)

    def forget(self, p):
        """Exits of p's pid are not p's any more (it was deleted)."""
        if self.by_pid.get(p.pid) is p:
            del self.by_pid[p.pid]

    def hold(self, p):
        """p's Start (or Create) is in flight: keep its exit until release."""
        p.starting = True

    def release(self, p):
        p.starting = False
        if p.held_exit is not None:
            held, p.held_exit = p.held_exit, None
            self.exited(p, *held)


class PidWindow:
    """Open around a runc create, restore or exec: the one place that makes
    a process whose pid we learn only afterwards.

        with router.window(p) as w:
            pid = await runc...
            w.known(pid)
            ...                     # on failure: if w.abandon(): kill it
    """

    def __init__(self, router, p):
        self.router = router
        self.p = p
        self.pid = 0

    def __enter__(self):
        self.router.windows += 1
        return self

    def __exit__(self, *exc):
        r = self.router
        r.windows -= 1
        if not r.windows:
            r.early = {}
        return False

    def known(self, pid):
        """p's pid is known: route its exits to p from now on, and take an
        exit that was reaped before (held until p.starting ends)."""
        r, p = self.router, self.p
        self.pid = p.pid = pid
        r.by_pid[pid] = p
        early = r.early.pop(pid, None)
        if early is not None:
            p.held_exit = early

    def abandon(self, forget=True):
        """The operation failed after runc made the process. Returns True
        if it may still be running (the caller must kill it). With forget,
        its exits are no longer routed to p and p has no pid again."""
        r, p = self.router, self.p
        if not self.pid:
            return False
        live = r.by_pid.get(self.pid) is p and p.held_exit is None
        if forget:
            if r.by_pid.get(self.pid) is p:
                del r.by_pid[self.pid]
            p.held_exit = None
            p.pid = 0
        return live
