"""ttrpc over unix sockets: the concurrent server, and the frame reading and
buffered writing it shares with the clients (shim.ttrpc_client).

Wire format: /work/shared/spec/ttrpc.md (frames in shim.frame, messages in
shim.pb.ttrpc). Every request runs as its own coroutine, so a blocking Wait
never holds up Start/State/Kill on the same connection; responses go out in
completion order.
"""
import os
import _socket
from time import monotonic as _monotonic

from shim import frame as _frame
from shim.loop import Task, get_loop, sleep, wait_for
from shim.pb import ttrpc as _pb
from shim.pb import wkt as _wkt

# The codes and the error type live in shim.errors; re-exported here for the
# transport's own use and its callers.
from shim.errors import (  # noqa: F401
    OK, CANCELED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND,
    ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
    OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, Error as TTRPCError,
    already_exists, failed_precondition, invalid_argument, not_found, unimplemented)

_SO_PEERCRED = 17
READ_SIZE = 1 << 16
# Backpressure per server connection: stop reading requests while more than
# MAX_QUEUED bytes of replies wait to be written (a client that sends and
# never reads), or MAX_INFLIGHT requests are being handled; read again when
# the replies are down to half of it, or a request has finished. Far above
# what containerd needs (one Wait per live process, a few short calls).
MAX_QUEUED = 1 << 20
MAX_INFLIGHT = 1024


class Context:
    """Per-call information handed to handlers."""
    __slots__ = ("metadata", "timeout", "conn")

    def __init__(self, metadata, timeout, conn):
        self.metadata = metadata
        self.timeout = timeout
        self.conn = conn


class Server:
    """Serves registered methods on listening unix sockets.

    register(service, method, request_cls, handler): handler is
    `async def handler(request, ctx) -> message` (anything with .encode()).
    """

    def __init__(self, loop=None, check_peer=True, log=None, long_polls=()):
        self.loop = loop or get_loop()
        self.methods = {}
        # service -> its methods' table, looked up per call (register_service)
        self.services = {}
        self.check_peer = check_peer
        self.log = log
        self.listeners = []
        self.connections = set()
        self.on_connection_closed = None
        # Methods that may wait for ever (Wait: until a process exits); a
        # drain() does not wait for them.
        self.long_polls = frozenset(long_polls)

    def register(self, service, method, request_cls, handler):
        self.methods[(service, method)] = (request_cls, handler)

    def register_service(self, service, table):
        """Every method of `service`: table.get(method) -> (request_cls,
        handler) or None, looked up per call. A table that resolves on
        demand (TaskService.method_table) touches only the handlers called:
        in a shim forked from the template, the pages holding the others
        stay shared (every object touched is a page copied)."""
        self.services[service] = table

    def listen_fd(self, fd):
        sock = _socket.socket(fileno=fd)
        sock.setblocking(False)
        self.listeners.append(sock)
        self.loop.add_reader(sock.fileno(), lambda: self._accept(sock))
        return sock

    def listen(self, path, backlog=128):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        return self.listen_fd(sock.detach())

    def close_listeners(self):
        for sock in self.listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners = []

    def close(self):
        self.close_listeners()
        for conn in list(self.connections):
            conn.close()

    def busy(self):
        """Whether a request (other than a long poll) is being handled, or a
        reply is not written yet, on any connection."""
        for conn in self.connections:
            if conn.stream.size or any(m not in self.long_polls
                                       for m, _task in conn.inflight.values()):
                return True
        return False

    def handling(self, method):
        """Whether a request for `method` is being handled (it may not have
        run its first step yet)."""
        return any(m == method for conn in self.connections
                   for m, _task in conn.inflight.values())

    async def drain(self, timeout, interval=0.02):
        """Wait until not busy() (at most `timeout` seconds; False if it
        still is): like Go's Server.Shutdown, a shim that exits lets the
        requests it is handling finish and their replies go out first. Call
        close_listeners() before; connections keep being served meanwhile."""
        deadline = _monotonic() + timeout
        while self.busy():
            if _monotonic() >= deadline:
                return False
            await sleep(interval)
        return True

    def _accept(self, sock):
        while True:
            try:
                fd, _addr = sock._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if self.log:
                    self.log.warning("accept failed: %s" % e)
                return
            if self.check_peer and not _peer_is_us(fd):
                # Like the Go servers: drop the connection, no error frame.
                os.close(fd)
                continue
            self.connections.add(ServerConnection(self, fd))


