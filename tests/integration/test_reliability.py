"""A shim under stress or left alone: requests in flight when it exits.

Standalone shims are started with the installed binary's `start` action as
containerd starts them (cwd = bundle, -namespace/-address/-id, events to the
session containerd's ttrpc socket), containers run from a private runc root."""
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from shim import ttrpc
from shim.pb import runc as runc_pb
from shim.pb import task as pb
from shim.pb import wkt
from support.bundle import busybox_rootfs, write_bundle
from support.containerd import kill_pids, pid_alive, shim_processes, wait_pids_gone

pytestmark = pytest.mark.integration

TASK = "containerd.task.v2.Task"
def any_of(msg):
    return wkt.Any(type_url=msg.FULL_NAME, value=msg.encode())


class Standalone:
    """Shims started by hand, bundles on a shared busybox rootfs."""

    def __init__(self, containerd, binary):
        self.c = containerd
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="pyshim-rel-", dir="/run")
        self.rootfs = busybox_rootfs(os.path.join(self.dir, "rootfs"))
        self.runc_root = os.path.join(self.dir, "runc")
        self.pids = []
        self.sockets = []
        self.ids = []

    def bundle(self, id, args):
        b = os.path.join(self.dir, id)
        spec = write_bundle(b, self.rootfs, args)
        spec["linux"]["cgroupsPath"] = "/%s/%s" % (self.c.namespace, id)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        self.ids.append(id)
        return b

    def options(self, binary_name=""):
        return any_of(runc_pb.Options(root=self.runc_root, binary_name=binary_name))

    def start(self, id, args=("sleep", "3600"), env=None):
        """`start` a shim for a new bundle `id`; (bundle, address, serve pid)."""
        b = self.bundle(id, args)
        e = dict(os.environ, TTRPC_ADDRESS=self.c.ttrpc_address)
        e.update(env or {})
        r = subprocess.run([self.binary, "-namespace", self.c.namespace, "-address",
                            self.c.address, "-publish-binary", "/usr/bin/containerd",
                            "-id", id, "start"], cwd=b, input=b"", capture_output=True,
                           env=e, timeout=30)
        assert r.returncode == 0, r.stderr
        address = r.stdout.decode()
        self.sockets.append(address[len("unix://"):])
        pids = [p for p, a in shim_processes(self.c.namespace, self.c.address, id)
                if "start" not in a]
        assert len(pids) == 1, pids
        self.pids += pids
        return b, address, pids[0]

    def cleanup(self):
        kill_pids([p for p in self.pids if pid_alive(p)])
        for p in self.pids:
            try:
                os.waitpid(p, os.WNOHANG)   # ours if pytest is a subreaper
            except ChildProcessError:
                pass
        root = os.path.join(self.runc_root, self.c.namespace)
        for id in self.ids:
            subprocess.run(["runc", "--root", root, "delete", "--force", id],
                           capture_output=True, timeout=30)
        for path in self.sockets:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        subprocess.run(["umount", "-R", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def standalone(containerd, pyshim_binary):
    s = Standalone(containerd, pyshim_binary)
    yield s
    s.cleanup()


def wrapper(dir, step, script):
    """A runc (Options.binary_name) that runs `script` (sh; $RUNC is the
    real runc, "$@" its argv) for `runc <step>`, the real runc otherwise."""
    path = os.path.join(dir, "runc-" + step)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nRUNC=%s\nfor a in "$@"; do\n  if [ "$a" = %s ]; then\n%s\n'
                '  fi\ndone\nexec "$RUNC" "$@"\n' % (shutil.which("runc"), step, script))
    os.chmod(path, 0o755)
    return path


# ---- shutdown with requests in flight ----------------------------------------

def test_shutdown_lets_requests_in_flight_finish(standalone):
    """A Kill still waiting for `runc kill` when the container exits, is
    deleted and the shim is told to shut down gets its reply (Go's ttrpc
    server waits for active connections), then the shim exits and removes
    its socket."""
    delay = 2.0
    slow_kill = wrapper(standalone.dir, "kill",
                        '"$RUNC" "$@"; rc=$?; sleep %s; exit $rc' % delay)
    id = "drain"
    bundle, address, pid = standalone.start(id)
    with ttrpc.SyncClient(address, timeout=30) as a, ttrpc.SyncClient(address, timeout=30) as b:
        a.call(TASK, "Create", pb.CreateTaskRequest(
            id=id, bundle=bundle, options=standalone.options(slow_kill)), pb.CreateTaskResponse)
        a.call(TASK, "Start", pb.StartRequest(id=id), pb.StartResponse)
        wait = b.send_raw_request(TASK, "Wait", pb.WaitRequest(id=id).encode())
        t0 = time.monotonic()
        kill = a.send_raw_request(TASK, "Kill", pb.KillRequest(id=id, signal=9).encode())
        # The container dies at once; runc kill "returns" `delay` s later.
        assert pb.WaitResponse.decode(b.recv_response(wait).payload).exit_status == 137
        assert b.call(TASK, "Delete", pb.DeleteRequest(id=id),
                      pb.DeleteResponse).exit_status == 137
        b.call(TASK, "Shutdown", pb.ShutdownRequest(id=id))
        shutdown_at = time.monotonic() - t0
        r = a.recv_response(kill)           # not "ttrpc: closed"
        replied_at = time.monotonic() - t0
    assert r.status is None or r.status.code == 0, r.status
    assert shutdown_at < delay <= replied_at + 0.1, (shutdown_at, replied_at)
    assert not wait_pids_gone([pid], 15), "shim did not exit after Shutdown"
    assert not os.path.exists(address[len("unix://"):])
