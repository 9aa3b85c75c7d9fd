"""shim.mount: option parsing (spec runc.md §4), mount_all/unmount_all with
a fake mount(2)/umount2(2), and (as root) a real stacked tmpfs."""
import os
from types import SimpleNamespace as M

import pytest

from shim import mount
from shim.mount import (MS_BIND, MS_NOATIME, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY,
                        MS_REC, MS_RELATIME, MS_REMOUNT, MS_SYNCHRONOUS, parse_options)
from support.helpers import mount_all_now


def test_parse_overlay():
    opts = ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
    assert parse_options(opts) == (0, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2",
                                   False, False)


def test_parse_flag_words():
    flags, data, ro, loop = parse_options(["ro", "nosuid", "nodev", "noexec", "noatime",
                                           "relatime", "sync"])
    assert flags == (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME
                     | MS_RELATIME | MS_SYNCHRONOUS)
    assert (data, ro, loop) == ("", False, False)


def test_parse_clearing_forms():
    # The positive forms clear what came before them.
    assert parse_options(["ro", "rw"])[0] == 0
    assert parse_options(["nosuid", "suid"])[0] == 0
    assert parse_options(["nodev", "dev", "noexec", "exec"])[0] == 0
    assert parse_options(["noatime", "atime", "sync", "async"])[0] == 0
    assert parse_options(["relatime", "norelatime"])[0] == 0
    assert parse_options(["rw", "ro"])[0] == MS_RDONLY


def test_parse_defaults_goes_to_data():
    # containerd 1.6 appends "defaults" (flag value 0) to the data string.
    assert parse_options(["defaults", "size=10m"]) == (0, "defaults,size=10m", False, False)


def test_parse_bind_ro():
    assert parse_options(["bind", "ro"]) == (MS_BIND | MS_RDONLY, "", True, False)
    assert parse_options(["rbind", "ro"]) == (MS_BIND | MS_REC | MS_RDONLY, "", True, False)
    assert parse_options(["rbind", "rw"]) == (MS_BIND | MS_REC, "", False, False)
    assert parse_options(["ro"])[2] is False


def test_parse_loop_and_remount():
    assert parse_options(["loop", "ro"]) == (MS_RDONLY, "", False, True)
    assert parse_options(["remount", "ro"])[0] == MS_REMOUNT | MS_RDONLY
    assert parse_options(None) == (0, "", False, False)
    assert parse_options([]) == (0, "", False, False)


class FakeSys:
    def __init__(self, fail_at=None, umount_errors=()):
        self.calls = []
        self.stack = []
        self.fail_at = fail_at
        self.umount_errors = list(umount_errors)

    def mount(self, src, target, fstype, flags, data):
        self.calls.append(("mount", src, target, fstype, flags, data))
        if self.fail_at is not None and len([c for c in self.calls if c[0] == "mount"]) == self.fail_at:
            raise OSError(22, "mount %s on %s failed" % (src, target))
        if not flags & MS_REMOUNT:
            self.stack.append(src)

    def umount2(self, target, flags=0):
        self.calls.append(("umount2", target, flags))
        if self.umount_errors:
            err = self.umount_errors.pop(0)
            if err:
                raise OSError(err, "umount %s failed" % target)
        if not self.stack:
            raise OSError(22, "umount %s failed" % target)
        self.stack.pop()


@pytest.fixture
def fake(monkeypatch):
    f = FakeSys()
    monkeypatch.setattr(mount._native, "mount", f.mount)
    monkeypatch.setattr(mount._native, "umount2", f.umount2)
    monkeypatch.setattr(mount.time, "sleep", lambda s: None)
    return f


def test_mount_all_in_order(fake):
    mounts = [M(type="overlay", source="overlay", options=["index=off", "lowerdir=/l"]),
              M(type="bind", source="/src", options=["rbind", "ro"])]
    mount_all_now(mounts, "/b/rootfs")
    assert fake.calls == [
        ("mount", "overlay", "/b/rootfs", "overlay", 0, "index=off,lowerdir=/l"),
        ("mount", "/src", "/b/rootfs", "bind", MS_BIND | MS_REC | MS_RDONLY, ""),
        ("mount", "", "/b/rootfs", "", MS_BIND | MS_REC | MS_RDONLY | MS_REMOUNT, ""),
    ]
    assert fake.stack == ["overlay", "/src"]


def test_mount_error_says_what_was_asked(fake):
    fake.fail_at = 1
    with pytest.raises(mount.MountError) as ei:
        mount.mount_one(M(type="tmpfs", source="tmpfs", options=["nosuid", "size=1m"]), "/t")
    assert ei.value.errno == 22
    assert str(ei.value) == ("mount tmpfs on /t: Invalid argument (type tmpfs, flags 0x2, "
                             "data 'size=1m')")
    fake.fail_at = 3            # the remount after the bind
    with pytest.raises(mount.MountError) as ei:
        mount.mount_one(M(type="bind", source="/s", options=["bind", "ro"]), "/t")
    assert str(ei.value).startswith("mount /s (read-only remount) on /t: Invalid argument")
    assert fake.stack == []


