"""Command line of containerd-shim-pyshim-v1 (spec shim-binary.md).

    containerd-shim-pyshim-v1 [flags] start     print the socket address
    containerd-shim-pyshim-v1 [flags] delete    clean up, print a DeleteResponse
    containerd-shim-pyshim-v1 [flags]           serve (fd 3 or -socket)
    containerd-shim-pyshim-v1 -v | -info

Flags use Go `flag` syntax: one or two dashes, `-flag value` or
`-flag=value`, bool flags without a value, flags before the action word;
unknown flags are ignored. This module imports only `os` and `sys` at load
time: the serving process pays for every module (see docs/design.md).
"""
import os
import sys

from shim import bundle as bundle_files
from shim.sockets import SOCKET_DIR, listen_unix, remove_if_dead, socket_path

RUNTIME = "io.containerd.pyshim.v1"
BINARY = "containerd-shim-pyshim-v1"
VERSION = "0.1.0"
REVISION = ""
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
FEATURES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
ACTIONS = ("start", "delete")

STRING_FLAGS = ("namespace", "id", "address", "publish-binary", "bundle", "socket",
                "debug-socket")
BOOL_FLAGS = ("debug", "v", "version", "info", "h", "help")

EACCES = 13
EPERM = 1
SIGKILL = 9
SIGTERM = 15
SIGINT = 2
SIGUSR1 = 10

USAGE = """Usage of %s:
  -address string       grpc address back to containerd
  -bundle string        path to the bundle if not workdir
  -debug                enable debug output in logs
  -debug-socket string  (ignored)
  -id string            id of the task
  -info                 print RuntimeInfo (protobuf) and exit
  -namespace string     namespace that owns the shim
  -publish-binary string  path to publish binary (ignored)
  -socket string        socket path to serve
  -v, -version          show the shim version and exit
Actions: start, delete; none = serve.
"""


class FlagError(Exception):
    pass


class Flags:
    """Parsed command line; attribute names are the flag names with `-`
    replaced by `_`, plus `action` ("" = serve) and `args` (positionals)."""
    __slots__ = ("namespace", "id", "address", "publish_binary", "bundle", "socket",
                 "debug_socket", "debug", "v", "version", "info", "h", "help",
                 "action", "args", "unknown")

    def __init__(self):
        for n in STRING_FLAGS:
            setattr(self, n.replace("-", "_"), "")
        for n in BOOL_FLAGS:
            setattr(self, n, False)
        self.action = ""
        self.args = []
        self.unknown = []

    def __repr__(self):
        return "Flags(%s)" % ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.__slots__)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_flags(argv):
    """Go `flag` package rules. An unknown `-name=value` is skipped; an
    unknown `-name` is a bool unless the next word is neither a flag nor an
    action word (then it is taken as its value)."""
    f = Flags()
    i = 0
    n = len(argv)
    while i < n:
        a = argv[i]
        if len(a) < 2 or a[0] != "-":
            break
        if a == "--":
            i += 1
            break
        name = a[2:] if a[1] == "-" else a[1:]
        if not name or name[0] in "-=":
            raise FlagError("bad flag syntax: %s" % a)
        i += 1
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in BOOL_FLAGS:
            if value is None:
                v = True
            elif value in _TRUE:
                v = True
            elif value in _FALSE:
                v = False
            else:
                raise FlagError('invalid boolean value "%s" for -%s' % (value, name))
            setattr(f, name, v)
        elif name in STRING_FLAGS:
            if value is None:
                if i >= n:
                    raise FlagError("flag needs an argument: -%s" % name)
                value = argv[i]
                i += 1
            setattr(f, name.replace("-", "_"), value)
        else:
            if value is None and i < n and not argv[i].startswith("-") \
                    and argv[i] not in ACTIONS:
                value = argv[i]
                i += 1
            f.unknown.append((name, value))
    f.args = list(argv[i:])
    f.action = f.args[0] if f.args else ""
    return f


def group_key(spec, id):
    """Grouping key: annotation io.containerd.runc.v2.group, else
    io.kubernetes.cri.sandbox-id, else the container id."""
    ann = spec.get("annotations") if isinstance(spec, dict) else None
    if isinstance(ann, dict):
        for k in GROUP_ANNOTATIONS:
            v = ann.get(k)
            if isinstance(v, str):
                return v
    return id


# ---- helpers ----------------------------------------------------------------

