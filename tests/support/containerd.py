"""A private containerd for integration tests and benchmarks.

    c = Containerd()            # nothing runs yet
    c.start()                   # containerd with its own root/state/socket
    ref = c.import_image()      # offline busybox image (tools/mkimage.py)
    r = c.ctr("run", "--rm", "--runtime", "io.containerd.pyshim.v1", ref, "t1", "echo", "hi")
    c.restart()                 # shims and containers keep running, like a real restart
    c.cleanup()                 # kill tasks, delete containers, stop, unmount, remove dirs

Everything lives under one directory /run/pyshim-test-<pid>-XXXX (short, so
the unix socket paths stay far below the 108-byte limit):

    c.sock, c.sock.ttrpc   grpc and ttrpc sockets (c.address, c.ttrpc_address)
    root/, state/          containerd --root / --state
    config.toml, containerd.log
    tmp/                   containerd's $XDG_RUNTIME_DIR (its temp dirs, the
                           shims' console dirs)

Shim sockets are in /run/containerd/s/ (fixed by the shim contract; their
name is a hash of address+namespace+id, so they cannot collide with another
containerd). runc state of the shims is in /run/containerd/runc/<namespace>.
The namespace is unique per Containerd object (pyshim-<pid>-<n>).

CRI mode (`Containerd(cri=True)`, needs grpcio for the CRI client): the
`io.containerd.grpc.v1.cri` plugin is enabled with

    runtime handler "pyshim"  runtime_type io.containerd.pyshim.v1, options
                              ConfigPath = <dir>/pyshim-options.toml (runc
                              options: BinaryName, Root, SystemdCgroup (see
                              below), plus `runtime_config`)
    runtime handler "runc"    io.containerd.runc.v2 (the Go shim), the same
                              runc options inline, for comparisons
    runtime handler "pyshim-runc"  (containerd >= 1.7) runtime_type
                              io.containerd.runc.v2 with runtime_path = the
                              installed pyshim: typed runc options inline, and
                              CRI asks the shim for its features (`-info`)
    sandbox_image             the offline pause image (PAUSE_REF)
    stream server             127.0.0.1, a free port
    CNI                       an empty private dir (pods use host network)

runc state of both handlers is private (Root = <dir>/runc, so runc's root is
<dir>/runc/k8s.io), pod cgroups go under /<c.cri_cgroup_root>/ (use
c.cgroup_parent(name) as a pod's cgroup_parent: a systemd slice with the
systemd driver, pyshim_cri_<pid>_<n>-<name>.slice, so that CRI gives runc
the cgroupsPath `<slice>:cri-containerd:<id>`). start() waits until CRI
answers, c.cri is a support.cri.CRIClient, c.import_cri_images() imports the
busybox and pause images into "k8s.io". cleanup() also stops and removes every
pod through CRI, then checks the "k8s.io" namespace like any other.

Which containerd: the one on PATH (Debian bookworm's 1.6.20), or the
release whose bin dir (containerd, ctr, that release's Go shim) is named by
PYSHIM_CONTAINERD_BIN, e.g. the dir `../shared/containerd-release/containerd-release 2.1`
prints. That dir comes first on the daemon's PATH, so `io.containerd.runc.v2`
is the Go shim of the same release. containerd 2.x gets a version 3 config
(CRI in io.containerd.cri.v1.runtime / .images) with NRI disabled, so that
private daemons do not take the machine-wide NRI socket.

Runtime binary and cgroup driver (support.cgroup): PYSHIM_TEST_RUNC=runc|crun
(default runc) and PYSHIM_TEST_CGROUP_DRIVER=cgroupfs|systemd (default
cgroupfs) set BinaryName and SystemdCgroup of both CRI handlers, and
c.run_args(runtime, id) gives the matching `ctr run` arguments (none with
the defaults): `--cgroup <c.slice>:ctr:<id>` with systemd, `--runc-binary` /
`--runc-systemd-cgroup` for the Go shim, `--runtime-config-path` (a TOML with
BinaryName, SystemdCgroup) for pyshim. c.cgroup_dir(id) is where such a
container's cgroup is. cleanup() stops the test's slices (systemd).

stdlib only (CRI mode: plus grpcio, imported lazily); needs root.
"""
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

