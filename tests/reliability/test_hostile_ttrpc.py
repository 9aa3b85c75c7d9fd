"""Hostile ttrpc input to a live shim serving a running container, class by
class; after EACH class the container still runs, State is still answered
on a new connection, and the shim's fds are counted: a cell's "fds +N" is
what that class left open (the Go shim keeps the connection of some bad
input open until the peer's close is noticed, or for good: recorded, not
judged; pyshim must end where it began).

Single malformed requests and their exact replies are in
tests/integration/test_ttrpc_wire.py; the 100k unread-request flood and its
memory bound in tests/integration/test_reliability.py. This is the same
kind of input in volume, against one shim, class after class."""
import random
import socket
import time

from shim import frame, ttrpc, ttrpc_client
from shim.pb import task as pb
from shim.pb import ttrpc as pb_ttrpc
from shim.pb import wkt
from support import reltable
from support.containerd import pid_alive
from support.shimwire import (PROCESS_SPEC_URL, fd_count, memory_kib, raw, read_frame,
                              send_until_stalled,
                              request_frame, shim_pid, state, status_of)

CONNS = 40              # connections per class where each carries one bad input
IDLE = 300              # connections held open at once
FLOOD = 20000           # State requests sent without reading the replies
SEED = 20261206

# Requests whose garbage payload might decode to something that acts on the
# shim (a Shutdown with now=true) are left out of the garbage-payload class.
SKIP_GARBAGE = ("Shutdown",)
METHODS = ("State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint",
           "Kill", "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect")


def close_hard(s):
    try:
        s.close()
    except OSError:
        pass


def random_bytes(address, svc, rng):
    for _ in range(CONNS):
        with raw(address) as s:
            s.sendall(rng.randbytes(rng.randrange(1, 8192)))


def huge_lengths(address, svc, rng):
    for i in range(CONNS):
        length = rng.choice((frame.MAX_DATA + 1, 1 << 24, 1 << 31, 0xFFFFFFFF))
        with raw(address) as s:
            s.sendall(length.to_bytes(4, "big") + (2 * i + 1).to_bytes(4, "big") + b"\x01\x00"
                      + rng.randbytes(rng.randrange(0, 4096)))
            if i % 2:
                s.shutdown(socket.SHUT_WR)


def truncated_frames(address, svc, rng):
    good = request_frame(1, svc, "State", pb.StateRequest(id="x" * 50))
    for i in range(CONNS):
        with raw(address) as s:
            s.sendall(good[:rng.randrange(1, len(good))])
            if i % 2:
                s.shutdown(socket.SHUT_WR)


def wrong_types(address, svc, rng):
    """Frames of every type but request, with the flags that matter
    (remote-closed, no-data, all), carrying a valid request; then a good
    request on the same connection (answered if the shim kept it). A data
    frame with FLAG_NO_DATA on a stream nobody opened makes the Go shim of
    containerd 2.x panic (ttrpc 1.2: "interface conversion: interface {}
    is nil, not *ttrpc.streamHandler")."""
    req = pb_ttrpc.Request(service=svc, method="State",
                           payload=pb.StateRequest(id="nope").encode()).encode()
    combos = [(t, f) for t in (0, 2, 3, 4, 0x7f, 0xff)
              for f in (0, frame.FLAG_REMOTE_CLOSED, frame.FLAG_NO_DATA, 0xff)]
    answered = 0
    for i, (t, f) in enumerate(combos):
        with raw(address) as s:
            s.sendall(frame.encode_frame(2 * i + 1, t, f, req))
            s.sendall(request_frame(2 * i + 3, svc, "Connect", pb.ConnectRequest()))
            fr = read_frame(s)
            answered += fr is not None and fr[0] == 2 * i + 3
    return "%d/%d connections answered after" % (answered, len(combos))


def garbage_payloads(address, svc, rng):
    """Valid envelopes naming real methods, random payloads: one reply each."""
    methods = [m for m in METHODS if m not in SKIP_GARBAGE]
    n = CONNS * 5
    replies = 0
    with raw(address, timeout=30) as s:
        reader = frame.FrameReader()
        for i in range(n):
            m = methods[i % len(methods)]
            s.sendall(request_frame(2 * i + 1, svc, m, rng.randbytes(rng.randrange(0, 200))))
        deadline = time.monotonic() + 30
        while replies < n and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for _fr in reader.feed(data):
                replies += 1
    return "%d/%d replies" % (replies, n)


def unknown_methods(address, svc, rng):
    n = CONNS * 2
    codes = {}
    with raw(address) as s:
        for i in range(n):
            service = svc if i % 2 else "x.%d.Nope" % rng.randrange(1 << 30)
            method = "M%x" % rng.randrange(1 << 60)
            s.sendall(request_frame(2 * i + 1, service, method, b""))
            code, _ = status_of(read_frame(s))
            codes[code] = codes.get(code, 0) + 1
    assert codes == {12: n}, codes        # Unimplemented, always
    return "%d/%d Unimplemented" % (codes.get(12, 0), n)


BAD_SPECS = (b'{"args": ["true"]', b"[1", b'"x"', b"[" * 100000, b"\xff\xfe", b"")


