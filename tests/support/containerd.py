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

Shim sockets are in /run/containerd/s/ (fixed by the shim contract; their
name is a hash of address+namespace+id, so they cannot collide with another
containerd). runc state of the shims is in /run/containerd/runc/<namespace>.
The namespace is unique per Containerd object (pyshim-<pid>-<n>).

stdlib only; needs root.
"""
import itertools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

GO_RUNTIME = "io.containerd.runc.v2"
PY_RUNTIME = "io.containerd.pyshim.v1"
PY_SHIM_BINARY = "containerd-shim-pyshim-v1"
SHIM_SOCKET_DIR = "/run/containerd/s"
RUNC_ROOT_BASE = "/run/containerd/runc"

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
version = 2
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
                 ctr_binary="ctr"):
        n = next(_counter)
        self.namespace = namespace or "pyshim-%d-%d" % (os.getpid(), n)
        if debug is None:
            debug = os.environ.get("PYSHIM_TEST_DEBUG", "") not in ("", "0")
        self.debug = debug
        self.binary = shutil.which(binary) or binary
        self.ctr_binary = shutil.which(ctr_binary) or ctr_binary
        self.dir = tempfile.mkdtemp(prefix="pyshim-test-%d-%d-" % (os.getpid(), n), dir="/run")
        os.chmod(self.dir, 0o711)
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.address = os.path.join(self.dir, "c.sock")
        self.config_path = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.path = os.pathsep.join(
            list(extra_path) + script_dirs()
            + [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        self.proc = None
        self._image = None
        self._logf = None
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(root=self.root, state=self.state, address=self.address,
                                  ttrpc=self.ttrpc_address,
                                  disabled="[%s]" % ", ".join('"%s"' % p for p in DISABLED_PLUGINS),
                                  level="debug" if debug else "info"))

    # ---- paths -------------------------------------------------------
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
                if r.returncode == 0:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise ContainerdError("containerd did not come up in %ss:\n%s"
                                      % (timeout, self.log_text(tail=30)))
            time.sleep(0.05)

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
        try:
            if not self.running():
                self.start()
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
        for ns in namespaces:
            problems += self._cleanup_runc_root(os.path.join(RUNC_ROOT_BASE, ns))
            problems += remove_cgroups(ns)
        for mp in unmount_all(self.dir):
            problems.append("could not unmount %s" % mp)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    @staticmethod
    def _cleanup_runc_root(root):
        problems = []
        if not os.path.isdir(root):
            return problems
        for id in os.listdir(root):
            problems.append("runc container left: %s/%s" % (root, id))
            subprocess.run(["runc", "--root", root, "delete", "--force", id],
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