from .cgroup import (ROOT as CGROUP_ROOT, is_v2, runc_binary, runc_is_default, stop_slice,
                     systemd_cgroup, systemd_scope_dir)

GO_RUNTIME = "io.containerd.runc.v2"
PY_RUNTIME = "io.containerd.pyshim.v1"
PY_SHIM_BINARY = "containerd-shim-pyshim-v1"
SHIM_SOCKET_DIR = "/run/containerd/s"
RUNC_ROOT_BASE = "/run/containerd/runc"

CONTAINERD_BIN_ENV = "PYSHIM_CONTAINERD_BIN"

CRI_NAMESPACE = "k8s.io"          # fixed by containerd's CRI plugin
CRI_PY_HANDLER = "pyshim"         # runtime handlers of CRI mode
CRI_GO_HANDLER = "runc"
CRI_PY_RUNC_HANDLER = "pyshim-runc"   # runc.v2 runtime_type, pyshim as runtime_path

_counter = itertools.count()

# Plugins we never need: CRI (slow to start, wants CNI), snapshotters that are
# not overlayfs/native, tracing, /opt installer.
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]

CONFIG = """\
version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = {disabled}

[grpc]
  address = "{address}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "{level}"

[metrics]
  address = ""
"""


# Appended to CONFIG in CRI mode. Strings are JSON-quoted (valid TOML basic strings).
CRI_CONFIG = """
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_cgroup = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{go_handler}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{go_handler}]
      runtime_type = {go_runtime}
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{go_handler}.options]
{go_options}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{py_handler}]
      runtime_type = {py_runtime}
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{py_handler}.options]
        ConfigPath = {py_config}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_dir}
    conf_dir = {cni_dir}
"""


# A runc.v2 handler served by another binary (containerd >= 1.7).
RUNTIME_PATH_HANDLER = """
[{runtimes}.{name}]
  runtime_type = {runtime}
  runtime_path = {path}
  [{runtimes}.{name}.options]
{options}
"""
RUNTIMES_V2 = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
RUNTIMES_V3 = 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'

# The same for containerd 2.x (config version 3).
CRI_CONFIG_V3 = """
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {sandbox_image}
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "{go_handler}"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{go_handler}]
      runtime_type = {go_runtime}
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{go_handler}.options]
{go_options}
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{py_handler}]
      runtime_type = {py_runtime}
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{py_handler}.options]
        ConfigPath = {py_config}
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{cni_dir}]
    conf_dir = {cni_dir}
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false
"""

_versions = {}

# containerd/ctr >= 2.2 warn about cgroup v1 on stderr at every start.
QUIET_ENV = {"CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS": "1"}


def containerd_bin_dir():
    """The bin dir named by PYSHIM_CONTAINERD_BIN, or None (use PATH)."""
    d = os.environ.get(CONTAINERD_BIN_ENV, "").strip()
    return os.path.abspath(d) if d else None


