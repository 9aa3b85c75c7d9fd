"""Rootfs mounts beyond a plain mount(2) (spec runc.md §4), each given to a
live pyshim's Create over raw ttrpc as CreateTaskRequest.rootfs, as
containerd 2.x snapshotters send them:

  * an image file with the `loop` option (EROFS / image-file snapshotters);
  * an overlay of 200 layers whose options do not fit in one page;
  * an idmapped overlay (uidmap=/gidmap=, user-namespaced pods);
  * a FUSE overlay (`fuse3.fuse-overlayfs`, the fuse-overlayfs snapshotter's),
    made by mount.fuse3;
  * mounts with a `target` below the rootfs (containerd 2.x), unmounted
    recursively at Delete.
The last two on both shims, the Go shim being the reference.

Each container runs and prints what it sees; after Delete nothing stays
mounted under the bundle, no loop device stays attached and no FUSE daemon
stays running."""
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from shim import _native, ttrpc, ttrpc_client
from shim.pb import task as pb
from shim.pb import types
from support.bundle import busybox_rootfs
from support.containerd import GO_RUNTIME, PY_RUNTIME, containerd_version, mounts_under
from support.helpers import address_of, wait_status

pytestmark = pytest.mark.integration

MNT_DETACH = 2


def attached(backing):
    """Loop devices (names) whose backing file is `backing`."""
    out = []
    for p in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(p) as f:
                if f.read().strip() == backing:
                    out.append(p.split("/")[3])
        except OSError:
            pass
    return out


def wait_detached(backing, timeout=5.0):
    deadline = time.monotonic() + timeout
    while attached(backing) and time.monotonic() < deadline:
        time.sleep(0.05)
    return attached(backing)


class Shim:
    """Raw ttrpc to the pyshim serving a host container; containers are
    made in bundles under `workdir` and deleted by close()."""

    def __init__(self, containerd, host, workdir):
        self.c = containerd
        self.workdir = workdir
        self.service = containerd.task_service
        self.cl = ttrpc_client.SyncClient(address_of(containerd, host), timeout=60)
        with open(os.path.join(containerd.bundle(host), "config.json")) as f:
            self.base = json.load(f)
        self.created = []
        self.pid = self.call("Connect", pb.ConnectRequest(id=host), pb.ConnectResponse).shim_pid

    def rootfs(self, path, commands=("sh", "cat", "ls", "grep", "echo", "stat")):
        """A busybox tree at path with a dir for every mount of the spec
        (read-only images cannot have runc make them)."""
        busybox_rootfs(path, commands)
        for m in self.base.get("mounts", ()):
            os.makedirs(path + m["destination"], exist_ok=True)
        return path

    def call(self, method, req, resp=None):
        return self.cl.call(self.service, method, req, resp)

    def bundle(self, id, args, readonly=True, spec_edit=None):
        b = os.path.join(self.workdir, "bundle-" + id)
        os.mkdir(b, 0o711)
        spec = json.loads(json.dumps(self.base))
        spec["root"] = {"path": "rootfs", "readonly": readonly}
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = False
        spec["linux"]["cgroupsPath"] = "/%s/%s" % (self.c.namespace, id)
        if spec_edit:
            spec_edit(spec)
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        return b

    def create(self, id, mounts, args, readonly=True, spec_edit=None):
        """Create `id` on `mounts` ([(type, source, options[, target])]):
        (bundle, out path)."""
        b = self.bundle(id, args, readonly, spec_edit)
        out = os.path.join(self.workdir, id + ".out")
        self.created.append(id)
        self.call("Create", pb.CreateTaskRequest(
            # Both, as containerd's clients give a log file (the Go shim
            # copies stderr to stdout's file, and would copy from no pipe).
            id=id, bundle=b, stdout="file://" + out, stderr="file://" + out,
            rootfs=[types.Mount(type=m[0], source=m[1], options=list(m[2]),
                                target=m[3] if len(m) > 3 else "") for m in mounts]),
            pb.CreateTaskResponse)
        return b, out

    def run(self, id):
        """Start `id`, wait for its exit, delete it: (exit status, stdout)."""
        sid = self.cl.send_raw_request(self.service, "Wait", pb.WaitRequest(id=id).encode())
        self.call("Start", pb.StartRequest(id=id), pb.StartResponse)
        status = pb.WaitResponse.decode(self.cl.recv_response(sid).payload).exit_status
        self.delete(id)
        with open(os.path.join(self.workdir, id + ".out")) as f:
            return status, f.read()

    def delete(self, id):
        self.call("Delete", pb.DeleteRequest(id=id), pb.DeleteResponse)
        self.created.remove(id)

    def cwd(self):
        return os.readlink("/proc/%d/cwd" % self.pid)

    def close(self):
        for id in self.created:
            for method, req in (("Kill", pb.KillRequest(id=id, signal=9, all=True)),
                                ("Delete", pb.DeleteRequest(id=id))):
                try:
                    self.call(method, req)
                except ttrpc.TTRPCError:
                    pass
        self.cl.close()


