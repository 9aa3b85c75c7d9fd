"""Task events to containerd: `containerd.services.events.ttrpc.v1.Events/Forward`
on TTRPC_ADDRESS, one FIFO queue, published strictly in order.

A failed Forward (containerd away or restarting) is retried with the same
event at the head of the queue, so order is never broken and the loop is
never blocked; an event containerd refuses outright is dropped and logged.
"""
import time

from shim import errors, ttrpc_client
from shim.loop import Future, get_loop, sleep
from shim.pb import eventsvc, wkt

SERVICE = "containerd.services.events.ttrpc.v1.Events"
NS_KEY = "containerd-namespace-ttrpc"
FORWARD_TIMEOUT = 5.0
GIVE_UP_AFTER = 300.0   # seconds of failures before an event is dropped


def timestamp(t=None):
    if t is None:
        t = time.time()
    sec = int(t)
    return wkt.Timestamp(seconds=sec, nanos=int((t - sec) * 1e9))


class Publisher:
    def __init__(self, address, namespace, loop=None, log=None):
        self.loop = loop or get_loop()
        self.namespace = namespace
        self.log = log
        self.client = ttrpc_client.Client(address, self.loop, [(NS_KEY, namespace)]) if address else None
        self.queue = []
        self.running = False
        self.idle = None          # Future resolved when the queue drains
        self.sent = 0

    def publish(self, topic, msg):
        """Queue an event (msg: a containerd.events message)."""
        env = eventsvc.Envelope(
            timestamp=timestamp(), namespace=self.namespace, topic=topic,
            event=wkt.Any(type_url=msg.FULL_NAME, value=msg.encode()))
        self.queue.append(env)
        if self.log:
            self.log.debug("event %s %r" % (topic, msg))
        if not self.running and self.client is not None:
            self.running = True
            self.loop.spawn(self._drain())

    async def _drain(self):
        try:
            while self.queue:
                env = self.queue[0]
                await self._forward(env)
                self.queue.pop(0)
        finally:
            self.running = False
            if self.idle is not None:
                self.idle.set_result(None)
                self.idle = None

    async def _forward(self, env):
        req = eventsvc.ForwardRequest(envelope=env)
        started = time.monotonic()
        delay = 0.1
        while True:
            try:
                await self.client.call(SERVICE, "Forward", req, timeout=FORWARD_TIMEOUT)
                self.sent += 1
                return
            except errors.Error as e:
                if e.code not in (errors.UNAVAILABLE, errors.DEADLINE_EXCEEDED, errors.CANCELED):
                    self._warn("event %s dropped: %s" % (env.topic, e))
                    return
                self.client.close()
                if time.monotonic() - started > GIVE_UP_AFTER:
                    self._warn("event %s dropped after %ds: %s"
                               % (env.topic, GIVE_UP_AFTER, e))
                    return
            await sleep(delay)
            delay = min(delay * 2, 2.0)

    def _warn(self, msg):
        if self.log:
            self.log.warning(msg)

    def wait_idle(self):
        """Future resolved once every queued event has been sent (or dropped)."""
        fut = Future()
        if not self.running or not self.queue:
            fut.set_result(None)
        elif self.idle is None:
            self.idle = fut
        else:
            return self.idle
        return fut