def _version_words(binary=None):
    """The words `binary --version` prints (default: the containerd the
    tests use), e.g. "containerd github.com/containerd/containerd/v2
    2.1.9~ds1 <rev>"; [] when it cannot be run."""
    if binary is None:
        d = containerd_bin_dir()
        binary = os.path.join(d, "containerd") if d else (shutil.which("containerd")
                                                           or "containerd")
    if binary not in _versions:
        try:
            _versions[binary] = subprocess.run(
                [binary, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, timeout=30).stdout.split()
        except (OSError, subprocess.SubprocessError):
            _versions[binary] = []
    return _versions[binary]


def containerd_version(binary=None):
    """(major, minor, patch) of `binary` (default: the containerd the tests
    use); (0, 0, 0) when it cannot be told."""
    for word in _version_words(binary):
        nums = word.lstrip("v").split("~")[0].split("+")[0].split("-")[0].split(".")
        if len(nums) >= 2 and all(n.isdigit() for n in nums[:3]):
            return tuple(int(n) for n in (nums + ["0"])[:3])
    return (0, 0, 0)


def containerd_build(binary=None):
    """What `--version` says after the package path: Debian's "2.1.9~ds1
    ...", a local build's "v2.3.4 <revision>"; "?" when it cannot be told."""
    return " ".join(_version_words(binary)[2:]) or "?"


def task_service(version=None):
    """The ttrpc Task service that containerd `version` (default: the one
    the tests use) calls on its shims: the Go shim of 2.x serves only
    containerd.task.v3.Task, that of 1.x only v2; pyshim serves both."""
    version = version or containerd_version()
    return "containerd.task.v3.Task" if version >= (2, 0, 0) else "containerd.task.v2.Task"


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def _toml_table(d, indent=""):
    return "".join("%s%s = %s\n" % (indent, k, _toml_value(v)) for k, v in d.items())


class ContainerdError(RuntimeError):
    pass


def script_dirs():
    """Directories where `pip install .` puts scripts for this interpreter."""
    dirs = []
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if d and d not in dirs:
            dirs.append(d)
    return dirs


def find_pyshim_binary():
    """Absolute path of the installed containerd-shim-pyshim-v1, or None."""
    for d in script_dirs() + os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, PY_SHIM_BINARY)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def proc_argv(pid):
    """argv of a live (non-zombie) process as a list of str, or None."""
    raw = _read("/proc/%d/cmdline" % pid)
    if not raw:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def _flag(argv, name):
    """Value of Go-style flag -name / --name (separate or =value) in argv."""
    for i, a in enumerate(argv):
        for p in ("-" + name, "--" + name):
            if a == p and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(p + "="):
                return a[len(p) + 1:]
    return None


def shim_processes(namespace=None, address=None, id=None):
    """[(pid, argv)] of shim processes (any runtime): processes whose argv has
    -namespace (and -address / -id when given) matching. Includes transient
    `start`/`delete` invocations. Zombies are not listed."""
    out = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        argv = proc_argv(pid)
        if not argv:
            continue
        ns = _flag(argv, "namespace")
        if ns is None or _flag(argv, "id") is None:
            continue
        if namespace is not None and ns != namespace:
            continue
        if address is not None and _flag(argv, "address") != address:
            continue
        if id is not None and _flag(argv, "id") != id:
            continue
        out.append((pid, argv))
    return sorted(out)


def pid_alive(pid):
    st = _read("/proc/%d/stat" % pid, "r")
    if st is None:
        return False
    return st.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_pids_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    return left


