"""The shim's one event loop: epoll (shim._native.Poller), timers, signals,
and plain `async def` coroutines driven without asyncio.

asyncio alone costs ~10 MB RSS and ~50 ms start-up in every shim; this loop
needs nothing but `_heapq`, `time` and the native poller.
"""
import os
import time
from _heapq import heappush, heappop

from shim import _native

_monotonic = time.monotonic


class CancelledError(Exception):
    pass


class Future:
    __slots__ = ("_done", "_result", "_exc", "_callbacks")

    def __init__(self):
        self._done = False
        self._result = None
        self._exc = None
        self._callbacks = None

    def done(self):
        return self._done

    def result(self):
        if not self._done:
            raise RuntimeError("future not done")
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self):
        return self._exc

    def set_result(self, value):
        if self._done:
            return
        self._done = True
        self._result = value
        self._schedule_callbacks()

    def set_exception(self, exc):
        if self._done:
            return
        self._done = True
        self._exc = exc
        self._schedule_callbacks()

    def cancel(self):
        self.set_exception(CancelledError())

    def add_done_callback(self, cb):
        if self._done:
            _loop.call_soon(cb, self)
        elif self._callbacks is None:
            self._callbacks = [cb]
        else:
            self._callbacks.append(cb)

    def _schedule_callbacks(self):
        cbs = self._callbacks
        self._callbacks = None
        if cbs:
            for cb in cbs:
                _loop.call_soon(cb, self)

    def __await__(self):
        if not self._done:
            yield self
        return self.result()


class Task(Future):
    """Runs a coroutine: each `await` of a pending Future suspends it until
    that Future completes."""
    __slots__ = ("_coro",)

    def __init__(self, coro):
        Future.__init__(self)
        self._coro = coro
        _loop.call_soon(self._step, None)

    def _step(self, fut):
        try:
            if fut is None:
                awaited = self._coro.send(None)
            elif fut._exc is not None:
                awaited = self._coro.throw(fut._exc)
            else:
                awaited = self._coro.send(fut._result)
        except StopIteration as e:
            self.set_result(e.value)
            return
        except BaseException as e:  # the task's own failure is its result
            # Nobody awaits this task: report the error instead of losing it.
            if self._callbacks is None and not isinstance(e, CancelledError):
                _loop.report(e, "task %r" % (self._coro,))
            self.set_exception(e)
            return
        awaited.add_done_callback(self._step)


class Handle:
    __slots__ = ("when", "cb", "args", "cancelled")

    def __init__(self, when, cb, args):
        self.when = when
        self.cb = cb
        self.args = args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __lt__(self, other):
        return self.when < other.when


class Loop:
    def __init__(self):
        self.poller = _native.Poller()
        self._ready = []
        self._timers = []
        self._stopping = False
        self._sigfd = -1
        self._signals = {}
        self.on_error = None   # callable(exc, where) for unexpected errors

    # -- scheduling --
    def call_soon(self, cb, *args):
        self._ready.append((cb, args))

    def call_later(self, delay, cb, *args):
        h = Handle(_monotonic() + delay, cb, args)
        heappush(self._timers, h)
        return h

    def spawn(self, coro):
        return Task(coro)

    # -- fds --
    def add_reader(self, fd, cb):
        self.poller.set_handlers(fd, cb, self.poller.handlers(fd)[1])

    def remove_reader(self, fd):
        self.poller.set_handlers(fd, None, self.poller.handlers(fd)[1])

    def add_writer(self, fd, cb):
        self.poller.set_handlers(fd, self.poller.handlers(fd)[0], cb)

    def remove_writer(self, fd):
        self.poller.set_handlers(fd, self.poller.handlers(fd)[0], None)

    def add_copy(self, src, dst, on_done):
        """Copy src -> dst natively; on_done(errno or 0) when src ends."""
        return self.poller.add_copy(src, dst, on_done)

    # -- signals --
    def add_signal(self, signum, cb):
        """Deliver `signum` through a signalfd to cb(signum). The signal is
        blocked process-wide (children get a clean mask from spawn)."""
        self._signals[signum] = cb
        fd = _native.signalfd_open(list(self._signals))
        if self._sigfd >= 0:
            self.remove_reader(self._sigfd)
            os.close(self._sigfd)
        self._sigfd = fd
        self.add_reader(fd, self._on_signal)

    def _on_signal(self):
        for signo in _native.signalfd_read(self._sigfd):
            cb = self._signals.get(signo)
            if cb is not None:
                cb(signo)

    # -- running --
    def report(self, exc, where):
        if self.on_error is not None:
            self.on_error(exc, where)
        else:
            import traceback
            traceback.print_exception(exc)

    def stop(self):
        self._stopping = True

    def run_once(self):
        timers = self._timers
        if self._ready:
            timeout = 0
        elif timers:
            while timers and timers[0].cancelled:
                heappop(timers)
            timeout = -1
            if timers:
                timeout = max(0, int((timers[0].when - _monotonic()) * 1000) + 1)
        else:
            timeout = -1
        for cb, arg in self.poller.poll(timeout):
            try:
                if arg is None:
                    cb()
                else:
                    cb(arg)
            except Exception as e:
                self.report(e, cb)
        now = _monotonic()
        while timers and (timers[0].cancelled or timers[0].when <= now):
            h = heappop(timers)
            if not h.cancelled:
                self._ready.append((h.cb, h.args))
        ready = self._ready
        self._ready = []
        for cb, args in ready:
            try:
                cb(*args)
            except Exception as e:
                self.report(e, cb)

    def run_forever(self):
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def run_until_complete(self, fut, timeout=None):
        if not isinstance(fut, Future):
            fut = Task(fut)
        deadline = None if timeout is None else _monotonic() + timeout
        while not fut.done():
            if deadline is not None:
                if _monotonic() > deadline:
                    raise TimeoutError("run_until_complete timed out")
                self.call_later(max(0.0, deadline - _monotonic()), _noop)
            self.run_once()
        return fut.result()


def _noop():
    pass


_loop = Loop()
_stale = []


def renew():
    """A new loop for a process forked from one that had imported this
    module (the template process) and then closed its fds: the old loop's
    epoll fd is gone (and never closed again: it is kept, unused)."""
    global _loop
    _stale.append(_loop)
    _loop = Loop()


def get_loop():
    return _loop


def sleep(seconds, result=None):
    fut = Future()
    _loop.call_later(seconds, fut.set_result, result)
    return fut


async def wait_for(fut, timeout):
    """Await fut for at most `timeout` seconds (None: forever); on expiry
    raise TimeoutError (fut itself is left running)."""
    if timeout is None:
        return await fut
    if not isinstance(fut, Future):
        fut = Task(fut)
    if fut.done():
        return fut.result()
    waiter = Future()
    h = _loop.call_later(timeout, waiter.set_exception, TimeoutError())
    fut.add_done_callback(lambda f: waiter.set_result(None))
    try:
        await waiter
    finally:
        h.cancel()
    return fut.result()
