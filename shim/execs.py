"""An exec's mechanics in its container: its stdio, runc exec inside a pid
window, the cleanup of a failed start, and its delete. The state checks,
holding its exit and the events are the service's (shim.task)."""
import os

from shim import errors, runc as runc_mod
from shim.loop import Future
from shim.process import DELETED, RUNNING

IO_DRAIN_ON_EXEC_DELETE = 2.0   # Go 1.6: an exec's child may keep its stdout
SIGKILL = 9
_pidfd_open = getattr(os, "pidfd_open", None)


async def start(c, p):
    """runc exec of p in container c, p's exit held by the service. Returns
    its pid. On failure p stays created (it may be deleted), is no longer
    held, and its Wait returns."""
    if p.exited.done():         # a failed Start before released Wait
        p.exited = Future()
    io = p.io = c.new_io(p)
    with c.exits.window(p) as w:
        try:
            io.open()
            await io.wait_ready()
            try:
                pid = await c.runc.exec(
                    c.id, c.bundle, p.spec, p.exec_id,
                    stdio=None if p.terminal else io.runc_fds(),
                    console_socket=io.console_path)
            except runc_mod.RuncError as e:
                raise errors.runc_error("OCI runtime exec failed", e)
            w.known(pid)
            if p.held_exit is None and _pidfd_open is not None:
                try:
                    p.pidfd = _pidfd_open(pid)
                except OSError:
                    pass
            if p.terminal:
                await io.receive_console()
            io.start()
            p.to(RUNNING)
            p.spec = None           # runc has it; not needed any more
        except BaseException:
            if w.abandon():
                try:
                    p.signal(SIGKILL)   # runc started it, but we cannot serve it
                except OSError:
                    pass
            p.close_pidfd()
            io.close()
            p.starting = False
            p.exited.set_result(None)
            raise
    return p.pid


async def delete(c, p):
    """Forget p: drain and close its stdio, remove its pid file."""
    del c.execs[p.exec_id]
    if p.io is not None:
        await p.io.wait_copied(IO_DRAIN_ON_EXEC_DELETE)
        p.io.close()
    try:
        os.unlink(os.path.join(c.bundle, "%s.pid" % p.exec_id))
    except OSError:
        pass
    p.to(DELETED)
