"""shim.mount_helper: the argv of mount.fuse / mount.fuse3 (containerd's
mount package's), and running it through the reaper, with fake helpers (shell
scripts on PATH). The real helper, fuse-overlayfs under a container, is in
tests/integration/test_rootfs_mounts.py."""
import os
import stat
import textwrap
from types import SimpleNamespace as M

import pytest

from shim import mount, mount_helper
from shim.loop import get_loop
from shim.reaper import Reaper

loop = get_loop()


@pytest.fixture(scope="module")
def reaper():
    return Reaper(loop, subreaper=False)


def run(coro, timeout=10):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    """A PATH dir first on PATH; helpers(name, body) writes a script there."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", "%s:%s" % (d, os.environ.get("PATH", "")))

    def write(name, body):
        p = d / name
        p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
        return p
    return write


def test_argv_per_type():
    assert mount_helper.helper_argv(
        "fuse3.fuse-overlayfs", "overlay", ["lowerdir=/l2:/l1", "upperdir=/u", "workdir=/w"],
        "/b/rootfs") == ["mount.fuse3", "overlay", "/b/rootfs", "-o", "lowerdir=/l2:/l1",
                         "-o", "upperdir=/u", "-o", "workdir=/w", "-t", "fuse-overlayfs"]
    assert mount_helper.helper_argv("fuse.sshfs", "h:/", [], "/t") == [
        "mount.fuse", "h:/", "/t", "-t", "sshfs"]
    assert mount.is_fuse("fuse3.x") and mount.is_fuse("fuse.x")
    assert not mount.is_fuse("fuseblk") and not mount.is_fuse("overlay")
    with pytest.raises(ValueError):
        mount_helper.helper_argv("overlay", "overlay", [], "/t")


def test_mount_all_runs_the_helper(reaper, helpers, tmp_path):
    args = tmp_path / "args"
    helpers("mount.fuse3", """\
        for a in "$@"; do echo "$a"; done > %s
        """ % args)
    target = tmp_path / "rootfs"
    target.mkdir()
    run(mount.mount_all([M(type="fuse3.fuse-overlayfs", source="overlay",
                           options=["lowerdir=/l", "upperdir=/u,workdir=/w"])],
                        str(target), reaper))
    assert args.read_text().split("\n")[:-1] == [
        "overlay", str(target), "-o", "lowerdir=/l", "-o", "upperdir=/u,workdir=/w",
        "-t", "fuse-overlayfs"]


def test_helper_failure_says_what_it_printed(reaper, helpers):
    helpers("mount.fuse3", """\
        echo "fuse: bad mount point \\"$2\\": No such file" >&2
        exit 3
        """)
    with pytest.raises(mount.MountError) as ei:
        run(mount_helper.run(reaper, ["mount.fuse3", "src", "/nope", "-o", "ro", "-t", "x"]))
    assert ei.value.errno == 22
    assert str(ei.value) == (
        'mount helper [mount.fuse3 [src /nope -o ro -t x]] failed: '
        '"fuse: bad mount point \\"/nope\\": No such file\\n": exit status 3')


def test_missing_helper(reaper, helpers):
    with pytest.raises(mount.MountError) as ei:
        run(mount_helper.run(reaper, ["mount.fuse-nowhere", "s", "/t", "-t", "x"]))
    assert str(ei.value) == ('mount helper [mount.fuse-nowhere [s /t -t x]] failed: "": '
                             'exec: "mount.fuse-nowhere": executable file not found in $PATH')


def test_daemon_holding_the_output_does_not_hold_the_mount(reaper, helpers, tmp_path):
    # A FUSE daemon that keeps the helper's stdout open (one that does not
    # detach its stdio): the mount is done when the helper exits, not at EOF.
    pidfile = tmp_path / "daemon.pid"
    helpers("mount.fuse", """\
        sleep 60 &
        echo $! > %s
        echo mounted
        """ % pidfile)
    try:
        run(mount_helper.run(reaper, ["mount.fuse", "s", "/t", "-t", "x"]), timeout=5)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)


def test_output_quoted_as_go_does():
    assert mount_helper.go_quote('a "b"\\ c\n\t\x01\x7f é \u200b \U0001F600') == (
        '"a \\"b\\"\\\\ c\\n\\t\\x01\\x7f é \\u200b \U0001F600"')
