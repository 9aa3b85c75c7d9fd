"""A criu that can checkpoint containers here, for the checkpoint tests.

    d = criu_dir()                          # raises CriuUnavailable
    c = Containerd(extra_path=[d])          # runc runs `criu` from PATH

criu_dir() returns a directory whose `criu` is criu >= 4 and passes
`criu check`, in this order:

  1. $PYSHIM_CRIU_DIR (a directory holding such a `criu`);
  2. the system's criu when it qualifies (Debian trixie and later, e.g.
     the cgroup v2 node, where .ci/v2node apt-get installs it): a
     directory in the cache with a `criu` symlink to it;
  3. Debian trixie's criu unpacked privately under
     <cache_dir()>/criu/trixie/, built once: a private apt configuration
     (own sources list, lists, cache and an empty dpkg status) with this
     machine's Debian archive entry (URI and Signed-By keyring, from
     support.cri.debian_archive()) and the suite swapped to trixie resolves
     criu's closure (`apt-get -s install --no-install-recommends criu`),
     `apt-get download`s it, `dpkg -x`es every package into root/, and
     bin/criu runs root's criu through root's own loader and libraries:

         exec ROOT/usr/lib/<triplet>/ld-linux-*.so.* --library-path \\
              ROOT/usr/lib/<triplet> ROOT/usr/sbin/criu "$@"

     Nothing on the machine is installed or replaced. A lock file makes
     concurrent runs build it once; `.complete` marks a finished build (the
     apt lists and .debs are removed then).

Bookworm's criu 3.17 cannot even `criu check` on newer kernels
("kerndat_vdso_fill_symtable failed"); trixie's 4.1 can, and works on a
bookworm host this way. criu also needs `iptables-restore` on PATH to lock
a container's network during dump (Debian package iptables): criu_dir()
checks for it too.

stdlib only; building needs root, apt-get, dpkg and the network.
"""
import fcntl
import glob
import os
import re
import shutil
import subprocess
import tempfile

from .image import cache_dir

MIN_VERSION = (4, 0)
SUITE = "trixie"
ENV = "PYSHIM_CRIU_DIR"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class CriuUnavailable(RuntimeError):
    """No working criu >= 4 can be had here (the message says why)."""


_found = None


def _run(argv, timeout=120, **kw):
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                          timeout=timeout, **kw)


def parse_version(text):
    """(major, minor[, patch]) from `criu --version` output ("Version: 4.1.1"),
    or None."""
    m = re.search(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "", re.M)
    if not m:
        return None
    return tuple(int(x) for x in m.groups() if x is not None)


