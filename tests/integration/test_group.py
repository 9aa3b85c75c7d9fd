"""Grouped containers (spec shim-binary.md §4): containers whose OCI spec
carries the io.containerd.runc.v2.group annotation (or CRI's
io.kubernetes.cri.sandbox-id) share one shim process, as with the Go shim.
Each keeps its own stdio, exit and events; the shim outlives the deletion
of the container whose bundle it started in, survives a containerd restart,
and exits only after the last container is deleted."""
import os
import pytest

from support.containerd import PY_RUNTIME, pid_alive, shim_processes, wait_pids_gone
from support.helpers import wait_status

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("annotation", ["io.containerd.runc.v2.group",
                                        "io.kubernetes.cri.sandbox-id"])
def test_group_shares_one_shim(fresh_containerd, make_cid, annotation):
    c = fresh_containerd
    image = c.import_image()
    group = "g-%d" % os.getpid()
    ids = [make_cid() for _ in range(3)]
    for id in ids:
        c.ctr("run", "-d", "--runtime", PY_RUNTIME, "--annotation",
              "%s=%s" % (annotation, group), image, id, "sleep", "3600")
    for id in ids:
        assert wait_status(c, id, "RUNNING") == "RUNNING"
    # One serve process, started in the first container's bundle; every
    # bundle's address names the same socket.
    pids = [p for p, a in c.shims() if "start" not in a and "delete" not in a]
    assert len(pids) == 1, c.shims()
    shim = pids[0]
    assert os.readlink("/proc/%d/cwd" % shim) == c.bundle(ids[0])
    addrs = set()
    for id in ids:
        with open(os.path.join(c.bundle(id), "address")) as f:
            addrs.add(f.read())
    assert len(addrs) == 1

    # A container of the group whose create fails does not disturb the rest.
    bad = make_cid()
    r = c.ctr("run", "--rm", "--runtime", PY_RUNTIME, "--annotation",
              "%s=%s" % (annotation, group), image, bad, "/no/such/binary", check=False)
    assert r.returncode != 0
    assert all(wait_status(c, id, "RUNNING") == "RUNNING" for id in ids)

    # Own stdio and exit codes per container and exec.
    for n, id in enumerate(ids):
        r = c.ctr("task", "exec", "--exec-id", "e%d" % n, id, "sh", "-c",
                  "echo out-%d; echo err-%d >&2; exit %d" % (n, n, n + 3), check=False)
        assert (r.stdout, r.stderr, r.returncode) == ("out-%d\n" % n, "err-%d\n" % n, n + 3)

    # Delete the container whose bundle is the shim's cwd: the shim serves on.
    c.remove_container(ids[0])
    assert not os.path.exists(c.bundle(ids[0]))
    assert pid_alive(shim)
    r = c.ctr("task", "exec", "--exec-id", "x", ids[1], "echo", "still-here", check=False)
    assert (r.stdout, r.returncode) == ("still-here\n", 0)

    # containerd restart: the group's containers are reloaded from their
    # bundles' address files, the same shim serves them.
    c.restart()
    assert all(wait_status(c, id, "RUNNING") == "RUNNING" for id in ids[1:])
    assert [p for p, a in c.shims() if "start" not in a and "delete" not in a] == [shim]
    r = c.ctr("task", "exec", "--exec-id", "y", ids[2], "echo", "after-restart",
              check=False)
    assert (r.stdout, r.returncode) == ("after-restart\n", 0)

    # One container's exit is its own.
    c.ctr("task", "kill", "-s", "SIGKILL", ids[1])
    assert wait_status(c, ids[1], "STOPPED") == "STOPPED"
    assert wait_status(c, ids[2], "RUNNING") == "RUNNING"
    c.remove_container(ids[1])
    assert pid_alive(shim)
    # The last delete ends the shim.
    c.remove_container(ids[2])
    assert not wait_pids_gone([shim], 10)
    assert not shim_processes(namespace=c.namespace)
