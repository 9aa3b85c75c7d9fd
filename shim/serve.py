"""Serve mode: the long-lived shim process containerd talks to."""
import os

from shim import ttrpc
from shim.bundle import read_socket_path
from shim.events import Publisher
from shim.io import stop_loggers
from shim.log import log
from shim.loop import get_loop, wait_for
from shim.reaper import Reaper
from shim.task import TaskService

SIGINT = 2
SIGUSR1 = 10
SIGTERM = 15
TASK_SERVICES = ("containerd.task.v2.Task", "containerd.task.v3.Task")
DRAIN_TIMEOUT = 10.0        # seconds an exiting shim waits for requests in flight
# A shim that has created no task this long after it started serving exits:
# containerd died between `start` and Create (or with a Create in flight that
# then failed), and nobody else would ever stop it. <= 0 turns it off.
IDLE_EXIT_ENV = "PYSHIM_IDLE_EXIT_SECONDS"
IDLE_EXIT_SECONDS = 30.0


def _idle_exit_seconds():
    value = os.environ.get(IDLE_EXIT_ENV, "")
    if not value:
        return IDLE_EXIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is None or seconds != seconds or seconds > 1e9:     # nan, inf
        log.warning("%s=%r is not a number of seconds: using %g"
                    % (IDLE_EXIT_ENV, value, IDLE_EXIT_SECONDS))
        return IDLE_EXIT_SECONDS
    return seconds


def serve(flags, listen_fd):
    bundle = os.getcwd()
    log.configure(bundle, flags.debug)
    loop = get_loop()
    loop.on_error = lambda exc, where: log.error("unexpected error in %s: %r" % (where, exc))
    socket_path = flags.socket or read_socket_path(bundle)

    reaper = Reaper(loop)
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), flags.namespace, loop, log)
    server = ttrpc.Server(loop, log=log, long_polls=("Wait",))
    stopping = []

    def shutdown():
        if stopping:
            return
        stopping.append(True)
        service.closing = True
        server.close_listeners()
        if socket_path:
            try:
                os.unlink(socket_path)
            except OSError:
                pass

        async def finish():
            # Requests still in flight (a Kill waiting for runc, the
            # Shutdown itself) get their replies first, as from Go's ttrpc
            # server; a Wait of a process that still runs is not waited for.
            if not await server.drain(DRAIN_TIMEOUT):
                log.warning("exiting with requests still in flight")
            # Flush queued events (bounded, like Go), then leave.
            try:
                await wait_for(publisher.wait_idle(), 5.0)
            except TimeoutError:
                log.warning("exiting with %d unsent events" % len(publisher.queue))
            # Connections closed first: containerd is not kept waiting
            # while binary loggers finish.
            server.close()
            await stop_loggers()
            loop.stop()
        loop.spawn(finish())

    service = TaskService(flags.namespace, reaper, publisher, log, shutdown)
    for name in TASK_SERVICES:
        server.register_service(name, service.method_table())
    server.listen_fd(listen_fd)

    idle = _idle_exit_seconds()

    def exit_if_unused():
        # A Create that failed made no task (containerd died with it in
        # flight, and ctr removed its FIFOs): nobody will ask for this shim.
        if service.created:
            return                  # it served a task: only Shutdown ends it
        if server.handling("Create"):     # still running: judge it later
            loop.call_later(idle, exit_if_unused)
            return
        log.warning("no task created within %gs of starting: exiting" % idle)
        shutdown()
    if idle > 0:
        loop.call_later(idle, exit_if_unused)

    def on_term(signo):
        log.info("shim received signal %d, shutting down" % signo)
        shutdown()
    loop.add_signal(SIGTERM, on_term)
    loop.add_signal(SIGINT, on_term)

    def on_usr1(signo):
        from shim.diag import dump_state        # only when asked: no start-up cost
        dump_state(service, server, publisher, log)
    loop.add_signal(SIGUSR1, on_usr1)
    log.debug("serving %s on %s" % (flags.id, socket_path))
    loop.run_forever()
    os._exit(0)
