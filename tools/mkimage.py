#!/usr/bin/env python3
"""Build a small busybox OCI image, offline, as an OCI image-layout tarball.

    tools/mkimage.py OUT.tar [--name NAME] [--busybox PATH] [--pause]

The rootfs is made from a static busybox (Debian: busybox-static):
/bin/busybox plus a symlink for every applet it reports, /etc/passwd and
/etc/group with root, /tmp, and empty /proc /sys /dev /root dirs.

The output is deterministic (fixed mtimes/owners, sorted entries, gzip
without timestamp): the same busybox binary gives byte-identical tarballs.

Import it with containerd's ctr (1.6+):

    ctr -n NS image import OUT.tar        # -> image NAME
    ctr -n NS run --rm NAME t1 echo hi

NAME (default docker.io/library/pyshim-busybox:latest) is stored in
index.json both as `io.containerd.image.name` (the full reference ctr uses
as-is) and as `org.opencontainers.image.ref.name` (the tag, as the OCI spec
wants it; `ctr image import --base-name REPO` keys on this one).

--pause builds the pause (sandbox) variant for containerd's CRI plugin
instead: the same rootfs, but an entrypoint that keeps running until it gets
SIGTERM or SIGINT (it exits 0 at once; SIGKILL works too) and no Cmd. Its
default NAME is docker.io/library/pyshim-pause:latest.

stdlib only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile

DEFAULT_NAME = "docker.io/library/pyshim-busybox:latest"
PAUSE_NAME = "docker.io/library/pyshim-pause:latest"
# The pause variant's entrypoint. As PID 1 of its PID namespace a process gets
# no default signal action, so a plain `sleep` would ignore SIGTERM: the shell
# traps it, and `wait` returns as soon as a trapped signal arrives.
PAUSE_ENTRYPOINT = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, so output is reproducible
CREATED = "2000-01-01T00:00:00Z"

# Applets tests rely on; the build fails if busybox lacks one of them.
REQUIRED_APPLETS = (
    "sh echo cat sleep true false ls ps head dd sha256sum wc env kill id "
    "printf yes tr mkdir rm grep seq top"
).split()

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def oci_arch():
    m = platform.machine()
    return _ARCH.get(m, m)


def find_busybox():
    for p in ("/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"):
        if os.path.exists(p):
            return p
    raise SystemExit("mkimage: busybox not found (apt-get install busybox-static)")


def applet_paths(busybox):
    """Paths (relative, e.g. 'bin/sh', 'usr/bin/env') of all busybox applets."""
    out = subprocess.run([busybox, "--list-full"], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    paths = sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})
    names = {p.rsplit("/", 1)[-1] for p in paths}
    missing = [a for a in REQUIRED_APPLETS if a not in names]
    if missing:
        raise SystemExit("mkimage: %s lacks applets: %s" % (busybox, " ".join(missing)))
    return [p for p in paths if p != "bin/busybox"]


def _info(name, type_=tarfile.REGTYPE, mode=0o644, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def make_layer(busybox):
    """Return the uncompressed layer tar (bytes)."""
    with open(busybox, "rb") as f:
        bb = f.read()
    dirs = {"bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "usr/bin",
            "usr/sbin", "sbin", "var", "home"}
    links = applet_paths(busybox)
    for p in links:
        d = os.path.dirname(p)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    entries = []  # (path, TarInfo, data)
    for d in dirs:
        mode = 0o1777 if d == "tmp" else (0o700 if d == "root" else 0o755)
        entries.append((d, _info(d + "/", tarfile.DIRTYPE, mode), None))
    entries.append(("bin/busybox", _info("bin/busybox", mode=0o755, size=len(bb)), bb))
    for p in links:
        entries.append((p, _info(p, tarfile.SYMTYPE, 0o777, linkname="/bin/busybox"), None))
    for path, text in (("etc/passwd", PASSWD), ("etc/group", GROUP),
                       ("etc/hostname", "pyshim\n"),
                       ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")):
        data = text.encode()
        entries.append((path, _info(path, size=len(data)), data))
    # Parents before children: sort by path components.
    entries.sort(key=lambda e: e[0].split("/"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for _, ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    # mtime=0 and no file name: deterministic gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as g:
        g.write(data)
    return buf.getvalue()


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(out, name=None, busybox=None, pause=False):
    """Write the image tarball `out`; returns its name. pause=True: the pause
    variant (PAUSE_ENTRYPOINT, no Cmd)."""
    if name is None:
        name = PAUSE_NAME if pause else DEFAULT_NAME
    busybox = busybox or find_busybox()
    layer = make_layer(busybox)
    layer_gz = gzip_bytes(layer)
    arch = oci_arch()
    config = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]},
        "history": [{"created": CREATED, "created_by": "tools/mkimage.py (busybox)"}],
    }
    if pause:
        del config["config"]["Cmd"]
        config["config"]["Entrypoint"] = list(PAUSE_ENTRYPOINT)
        config["history"][0]["created_by"] = "tools/mkimage.py --pause (busybox)"
    config_b = _json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config_b), "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(layer_gz), "size": len(layer_gz)}],
    }
    manifest_b = _json(manifest)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _sha(manifest_b), "size": len(manifest_b),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }
    files = [
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _json(index)),
    ]
    blobs = sorted({_sha(b)[7:]: b for b in (config_b, manifest_b, layer_gz)}.items())
    tmp = out + ".tmp.%d" % os.getpid()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for d in ("blobs/", "blobs/sha256/"):
                tf.addfile(_info(d, tarfile.DIRTYPE, 0o755))
            for digest, data in blobs:
                p = "blobs/sha256/" + digest
                tf.addfile(_info(p, size=len(data)), io.BytesIO(data))
            for p, data in files:
                tf.addfile(_info(p, size=len(data)), io.BytesIO(data))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output tarball (OCI image layout)")
    ap.add_argument("--name", default=None,
                    help="image reference stored in index.json (default %s, or %s with --pause)"
                    % (DEFAULT_NAME, PAUSE_NAME))
    ap.add_argument("--busybox", default=None, help="static busybox binary (default /bin/busybox)")
    ap.add_argument("--pause", action="store_true",
                    help="build the pause (sandbox) image for containerd's CRI plugin")
    args = ap.parse_args(argv)
    print(build(args.out, args.name, args.busybox, args.pause))
    return 0


if __name__ == "__main__":
    sys.exit(main())