@pytest.fixture
def workdir():
    # Under /run, traversable (0711) by a user-namespaced container's root.
    d = tempfile.mkdtemp(prefix="pyshim-mnt-", dir="/run")
    os.chmod(d, 0o711)
    yield d
    for mp in mounts_under(d):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shim(containerd, ctr_run, cid, workdir, request):
    # pyshim's, or the shim of the runtime given by indirect parametrization.
    runtime = getattr(request, "param", PY_RUNTIME)
    ctr_run("sleep", "3600", runtime=runtime, id=cid, detach=True, check=True)
    assert wait_status(containerd, cid, "RUNNING") == "RUNNING"
    s = Shim(containerd, cid, workdir)
    s.runtime = runtime
    yield s
    s.close()
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    wait_status(containerd, cid, "STOPPED")


def make_image(kind, src, img):
    if kind == "ext4":
        tool = "mkfs.ext4"
        argv = [tool, "-q", "-d", src, img, "16M"]
    else:
        tool = "mkfs.erofs"
        argv = [tool, img, src]
    if shutil.which(tool) is None:
        pytest.skip("%s missing (apt-get install %s)" % (
            tool, "e2fsprogs" if kind == "ext4" else "erofs-utils"))
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("kind", ["ext4", "erofs"])
def test_loop_image_rootfs(shim, workdir, kind):
    src = shim.rootfs(os.path.join(workdir, "src"))
    with open(os.path.join(src, "hello.txt"), "w") as f:
        f.write("hello from the %s image\n" % kind)
    img = os.path.join(workdir, "layer." + kind)
    make_image(kind, src, img)
    id = "loop-" + kind
    cwd = shim.cwd()
    bundle, _ = shim.create(id, [(kind, img, ["ro", "loop"])], ["cat", "/hello.txt"])
    rootfs = os.path.join(bundle, "rootfs")
    assert mounts_under(bundle) == [rootfs]
    (dev,) = attached(img)
    with open("/sys/block/%s/loop/autoclear" % dev) as f:
        assert f.read().strip() == "1"
    with open("/sys/block/%s/ro" % dev) as f:
        assert f.read().strip() == "1"
    assert shim.run(id) == (0, "hello from the %s image\n" % kind)
    assert mounts_under(bundle) == []
    assert wait_detached(img) == []
    assert shim.cwd() == cwd

    # A loop mount that fails (wrong filesystem type) leaves nothing behind.
    other = "squashfs"
    with pytest.raises(ttrpc.TTRPCError) as e:
        shim.create(id + "-bad", [(other, img, ["ro", "loop"])], ["true"])
    shim.created.remove(id + "-bad")
    msg = e.value.message
    assert msg.startswith("failed to mount rootfs component: mount /dev/loop"), msg
    bad_bundle = os.path.join(workdir, "bundle-" + id + "-bad")
    assert "(loop device for %s) on %s/rootfs: " % (img, bad_bundle) in msg
    assert "(type squashfs, flags 0x1, data '')" in msg, msg
    assert mounts_under(workdir) == []
    assert wait_detached(img) == []