_go_err = bundle_files.go_err
_write_all = bundle_files.write_all
write_address = bundle_files.write_address


def _read_all_stdin():
    try:
        if os.isatty(0):
            return b""
    except OSError:
        return b""
    chunks = []
    while True:
        try:
            b = os.read(0, 65536)
        except InterruptedError:
            continue
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def _warn(msg):
    from shim.log import format_line
    try:
        _write_all(2, format_line("warning", msg))
    except OSError:
        pass


def _is_options_url(url):
    from shim.options import TYPES
    return url.rpartition("/")[2] in TYPES


def bootstrap_params(data, flags):
    """The BootstrapParams of containerd 2.3+ on start's stdin, or None when
    stdin is something else (an Any, or nothing). Accepted only when its
    instance_id and namespace are -id and -namespace (spec shim-binary.md §3)."""
    if not data:
        return None
    from shim.pb import DecodeError
    try:
        from shim.pb import bootstrap
        bp = bootstrap.BootstrapParams.decode(data)
    except (DecodeError, ImportError):
        return None
    if flags.id and bp.instance_id == flags.id and bp.namespace == flags.namespace:
        return bp
    return None


# BootstrapParams.log_level values at or below this mean debug logging.
_LOG_LEVEL_DEBUG = -4
# Task API version announced to containerd 2.3+ (both v2 and v3 are served).
TASK_API_VERSION = 3


def start_reply(address, bp):
    """What `start` prints: the plain address for containerd 1.6-2.2, a
    BootstrapResult protobuf when containerd sent BootstrapParams (2.3+)."""
    if bp is None:
        return address.encode()
    from shim.pb import bootstrap
    return bootstrap.BootstrapResult(version=TASK_API_VERSION, address=address,
                                     protocol="ttrpc").encode()


_UNSET = object()


def decode_start_input(data, flags, bp=_UNSET):
    """stdin of `start`: a serialized Any (runc Options) or, from containerd
    2.3, a BootstrapParams. Returns (options Any or None, socket_dir or None).
    The BootstrapParams reading is accepted only when its instance_id and
    namespace match -id and -namespace (an Any can parse as one)."""
    if not data:
        return None, None
    from shim.pb import DecodeError, wkt
    if bp is _UNSET:        # the caller may pass what bootstrap_params() gave
        bp = bootstrap_params(data, flags)
    if bp is not None:
        opts = None
        for ext in bp.extensions or ():
            if ext.value is not None and _is_options_url(ext.value.type_url):
                opts = ext.value
                break
        return opts, bp.socket_dir or None
    try:
        return wkt.Any.decode(data), None
    except DecodeError as e:
        raise RuntimeError("invalid runtime options on stdin: %s" % e)


def _runc_options(any_opts):
    """Options dict (shim.options) of any supported type; {} if none or of
    a type that is not ours (Create then reports it clearly)."""
    from shim import options
    if any_opts is None or not _is_options_url(any_opts.type_url or ""):
        return {}
    try:
        return options.decode(any_opts)
    except options.OptionsError as e:
        raise RuntimeError(str(e))


def _self_argv(self_path):
    """argv prefix that runs this shim again as the serving process:
    `<python> -I -S <launcher>` (the #! line cannot carry -I -S, see the
    launcher); without a launcher file, `<python> -c ...` (development)."""
    if self_path is None:
        self_path = sys.argv[0] if sys.argv and sys.argv[0] else ""
    exe = sys.executable
    if self_path and not self_path.startswith("-"):
        self_path = os.path.abspath(self_path)
        if os.path.isfile(self_path) and not self_path.endswith(".py"):
            return exe, [exe, "-I", "-S", self_path]
    return exe, [exe, "-c", "from shim.cli import main; main()"]


def _cgroup_v1_mounts():
    out = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype = right.split(" ", 1)[0]
        if fstype == "cgroup":
            fields = left.split(" ")
            if len(fields) > 4 and fields[4] not in out:
                out.append(fields[4].replace("\\040", " "))
    return out


