"""ttrpc clients over unix sockets: `Client`, async on the shim's loop
(events to containerd), and `SyncClient`, blocking (tests, benchmarks).

Frames are read and written with the server's helpers (shim.ttrpc).
"""
import os
import _socket

from shim import frame as _frame
from shim.errors import DEADLINE_EXCEEDED, OK, UNAVAILABLE, Error as TTRPCError
from shim.loop import Future, get_loop, wait_for
from shim.pb import ttrpc as _pb
from shim.ttrpc import READ_SIZE, Stream, read_frames


def _unix_path(address):
    if address.startswith("unix://"):
        address = address[len("unix://"):]
    return address


class Client:
    """Async ttrpc client on the shim's loop. Calls fail with TTRPCError
    (UNAVAILABLE) if the connection drops; the next call reconnects."""

    def __init__(self, address, loop=None, metadata=None):
        self.path = _unix_path(address)
        self.loop = loop or get_loop()
        self.metadata = metadata or []
        self.fd = -1
        self.next_id = 1
        self.pending = {}
        self.reader = None
        self.stream = None

    def _connect(self):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise TTRPCError(UNAVAILABLE, "connect %s: %s" % (self.path, e))
        self.fd = sock.detach()
        os.set_blocking(self.fd, False)
        self.reader = _frame.FrameReader()
        self.stream = Stream(self.loop, self.fd, self.close)
        self.loop.add_reader(self.fd, self._on_readable)

    async def call(self, service, method, request, response_cls=None, timeout=None):
        if self.fd < 0:
            self._connect()
        sid = self.next_id
        self.next_id += 2
        md = [_pb.KeyValue(key=k, value=v) for k, v in self.metadata]
        req = _pb.Request(service=service, method=method, payload=request.encode(),
                          timeout_nano=int(timeout * 1e9) if timeout else 0, metadata=md)
        fut = Future()
        self.pending[sid] = fut
        self.stream.write(_frame.encode_frame(sid, _frame.TYPE_REQUEST, 0, req.encode()))
        try:
            data = await (fut if timeout is None else wait_for(fut, timeout))
        except TimeoutError:
            raise TTRPCError(DEADLINE_EXCEEDED, "context deadline exceeded")
        finally:
            self.pending.pop(sid, None)
        resp = _pb.Response.decode(data)
        if resp.status is not None and resp.status.code != OK:
            raise TTRPCError(resp.status.code, resp.status.message)
        if response_cls is None:
            return resp.payload
        return response_cls.decode(resp.payload)

    def _on_readable(self):
        frames = read_frames(self.fd, self.reader)
        if frames is None:
            self.close()
            return
        for fr in frames:
            fut = self.pending.get(fr[0])
            if fut is not None and fr[1] == _frame.TYPE_RESPONSE and fr[3] is not None:
                fut.set_result(fr[3])

    def close(self):
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            if self.stream.out:
                self.loop.remove_writer(self.fd)
            self.stream.closed = True
            os.close(self.fd)
            self.fd = -1
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            fut.set_exception(TTRPCError(UNAVAILABLE, "ttrpc: closed"))


class SyncClient:
    """Blocking client for tests, benchmarks and short-lived commands."""

    def __init__(self, address, timeout=10.0):
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(_unix_path(address))
        self.reader = _frame.FrameReader()
        self.next_id = 1
        self.frames = {}

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv_frame(self, stream_id=None):
        """Next frame (for stream_id if given) as the reader's tuple."""
        while True:
            if stream_id is None and self.frames:
                return self.frames.pop(next(iter(self.frames)))
            if stream_id in self.frames:
                return self.frames.pop(stream_id)
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise TTRPCError(UNAVAILABLE, "ttrpc: closed")
            for fr in self.reader.feed(data):
                self.frames[fr[0]] = fr

    def send_raw_request(self, service, method, payload, timeout_nano=0, metadata=()):
        """Send a request without waiting; returns its stream id."""
        sid = self.next_id
        self.next_id += 2
        req = _pb.Request(service=service, method=method, payload=payload,
                          timeout_nano=timeout_nano,
                          metadata=[_pb.KeyValue(key=k, value=v) for k, v in metadata])
        self.sock.sendall(_frame.encode_frame(sid, _frame.TYPE_REQUEST, 0, req.encode()))
        return sid

    def recv_response(self, stream_id):
        return _pb.Response.decode(self.recv_frame(stream_id)[3])

    def call_raw(self, service, method, payload, timeout_nano=0, metadata=()):
        sid = self.send_raw_request(service, method, payload, timeout_nano, metadata)
        return self.recv_response(sid)

    def call(self, service, method, request, response_cls=None, timeout_nano=0, metadata=()):
        resp = self.call_raw(service, method, request.encode(), timeout_nano, metadata)
        if resp.status is not None and resp.status.code != OK:
            raise TTRPCError(resp.status.code, resp.status.message)
        return resp.payload if response_cls is None else response_cls.decode(resp.payload)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
