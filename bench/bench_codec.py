"""Lean codec (shim.pb) vs google.protobuf 4.21.12 (upb): speed and memory.

Speed (pytest-benchmark; encode+decode of a CreateTaskRequest and of a
StateResponse, ours and google's in one run):

    pytest bench/bench_codec.py --benchmark-group-by=param:msg

Memory (private = Private_Clean + Private_Dirty from /proc/self/smaps_rollup
of a fresh `python3 -I -S` that imports the serving-path modules):

    python3 bench/bench_codec.py

Both use the installed package (pip install --no-build-isolation .).
"""
import os
import subprocess
import sys

import pytest

MODULES_LEAN = ["shim.pb.task", "shim.pb.events", "shim.pb.eventsvc", "shim.pb.ttrpc", "shim.pb.wkt"]
MODULES_PB2 = [
    "shim.pb2.containerd.task.v2.shim_pb2",
    "shim.pb2.containerd.events.task_pb2",
    "shim.pb2.containerd.services.events.ttrpc.v1.events_pb2",
    "shim.pb2.ttrpc.ttrpc_pb2",
    "shim.pb2.google.rpc.status_pb2",
    "google.protobuf.any_pb2", "google.protobuf.timestamp_pb2", "google.protobuf.empty_pb2",
]


# ------------------------------------------------------------------ speed

def _create_fields():
    return dict(
        id="0123456789abcdef0123456789abcdef",
        bundle="/run/containerd/io.containerd.runtime.v2.task/k8s.io/0123456789abcdef0123456789abcdef",
        stdout="/run/containerd/fifo/123456789/0123456789abcdef-stdout",
        stderr="/run/containerd/fifo/123456789/0123456789abcdef-stderr",
    )


def _mount_fields():
    return dict(type="overlay", source="overlay", target="",
                options=["index=off", "workdir=/var/lib/containerd/snapshots/42/work",
                         "upperdir=/var/lib/containerd/snapshots/42/fs",
                         "lowerdir=/var/lib/containerd/snapshots/41/fs:/var/lib/containerd/snapshots/40/fs"])


def _state_fields():
    return dict(id="0123456789abcdef0123456789abcdef",
                bundle="/run/containerd/io.containerd.runtime.v2.task/k8s.io/0123456789abcdef",
                pid=123456, status=3, stdout="/run/containerd/fifo/1/x-stdout",
                stderr="/run/containerd/fifo/1/x-stderr", exit_status=137)


def _lean_pair(which):
    from shim.pb import task, types, wkt
    if which == "CreateTaskRequest":
        m = task.CreateTaskRequest(rootfs=[types.Mount(**_mount_fields())],
                                   options=wkt.Any(type_url="containerd.runc.v1.Options",
                                                   value=b"\x3a\x06/run/x"),
                                   **_create_fields())
        return m, task.CreateTaskRequest
    m = task.StateResponse(exited_at=wkt.Timestamp(seconds=1700000000, nanos=123456789), **_state_fields())
    return m, task.StateResponse


def _pb2_pair(which):
    from shim.pb2.containerd.task.v2 import shim_pb2
    if which == "CreateTaskRequest":
        m = shim_pb2.CreateTaskRequest(**_create_fields())
        m.rootfs.add(**_mount_fields())
        m.options.type_url = "containerd.runc.v1.Options"
        m.options.value = b"\x3a\x06/run/x"
        return m, shim_pb2.CreateTaskRequest
    m = shim_pb2.StateResponse(**_state_fields())
    m.exited_at.seconds, m.exited_at.nanos = 1700000000, 123456789
    return m, shim_pb2.StateResponse


@pytest.mark.parametrize("impl", ["lean", "google"])
@pytest.mark.parametrize("msg", ["CreateTaskRequest", "StateResponse"])
def test_encode_decode(benchmark, impl, msg):
    if impl == "lean":
        m, cls = _lean_pair(msg)
        data = m.encode()

        def run():
            return cls.decode(m.encode())
    else:
        m, cls = _pb2_pair(msg)
        data = m.SerializeToString()

        def run():
            return cls.FromString(m.SerializeToString())
    benchmark.extra_info["bytes"] = len(data)
    out = benchmark(run)
    assert out == m
    # both implementations produce the same bytes for these messages
    lean, _ = _lean_pair(msg)
    google, _ = _pb2_pair(msg)
    assert lean.encode() == google.SerializeToString()


# ------------------------------------------------------------------ memory

_PROBE = r"""
import sys
sys.path[:0] = %(paths)r
def private_kb():
    kb = 0
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            if line.startswith(('Private_Clean:', 'Private_Dirty:')):
                kb += int(line.split()[1])
    return kb
before = private_kb()
for m in %(mods)r:
    __import__(m)
after = private_kb()
print(before, after, len(sys.modules))
"""


def measure(mods, paths, runs=5):
    """Median (private kB before imports, after imports, module count)."""
    res = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE % {"paths": paths, "mods": mods}],
                             check=True, stdout=subprocess.PIPE, text=True).stdout.split()
        res.append(tuple(int(x) for x in out))
    res.sort(key=lambda r: r[1])
    return res[len(res) // 2]


def memory_report():
    """Print the table. File-backed pages count as private only while no other
    process maps them; libpython is always shared with this (parent) process,
    as in production where many shims run. The google.protobuf row is measured
    twice: before this process loads upb's extension (its code pages then count
    as the child's private memory) and after (shared, as with many shims)."""
    import google.protobuf
    import shim.pb
    shim_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(shim.pb.__file__))))
    gp_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(google.protobuf.__file__))))
    paths = [shim_root] if shim_root == gp_root else [shim_root, gp_root]
    print("python %s, shim from %s" % (sys.version.split()[0], shim_root))
    print("%-58s %10s %10s %8s" % ("", "private kB", "delta kB", "modules"))
    base = None

    def row(label, mods):
        nonlocal base
        before, after, n = measure(mods, paths)
        if base is None:
            base = after
        print("%-58s %10d %10d %8d" % (label, after, after - base, n))

    row("bare python3 -I -S", [])
    row("lean: " + ", ".join(m.rsplit(".", 1)[1] for m in MODULES_LEAN), MODULES_LEAN)
    row("google.protobuf equivalents (upb .so not shared)", MODULES_PB2)
    from google.protobuf.internal import api_implementation  # maps upb's _message .so here
    row("google.protobuf equivalents (upb .so shared) [%s]" % api_implementation.Type(), MODULES_PB2)


def test_memory_report(capsys):
    """Not a benchmark: prints the memory table (run with -s to see it)."""
    memory_report()


if __name__ == "__main__":
    memory_report()