def malformed_specs(address, svc, rng, cid=None):
    """Exec requests whose process spec is not a JSON object: each refused,
    no exec left behind. pyshim's answer text is recorded: where jsonlite
    fails with something else than ValueError (test_fuzz_decoders.py's
    xfails) the client sees that internal error's text."""
    odd = 0
    refused = 0
    with ttrpc_client.SyncClient(address, timeout=30) as cl:
        for i, doc in enumerate(BAD_SPECS):
            spec = wkt.Any(type_url=PROCESS_SPEC_URL, value=doc)
            try:
                cl.call(svc, "Exec", pb.ExecProcessRequest(id=cid, exec_id="bad%d" % i,
                                                           spec=spec))
            except ttrpc.TTRPCError as e:
                refused += 1
                odd += "returned NULL" in e.message or "recursion" in e.message
            else:           # accepted: do not leave it behind
                cl.call(svc, "Delete", pb.DeleteRequest(id=cid, exec_id="bad%d" % i))
    return "%d/%d refused, %d with an internal error's text" % (refused, len(BAD_SPECS), odd)


def idle_connections(address, svc, rng):
    """IDLE connections held open at once; meanwhile State is answered."""
    held = []
    try:
        for _ in range(IDLE):
            held.append(raw(address))
        t0 = time.monotonic()
        with raw(address) as s:
            s.sendall(request_frame(1, svc, "Connect", pb.ConnectRequest()))
            ok = read_frame(s) is not None
        return "answered in %.2fs with %d idle" % (time.monotonic() - t0, IDLE) if ok \
            else "not answered with %d idle" % IDLE
    finally:
        for s in held:
            close_hard(s)


def flood_without_reads(address, svc, rng, pid=None):
    """FLOOD State requests, replies never read, then close; RSS growth."""
    req = pb_ttrpc.Request(service=svc, method="State",
                           payload=pb.StateRequest(id="nope").encode()).encode()
    data = b"".join(frame.encode_frame(2 * i + 1, frame.TYPE_REQUEST, 0, req)
                    for i in range(FLOOD))
    base = memory_kib(pid)["Rss"]
    peak = base
    s = raw(address)
    s.setblocking(False)

    def sample():
        nonlocal peak
        peak = max(peak, memory_kib(pid)["Rss"])
    sent = send_until_stalled(s, data, time.monotonic() + 60, sample)
    s.close()
    time.sleep(0.5)
    after = memory_kib(pid)["Rss"]
    return "%d%% taken, RSS %+.1f MiB peak, %+.1f after close" % (
        100 * sent // len(data), (peak - base) / 1024, (after - base) / 1024)


CLASSES = [
    ("random bytes", random_bytes),
    ("huge declared lengths", huge_lengths),
    ("truncated frames", truncated_frames),
    ("wrong message types", wrong_types),
    ("garbage payloads", garbage_payloads),
    ("unknown methods/services", unknown_methods),
    ("malformed process specs (Exec)", malformed_specs),
    ("%d idle connections" % IDLE, idle_connections),
    ("flood of %d requests without reads" % FLOOD, flood_without_reads),
]


def settled_fds(pid, base, timeout=3.0):
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while n > base and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fd_count(pid)
    return n


def test_hostile_input_class_by_class(containerd, live, runtime):
    cid, address, svc = live
    rt = reltable.runtime_key(runtime)
    rng = random.Random(SEED)
    with ttrpc_client.SyncClient(address) as cl:
        pid = shim_pid(cl, svc, cid)
        task_pid = state(cl, svc, cid).pid
    base_fds = fd_count(pid)
    failures = []
    gone = None
    for name, attack in CLASSES:
        check = "hostile ttrpc: %s -> container runs, State answered" % name
        if gone:
            reltable.record(check, rt, "not run (shim died at %s)" % gone)
            continue
        before_fds = fd_count(pid)
        extra = {"pid": pid} if attack is flood_without_reads else \
            {"cid": cid} if attack is malformed_specs else {}
        try:
            note = attack(address, svc, rng, **extra)
        except (OSError, AssertionError, ttrpc.TTRPCError) as e:
            note = "client saw %s" % (type(e).__name__,)
            failures.append((name, repr(e)))
        ok = pid_alive(pid) and pid_alive(task_pid)
        if ok:
            try:
                with ttrpc_client.SyncClient(address, timeout=10) as cl:
                    st = state(cl, svc, cid)
                ok = st.status == 2 and st.pid == task_pid
            except (OSError, ttrpc.TTRPCError) as e:
                ok = False
                note = (note or "") + "; State: %r" % e
        if not pid_alive(pid):
            gone = name
            reltable.record(check, rt, "SHIM DIED (%s)" % note)
            failures.append((name, "shim died: %s" % note))
            continue
        fds = settled_fds(pid, before_fds)
        cell = "ok" if ok else "FAILED"
        if fds != before_fds:
            cell += ", fds %+d" % (fds - before_fds)
        if note:
            cell += " (%s)" % note
        reltable.record(check, rt, cell)
        if not ok:
            failures.append((name, "container or State lost: %s" % note))
        if rt == "py" and fds > base_fds:
            failures.append((name, "shim fds %d -> %d" % (base_fds, fds)))
    reltable.record("hostile ttrpc: shim fds before -> after all classes", rt,
                    "%d -> %s" % (base_fds, fd_count(pid) if pid_alive(pid) else "(died)"))
    if rt == "py":      # the Go shim's outcome is recorded, not judged
        assert not failures, failures
