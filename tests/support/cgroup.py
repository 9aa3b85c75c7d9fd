"""Which cgroups the tests run on, and with which runtime binary and cgroup driver.

Two environment variables choose what the integration tests ask containerd's
runtimes for (both default to what a Debian bookworm host has):

  PYSHIM_TEST_CGROUP_DRIVER   cgroupfs (default) | systemd: SystemdCgroup of
                              the runc options, and systemd cgroup paths
                              (`slice:prefix:name`) for the containers
  PYSHIM_TEST_RUNC            runc (default) | crun | a path: BinaryName of the
                              runc options (the OCI runtime the shims call)

    is_v2()                  unified cgroup v2 host (else v1 / hybrid)
    cgroup_driver(), systemd_cgroup(), runc_binary(), runc_is_default()
    proc_cgroup(pid[, ctl])  absolute cgroup dir of a live process (v2 / v1 ctl)
    v2_file(dir, name)       read a cgroup v2 file under dir (str, stripped)
    slice_dir(slice)         /sys/fs/cgroup path systemd gives a slice unit
    stop_slice(slice)        systemctl stop a test's slice (and all below it)

stdlib only.
"""
import os
import shutil
import subprocess

ROOT = "/sys/fs/cgroup"
CGROUP_DRIVER_ENV = "PYSHIM_TEST_CGROUP_DRIVER"
RUNC_ENV = "PYSHIM_TEST_RUNC"
DRIVERS = ("cgroupfs", "systemd")


def is_v2():
    """True on a unified (cgroup v2 only) host."""
    return os.path.exists(ROOT + "/cgroup.controllers")


def cgroup_driver():
    d = os.environ.get(CGROUP_DRIVER_ENV, "").strip() or "cgroupfs"
    if d not in DRIVERS:
        raise ValueError("%s=%s: want one of %s" % (CGROUP_DRIVER_ENV, d, ", ".join(DRIVERS)))
    return d


def systemd_cgroup():
    return cgroup_driver() == "systemd"


def runc_name():
    return os.environ.get(RUNC_ENV, "").strip() or "runc"


def runc_binary():
    """Absolute path of the OCI runtime the tests ask for (name if not found)."""
    name = runc_name()
    return shutil.which(name) or name


def runc_is_default():
    return os.path.basename(runc_name()) == "runc"


def proc_cgroup(pid, controller=None):
    """The cgroup dir of a live process: v2 (controller None) its `0::` line;
    v1 that of `controller` (/sys/fs/cgroup/<controller>/<path>)."""
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            n, ctrls, path = line.rstrip("\n").split(":", 2)
            if (controller is None and n == "0") or controller in ctrls.split(","):
                base = ROOT if controller is None else os.path.join(ROOT, controller)
                return os.path.normpath(base + "/" + path.lstrip("/"))
    raise FileNotFoundError("process %d has no cgroup %s entry" % (pid, controller or "v2"))


def v2_file(d, name):
    with open(os.path.join(d, name)) as f:
        return f.read().strip()


def slice_dir(name):
    """systemd's cgroup of slice unit `name`: each dash is a level, as
    runc's systemd driver expands it: a-b.slice -> /a.slice/a-b.slice."""
    assert name.endswith(".slice"), name
    base = name[:-len(".slice")]
    parts = base.split("-")
    path = ""
    for i in range(1, len(parts) + 1):
        path += "/" + "-".join(parts[:i]) + ".slice"
    return ROOT + path


def systemd_scope_dir(slice_, prefix, name):
    """The cgroup runc's systemd driver makes for cgroupsPath slice:prefix:name."""
    return "%s/%s-%s.scope" % (slice_dir(slice_), prefix, name)


def stop_slice(name):
    """Stop a test's slice unit (systemd stops what is left below it and
    removes the cgroups). Returns problems: units that were still there."""
    if not os.path.isdir(slice_dir(name)):
        return []
    problems = []
    for _d, dirs, _ in os.walk(slice_dir(name)):
        problems += ["systemd unit left: %s" % x for x in dirs if x.endswith(".scope")]
    r = subprocess.run(["systemctl", "stop", name], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    if r.returncode != 0:
        problems.append("systemctl stop %s: %s" % (name, r.stdout.strip()))
    return problems