def check(criu):
    """(version, problem) of the criu executable `criu`: problem is None when
    it is >= MIN_VERSION and `criu check` says it looks good."""
    try:
        r = _run([criu, "--version"], timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return None, "%s --version: %s" % (criu, e)
    version = parse_version(r.stdout)
    if r.returncode != 0 or version is None:
        return None, "%s --version failed: %s" % (criu, r.stdout.strip()[-500:])
    if version < MIN_VERSION:
        return version, "%s is criu %s, the tests need >= %s" % (
            criu, ".".join(map(str, version)), ".".join(map(str, MIN_VERSION)))
    try:
        r = _run([criu, "check"], timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return version, "%s check: %s" % (criu, e)
    if r.returncode != 0:
        return version, "`%s check` failed: %s" % (criu, r.stdout.strip()[-1000:])
    return version, None


def criu_dir():
    """A directory holding a working `criu` (>= 4); see the module docstring.
    Raises CriuUnavailable with the reason. The result is remembered."""
    global _found
    if _found is None:
        if os.geteuid() != 0:
            raise CriuUnavailable("criu needs root")
        if shutil.which("iptables-restore", path=_system_path()) is None:
            raise CriuUnavailable("iptables-restore not found: criu locks the container's "
                                  "network with it (apt-get install iptables)")
        _found = _find()
    return _found


def _system_path():
    return os.pathsep.join([p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
                           + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                              "/sbin", "/bin"])


def _find():
    env = os.environ.get(ENV, "").strip()
    if env:
        _, problem = check(os.path.join(env, "criu"))
        if problem:
            raise CriuUnavailable("%s=%s: %s" % (ENV, env, problem))
        return os.path.abspath(env)
    base = os.path.join(cache_dir(), "criu")
    os.makedirs(base, exist_ok=True)
    system = shutil.which("criu", path=_system_path())
    if system:
        _, problem = check(system)
        if problem is None:
            return _link_dir(base, os.path.realpath(system))
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # concurrent runs: one builds, the others wait
        try:
            return _private(base)
        except (OSError, subprocess.SubprocessError) as e:
            raise CriuUnavailable("building the private %s criu failed: %s" % (SUITE, e))


def _link_dir(base, target):
    """base/system/criu -> target (the dir alone goes on PATH, not /usr/sbin)."""
    d = os.path.join(base, "system")
    os.makedirs(d, exist_ok=True)
    link = os.path.join(d, "criu")
    if not (os.path.islink(link) and os.readlink(link) == target):
        tmp = "%s.%d" % (link, os.getpid())
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return d


def _private(base):
    """base/SUITE/bin (with the wrapper), built unless complete. Under the lock."""
    top = os.path.join(base, SUITE)
    bin_dir = os.path.join(top, "bin")
    criu = os.path.join(bin_dir, "criu")
    if os.path.exists(os.path.join(top, ".complete")):
        _, problem = check(criu)
        if problem is None:
            return bin_dir
        raise CriuUnavailable("the private %s criu in %s does not work: %s (remove that "
                              "dir to build it again)" % (SUITE, top, problem))
    shutil.rmtree(top, ignore_errors=True)     # an interrupted build
    os.makedirs(top)
    root = os.path.join(top, "root")
    debs = download_debs("criu", os.path.join(top, "apt"))
    for deb in debs:
        r = _run(["dpkg-deb", "-x", deb, root], timeout=300)
        if r.returncode != 0:
            raise CriuUnavailable("dpkg-deb -x %s failed: %s" % (deb, r.stdout[-1000:]))
    write_wrapper(root, criu)
    version, problem = check(criu)
    if problem:
        raise CriuUnavailable("%s's criu unpacked in %s does not work: %s"
                              % (SUITE, top, problem))
    shutil.rmtree(os.path.join(top, "apt"), ignore_errors=True)
    with open(os.path.join(top, ".complete"), "w") as f:
        f.write("criu %s from Debian %s: %s\n" % (".".join(map(str, version)), SUITE,
                                                 " ".join(sorted(map(os.path.basename, debs)))))
    return bin_dir


def write_wrapper(root, path):
    """Write the `criu` wrapper at `path` that runs root's criu with root's
    own dynamic loader and libraries."""
    loaders = sorted(glob.glob(os.path.join(root, "usr", "lib", "*", "ld-linux*.so.[0-9]")))
    exe = os.path.join(root, "usr", "sbin", "criu")
    if not loaders or not os.path.exists(exe):
        raise CriuUnavailable("no dynamic loader or usr/sbin/criu in %s" % root)
    loader = loaders[0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("#!/bin/sh\n# criu from Debian %s, unpacked in %s (tests/support/criu.py)\n"
                "exec %s --library-path %s %s \"$@\"\n"
                % (SUITE, root, loader, os.path.dirname(loader), exe))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


# ----------------------------------------------------------- private apt

def apt_options(apt):
    """apt-get/apt-cache options of the private apt configuration in `apt`
    (writes its sources list: this machine's Debian archive, suite SUITE)."""
    from .cri import debian_archive
    archive = debian_archive()
    if archive is None:
        raise CriuUnavailable("no Debian entry in this machine's apt sources to fetch "
                              "%s's criu from" % SUITE)
    uri, key = archive
    if not key or not os.path.isfile(key):    # absent, or an inline key block
        key = DEFAULT_KEYRING
    for d in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(apt, d), exist_ok=True)
    with open(os.path.join(apt, "status.empty"), "w"):
        pass
    with open(os.path.join(apt, "sources.list"), "w") as f:
        f.write("deb [signed-by=%s] %s %s main\n" % (key, uri, SUITE))
    return ["-o", "Dir::Etc::SourceList=%s" % os.path.join(apt, "sources.list"),
            "-o", "Dir::Etc::SourceParts=-",
            "-o", "Dir::Etc::Preferences=/dev/null", "-o", "Dir::Etc::PreferencesParts=-",
            "-o", "Dir::State::Lists=%s" % os.path.join(apt, "lists"),
            "-o", "Dir::Cache=%s" % os.path.join(apt, "cache"),
            "-o", "Dir::State::status=%s" % os.path.join(apt, "status.empty"),
            "-o", "APT::Sandbox::User=root", "-q"]


def parse_simulation(text):
    """[(package, version)] of the `Inst` lines of `apt-get -s install`."""
    return re.findall(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", text, re.M)


def download_debs(package, apt):
    """Download `package` and its dependency closure (no recommends) from
    SUITE with the private apt configuration in `apt`; the .deb paths."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CriuUnavailable("apt-get/dpkg-deb not found: cannot fetch %s's criu" % SUITE)
    o = apt_options(apt)
    r = _run(["apt-get"] + o + ["update"], timeout=600)
    if r.returncode != 0:
        raise CriuUnavailable("apt-get update (private, %s) failed:\n%s"
                              % (SUITE, r.stdout[-2000:]))
    r = _run(["apt-get"] + o + ["-s", "install", "--no-install-recommends", package])
    pkgs = parse_simulation(r.stdout)
    if r.returncode != 0 or package not in [p for p, _ in pkgs]:
        raise CriuUnavailable("apt-get -s install %s (private, %s) failed:\n%s"
                              % (package, SUITE, r.stdout[-2000:]))
    dl = tempfile.mkdtemp(prefix="debs.", dir=apt)
    r = _run(["apt-get"] + o + ["download"] + ["%s=%s" % pv for pv in pkgs], timeout=900,
             cwd=dl)
    debs = sorted(glob.glob(os.path.join(dl, "*.deb")))
    if r.returncode != 0 or len(debs) != len(pkgs):
        raise CriuUnavailable("apt-get download (private, %s) failed:\n%s"
                              % (SUITE, r.stdout[-2000:]))
    return debs
