"""The ttrpc server's flow control and graceful drain, in process: a server
on the shim's loop and plain blocking sockets as clients (in a thread where
they would block the loop)."""
import socket
import threading
import time

import pytest

from shim import frame, ttrpc
from shim.loop import Future, get_loop, sleep
from shim.pb import task as pb
from shim.pb import ttrpc as pb_ttrpc

loop = get_loop()
SVC = "test.Svc"


def run_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        loop.call_later(0.01, lambda: None)
        loop.run_once()
    return True


def request(sid, method, id="c1"):
    req = pb_ttrpc.Request(service=SVC, method=method,
                           payload=pb.StateRequest(id=id).encode())
    return frame.encode_frame(sid, frame.TYPE_REQUEST, 0, req.encode())


class Replies:
    """Reads frames off a socket in a thread: {stream id: Response}."""

    def __init__(self, sock):
        self.sock = sock
        self.got = {}
        self.eof = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        r = frame.FrameReader()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            for fr in r.feed(data):
                self.got[fr[0]] = pb_ttrpc.Response.decode(fr[3])


@pytest.fixture
def server(tmp_path):
    """(server, address, gates): handlers `Gate` (waits for gates[id], a
    Future) and `State` (answers at once with a ~1 KiB bundle), `Wait` (a
    long poll, like Gate)."""
    srv = ttrpc.Server(loop, long_polls=("Wait",))
    gates = {}

    async def gate(req, ctx):
        fut = gates.setdefault(req.id, Future())
        await fut
        return pb.StateResponse(id=req.id)

    async def state(req, ctx):
        return pb.StateResponse(id=req.id, bundle="b" * 1024)

    srv.register(SVC, "Gate", pb.StateRequest, gate)
    srv.register(SVC, "Wait", pb.StateRequest, gate)
    srv.register(SVC, "State", pb.StateRequest, state)
    path = str(tmp_path / "s")
    srv.listen(path)
    yield srv, path, gates
    for fut in gates.values():
        fut.set_result(None)
    srv.close()


