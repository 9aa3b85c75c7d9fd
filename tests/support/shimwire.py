"""Talking to a live shim (either runtime) straight over its ttrpc socket,
for the reliability suite: raw sockets and frames, execs without stdio,
the shim's memory and fds.

    s = raw(address); s.sendall(...); read_frame(s); status_of(frame)
    send_until_stalled(s, data, deadline, tick) -> bytes the shim took
    exec_once(client, service, cid, spec, exec_id, ["sh", "-c", "exit 3"]) -> 3
    memory_kib(pid) -> {"Rss": .., "Pss": ..}   (/proc/PID/smaps_rollup)

stdlib plus the installed shim's codec.
"""
import json
import os
import select
import socket
import time

from shim import frame
from shim.pb import task as pb
from shim.pb import ttrpc as pb_ttrpc
from shim.pb import wkt

PROCESS_SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNNING = 2


def raw(address, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(address[len("unix://"):] if address.startswith("unix://") else address)
    return s


def send_until_stalled(s, data, deadline, tick=None):
    """Send `data` on the non-blocking socket `s` until the peer has taken
    nothing for 1 s, all is sent, or time.monotonic() passes `deadline`;
    tick() after each try (e.g. to sample the shim's memory). Bytes sent."""
    sent, stalled = 0, None
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent:sent + 65536])
            stalled = None
        except BlockingIOError:
            if stalled is None:
                stalled = time.monotonic()
            elif time.monotonic() - stalled > 1.0:
                break
            select.select([], [s], [], 0.05)
        if tick is not None:
            tick()
    return sent


def read_frame(s):
    """The next whole frame on `s` (a fresh reader: one reply expected), or
    None at EOF."""
    r = frame.FrameReader()
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        frames = r.feed(data)
        if frames:
            return frames[0]


def status_of(fr):
    resp = pb_ttrpc.Response.decode(fr[3])
    return (resp.status.code, resp.status.message) if resp.status else (0, "")


def request_frame(sid, service, method, msg_or_payload):
    payload = msg_or_payload if isinstance(msg_or_payload, (bytes, bytearray)) \
        else msg_or_payload.encode()
    data = pb_ttrpc.Request(service=service, method=method, payload=bytes(payload)).encode()
    return frame.encode_frame(sid, frame.TYPE_REQUEST, 0, data)


def process_spec(bundle, args):
    """The container's process spec (its bundle's config.json) running `args`."""
    with open(os.path.join(bundle, "config.json")) as f:
        proc = json.load(f)["process"]
    proc["args"] = list(args)
    proc["terminal"] = False
    return proc


def exec_once(cl, service, cid, proc, exec_id):
    """Exec `proc` (a process spec dict) without stdio in task `cid`
    through the SyncClient `cl`: Exec, Start, Wait, Delete; its exit status."""
    spec = wkt.Any(type_url=PROCESS_SPEC_URL, value=json.dumps(proc).encode())
    cl.call(service, "Exec", pb.ExecProcessRequest(id=cid, exec_id=exec_id, spec=spec))
    cl.call(service, "Start", pb.StartRequest(id=cid, exec_id=exec_id), pb.StartResponse)
    st = cl.call(service, "Wait", pb.WaitRequest(id=cid, exec_id=exec_id),
                 pb.WaitResponse).exit_status
    cl.call(service, "Delete", pb.DeleteRequest(id=cid, exec_id=exec_id), pb.DeleteResponse)
    return st


def memory_kib(pid):
    """{"Rss": kiB, "Pss": kiB, ...} from /proc/PID/smaps_rollup."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def shim_pid(cl, service, cid):
    return cl.call(service, "Connect", pb.ConnectRequest(id=cid), pb.ConnectResponse).shim_pid


def state(cl, service, cid):
    return cl.call(service, "State", pb.StateRequest(id=cid), pb.StateResponse)