def _peer_is_us(fd):
    s = _socket.socket(fileno=fd)
    try:
        cred = s.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, 12)
    except OSError:
        return False
    finally:
        s.detach()
    uid = int.from_bytes(cred[4:8], "little")
    gid = int.from_bytes(cred[8:12], "little")
    return uid == os.geteuid() and gid == os.getegid()


def read_frames(fd, reader):
    """Read what a non-blocking socket has and return the complete frames
    (possibly none); None when the peer is gone or the stream is unusable.
    A peer that closes in the middle of a frame is simply gone: the half
    frame is dropped, as the Go server does."""
    try:
        data = os.read(fd, READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return []
    except OSError:
        return None
    if not data:
        return None
    try:
        return reader.feed(data)
    except _frame.FrameError:
        return None


class Stream:
    """Buffered non-blocking writer for one socket; frames are written whole
    and in order. `size` is the number of bytes queued but not yet written;
    on_written() (if set) runs each time the socket took queued bytes."""
    __slots__ = ("loop", "fd", "out", "size", "closed", "on_error", "on_written")

    def __init__(self, loop, fd, on_error):
        self.loop = loop
        self.fd = fd
        self.out = []
        self.size = 0
        self.closed = False
        self.on_error = on_error
        self.on_written = None

    def write(self, data):
        if self.closed:
            return
        if self.out:
            self.out.append(data)
            self.size += len(data)
            return
        try:
            n = os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.on_error()
            return
        if n < len(data):
            self.out.append(memoryview(data)[n:])
            self.size += len(data) - n
            self.loop.add_writer(self.fd, self._flush)

    def _flush(self):
        out = self.out
        i = 0
        try:
            while i < len(out):
                data = out[i]
                try:
                    n = os.write(self.fd, data)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.on_error()
                    return
                self.size -= n
                if n < len(data):
                    out[i] = memoryview(data)[n:]
                    return
                i += 1
            self.loop.remove_writer(self.fd)
        finally:
            if i:
                del out[:i]     # at once: pop(0) per frame is quadratic
            if self.on_written is not None and not self.closed:
                self.on_written()


class ServerConnection:
    def __init__(self, server, fd):
        self.server = server
        self.loop = server.loop
        self.fd = fd
        os.set_blocking(fd, False)
        self.reader = _frame.FrameReader()
        self.stream = Stream(self.loop, fd, self.close)
        self.stream.on_written = self._resume
        self.inflight = {}          # stream id -> (method, Task), while handled
        self.backlog = None         # frames read but not handled yet (paused)
        self.paused = False
        self.closed = False
        self.loop.add_reader(fd, self._on_readable)

    def _on_readable(self):
        frames = read_frames(self.fd, self.reader)
        if frames is None:
            self.close()
            return
        self._handle(frames)

    def _full(self):
        return len(self.inflight) >= MAX_INFLIGHT or self.stream.size > MAX_QUEUED

    def _handle(self, frames):
        """Handle frames in order; if the connection is full, keep the rest
        and stop reading until _resume()."""
        for i in range(len(frames)):
            if self.closed:
                return
            if self._full():
                self.backlog = frames[i:]
                self._pause()
                return
            self._on_frame(frames[i])
        if self._full():
            self._pause()

    def _pause(self):
        if not self.paused and not self.closed:
            self.paused = True
            self.loop.remove_reader(self.fd)

    def _resume(self):
        """A reply was written or a request finished: read again once
        there is room (replies below half the bound)."""
        if not self.paused or self.closed or len(self.inflight) >= MAX_INFLIGHT \
                or self.stream.size > MAX_QUEUED // 2:
            return
        self.paused = False
        self.loop.add_reader(self.fd, self._on_readable)
        frames, self.backlog = self.backlog, None
        if frames:
            self._handle(frames)

    def _on_frame(self, fr):
        stream_id, mtype, data = fr[0], fr[1], fr[3]
        if mtype != _frame.TYPE_REQUEST:
            return      # responses/data from a client: ignored (ttrpc 1.1)
        if data is None:
            self._reply_error(stream_id, RESOURCE_EXHAUSTED,
                              "message length %d exceed maximum message size of %d"
                              % (fr[4], _frame.MAX_DATA))
            return
        if stream_id % 2 == 0:
            self._reply_error(stream_id, INVALID_ARGUMENT,
                              "StreamID must be odd for client initiated streams")
            return
        try:
            req = _pb.Request.decode(data)
        except ValueError as e:
            self._reply_error(stream_id, INVALID_ARGUMENT, "unmarshal request error: %s" % e)
            return
        entry = self.server.methods.get((req.service, req.method))
        if entry is None:
            table = self.server.services.get(req.service)
            if table is not None:
                entry = table.get(req.method)
        if entry is None:
            if req.service in self.server.services or \
                    any(s == req.service for s, _m in self.server.methods):
                self._reply_error(stream_id, UNIMPLEMENTED, "method %s" % req.method)
            else:
                self._reply_error(stream_id, UNIMPLEMENTED, "service %s" % req.service)
            return
        request_cls, handler = entry
        try:
            msg = request_cls.decode(req.payload)
        except ValueError as e:
            self._reply_error(stream_id, INTERNAL, "ttrpc: error unmarshalling payload: %s" % e)
            return
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        ctx = Context(req.metadata, timeout, self)
        task = Task(self._run(stream_id, handler, msg, ctx))
        self.inflight[stream_id] = (req.method, task)

    async def _run(self, stream_id, handler, msg, ctx):
        try:
            if ctx.timeout is None:
                resp = await handler(msg, ctx)
            else:
                resp = await wait_for(Task(handler(msg, ctx)), ctx.timeout)
        except TTRPCError as e:
            self._reply_error(stream_id, e.code, e.message)
        except TimeoutError:
            self._reply_error(stream_id, DEADLINE_EXCEEDED, "context deadline exceeded")
        except Exception as e:
            self.loop.report(e, "handler %r" % (handler,))
            self._reply_error(stream_id, UNKNOWN, str(e) or e.__class__.__name__)
        else:
            payload = resp.encode() if resp is not None else b""
            self._send(stream_id, _pb.Response(payload=payload).encode())
        finally:
            self.inflight.pop(stream_id, None)
            self._resume()

    def _reply_error(self, stream_id, code, message):
        st = _wkt.Status(code=code, message=message)
        self._send(stream_id, _pb.Response(status=st).encode())

    def _send(self, stream_id, data):
        if self.closed:
            return
        if len(data) > _frame.MAX_DATA:
            st = _wkt.Status(code=RESOURCE_EXHAUSTED,
                             message="response too large: %d bytes" % len(data))
            data = _pb.Response(status=st).encode()
        self.stream.write(_frame.encode_frame(stream_id, _frame.TYPE_RESPONSE, 0, data))
        if self.stream.size > MAX_QUEUED:
            self._pause()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.stream.closed = True
        self.loop.remove_reader(self.fd)
        if self.stream.out:
            self.loop.remove_writer(self.fd)
        self.stream.out = []
        self.stream.size = 0
        self.backlog = None
        os.close(self.fd)
        self.server.connections.discard(self)
        if self.server.on_connection_closed is not None:
            self.server.on_connection_closed(self)
