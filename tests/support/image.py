"""The offline busybox test image (built by tools/mkimage.py), cached on disk.

The tarball is deterministic, so it is cached under
$PYSHIM_CACHE_DIR, else $XDG_CACHE_HOME/pyshim, else ~/.cache/pyshim,
keyed by the hashes of tools/mkimage.py and the busybox binary.

pause_tarball() is the pause (sandbox) variant for containerd's CRI plugin
(`tools/mkimage.py --pause`): same rootfs, an entrypoint that runs until
SIGTERM, ref PAUSE_REF.
"""
import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MKIMAGE = os.path.join(REPO, "tools", "mkimage.py")
IMAGE_REF = "docker.io/library/pyshim-busybox:latest"
PAUSE_REF = "docker.io/library/pyshim-pause:latest"


def cache_dir():
    d = os.environ.get("PYSHIM_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pyshim")
    os.makedirs(d, exist_ok=True)
    return d


def _busybox():
    for p in ("/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"):
        if os.path.exists(p):
            return p
    raise RuntimeError("busybox not found: apt-get install busybox-static")


def busybox_tarball(name=IMAGE_REF, pause=False):
    """Path of the OCI tarball for image `name`; built on first use.
    pause=True: the pause variant (see pause_tarball)."""
    h = hashlib.sha256()
    for p in (MKIMAGE, _busybox()):
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    h.update(name.encode())
    if pause:
        h.update(b"\0pause")
    path = os.path.join(cache_dir(), "%s-oci-%s.tar" % ("pause" if pause else "busybox",
                                                        h.hexdigest()[:16]))
    if not os.path.exists(path):
        # mkimage writes to a temp file and renames: concurrent builders are safe.
        argv = [sys.executable, MKIMAGE, path, "--name", name]
        if pause:
            argv.append("--pause")
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return path


def pause_tarball(name=PAUSE_REF):
    """Path of the OCI tarball of the pause image `name`; built on first use."""
    return busybox_tarball(name, pause=True)
