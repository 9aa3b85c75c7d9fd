"""shim.idmap: uidmap=/gidmap= parsing, the idmapped overlay and bind
sequences with fake syscalls, and (as root, where the kernel can) a real
idmapped overlay."""
import os
from types import SimpleNamespace as M

import pytest

from shim import _native, idmap, mount
from shim.mount import MNT_DETACH, MountError
from support.helpers import mount_all_now

UIDS = "uidmap=0:100000:65536"
GIDS = "gidmap=0:200000:65536"


def test_map_text():
    assert idmap.map_text("0:100000:65536") == "0 100000 65536\n"
    assert idmap.map_text("0:1000:1,1:100001:65535") == "0 1000 1\n1 100001 65535\n"


@pytest.mark.parametrize("bad", ["", "0:1", "0:1:2:3", "a:1:2", "-1:1:2", "0:1:-2", "0:+1:2",
                                 "0:1:2,", "0: 1:2", "0:1:0"])
def test_map_text_refuses(bad):
    with pytest.raises(MountError) as ei:
        idmap.map_text(bad, "gidmap")
    assert ei.value.errno == 22 and str(ei.value).startswith("gidmap=%s: " % bad)


class Fakes:
    def __init__(self):
        self.calls = []
        self.userns = None
        self.fail = None            # name of the call that fails

    def _call(self, name, *a):
        self.calls.append((name,) + a)
        if self.fail == name:
            raise OSError(22, "%s failed" % name)

    def userns_fd(self, uids, gids):
        self._call("userns", uids, gids)
        r, w = os.pipe()
        os.close(w)
        self.userns = r
        return r

    def idmap_clone(self, src, target, fd, attr=0):
        assert fd == self.userns
        self._call("idmap", src, target, attr)

    def mount(self, src, target, fstype, flags, data):
        self._call("mount", src, target, fstype, flags, data)

    def umount2(self, target, flags=0):
        self._call("umount2", target, flags)

    def userns_closed(self):
        try:
            os.fstat(self.userns)
        except OSError:
            return True
        os.close(self.userns)
        return False


@pytest.fixture
def fake(monkeypatch):
    f = Fakes()
    for name in ("userns_fd", "idmap_clone", "mount", "umount2"):
        monkeypatch.setattr(_native, name, getattr(f, name))
    return f


def test_overlay_lowers_go_through_an_idmapped_clone(fake, tmp_path):
    target = str(tmp_path / "rootfs")
    opts = ["index=off", "workdir=/s/snapshots/9/work", "upperdir=/s/snapshots/9/fs",
            "lowerdir=/s/snapshots/8/fs:/s/snapshots/7/fs", UIDS, GIDS]
    assert mount.mount_one(M(type="overlay", source="overlay", options=opts), target) == 1
    tmp = fake.calls[1][2]
    assert os.path.dirname(tmp) == str(tmp_path)
    assert fake.calls == [
        ("userns", "0 100000 65536\n", "0 200000 65536\n"),
        ("idmap", "/s/snapshots", tmp, idmap.MOUNT_ATTR_RDONLY),
        ("mount", "overlay", target, "overlay", 0,
         "index=off,workdir=/s/snapshots/9/work,upperdir=/s/snapshots/9/fs,"
         "lowerdir=%s/8/fs:%s/7/fs" % (tmp, tmp)),
        ("umount2", tmp, MNT_DETACH),
    ]
    assert os.listdir(str(tmp_path)) == []          # the clone's dir is gone
    assert fake.userns_closed()


@pytest.mark.parametrize("step", ["idmap", "mount"])
def test_overlay_failure_cleans_up(fake, tmp_path, step):
    fake.fail = step
    target = str(tmp_path / "rootfs")
    with pytest.raises(MountError) as ei:
        mount_all_now([M(type="overlay", source="overlay",
                         options=["lowerdir=/s/1/fs:/s/2/fs", UIDS, GIDS])], target)
    assert ei.value.errno == 22
    if step == "idmap":
        assert str(ei.value) == ("mount overlay on %s: idmap /s: idmap failed: "
                                 "Invalid argument" % target)
        assert [c[0] for c in fake.calls] == ["userns", "idmap"]
    else:
        assert [c[0] for c in fake.calls] == ["userns", "idmap", "mount", "umount2"]
    assert os.listdir(str(tmp_path)) == []
    assert fake.userns_closed()


def test_other_types_are_idmapped_on_top(fake, tmp_path):
    target = str(tmp_path / "rootfs")
    n = mount.mount_one(M(type="bind", source="/src", options=["rbind", UIDS, GIDS]), target)
    assert n == 2
    assert fake.calls[1:] == [("mount", "/src", target, "bind", mount.MS_BIND | mount.MS_REC, ""),
                              ("idmap", target, target, 0)]
    assert fake.userns_closed()
    # A failed idmap undoes the mount under it.
    fake.calls = []
    fake.fail = "idmap"
    with pytest.raises(MountError):
        mount.mount_one(M(type="bind", source="/src", options=["rbind", UIDS, GIDS]), target)
    assert [c[0] for c in fake.calls] == ["userns", "mount", "idmap", "umount2"]


