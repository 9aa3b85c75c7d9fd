"""shim.loopdev: attaching image files to loop devices (the `loop` mount
option). Real loop devices, as root; every device attached here is set to
autoclear and detached again by the test's own close/unmount."""
import glob
import os
import subprocess
import time
from types import SimpleNamespace as M

import pytest

from shim import _native, loopdev, mount
from support.helpers import mount_all_now

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                                reason="needs root and /dev/loop-control")


def attached(backing):
    """Loop devices whose backing file is `backing`."""
    out = []
    for p in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(p) as f:
                if f.read().strip() == backing:
                    out.append(p.split("/")[3])
        except OSError:
            pass        # detached meanwhile
    return out


def wait_detached(backing, timeout=5.0):
    deadline = time.monotonic() + timeout
    while attached(backing) and time.monotonic() < deadline:
        time.sleep(0.02)
    return attached(backing)


def sysattr(dev, name):
    with open("/sys/block/%s/loop/%s" % (os.path.basename(dev), name)) as f:
        return f.read().strip()


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    yield str(p)
    assert wait_detached(str(p)) == []


def test_attach_read_only_autoclear(image):
    before = open_fds()
    fd, dev = loopdev.attach(image, readonly=True)
    try:
        assert dev.startswith("/dev/loop")
        assert attached(image) == [os.path.basename(dev)]
        assert sysattr(dev, "autoclear") == "1"
        with open("/sys/block/%s/ro" % os.path.basename(dev)) as f:
            assert f.read().strip() == "1"
    finally:
        os.close(fd)
    # Autoclear: the last close detaches it.
    assert wait_detached(image) == []
    assert open_fds() == before


def test_attach_read_write(image):
    fd, dev = loopdev.attach(image)
    try:
        with open("/sys/block/%s/ro" % os.path.basename(dev)) as f:
            assert f.read().strip() == "0"
    finally:
        os.close(fd)


def test_busy_device_is_skipped(image, monkeypatch):
    # Another attacher won the race for the free device: take the next one.
    real = _native.loop_configure
    calls = []

    def configure(*a):
        calls.append(a)
        if len(calls) == 1:
            raise OSError(16, "LOOP_CONFIGURE failed")
        return real(*a)
    monkeypatch.setattr(loopdev._native, "loop_configure", configure)
    before = open_fds()
    fd, dev = loopdev.attach(image, readonly=True)
    os.close(fd)
    assert len(calls) == 2
    assert open_fds() == before


def test_errors(image, monkeypatch, tmp_path):
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        loopdev.attach(str(tmp_path / "missing.img"))

    def configure(*a):
        raise OSError(22, "LOOP_CONFIGURE failed")
    monkeypatch.setattr(loopdev._native, "loop_configure", configure)
    with pytest.raises(OSError) as ei:
        loopdev.attach(image)
    assert ei.value.errno == 22 and ei.value.strerror.startswith("LOOP_CONFIGURE failed on /dev/loop")
    assert open_fds() == before


@pytest.mark.skipif(subprocess.run(["which", "mkfs.ext4"], capture_output=True).returncode,
                    reason="mkfs.ext4 missing (apt-get install e2fsprogs)")
def test_loop_mount_and_failed_mount_release_the_device(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("from the image\n")
    img = str(tmp_path / "fs.img")
    subprocess.run(["mkfs.ext4", "-q", "-d", str(src), img, "8M"], check=True)
    target = str(tmp_path / "t")
    os.mkdir(target)
    try:
        mount_all_now([M(type="ext4", source=img, options=["loop", "ro"])], target)
        with open(os.path.join(target, "hello")) as f:
            assert f.read() == "from the image\n"
        (dev,) = attached(img)
        assert sysattr(dev, "autoclear") == "1"
    finally:
        mount.unmount_all(target)
    assert wait_detached(img) == []
    # A mount that fails (wrong type) leaves no device behind.
    with pytest.raises(mount.MountError) as ei:
        mount_all_now([M(type="xfs", source=img, options=["loop", "ro"])], target)
    assert str(ei.value).startswith("mount /dev/loop")
    assert "(loop device for %s) on %s: " % (img, target) in str(ei.value)
    assert wait_detached(img) == []
    assert not os.path.ismount(target)
