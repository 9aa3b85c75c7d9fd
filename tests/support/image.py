"""The offline busybox test image (built by tools/mkimage.py), cached on disk.

The tarball is deterministic, so it is cached under
$PYSHIM_CACHE_DIR, else $XDG_CACHE_HOME/pyshim, else ~/.cache/pyshim,
keyed by the hashes of tools/mkimage.py and the busybox binary.
"""
import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MKIMAGE = os.path.join(REPO, "tools", "mkimage.py")
IMAGE_REF = "docker.io/library/pyshim-busybox:latest"


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


def busybox_tarball(name=IMAGE_REF):
    """Path of the OCI tarball for image `name`; built on first use."""
    h = hashlib.sha256()
    for p in (MKIMAGE, _busybox()):
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    h.update(name.encode())
    path = os.path.join(cache_dir(), "busybox-oci-%s.tar" % h.hexdigest()[:16])
    if not os.path.exists(path):
        # mkimage writes to a temp file and renames: concurrent builders are safe.
        subprocess.run([sys.executable, MKIMAGE, path, "--name", name], check=True,
                       stdout=subprocess.DEVNULL)
    return path
