"""OCI bundles for tests that drive runc or a shim without containerd."""
import json
import os
import shutil
import subprocess
import tempfile

_spec_cache = []


def busybox_rootfs(path, commands=("sh", "echo", "sleep", "true", "cat", "ls")):
    """A minimal busybox tree at `path` (shared read-only by test bundles)."""
    os.makedirs(os.path.join(path, "bin"))
    shutil.copy2("/bin/busybox", os.path.join(path, "bin", "busybox"))
    for name in commands:
        os.symlink("busybox", os.path.join(path, "bin", name))
    for d in ("proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    return path


def base_spec():
    """A fresh copy of `runc spec`'s default config.json (as a dict)."""
    if not _spec_cache:
        d = tempfile.mkdtemp(prefix="spec-", dir="/run")
        try:
            subprocess.run(["runc", "spec"], cwd=d, check=True, timeout=30)
            with open(os.path.join(d, "config.json")) as f:
                _spec_cache.append(json.load(f))
        finally:
            shutil.rmtree(d)
    return json.loads(json.dumps(_spec_cache[0]))


def write_bundle(bundle, rootfs, args, **process):
    """config.json in `bundle` running `args` on the read-only `rootfs`."""
    os.makedirs(bundle, exist_ok=True)
    spec = base_spec()
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["process"].update(process)
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["hostname"] = os.path.basename(bundle)[:20]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return spec