def connect(srv, path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    n = len(srv.connections)
    assert run_until(lambda: len(srv.connections) == n + 1)     # accepted
    return s


def conn_of(srv):
    assert len(srv.connections) == 1
    return next(iter(srv.connections))


def test_inflight_requests_are_bounded_per_connection(server, monkeypatch):
    srv, path, gates = server
    monkeypatch.setattr(ttrpc, "MAX_INFLIGHT", 8)
    s = connect(srv, path)
    replies = Replies(s)
    n = 50
    s.sendall(b"".join(request(2 * i + 1, "Gate", id="g%d" % i) for i in range(n)))
    conn = conn_of(srv)
    assert run_until(lambda: len(conn.inflight) == 8 and conn.paused)
    loop.run_until_complete(sleep(0.1))
    assert len(conn.inflight) == 8             # no more taken while full
    # Releasing them lets the rest in, in order, never more than 8 at once.
    for i in range(n):
        gates.setdefault("g%d" % i, Future()).set_result(None)
        run_until(lambda i=i: len(replies.got) > i, 5)
        assert len(conn.inflight) <= 8
    assert run_until(lambda: len(replies.got) == n)
    assert not conn.paused and conn.backlog is None
    assert all(r.status is None for r in replies.got.values())
    s.close()


def test_unread_replies_stop_reading_until_they_drain(server, monkeypatch):
    srv, path, _ = server
    monkeypatch.setattr(ttrpc, "MAX_QUEUED", 64 << 10)
    s = connect(srv, path)
    n = 4000        # ~1 MiB of requests (more than the socket holds), ~5 MiB of replies
    data = b"".join(request(2 * i + 1, "State", id="x" * 250) for i in range(n))
    sent = []
    t = threading.Thread(target=lambda: sent.append(s.sendall(data)), daemon=True)
    t.start()
    conn = conn_of(srv)
    peak = [0]

    def stalled():
        peak[0] = max(peak[0], conn.stream.size)
        return conn.paused
    assert run_until(stalled, 10)
    for _ in range(50):                        # nothing more is taken in
        loop.call_later(0.01, lambda: None)
        loop.run_once()
        peak[0] = max(peak[0], conn.stream.size)
    assert conn.paused and t.is_alive()        # the sender is blocked
    # At most one read's worth of replies (64 KiB of requests) beyond the bound.
    assert peak[0] < (64 << 10) + 250 * 1400, peak[0]
    replies = Replies(s)
    assert run_until(lambda: len(replies.got) == n, 30), len(replies.got)
    t.join(5)
    assert sent == [None]
    assert sorted(replies.got) == [2 * i + 1 for i in range(n)]
    assert all(pb.StateResponse.decode(r.payload).bundle == "b" * 1024
               for r in replies.got.values())
    assert not conn.paused and conn.stream.size == 0
    s.close()


def test_peer_gone_while_paused_closes_the_connection(server, monkeypatch):
    srv, path, _ = server
    monkeypatch.setattr(ttrpc, "MAX_QUEUED", 64 << 10)
    s = connect(srv, path)
    s.setblocking(False)
    data = b"".join(request(2 * i + 1, "State", id="x" * 250) for i in range(4000))
    sent = 0
    conn = conn_of(srv)
    while not conn.paused:
        try:
            sent += s.send(data[sent:sent + 65536])
        except BlockingIOError:
            pass
        loop.call_later(0.005, lambda: None)
        loop.run_once()
    s.close()
    assert run_until(lambda: conn.closed, 10)
    assert srv.connections == set()


def test_drain_waits_for_requests_but_not_long_polls(server):
    srv, path, gates = server
    s = connect(srv, path)
    replies = Replies(s)
    s.sendall(request(1, "Gate", id="slow") + request(3, "Wait", id="forever"))
    assert run_until(lambda: len(conn_of(srv).inflight) == 2)
    assert srv.busy()
    srv.close_listeners()
    drained = loop.spawn(srv.drain(10))
    loop.call_later(0.3, lambda: gates.setdefault("slow", Future()).set_result(None))
    t0 = time.monotonic()
    assert loop.run_until_complete(drained, timeout=10) is True
    assert time.monotonic() - t0 >= 0.25
    assert run_until(lambda: 1 in replies.got)  # the reply was written, not dropped
    assert not srv.busy()                       # the Wait is still in flight
    srv.close()
    assert run_until(lambda: replies.eof)
    assert 3 not in replies.got


def test_drain_gives_up_after_its_timeout(server):
    srv, path, _ = server
    s = connect(srv, path)
    s.sendall(request(1, "Gate", id="never"))
    assert run_until(lambda: srv.busy())
    t0 = time.monotonic()
    assert loop.run_until_complete(loop.spawn(srv.drain(0.3)), timeout=10) is False
    assert 0.25 <= time.monotonic() - t0 < 5
    s.close()


def test_service_table_looked_up_per_call(tmp_path):
    """register_service keeps the table and asks it per call, for the
    method called only (TaskService.method_table resolves on demand: a
    shim forked from the template touches no handler it never runs)."""
    srv = ttrpc.Server(loop)
    asked = []

    async def state(req, ctx):
        return pb.StateResponse(id=req.id)

    class Table:
        def get(self, name):
            asked.append(name)
            return (pb.StateRequest, state) if name == "State" else None
    srv.register_service(SVC, Table())
    path = str(tmp_path / "s")
    srv.listen(path)
    s = connect(srv, path)
    replies = Replies(s)
    other = pb_ttrpc.Request(service="other.Svc", method="State",
                             payload=pb.StateRequest(id="x").encode())
    s.sendall(request(1, "State") + request(3, "Nope") +
              frame.encode_frame(5, frame.TYPE_REQUEST, 0, other.encode()))
    assert run_until(lambda: len(replies.got) == 3)
    assert replies.got[1].status is None
    assert replies.got[3].status.message == "method Nope"
    assert replies.got[5].status.message == "service other.Svc"
    assert asked == ["State", "Nope"]
    s.close()
    srv.close()


def test_handling_names_the_methods_in_flight(server):
    """serve's idle exit asks whether a Create is being handled."""
    srv, path, gates = server
    s = connect(srv, path)
    replies = Replies(s)
    assert not srv.handling("Gate")
    s.sendall(request(1, "Gate", id="h"))
    assert run_until(lambda: srv.handling("Gate"))
    assert not srv.handling("State")
    gates.setdefault("h", Future()).set_result(None)
    assert run_until(lambda: 1 in replies.got)
    assert not srv.handling("Gate")
    s.close()