def test_refused_before_any_syscall(fake, tmp_path):
    target = str(tmp_path / "rootfs")
    cases = [
        (["lowerdir=/s/1:/s/2", UIDS], "uidmap= and gidmap= must be given together"),
        (["lowerdir=/s/1:/s/2", "uidmap=0:1:x", GIDS], "uidmap=0:1:x: mappings must be"),
        (["upperdir=/s/u", UIDS, GIDS], "idmapped overlay without lowerdir="),
        (["lowerdir=/a/1:/b/2", UIDS, GIDS], "no common parent"),
    ]
    for opts, msg in cases:
        with pytest.raises(MountError, match=msg):
            mount.mount_one(M(type="overlay", source="overlay", options=opts), target)
    assert [c[0] for c in fake.calls] == ["userns", "userns"]   # the last two cases
    assert os.listdir(str(tmp_path)) == []


def test_user_namespace_failure(fake, monkeypatch, tmp_path):
    def fail(u, g):
        raise OSError(28, "write /proc/1/uid_map failed")
    monkeypatch.setattr(_native, "userns_fd", fail)
    with pytest.raises(MountError) as ei:
        mount.mount_one(M(type="overlay", source="overlay",
                          options=["lowerdir=/s/1:/s/2", UIDS, GIDS]), str(tmp_path / "r"))
    assert str(ei.value) == ("mount overlay on %s/r: user namespace for uidmap=0:100000:65536 "
                             "gidmap=0:200000:65536: write /proc/1/uid_map failed: No space left "
                             "on device" % tmp_path)


# ---- real kernel ------------------------------------------------------------

def idmap_unsupported(path):
    """Why this kernel/filesystem cannot idmap a mount of `path` (None if it can)."""
    if os.geteuid() != 0:
        return "needs root"
    probe = os.path.join(path, "probe")
    os.mkdir(probe)
    try:
        fd = _native.userns_fd("0 100000 65536\n", "0 100000 65536\n")
    except OSError as e:
        os.rmdir(probe)
        return "cannot create a user namespace: %s" % e
    try:
        _native.idmap_clone(path, probe, fd)
        _native.umount2(probe, MNT_DETACH)
        return None
    except OSError as e:
        return "idmapped mounts unsupported here: %s (errno %d)" % (e.strerror, e.errno)
    finally:
        os.close(fd)
        os.rmdir(probe)


def children():
    """Pids whose parent is this process, zombies included."""
    me = os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == me:
                out.add(int(d))
    return out


def test_userns_fd_is_a_user_namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = set(os.listdir("/proc/self/fd"))
    kids = children()
    fd = _native.userns_fd("0 100000 65536\n", "0 200000 10\n")
    try:
        assert os.readlink("/proc/self/fd/%d" % fd).startswith("user:[")
        assert os.readlink("/proc/self/fd/%d" % fd) != os.readlink("/proc/self/ns/user")
    finally:
        os.close(fd)
    assert set(os.listdir("/proc/self/fd")) == before
    assert children() == kids           # the helper child was reaped
    with pytest.raises(OSError) as ei:
        _native.userns_fd("0 100000 65536\n0 1 1\n", "0 0 1\n")      # overlapping
    assert ei.value.errno == 22


def test_real_idmapped_overlay(tmp_path):
    why = idmap_unsupported(str(tmp_path))
    if why:
        pytest.skip(why)
    s = tmp_path / "snapshots"
    for n in (1, 2):
        (s / str(n) / "fs").mkdir(parents=True)
    (s / "1" / "fs" / "root-owned").write_text("r")
    (s / "2" / "fs" / "user-owned").write_text("u")
    os.chown(s / "2" / "fs" / "user-owned", 1000, 1001)
    for d in ("up", "work", "rootfs"):
        (tmp_path / d).mkdir()
    target = str(tmp_path / "rootfs")
    opts = ["workdir=%s/work" % tmp_path, "upperdir=%s/up" % tmp_path,
            "lowerdir=%s/2/fs:%s/1/fs" % (s, s), UIDS, GIDS]
    try:
        mount_all_now([M(type="overlay", source="overlay", options=opts)], target)
        st = os.stat(os.path.join(target, "root-owned"))
        assert (st.st_uid, st.st_gid) == (100000, 200000)
        st = os.stat(os.path.join(target, "user-owned"))
        assert (st.st_uid, st.st_gid) == (101000, 201001)
        # The layers themselves are untouched, and no clone is left mounted.
        assert os.stat(s / "2" / "fs" / "user-owned").st_uid == 1000
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if str(tmp_path) in line]
        assert mounts == [target]
    finally:
        mount.unmount_all(target)
    assert sorted(os.listdir(tmp_path)) == ["rootfs", "snapshots", "up", "work"]


def test_real_idmapped_bind(tmp_path):
    # The overlay snapshotter's single-layer case: a bind mount with the maps.
    why = idmap_unsupported(str(tmp_path))
    if why:
        pytest.skip(why)
    src = tmp_path / "fs"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 7, 8)
    target = str(tmp_path / "rootfs")
    os.mkdir(target)
    try:
        mount_all_now([M(type="bind", source=str(src), options=["rbind", "ro", UIDS, GIDS])],
                      target)
        st = os.stat(os.path.join(target, "f"))
        assert (st.st_uid, st.st_gid) == (100007, 200008)
        with pytest.raises(OSError):
            open(os.path.join(target, "g"), "w")        # still read-only
    finally:
        mount.unmount_all(target)
    assert not os.path.ismount(target)
    assert os.stat(src / "f").st_uid == 7