def test_mount_all_undoes_on_failure(fake):
    fake.fail_at = 3
    mounts = [M(type="tmpfs", source="a", options=[]),
              M(type="tmpfs", source="b", options=[]),
              M(type="tmpfs", source="c", options=[])]
    with pytest.raises(OSError):
        mount_all_now(mounts, "/t")
    assert fake.stack == []
    assert [c[0] for c in fake.calls] == ["mount", "mount", "mount", "umount2", "umount2"]


def test_mount_rejects_long_data_and_unsupported(fake):
    with pytest.raises(OSError) as ei:
        mount_all_now([M(type="tmpfs", source="tmpfs",
                         options=["size=1m," + "x" * 4096])], "/t")
    assert str(ei.value) == ("mount tmpfs on /t: mount options is too long (4104 bytes, "
                             "mount(2) takes %d)" % (mount.PAGE_SIZE - 1))
    # Even an overlay, when its lowerdirs share no parent below /.
    with pytest.raises(OSError, match="too long"):
        mount_all_now([M(type="overlay", source="overlay",
                         options=["lowerdir=" + ":".join("/l%d" % i for i in range(1000))])],
                      "/t")
    with pytest.raises(OSError, match="fuse"):
        mount_all_now([M(type="fuse.sshfs", source="x:/", options=[])], "/t")
    assert fake.calls == []


def test_one_page_is_the_limit(fake):
    # mount(2) reads one page and cuts its last byte for the NUL.
    with pytest.raises(OSError, match="too long"):
        mount.mount_one(M(type="tmpfs", source="tmpfs", options=["x" * mount.PAGE_SIZE]), "/t")
    mount.mount_one(M(type="tmpfs", source="tmpfs", options=["x" * (mount.PAGE_SIZE - 1)]), "/t")
    assert len(fake.calls) == 1


def test_x_containerd_options_are_refused(fake):
    # containerd's own options (for its mount manager) never reach mount(2):
    # containerd 2.3+ refuses a mount that still carries one.
    for opt in ("X-containerd.mkdir.path=/x/upper:0755", "X-containerd.mkfs.fs=ext4",
                "X-containerd.anything"):
        with pytest.raises(mount.MountError) as ei:
            mount_all_now([M(type="tmpfs", source="tmpfs", options=["size=1m", opt])], "/t")
        assert ei.value.errno == 22
        assert str(ei.value) == ('internal mount option "%s" was not consumed by the mount '
                                 "manager" % opt)
    assert fake.calls == []
    # Only that exact prefix: other X- words are the filesystem's.
    mount.mount_one(M(type="tmpfs", source="tmpfs", options=["X-mount.mkdir", "x-containerd.y"]),
                    "/t")
    assert fake.calls[-1][-1] == "X-mount.mkdir,x-containerd.y"


def test_split_options():
    assert mount.split_options(["ro", "uidmap=0:1:2", "lowerdir=/a", "gidmap=0:3:4"]) == \
        (["ro", "lowerdir=/a"], "0:1:2", "0:3:4")
    assert mount.split_options(None) == ([], None, None)
    assert mount.split_options(["uidmap="]) == ([], "", None)


def test_common_parent():
    cp = mount.common_parent
    assert cp(["/s/snapshots/10/fs", "/s/snapshots/11/fs"]) == "/s/snapshots"
    assert cp(["/s/snapshots/1/fs", "/s/snapshots/2/fs"]) == "/s/snapshots"
    assert cp(["/s/snapshots/1/fs"]) == "/s/snapshots/1"
    assert cp(["/a/x", "/b/x"]) == ""
    assert cp(["/ab", "/ac"]) == ""
    assert cp(["a/1", "a/2"]) == "a"
    assert cp(["x1", "x2"]) == ""
    assert cp([]) == ""


def test_compact_lowerdirs():
    opts = ["index=off", "lowerdir=/s/snapshots/12/fs:/s/snapshots/3/fs", "upperdir=/s/u"]
    assert mount.compact_lowerdirs(opts) == \
        ("/s/snapshots", ["index=off", "lowerdir=12/fs:3/fs", "upperdir=/s/u"])
    # Nothing to gain or nothing shared: unchanged.
    for o in (["lowerdir=/s/snapshots/1/fs"], ["lowerdir=/a/1:/b/2"], ["upperdir=/u"],
              ["lowerdir=/x1:/x2"]):
        assert mount.compact_lowerdirs(o) == ("", o)