def test_overlay_of_200_layers(shim, workdir):
    snaps = os.path.join(workdir, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
    layers = [os.path.join(snaps, str(n), "fs") for n in range(1, 201)]
    shim.rootfs(layers[0])
    for n, d in enumerate(layers, 1):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "layer%d" % n), "w") as f:
            f.write("%d\n" % n)
    with open(os.path.join(layers[0], "first.txt"), "w") as f:
        f.write("from the first layer\n")
    with open(os.path.join(layers[-1], "last.txt"), "w") as f:
        f.write("from the last layer\n")
    upper, work = os.path.join(snaps, "201", "fs"), os.path.join(snaps, "201", "work")
    os.makedirs(upper)
    os.makedirs(work)
    # As the overlayfs snapshotter: top-most layer first.
    options = ["index=off", "workdir=" + work, "upperdir=" + upper,
               "lowerdir=" + ":".join(reversed(layers))]
    assert len(",".join(options)) > 4096
    cwd = shim.cwd()
    id = "overlay-200"
    bundle, _ = shim.create(id, [("overlay", "overlay", options)], [
        "sh", "-c", "cat /first.txt /last.txt; ls / | grep -c '^layer'; echo new > /new.txt"],
        readonly=False)
    assert mounts_under(bundle) == [os.path.join(bundle, "rootfs")]
    # The shim's own cwd never moved (the mount chdir'd in a thread of its own).
    assert shim.cwd() == cwd
    assert shim.run(id) == (0, "from the first layer\nfrom the last layer\n200\n")
    with open(os.path.join(upper, "new.txt")) as f:
        assert f.read() == "new\n"
    assert mounts_under(workdir) == []


def idmap_unsupported(path):
    """Why this kernel/filesystem cannot idmap a mount of `path` (None if it can)."""
    probe = os.path.join(path, "probe")
    os.mkdir(probe)
    try:
        fd = _native.userns_fd("0 100000 65536\n", "0 100000 65536\n")
    except OSError as e:
        os.rmdir(probe)
        return "cannot create a user namespace: %s (errno %d)" % (e.strerror, e.errno)
    try:
        _native.idmap_clone(path, probe, fd)
        _native.umount2(probe, MNT_DETACH)
        return None
    except OSError as e:
        return "idmapped mounts unsupported on %s: %s (errno %d)" % (path, e.strerror, e.errno)
    finally:
        os.close(fd)
        os.rmdir(probe)


def idmapped_layers(shim, workdir):
    snaps = os.path.join(workdir, "snapshots")
    lower1, lower2 = os.path.join(snaps, "1", "fs"), os.path.join(snaps, "2", "fs")
    shim.rootfs(lower1)
    os.makedirs(lower2)
    with open(os.path.join(lower2, "owned"), "w") as f:
        f.write("x\n")
    os.chown(os.path.join(lower2, "owned"), 1000, 1001)
    return snaps, [lower2, lower1]


def overlay_options(snaps, lowers, n):
    upper, work = os.path.join(snaps, n, "fs"), os.path.join(snaps, n, "work")
    os.makedirs(upper)
    os.makedirs(work)
    return ["index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + ":".join(lowers),
            "uidmap=0:100000:65536", "gidmap=0:200000:65536"]


def test_idmapped_overlay(shim, workdir):
    why = idmap_unsupported(workdir)
    if why:
        pytest.skip(why)
    snaps, lowers = idmapped_layers(shim, workdir)
    id = "idmapped"
    bundle, _ = shim.create(id, [("overlay", "overlay", overlay_options(snaps, lowers, "3"))],
                            ["stat", "-c", "%u:%g %n", "/owned", "/bin/busybox"])
    rootfs = os.path.join(bundle, "rootfs")
    # Seen from the host through the mount: disk ids shifted by the maps.
    st = os.stat(os.path.join(rootfs, "owned"))
    assert (st.st_uid, st.st_gid) == (101000, 201001)
    st = os.stat(os.path.join(rootfs, "bin", "busybox"))
    assert (st.st_uid, st.st_gid) == (100000, 200000)
    # The layers themselves are untouched; the idmapped clone is gone.
    assert os.stat(os.path.join(lowers[0], "owned")).st_uid == 1000
    assert mounts_under(workdir) == [rootfs]
    assert not [n for n in os.listdir(bundle) if n.startswith(".idmapped")]
    # The container (no user namespace of its own) sees the host's view.
    assert shim.run(id) == (0, "101000:201001 /owned\n100000:200000 /bin/busybox\n")
    assert mounts_under(workdir) == []