def join_cgroup(pid, cg):
    """Move pid into cgroup `cg` (Options.shim_cgroup): cgroup v1/hybrid:
    every v1 hierarchy where that cgroup exists; v2: /sys/fs/cgroup<cg>."""
    rel = cg.strip("/")
    data = b"%d" % pid
    v1 = _cgroup_v1_mounts()
    targets = []
    if v1:
        for mp in v1:
            d = os.path.join(mp, rel)
            if os.path.isdir(d):
                targets.append(os.path.join(d, "cgroup.procs"))
    else:
        d = os.path.join("/sys/fs/cgroup", rel)
        if os.path.isdir(d):
            targets.append(os.path.join(d, "cgroup.procs"))
    if not targets:
        raise RuntimeError("failed to load cgroup %s: cgroup deleted" % cg)
    for t in targets:
        try:
            fd = os.open(t, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise RuntimeError("failed to join cgroup %s: %s" % (cg, _go_err("write", t, e)))


def adjust_oom_score(pid, parent=None):
    """oom_score_adj of pid = parent's + 1 (max 1000). A refused write
    (EACCES/EPERM: we may not lower it) is ignored."""
    if parent is None:
        parent = os.getppid()
    p = "/proc/%d/oom_score_adj" % parent
    try:
        with open(p, "rb") as f:
            score = int(f.read().strip())
    except (OSError, ValueError) as e:
        raise RuntimeError("get parent OOM score: %s" % e)
    score = max(-1000, min(1000, score + 1))
    try:
        fd = os.open("/proc/%d/oom_score_adj" % pid, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % score)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (EACCES, EPERM):
            return
        raise RuntimeError("set shim OOM score: %s" % e)


def _serve_flags(flags, debug):
    argv = ["-namespace", flags.namespace, "-id", flags.id, "-address", flags.address]
    if debug:
        argv.append("-debug")
    return argv


def _fork_serve(flags, sock, debug, env_add):
    """Fork the serving process from this start process instead of starting
    a second interpreter (what Go must do): it saves ~20 ms on every shim
    start, and the modules start imported are ones serve needs anyway. The
    child detaches (new session, stdio on /dev/null, only the listening
    socket kept), shows the serve argv in /proc/PID/cmdline, and serves."""
    null = os.open("/dev/null", os.O_RDWR)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(null)
        os.close(ready_w)
        # Until the child has let go of our stdout (containerd reads it to
        # EOF) and shows its serve argv: EOF here.
        try:
            while os.read(ready_r, 64):
                pass
        finally:
            os.close(ready_r)
        return pid
    code = 1
    try:
        # A SIGTERM that arrives before the loop reads signals must wait for
        # it (signalfd), not kill the shim before it removes its socket.
        import _signal
        # SIGUSR1 (state dump) likewise: its default action would kill us.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, {SIGTERM, SIGINT, SIGUSR1})
        os.setsid()
        from shim import _native
        orig = sys.orig_argv if hasattr(sys, "orig_argv") else []
        prefix = orig[:4] if len(orig) >= 4 and orig[1:3] == ["-I", "-S"] else orig[:1]
        if not _native.set_cmdline(prefix + _serve_flags(flags, debug)):
            _native.set_cmdline(prefix + _serve_flags(flags, False))
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        lfd = sock.detach()
        os.set_inheritable(lfd, False)
        os.closerange(3, lfd)
        os.closerange(lfd + 1, 1 << 16)     # ready_w too: the parent goes on
        os.environ.update(env_add)
        flags.debug = debug
        flags.action = ""
        from shim import serve
        serve.serve(flags, lfd)
        code = 0
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _sched_core():
    """SCHED_CORE set by containerd: a new core-scheduling cookie for the
    start process's group (containerd starts it as a group leader), which
    the serve process forked next inherits. As in Go, failure fails start."""
    from shim import _native
    try:
        _native.sched_core_create()
    except OSError as e:
        raise RuntimeError("enable sched core support: %s" % (e.strerror or e))


# ---- actions ----------------------------------------------------------------

def do_start(flags, self_path=None, socket_dir=SOCKET_DIR, stdin_data=None):
    """The `start` action (spec shim-binary.md §4); cwd is the bundle."""
    bundle = os.getcwd()
    if stdin_data is None:
        stdin_data = _read_all_stdin()
    bp = bootstrap_params(stdin_data, flags)
    opts_any, bs_dir = decode_start_input(stdin_data, flags, bp)
    spec = bundle_files.read_spec(bundle)
    group = group_key(spec, flags.id)
    path = socket_path(flags.address, flags.namespace, group, bs_dir or socket_dir)
    address = "unix://" + path
    sock = listen_unix(path)
    if sock is None:
        # A live shim already serves this group.
        write_address(bundle, address)
        _write_all(1, start_reply(address, bp))
        return 0
    pid = 0
    try:
        # Like Go, the options matter only for a new serving process (and
        # CRI's ConfigPath TOML is then read once per pod, not per container).
        opts = _runc_options(opts_any)
        write_address(bundle, address)
        debug = flags.debug or (bp is not None and bp.log_level <= _LOG_LEVEL_DEBUG)
        env_add = {}
        if bp is not None and bp.containerd_ttrpc_address and not os.environ.get("TTRPC_ADDRESS"):
            env_add["TTRPC_ADDRESS"] = bp.containerd_ttrpc_address
        if os.environ.get("SCHED_CORE"):
            _sched_core()
        if sys.flags.no_site:
            # The installed launcher (python -I -S): fork, no second start-up.
            pid = _fork_serve(flags, sock, debug, env_add)
        else:
            exe, argv = _self_argv(self_path)
            argv = argv + _serve_flags(flags, debug)
            environ = dict(os.environ)
            environ.update(env_add)
            env = ["%s=%s" % kv for kv in environ.items()]
            from shim import _native
            null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            try:
                pid = _native.spawn(exe, argv, env, [null, null, null, sock.fileno()],
                                    cwd=bundle, new_session=True, search_path=False)
            finally:
                os.close(null)
        if opts.get("shim_cgroup"):
            join_cgroup(pid, opts["shim_cgroup"])
        adjust_oom_score(pid)
    except BaseException:
        if pid:
            try:
                os.kill(pid, SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        try:
            os.unlink(path)
        except OSError:
            pass
        sock.close()
        raise
    sock.close()
    _write_all(1, start_reply(address, bp))
    return 0


def _delete_response(pid, exit_status, now):
    try:
        from shim.pb import task, timestamp
        return task.DeleteResponse(pid=pid, exit_status=exit_status,
                                   exited_at=timestamp(now)).encode()
    except ImportError:
        # Fallback when the codec is not built: hand-encoded proto3.
        return _encode_delete_response(pid, exit_status, now)


def _varint(v):
    out = bytearray()
    v &= (1 << 64) - 1
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _encode_delete_response(pid, exit_status, now):
    sec = int(now)
    nanos = int((now - sec) * 1e9)
    ts = b""
    if sec:
        ts += b"\x08" + _varint(sec)
    if nanos:
        ts += b"\x10" + _varint(nanos)
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    out += b"\x1a" + _varint(len(ts)) + ts
    return out


def _runc_delete(flags, bundle, runc_mod):
    try:
        binary = bundle_files.read_runtime(bundle)
    except OSError as e:
        raise RuntimeError(_go_err("open", os.path.join(bundle, bundle_files.RUNTIME_FILE), e))
    try:
        opts = bundle_files.read_bundle_options(bundle)
    except (OSError, ValueError) as e:
        _warn("failed to read options.json: %s" % e)
        opts = {}
    r = runc_mod.Runc(namespace=flags.namespace,
                      binary=binary or opts.get("binary_name") or runc_mod.DEFAULT_BINARY,
                      root=opts.get("root") or runc_mod.DEFAULT_ROOT,
                      systemd_cgroup=bool(opts.get("systemd_cgroup")),
                      criu_path=opts.get("criu_path") or "")
    try:
        runc_mod.delete_sync(r, flags.id, bundle, force=True, timeout=3.0)
    except runc_mod.RuncError as e:
        _warn("failed to remove runc container: %s" % e)


def do_delete(flags):
    """The `delete` action (spec shim-binary.md §6)."""
    import time
    from shim import mount
    from shim import runc as runc_mod
    if flags.bundle:
        bundle = flags.bundle
    else:
        bundle = os.path.join(os.path.dirname(os.getcwd()), flags.id)
    if not bundle_files.is_marked_deleted(bundle):
        _runc_delete(flags, bundle, runc_mod)
    # else: the serving shim's Delete already ran runc delete (the normal
    # path: containerd runs this action after every disconnect).
    try:
        mount.unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as e:
        _warn("failed to cleanup rootfs mount: %s" % e)
    _remove_dead_socket(bundle)
    pid_path = os.path.join(bundle, runc_mod.INIT_PID_FILE)
    try:
        pid = runc_mod.read_pid_file(pid_path)
    except OSError as e:
        _warn("failed to read init pid file: %s" % _go_err("open", pid_path, e))
        pid = 0
    except ValueError as e:
        _warn("failed to read init pid file %s: %s" % (pid_path, e))
        pid = 0
    _write_all(1, _delete_response(pid, 128 + SIGKILL, time.time()))
    return 0


def _remove_dead_socket(bundle):
    """A shim that was killed leaves its socket file behind; remove it when
    nothing listens on it any more (a grouped shim still serving others
    answers the connect and keeps its socket)."""
    path = bundle_files.read_socket_path(bundle)
    if path is None:
        return
    try:
        remove_if_dead(path)
    except OSError as e:
        _warn("failed to remove socket %s: %s" % (path, e))


def runc_features(binary, timeout=5.0):
    """stdout of `<binary> features` if it succeeds and is a JSON object."""
    import subprocess
    try:
        r = subprocess.run([binary, "features"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    from shim import jsonlite
    try:
        if not isinstance(jsonlite.loads(r.stdout), dict):
            return None
    except ValueError:
        return None
    return r.stdout


def do_info(flags, stdin_data=None):
    """-info: RuntimeInfo protobuf on stdout (spec shim-binary.md §7a)."""
    from shim.pb import DecodeError, types, wkt
    data = _read_all_stdin() if stdin_data is None else stdin_data
    opts_any = None
    if data:
        try:
            opts_any = wkt.Any.decode(data)
        except DecodeError as e:
            raise RuntimeError("failed to read runtime options: %s" % e)
    binary = "runc"
    opts = _runc_options(opts_any)
    if opts.get("binary_name"):
        binary = opts["binary_name"]
    info = types.RuntimeInfo(
        name=RUNTIME,
        version=types.RuntimeVersion(version=VERSION, revision=REVISION),
        options=opts_any if opts_any is not None and opts_any.type_url else None)
    features = runc_features(binary)
    if features is not None:
        info.features = wkt.Any(type_url=FEATURES_TYPE, value=features)
    _write_all(1, info.encode())
    return 0


def version_text():
    return ("%s:\n  Runtime:  %s\n  Version:  %s\n  Revision: %s\n  Python:   %d.%d.%d\n"
            % (BINARY, RUNTIME, VERSION, REVISION or "-", *sys.version_info[:3]))


def do_serve(flags, argv=None, self_path=None):
    if not sys.flags.no_site and self_path and argv is not None \
            and os.path.isfile(self_path) and not self_path.endswith(".py"):
        # Started with `site` (e.g. by hand through the #! line): serve from
        # a lean `-I -S` interpreter instead (fds, incl. 3, are inherited).
        exe = sys.executable
        os.execv(exe, [exe, "-I", "-S", os.path.abspath(self_path)] + list(argv))
    listen_fd = 3
    if flags.socket:
        s = listen_unix(flags.socket)
        if s is None:
            raise RuntimeError("socket %s is in use" % flags.socket)
        listen_fd = s.detach()
    else:
        try:
            os.fstat(listen_fd)
        except OSError:
            raise RuntimeError("no listening socket on fd 3 (serve mode is started by `start`)")
    from shim import serve
    serve.serve(flags, listen_fd)
    return 0


def run(argv, self_path=None):
    """Run the command line argv (without the program name); returns the
    exit status."""
    try:
        flags = parse_flags(argv)
    except FlagError as e:
        _write_all(2, ("%s\n%s" % (e, USAGE % BINARY)).encode())
        return 2
    if flags.h or flags.help:
        _write_all(2, (USAGE % BINARY).encode())
        return 0
    if flags.v or flags.version:
        _write_all(1, version_text().encode())
        return 0
    try:
        if flags.info:
            return do_info(flags)
        if not flags.namespace:
            raise RuntimeError("shim namespace cannot be empty")
        if flags.action == "start":
            return do_start(flags, self_path)
        if flags.action == "delete":
            return do_delete(flags)
        if flags.action:
            raise RuntimeError("unknown action %r" % flags.action)
        return do_serve(flags, argv, self_path)
    except Exception as e:
        msg = str(e) or e.__class__.__name__
        try:
            _write_all(2, ("%s: %s\n" % (RUNTIME, msg)).encode())
        except OSError:
            pass
        return 1


def main(argv=None, self_path=None):
    if argv is None:
        argv = sys.argv[1:]
    code = run(argv, self_path)
    sys.exit(code)


if __name__ == "__main__":
    main()
