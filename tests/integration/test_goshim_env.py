"""The test environment itself, proven with containerd's Go shim.

These are the baseline behaviours every pyshim integration test mirrors:
if one of these fails, the environment (fixtures, image, containerd, runc)
is broken, not pyshim.
"""
import hashlib
import os

import pytest

from support.containerd import GO_RUNTIME, SHIM_SOCKET_DIR, wait_pids_gone
from support.helpers import address_of, wait_status

pytestmark = pytest.mark.integration

APPLETS = ("sh echo cat sleep true false ls ps head dd sha256sum wc env kill id "
           "printf yes tr mkdir rm grep seq top").split()


def test_run_rm_streams_and_exit_code(ctr_run):
    r = ctr_run("sh", "-c", "echo out; echo err >&2; exit 7", runtime=GO_RUNTIME)
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 7)


def test_stdin_is_passed(ctr_run):
    # ctr 1.6 never sends CloseIO, and the shim holds a keep-alive writer on
    # the stdin FIFO: the container gets the data but never EOF (`cat` would
    # hang). So read exactly one line.
    r = ctr_run("sh", "-c", "read x; echo got $x", runtime=GO_RUNTIME, input="abc\n",
                timeout=30)
    assert (r.stdout, r.returncode) == ("got abc\n", 0), r.stderr


def test_image_has_applets_and_root_user(ctr_run):
    script = "for a in %s; do command -v $a >/dev/null || echo missing $a; done; id -un; " \
             "test -d /tmp && echo tmp" % " ".join(APPLETS)
    r = ctr_run("sh", "-c", script, runtime=GO_RUNTIME)
    assert (r.stdout, r.returncode) == ("root\ntmp\n", 0), r.stderr


def test_detached_task_bundle_and_shim_lifecycle(containerd, ctr_run, cid):
    r = ctr_run("sleep", "3600", runtime=GO_RUNTIME, id=cid, detach=True, check=True)
    assert r.stdout == ""
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    pid, _ = containerd.tasks()[cid]
    assert pid > 0 and os.path.exists("/proc/%d" % pid)

    bundle = containerd.bundle(cid)
    assert bundle == os.path.join(containerd.state, "io.containerd.runtime.v2.task",
                                  containerd.namespace, cid)
    address = address_of(containerd, cid)
    assert address.startswith("unix://")
    # Socket name = sha256("<grpc address>/<namespace>/<id>") in /run/containerd/s.
    digest = hashlib.sha256(os.path.join(containerd.address, containerd.namespace, cid)
                            .encode()).hexdigest()
    assert address == "unix://" + os.path.join(SHIM_SOCKET_DIR, digest)
    assert os.path.exists(address[len("unix://"):])

    shims = containerd.shims(id=cid)
    assert len(shims) == 1, shims
    shim_pid, argv = shims[0]
    assert os.path.basename(argv[0]) == "containerd-shim-runc-v2"

    # sleep is the container's pid 1: it has no SIGTERM handler, so the
    # kernel drops SIGTERM. SIGKILL it.
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert wait_status(containerd, cid, "STOPPED") == "STOPPED"
    containerd.ctr("task", "rm", cid)
    containerd.ctr("container", "rm", cid)
    assert wait_pids_gone([shim_pid], 10.0) == []
    assert containerd.shims(id=cid) == []
    assert not os.path.exists(address[len("unix://"):])
    assert not os.path.exists(bundle)


def test_restart_keeps_task(fresh_containerd, make_cid):
    c = fresh_containerd
    image = c.import_image()
    cid = make_cid()
    c.ctr("run", "-d", "--runtime", GO_RUNTIME, image, cid, "sleep", "3600")
    assert wait_status(c, cid, "RUNNING") == "RUNNING"
    shims = c.shims(id=cid)
    old = c.pid
    c.restart()
    assert c.pid != old
    assert c.tasks()[cid][1] == "RUNNING"
    assert c.shims(id=cid) == shims
    r = c.ctr("task", "exec", "--exec-id", "e1", cid, "echo", "after-restart")
    assert r.stdout == "after-restart\n"
    c.remove_container(cid)
    assert wait_pids_gone([p for p, _ in shims], 10.0) == []