def test_idmapped_overlay_in_a_user_namespace(shim, workdir):
    """As a user-namespaced pod: the container's root is host 100000 (uids)
    and 200000 (gids), and sees the image's own ids."""
    why = idmap_unsupported(workdir)
    if why:
        pytest.skip(why)
    snaps, lowers = idmapped_layers(shim, workdir)

    def userns(spec):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    id = "idmapped-userns"
    shim.create(id, [("overlay", "overlay", overlay_options(snaps, lowers, "4"))],
                ["stat", "-c", "%u:%g %n", "/owned", "/bin/busybox"], spec_edit=userns)
    assert shim.run(id) == (0, "1000:1001 /owned\n0:0 /bin/busybox\n")
    assert mounts_under(workdir) == []


def fuse_daemons(mountpoint):
    """pid -> ppid of the fuse-overlayfs processes serving `mountpoint`."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"fuse-overlayfs" and mountpoint.encode() in argv:
            if fields[0] != "Z":
                out[int(pid)] = int(fields[1])
    return out


def wait_no_daemons(mountpoint, timeout=5.0):
    deadline = time.monotonic() + timeout
    while fuse_daemons(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    return fuse_daemons(mountpoint)


@pytest.mark.parametrize("shim", [GO_RUNTIME, PY_RUNTIME], ids=["go", "py"], indirect=True)
def test_fuse_overlayfs_rootfs(shim, workdir):
    for tool, pkg in (("mount.fuse3", "fuse3"), ("fuse-overlayfs", "fuse-overlayfs")):
        if shutil.which(tool) is None:
            pytest.skip("%s missing (apt-get install %s)" % (tool, pkg))
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    snaps = os.path.join(workdir, "snapshots")
    lower1, lower2 = os.path.join(snaps, "1", "fs"), os.path.join(snaps, "2", "fs")
    shim.rootfs(lower1)
    with open(os.path.join(lower1, "first.txt"), "w") as f:
        f.write("from the first layer\n")
    os.makedirs(lower2)
    with open(os.path.join(lower2, "second.txt"), "w") as f:
        f.write("from the second layer\n")
    upper, work = os.path.join(snaps, "3", "fs"), os.path.join(snaps, "3", "work")
    os.makedirs(upper)
    os.makedirs(work)
    # As the fuse-overlayfs snapshotter gives them: top-most layer first.
    options = ["lowerdir=%s:%s" % (lower2, lower1), "upperdir=" + upper, "workdir=" + work]
    id = "fuse-overlay"
    bundle, _ = shim.create(id, [("fuse3.fuse-overlayfs", "overlay", options)], [
        "sh", "-c", "cat /first.txt /second.txt; echo new > /new.txt"], readonly=False)
    rootfs = os.path.join(bundle, "rootfs")
    assert mounts_under(bundle) == [rootfs]
    # The helper is gone; its daemon serves the mount, the shim's (a
    # subreaper's) orphan.
    assert list(fuse_daemons(rootfs).values()) == [shim.pid]
    assert shim.run(id) == (0, "from the first layer\nfrom the second layer\n")
    with open(os.path.join(upper, "new.txt")) as f:
        assert f.read() == "new\n"
    assert mounts_under(workdir) == []
    # Unmounted at Delete: the daemon ended, and was reaped by the shim.
    assert wait_no_daemons(rootfs) == {}

    # A helper that fails: Create says what it printed; nothing is left.
    bad = ["lowerdir=" + os.path.join(snaps, "missing"), "upperdir=" + upper, "workdir=" + work]
    with pytest.raises(ttrpc.TTRPCError) as e:
        shim.create(id + "-bad", [("fuse3.fuse-overlayfs", "overlay", bad)], ["true"])
    shim.created.remove(id + "-bad")
    rootfs = os.path.join(workdir, "bundle-" + id + "-bad", "rootfs")
    msg = e.value.message
    assert msg.startswith("failed to mount rootfs component"), msg
    assert (": mount helper [mount.fuse3 [overlay %s -o %s -o %s -o %s -t fuse-overlayfs]] "
            "failed: \"" % (rootfs, bad[0], bad[1], bad[2])) in msg, msg
    assert msg.endswith("\": exit status 1"), msg
    assert mounts_under(workdir) == []
    assert wait_no_daemons(rootfs) == {}


@pytest.mark.parametrize("shim", [GO_RUNTIME, PY_RUNTIME], ids=["go", "py"], indirect=True)
def test_mount_targets_below_the_rootfs(shim, workdir):
    if shim.runtime == GO_RUNTIME and containerd_version() < (2, 0, 0):
        pytest.skip("the Go shim of containerd %d.%d has no Mount.target" % containerd_version()[:2])
    layer = shim.rootfs(os.path.join(workdir, "layer"))
    for d in ("data", "scratch"):
        os.mkdir(os.path.join(layer, d))
    os.symlink("/data", os.path.join(layer, "link"))
    volume = os.path.join(workdir, "volume")
    os.mkdir(volume)
    with open(os.path.join(volume, "hello.txt"), "w") as f:
        f.write("from the volume\n")
    id = "targets"
    # The second target is a symlink inside the rootfs: resolved there.
    bundle, _ = shim.create(id, [
        ("bind", layer, ["rbind", "ro"]),
        ("bind", volume, ["rbind", "ro"], "link"),
        ("tmpfs", "tmpfs", ["size=1m"], "/data/../scratch")],
        ["sh", "-c", "cat /data/hello.txt; echo new > /scratch/f; cat /scratch/f"])
    rootfs = os.path.join(bundle, "rootfs")
    assert mounts_under(bundle) == [os.path.join(rootfs, "scratch"),
                                    os.path.join(rootfs, "data"), rootfs]
    assert shim.run(id) == (0, "from the volume\nnew\n")
    # Delete unmounted them all, the deepest first.
    assert mounts_under(workdir) == []
    assert not os.path.exists(os.path.join(layer, "scratch", "f"))


@pytest.mark.parametrize("shim", [GO_RUNTIME, PY_RUNTIME], ids=["go", "py"], indirect=True)
def test_fuse_daemon_killed_mount_still_removed(shim, workdir):
    """The FUSE daemon dies under a running container (its rootfs then
    answers ENOTCONN): the container ends, and Delete still unmounts it."""
    for tool in ("mount.fuse3", "fuse-overlayfs"):
        if shutil.which(tool) is None or not os.path.exists("/dev/fuse"):
            pytest.skip("%s or /dev/fuse missing" % tool)
    lower = shim.rootfs(os.path.join(workdir, "lower"), ("sh", "sleep"))
    upper, work = os.path.join(workdir, "upper"), os.path.join(workdir, "work")
    os.makedirs(upper)
    os.makedirs(work)
    id = "fuse-dies"
    bundle, _ = shim.create(id, [("fuse3.fuse-overlayfs", "overlay", [
        "lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work])], ["sleep", "3600"])
    rootfs = os.path.join(bundle, "rootfs")
    (daemon,) = fuse_daemons(rootfs)
    shim.call("Start", pb.StartRequest(id=id), pb.StartResponse)
    os.kill(daemon, signal.SIGKILL)
    assert wait_no_daemons(rootfs) == {}
    with pytest.raises(OSError) as e:
        os.listdir(rootfs)
    assert e.value.errno == errno.ENOTCONN
    # Its binary's pages are on that mount: it may have died already
    # (SIGBUS here, SIGSEGV on trixie's kernel), else our SIGKILL ends it.
    # The status is not the point (the Go shim on the cgroup v2 node says
    # 255): that it ends, and what Delete leaves.
    try:
        shim.call("Kill", pb.KillRequest(id=id, signal=9))
    except ttrpc.TTRPCError:
        pass
    sid = shim.cl.send_raw_request(shim.service, "Wait", pb.WaitRequest(id=id).encode())
    assert pb.WaitResponse.decode(shim.cl.recv_response(sid).payload).exit_status != 0
    shim.delete(id)
    assert mounts_under(workdir) == []