def test_long_overlay_is_mounted_relative_to_the_common_parent(fake, monkeypatch):
    root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
    lowers = ["%s/%d/fs" % (root, n) for n in range(300, 100, -1)]
    opts = ["index=off", "workdir=%s/301/work" % root, "upperdir=%s/301/fs" % root,
            "lowerdir=" + ":".join(lowers)]
    assert len(",".join(opts)) > 3 * mount.PAGE_SIZE
    got = []
    monkeypatch.setattr(mount._native, "mount_in_dir",
                        lambda *a: (got.append(a), fake.stack.append("overlay")))
    assert mount.mount_one(M(type="overlay", source="overlay", options=opts), "/b/rootfs") == 1
    rel = "lowerdir=" + ":".join("%d/fs" % n for n in range(300, 100, -1))
    assert got == [(root, "overlay", "/b/rootfs", "overlay", 0,
                    ",".join(opts[:3] + [rel]))]
    assert fake.calls == []
    # Short ones are left as they are (mountinfo shows the real paths).
    mount.mount_one(M(type="overlay", source="overlay", options=opts[:3] + [
        "lowerdir=" + ":".join(lowers[:3])]), "/b/rootfs")
    assert fake.calls[-1][5].endswith(":".join(lowers[:3]))
    assert len(got) == 1


def test_long_overlay_mount_error(fake, monkeypatch):
    def fail(*a):
        raise OSError(2, "mount overlay on /b/rootfs (in /s) failed")
    monkeypatch.setattr(mount._native, "mount_in_dir", fail)
    opts = ["lowerdir=" + ":".join("/s/%d/fs" % n for n in range(100, 600))]
    with pytest.raises(mount.MountError) as ei:
        mount_all_now([M(type="overlay", source="overlay", options=opts)], "/b/rootfs")
    assert ei.value.errno == 2
    rel = ":".join("%d/fs" % n for n in range(100, 600))
    assert str(ei.value) == ("mount overlay on /b/rootfs: No such file or directory (type overlay, "
                             "flags 0x0, data 'lowerdir=%s', lowerdirs relative to /s)" % rel)


class FakeLoop:
    def __init__(self):
        self.r, self.w = os.pipe()          # stands for the loop device fd
        self.attached = []

    def attach(self, source, readonly=False, direct_io=False):
        self.attached.append((source, readonly, direct_io))
        return self.r, "/dev/loop7"

    def closed(self):
        try:
            os.fstat(self.r)
            return False
        except OSError:
            return True