def kill_pids(pids, timeout=5.0):
    """SIGKILL the given PIDs (only those; never by name) and wait for them."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return wait_pids_gone(pids, timeout)


def _unescape_mountinfo(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts_under(path):
    """Mount points (in our mount namespace) at or below path, deepest first."""
    path = os.path.realpath(path)
    res = []
    for line in (_read("/proc/self/mountinfo", "r") or "").splitlines():
        mp = _unescape_mountinfo(line.split()[4])
        if mp == path or mp.startswith(path + "/"):
            res.append(mp)
    res.sort(key=lambda m: (m.count("/"), m), reverse=True)
    return res


def unmount_all(path):
    for mp in mounts_under(path):
        r = subprocess.run(["umount", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    return mounts_under(path)


def cgroup_mounts():
    """Mount points of cgroup v1 hierarchies and the cgroup2 mount."""
    res = []
    for line in (_read("/proc/self/mountinfo", "r") or "").splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] in ("cgroup", "cgroup2"):
            res.append(_unescape_mountinfo(pre.split()[4]))
    return res


def remove_cgroups(name):
    """rmdir (bottom-up) the cgroup /<name> in every hierarchy, as ctr's
    default cgroups path is /<namespace>/<id>. Returns problems."""
    problems = []
    for mp in cgroup_mounts():
        top = os.path.join(mp, name)
        if not os.path.isdir(top):
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            try:
                os.rmdir(d)
            except OSError as e:
                problems.append("cannot remove cgroup %s: %s" % (d, e.strerror))
    return problems


class Containerd:
    """A private containerd. See the module docstring."""

    def __init__(self, namespace=None, debug=None, extra_path=(), binary="containerd",
                 ctr_binary="ctr", cri=False, runtime_config=None):
        """cri=True: CRI mode (module docstring). runtime_config: extra runc
        options (Go names, e.g. {"NoPivotRoot": True}) for the CRI handlers'
        options; they override the defaults BinaryName, Root, SystemdCgroup."""
        n = next(_counter)
        self.namespace = namespace or "pyshim-%d-%d" % (os.getpid(), n)
        if debug is None:
            debug = os.environ.get("PYSHIM_TEST_DEBUG", "") not in ("", "0")
        self.debug = debug
        bin_dir = containerd_bin_dir()
        if bin_dir:
            if binary == "containerd":
                binary = os.path.join(bin_dir, "containerd")
            if ctr_binary == "ctr":
                ctr_binary = os.path.join(bin_dir, "ctr")
            extra_path = list(extra_path) + [bin_dir]
        self.binary = shutil.which(binary) or binary
        self.ctr_binary = shutil.which(ctr_binary) or ctr_binary
        self.version = containerd_version(self.binary)
        self.dir = tempfile.mkdtemp(prefix="pyshim-test-%d-%d-" % (os.getpid(), n), dir="/run")
        os.chmod(self.dir, 0o711)
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.address = os.path.join(self.dir, "c.sock")
        self.config_path = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.tmp_dir = os.path.join(self.dir, "tmp")     # containerd's XDG_RUNTIME_DIR
        self.path = os.pathsep.join(
            list(extra_path) + script_dirs()
            + [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        self.proc = None
        self._image = None
        self._logf = None
        self.cri_enabled = bool(cri)
        self._cri_client = None
        # PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER: the runc options asked for
        # (CRI handlers, run_args) and, with systemd, the slice of ctr's containers.
        self.runc_options = {"BinaryName": runc_binary(), "SystemdCgroup": systemd_cgroup()}
        self.slice = self.namespace.replace("-", "_") + ".slice"
        disabled = list(DISABLED_PLUGINS)
        if self.version >= (2, 0, 0):
            disabled.append("io.containerd.nri.v1.nri")
        extra = ""
        if self.cri_enabled:
            disabled.remove("io.containerd.grpc.v1.cri")
            extra = self._cri_setup(n, runtime_config or {})
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(version=3 if self.version >= (2, 0, 0) else 2,
                                  root=self.root, state=self.state, address=self.address,
                                  ttrpc=self.ttrpc_address,
                                  disabled="[%s]" % ", ".join('"%s"' % p for p in disabled),
                                  level="debug" if debug else "info"))
            f.write(extra)

    def _cri_setup(self, n, runtime_config):
        from .image import PAUSE_REF
        self.cri_runc_base = os.path.join(self.dir, "runc")
        self.cni_dir = os.path.join(self.dir, "cni")
        self.cri_options_path = os.path.join(self.dir, "pyshim-options.toml")
        self.cri_cgroup_root = "pyshim-cri-%d-%d" % (os.getpid(), n)
        if systemd_cgroup():    # a slice: pods' parents are slices below it
            self.cri_cgroup_root = "pyshim_cri_%d_%d.slice" % (os.getpid(), n)
        os.makedirs(self.cni_dir)
        opts = dict(self.runc_options, Root=self.cri_runc_base)
        opts.update(runtime_config)
        self.cri_runtime_options = opts
        with open(self.cri_options_path, "w") as f:
            f.write("# runc options of the CRI runtime handler %r\n" % CRI_PY_HANDLER)
            f.write(_toml_table(opts))
        q = json.dumps
        v3 = self.version >= (2, 0, 0)
        config = (CRI_CONFIG_V3 if v3 else CRI_CONFIG).format(
            sandbox_image=q(PAUSE_REF), go_handler=CRI_GO_HANDLER, py_handler=CRI_PY_HANDLER,
            go_runtime=q(GO_RUNTIME), py_runtime=q(PY_RUNTIME),
            go_options=_toml_table(opts, " " * 8).rstrip("\n"),
            py_config=q(self.cri_options_path), cni_dir=q(self.cni_dir))
        pyshim = find_pyshim_binary()
        if self.version >= (1, 7, 0) and pyshim:
            config += RUNTIME_PATH_HANDLER.format(
                runtimes=RUNTIMES_V3 if v3 else RUNTIMES_V2, name=CRI_PY_RUNC_HANDLER,
                runtime=q(GO_RUNTIME), path=q(pyshim),
                options=_toml_table(opts, "    ").rstrip("\n"))
        return config

    # ---- paths -------------------------------------------------------
    @property
    def task_service(self):
        return task_service(self.version)

    @property
    def ttrpc_address(self):
        return self.address + ".ttrpc"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def runc_root(self):
        """runc --root used by shims for our namespace (default of both shims)."""
        return os.path.join(RUNC_ROOT_BASE, self.namespace)

    def runc_root_of(self, namespace):
        """runc --root of the shims of `namespace` (CRI mode: "k8s.io" uses
        the private root of the CRI handlers)."""
        if self.cri_enabled and namespace == CRI_NAMESPACE:
            return os.path.join(self.cri_runc_base, namespace)
        return os.path.join(RUNC_ROOT_BASE, namespace)

    def cgroup_parent(self, name):
        """CRI mode: a pod cgroup_parent under our private cgroup root (with
        the systemd driver a slice below our root slice: no dashes in name,
        they would be slice levels)."""
        if systemd_cgroup():
            return "%s-%s.slice" % (self.cri_cgroup_root[:-len(".slice")],
                                    name.replace("-", "_"))
        return "/%s/%s" % (self.cri_cgroup_root, name)

    def run_args(self, runtime, id, binary=None):
        """`ctr run` arguments for PYSHIM_TEST_RUNC / PYSHIM_TEST_CGROUP_DRIVER
        (module docstring); [] with the defaults. `binary`: another runc
        (a test's wrapper) instead."""
        args = []
        if systemd_cgroup():
            args += ["--cgroup", "%s:ctr:%s" % (self.slice, id)]
        elif runc_is_default() and binary is None:
            return args
        opts = dict(self.runc_options)
        if binary is not None:
            opts["BinaryName"] = binary
        if runtime == GO_RUNTIME:
            args += ["--runc-binary", opts["BinaryName"]]
            if systemd_cgroup():
                args.append("--runc-systemd-cgroup")
        else:
            name = "ctr-runc-options.toml"
            if binary is not None:
                name = "ctr-runc-options-%s.toml" % hashlib.sha1(binary.encode()).hexdigest()[:12]
            path = os.path.join(self.dir, name)
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(_toml_table(opts))
            args += ["--runtime-config-path", path]
        return args

    def cgroup_dir(self, id, controller="memory"):
        """The cgroup dir of a container `ctr run` made with run_args() (v1:
        that of `controller`)."""
        if not is_v2():
            return os.path.join(CGROUP_ROOT, controller, self.namespace, id)
        if systemd_cgroup():
            return systemd_scope_dir(self.slice, "ctr", id)
        return os.path.join(CGROUP_ROOT, self.namespace, id)

    @property
    def cri(self):
        """CRI mode: the support.cri.CRIClient of this containerd."""
        if not self.cri_enabled:
            raise ContainerdError("not a CRI-mode Containerd (Containerd(cri=True))")
        if self._cri_client is None:
            from .cri import CRIClient
            self._cri_client = CRIClient(self.address)
        return self._cri_client

    def import_cri_images(self):
        """CRI mode: import the busybox and pause images into "k8s.io" (where
        the CRI plugin sees them); returns (busybox ref, pause ref)."""
        from .image import PAUSE_REF, pause_tarball
        ref = self.import_image(namespace=CRI_NAMESPACE)
        r = self.ctr("image", "ls", "-q", namespace=CRI_NAMESPACE)
        if PAUSE_REF not in r.stdout.split():
            self.ctr("image", "import", pause_tarball(PAUSE_REF), namespace=CRI_NAMESPACE,
                     timeout=120)
        # The CRI plugin learns about imported images from events: wait for it.
        deadline = time.monotonic() + 30
        while True:
            try:
                if all(self.cri.image_status(x) is not None for x in (ref, PAUSE_REF)):
                    return ref, PAUSE_REF
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise ContainerdError("CRI does not see the imported images %s, %s"
                                      % (ref, PAUSE_REF))
            time.sleep(0.1)

    def bundle(self, id, namespace=None):
        """The task bundle dir <state>/io.containerd.runtime.v2.task/<ns>/<id>."""
        return os.path.join(self.state, "io.containerd.runtime.v2.task",
                            namespace or self.namespace, id)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, tail=None):
        data = (_read(self.log_path, "r") or "")
        if tail:
            data = "\n".join(data.splitlines()[-tail:])
        return data

    # ---- lifecycle ---------------------------------------------------
    def start(self, timeout=30.0):
        if self.running():
            return self
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("CONTAINERD_", "NOTIFY_SOCKET", "PYTHON")):
                del env[k]
        env["PATH"] = self.path
        env.update(QUIET_ENV)
        # containerd's temp dirs (and the shims' console dirs) in ours, which
        # cleanup removes: containerd 1.6 leaves the ctrd-checkpoint dir of
        # every restore behind in $XDG_RUNTIME_DIR, else /tmp.
        env["XDG_RUNTIME_DIR"] = self.tmp_dir
        os.makedirs(self.tmp_dir, 0o700, exist_ok=True)
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
            env=env, cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ContainerdError("containerd exited with %s:\n%s"
                                      % (self.proc.returncode, self.log_text(tail=30)))
            if os.path.exists(self.address):
                r = subprocess.run(self._ctr_argv(None, ["version"]), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=10)
                if r.returncode == 0 and (not self.cri_enabled or self._cri_ready()):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise ContainerdError("containerd did not come up in %ss:\n%s"
                                      % (timeout, self.log_text(tail=30)))
            time.sleep(0.05)

    def _cri_ready(self):
        try:
            self.cri.version()
            return True
        except Exception:   # "server is not initialized yet", plugin still starting
            return False

    def stop(self, timeout=10.0):
        """SIGTERM containerd (by PID), SIGKILL after timeout. Shims and
        containers keep running, as with a real containerd restart."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None
        if self._cri_client is not None:
            self._cri_client.close()
            self._cri_client = None

    def restart(self):
        self.stop()
        return self.start()

    # ---- ctr -----------------------------------------------------------
    def _ctr_argv(self, namespace, args):
        argv = [self.ctr_binary, "--address", self.address]
        if namespace is not False:
            argv += ["-n", namespace or self.namespace]
        return argv + [str(a) for a in args]

    def ctr(self, *args, check=True, input=None, timeout=60, namespace=None, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE):
        """Run `ctr --address A -n NS *args` and return the CompletedProcess
        (str stdout/stderr unless text=False). check=True raises
        ContainerdError with the output on a non-zero exit."""
        if isinstance(input, str) and not text:
            input = input.encode()
        if isinstance(input, bytes) and text:
            input = input.decode()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env.update(QUIET_ENV)
        argv = self._ctr_argv(namespace, args)
        try:
            r = subprocess.run(argv, input=input, stdout=stdout, stderr=stderr, env=env,
                               timeout=timeout, universal_newlines=text,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ContainerdError("timeout after %ss: %s\nstdout: %r\nstderr: %r"
                                  % (timeout, " ".join(argv), e.stdout, e.stderr)) from None
        if check and r.returncode != 0:
            raise ContainerdError("exit %d: %s\nstdout: %s\nstderr: %s"
                                  % (r.returncode, " ".join(argv), r.stdout, r.stderr))
        return r

    def ctr_popen(self, *args, namespace=None, **kw):
        """subprocess.Popen of `ctr --address A -n NS *args` (caller reaps it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env.update(QUIET_ENV)
        kw.setdefault("env", env)
        return subprocess.Popen(self._ctr_argv(namespace, args), **kw)

    def import_image(self, namespace=None):
        """Import the offline busybox image (cached tarball); returns its ref."""
        from .image import IMAGE_REF, busybox_tarball
        ns = namespace or self.namespace
        r = self.ctr("image", "ls", "-q", namespace=ns)
        if IMAGE_REF not in r.stdout.split():
            self.ctr("image", "import", busybox_tarball(IMAGE_REF), namespace=ns, timeout=120)
        return IMAGE_REF

    # ---- inspection ----------------------------------------------------
    def containers(self, namespace=None):
        r = self.ctr("container", "ls", "-q", namespace=namespace)
        return r.stdout.split()

    def tasks(self, namespace=None):
        """{id: (pid, status)} from `ctr task ls`."""
        r = self.ctr("task", "ls", namespace=namespace)
        res = {}
        for line in r.stdout.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                res[f[0]] = (int(f[1]), f[2])
        return res

    def namespaces(self):
        return self.ctr("namespace", "ls", "-q", namespace=False).stdout.split()

    def shims(self, namespace=None, id=None):
        """[(pid, argv)] of live shim processes serving this containerd."""
        return shim_processes(namespace or self.namespace, self.address, id)

    def all_shims(self):
        return shim_processes(None, self.address)

    # ---- cleanup -------------------------------------------------------
    def remove_container(self, id, namespace=None, timeout=30):
        """Best effort: kill and delete task `id`, delete the container."""
        ns = namespace or self.namespace
        self.ctr("task", "kill", "-a", "-s", "SIGKILL", id, check=False, namespace=ns,
                 timeout=timeout)
        self.ctr("task", "delete", "-f", id, check=False, namespace=ns, timeout=timeout)
        self.ctr("container", "delete", id, check=False, namespace=ns, timeout=timeout)

    def remove_all(self, timeout=30):
        """Best effort: remove every container in every namespace."""
        for ns in self.namespaces():
            try:
                ids = self.containers(ns)
            except ContainerdError:
                continue
            for id in ids:
                self.remove_container(id, ns, timeout)

    def cleanup(self):
        """Kill tasks, delete containers, stop containerd, kill leftover
        shims (by PID) and containers (runc delete --force), unmount
        everything under our dir, remove our dirs. Returns a list of
        problems found (leftover shim processes etc.), empty when clean."""
        problems = []
        namespaces = [self.namespace]
        if self.cri_enabled:
            namespaces.append(CRI_NAMESPACE)
        try:
            if not self.running():
                self.start()
            if self.cri_enabled:
                problems += self._cri_remove_pods()
            namespaces = sorted(set(namespaces) | set(self.namespaces()))
            self.remove_all()
        except Exception as e:  # containerd broken: fall back to the hard way
            problems.append("containerd cleanup failed: %s" % e)
        left = wait_pids_gone([p for p, _ in self.all_shims()], 10.0)
        self.stop()
        shims = [(p, a) for p, a in self.all_shims()]
        if shims:
            problems += ["shim process left: %d %s" % (p, " ".join(a)) for p, a in shims]
            kill_pids([p for p, _ in shims])
        del left
        if systemd_cgroup():
            problems += stop_slice(self.slice)
            if self.cri_enabled:
                problems += stop_slice(self.cri_cgroup_root)
        for ns in namespaces:
            problems += self._cleanup_runc_root(self.runc_root_of(ns))
            if self.cri_enabled and ns == CRI_NAMESPACE:
                # CRI containers' cgroups are <cgroup_parent>/<id>, under our
                # private root; a pod's parent dir itself is the kubelet's to
                # remove, so only a cgroup that cannot be removed is a problem.
                problems += remove_cgroups(self.cri_cgroup_root)
            else:
                problems += remove_cgroups(ns)
        if self.cri_enabled:
            try:
                os.rmdir(self.cri_runc_base)
            except OSError:
                pass
        for mp in unmount_all(self.dir):
            problems.append("could not unmount %s" % mp)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def _cri_remove_pods(self, timeout=30):
        """CRI mode: stop and remove every pod (and so its containers) through
        CRI. Returns problems (a CRI call that failed)."""
        problems = []
        try:
            pods = self.cri.list_pod_sandbox()
        except Exception as e:
            return ["CRI ListPodSandbox failed: %s" % e]
        for pod in pods:
            for call in (self.cri.stop_pod_sandbox, self.cri.remove_pod_sandbox):
                try:
                    call(pod.id, timeout=timeout)
                except Exception as e:
                    problems.append("CRI %s %s failed: %s" % (call.__name__, pod.id, e))
                    break
        return problems

    @staticmethod
    def _cleanup_runc_root(root):
        problems = []
        if not os.path.isdir(root):
            return problems
        for id in os.listdir(root):
            problems.append("runc container left: %s/%s" % (root, id))
            subprocess.run([runc_binary(), "--root", root, "delete", "--force", id],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        try:
            os.rmdir(root)
        except OSError:
            pass
        return problems

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
