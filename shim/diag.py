"""SIGUSR1: write the shim's state to its log, for diagnosing a stuck shim on
a node without a debugger (as containerd and its Go shims dump their
goroutine stacks on SIGUSR1).

    kill -USR1 <shim pid>     # then read containerd's log (the bundle `log` FIFO)

One `level=info` line per item, each prefixed "state:": every container with
its init and exec processes (pid, state, exit), the requests in flight per
connection, queued events, open fds and memory.
"""
import os

from shim.process import STATE_NAMES, STOPPED


def state_lines(service, server, publisher):
    yield "pid=%d containers=%d shutdown_asked=%s" % (
        os.getpid(), len(service.containers), service.shutdown_asked)
    for c in service.containers.values():
        init = c.init
        if init is None:
            yield "container %s: being created" % c.id
            continue
        yield "container %s bundle=%s init pid=%d %s%s%s" % (
            c.id, c.bundle, init.pid, STATE_NAMES.get(init.status, init.status),
            " reaped" if init.reaped and init.status != STOPPED else "",
            " exit=%d" % init.exit_status if init.exited_at is not None else "")
        for p in c.execs.values():
            yield "container %s exec %s pid=%d %s%s%s" % (
                c.id, p.exec_id, p.pid, STATE_NAMES.get(p.status, p.status),
                " starting" if p.starting else "",
                " exit=%d" % p.exit_status if p.exited_at is not None else "")
    conns = list(server.connections)
    yield "connections=%d requests_in_flight=%d" % (
        len(conns), sum(len(conn.inflight) for conn in conns))
    for conn in conns:
        if conn.inflight or conn.stream.out:
            yield "connection fd=%d in_flight=%d unsent_frames=%d" % (
                conn.fd, len(conn.inflight), len(conn.stream.out))
    yield "events_queued=%d events_sent=%d" % (len(publisher.queue), publisher.sent)
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    yield "open_fds=%d %s" % (fds, _memory())


def _memory():
    """VmRSS, RssAnon, VmHWM and Threads from /proc/self/status, as k=v pairs."""
    out = []
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "VmHWM", "Threads"):
                    out.append("%s=%s" % (key, value.strip().replace(" ", "")))
    except OSError:
        pass
    return " ".join(out)


def dump_state(service, server, publisher, log):
    for line in state_lines(service, server, publisher):
        log.info("state: " + line)