@pytest.fixture
def fake_loop(monkeypatch):
    from shim import loopdev
    f = FakeLoop()
    monkeypatch.setattr(loopdev, "attach", f.attach)
    yield f
    for fd in (f.r, f.w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_loop_mounts_the_device_and_closes_it(fake, fake_loop):
    mount_all_now([M(type="erofs", source="/s/layer.erofs", options=["ro", "loop"])], "/t")
    assert fake_loop.attached == [("/s/layer.erofs", True, False)]
    assert fake.calls == [("mount", "/dev/loop7", "/t", "erofs", MS_RDONLY, "")]
    # Autoclear: the mount holds the device from now on.
    assert fake_loop.closed()


def test_loop_direct_io_and_rw(fake, fake_loop):
    mount.mount_one(M(type="ext4", source="/img", options=["loop", "direct-io", "noatime",
                                                            "errors=remount-ro"]), "/t")
    assert fake_loop.attached == [("/img", False, True)]
    assert fake.calls == [("mount", "/dev/loop7", "/t", "ext4", MS_NOATIME, "errors=remount-ro")]


def test_loop_mount_failure_releases_the_device(fake, fake_loop):
    fake.fail_at = 1
    with pytest.raises(mount.MountError) as ei:
        mount_all_now([M(type="ext4", source="/img", options=["loop"])], "/t")
    assert fake_loop.closed()           # autoclear detaches it at this close
    assert ei.value.errno == 22
    assert str(ei.value) == ("mount /dev/loop7 (loop device for /img) on /t: Invalid argument "
                             "(type ext4, flags 0x0, data '')")
    assert fake.stack == []


def test_loop_attach_failure(fake, monkeypatch):
    from shim import loopdev

    def fail(*a, **k):
        raise OSError(2, "No such file or directory")
    monkeypatch.setattr(loopdev, "attach", fail)
    with pytest.raises(mount.MountError) as ei:
        mount.mount_one(M(type="ext4", source="/img", options=["loop"]), "/t")
    assert str(ei.value) == "mount /img on /t: attach /img to a loop device: " \
        "No such file or directory"
    assert fake.calls == []


def test_unmount_all_until_einval(fake):
    fake.stack = ["a", "b", "c"]
    mount.unmount_all("/t")
    assert fake.stack == []
    assert len([c for c in fake.calls if c[0] == "umount2"]) == 4


def test_unmount_all_retries_ebusy(fake):
    fake.stack = ["a"]
    fake.umount_errors = [16, 16, 16, 0]
    mount.unmount_all("/t")
    assert fake.stack == []


def test_unmount_all_gives_up_on_persistent_ebusy(fake):
    fake.stack = ["a"]
    fake.umount_errors = [16] * 60
    with pytest.raises(OSError) as ei:
        mount.unmount_all("/t")
    assert ei.value.errno == 16
    assert len(fake.calls) == 50


def test_unmount_all_missing_target(fake):
    fake.umount_errors = [2]
    mount.unmount_all("/does/not/exist")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_real_stacked_tmpfs(tmp_path):
    target = str(tmp_path / "rootfs")
    os.mkdir(target)
    try:
        mount_all_now([M(type="tmpfs", source="tmpfs", options=["size=1m", "nosuid"]),
                       M(type="tmpfs", source="tmpfs", options=["size=2m", "ro"])], target)
        with open("/proc/self/mountinfo") as f:
            n = sum(1 for line in f if line.split()[4] == target)
        assert n == 2
        with pytest.raises(OSError):
            open(os.path.join(target, "x"), "w")     # the top one is ro
    finally:
        mount.unmount_all(target)
    with open("/proc/self/mountinfo") as f:
        assert not any(line.split()[4] == target for line in f)
    mount.unmount_all(target)          # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_real_bind_ro(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    target = str(tmp_path / "rootfs")
    os.mkdir(target)
    try:
        mount_all_now([M(type="bind", source=str(src), options=["rbind", "ro"])], target)
        assert open(os.path.join(target, "f")).read() == "x"
        with pytest.raises(OSError):
            open(os.path.join(target, "g"), "w")
    finally:
        mount.unmount_all(target)
    assert not os.path.exists(os.path.join(target, "f"))


def test_root_path_stays_inside_root(tmp_path):
    root = str(tmp_path)
    os.makedirs(root + "/usr/share")
    os.symlink("/usr", root + "/abs")               # absolute: from root
    os.symlink("../../..", root + "/usr/up")        # climbs no higher than root
    os.symlink("share", root + "/usr/rel")
    os.symlink("loop2", root + "/loop1")
    os.symlink("loop1", root + "/loop2")
    for path, want in [("", ""), ("/", ""), ("/usr", "/usr"), ("abs/share/x", "/usr/share/x"),
                       ("/usr/up/etc", "/etc"), ("/../../etc", "/etc"),
                       ("usr/rel/y", "/usr/share/y"), ("a/../usr", "/usr"),
                       ("/nope/x", "/nope/x"), ("//usr//share/", "/usr/share")]:
        assert mount.root_path(root, path) == root + want, path
    with pytest.raises(OSError) as ei:
        mount.root_path(root, "loop1/x")
    assert ei.value.errno == 40


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_real_targets_below_root_and_recursive_unmount(tmp_path):
    # containerd 2.x: a Mount's target is a path inside the rootfs the
    # mounts before it made; symlinks in it resolve inside that rootfs.
    root = str(tmp_path / "root fs")        # a space: escaped in mountinfo
    os.mkdir(root)
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "other" / "deep").mkdir(parents=True)
    os.symlink("/data", src / "link")
    try:
        mount_all_now([M(type="bind", source=str(src), target="", options=["rbind"]),
                       M(type="tmpfs", source="tmpfs", target="link", options=["size=1m"]),
                       M(type="tmpfs", source="tmpfs", target="/data/../other/deep",
                         options=["size=1m"])], root)
        assert mount.mounts_below(root) == [root + "/other/deep", root + "/data"]
        with open(os.path.join(root, "data", "f"), "w") as f:
            f.write("x")
        assert not (src / "data" / "f").exists()            # on the tmpfs
    finally:
        mount.unmount_recursive(root)
    assert mount.mounts_below(str(tmp_path)) == []
    with open("/proc/self/mountinfo") as f:
        assert not any(" %s " % root.replace(" ", "\\040") in line for line in f)
    mount.unmount_recursive(root)           # idempotent
    mount.unmount_recursive(str(tmp_path / "missing"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_real_target_failure_unmounts_the_others(tmp_path):
    root = str(tmp_path / "rootfs")
    os.mkdir(root)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    with pytest.raises(OSError) as ei:
        mount_all_now([M(type="bind", source=str(src), options=["rbind"]),
                       M(type="tmpfs", source="tmpfs", target="/a", options=["size=1m"]),
                       M(type="tmpfs", source="tmpfs", target="/missing", options=[])], root)
    assert ei.value.errno == 2
    assert mount.mounts_below(str(tmp_path)) == []
    with open("/proc/self/mountinfo") as f:
        assert not any(line.split()[4] == root for line in f)
