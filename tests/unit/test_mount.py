"""shim.mount: option parsing (spec runc.md §4), mount_all/unmount_all with
a fake mount(2)/umount2(2), and (as root) a real stacked tmpfs."""
import os
from types import SimpleNamespace as M

import pytest

from shim import mount
from shim.mount import (MS_BIND, MS_NOATIME, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY,
                        MS_REC, MS_RELATIME, MS_REMOUNT, MS_SYNCHRONOUS, parse_options)


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
    mount.mount_all(mounts, "/b/rootfs")
    assert fake.calls == [
        ("mount", "overlay", "/b/rootfs", "overlay", 0, "index=off,lowerdir=/l"),
        ("mount", "/src", "/b/rootfs", "bind", MS_BIND | MS_REC | MS_RDONLY, ""),
        ("mount", "", "/b/rootfs", "", MS_BIND | MS_REC | MS_RDONLY | MS_REMOUNT, ""),
    ]
    assert fake.stack == ["overlay", "/src"]


def test_mount_all_undoes_on_failure(fake):
    fake.fail_at = 3
    mounts = [M(type="tmpfs", source="a", options=[]),
              M(type="tmpfs", source="b", options=[]),
              M(type="tmpfs", source="c", options=[])]
    with pytest.raises(OSError):
        mount.mount_all(mounts, "/t")
    assert fake.stack == []
    assert [c[0] for c in fake.calls] == ["mount", "mount", "mount", "umount2", "umount2"]


def test_mount_rejects_long_data_and_unsupported(fake):
    with pytest.raises(OSError) as ei:
        mount.mount_all([M(type="overlay", source="overlay",
                           options=["lowerdir=" + "/x" * 4000])], "/t")
    assert str(ei.value) == "mount options is too long"
    with pytest.raises(OSError, match="loop"):
        mount.mount_all([M(type="ext4", source="/img", options=["loop"])], "/t")
    with pytest.raises(OSError, match="fuse"):
        mount.mount_all([M(type="fuse.sshfs", source="x:/", options=[])], "/t")
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
        mount.mount_all([M(type="tmpfs", source="tmpfs", options=["size=1m", "nosuid"]),
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
        mount.mount_all([M(type="bind", source=str(src), options=["rbind", "ro"])], target)
        assert open(os.path.join(target, "f")).read() == "x"
        with pytest.raises(OSError):
            open(os.path.join(target, "g"), "w")
    finally:
        mount.unmount_all(target)
    assert not os.path.exists(os.path.join(target, "f"))
