"""The shim manager: the actions containerd runs the shim binary for
(spec shim-binary.md), each in a short-lived process.

    start    decode stdin (runtime Options, or containerd 2.3's
             BootstrapParams), reuse the group's live shim or start a new
             serving process (shim.launch), write <bundle>/address, print
             the address (or a BootstrapResult)
    delete   clean up after a shim that is gone: runc delete unless the
             shim already did, unmount the rootfs, remove a dead socket,
             print a DeleteResponse
    -info    print RuntimeInfo (name, version, options, `runc features`)

Imports only `os`, `sys` and the shim's bundle, socket and launch helpers
at load time: the serving process forked by `start` keeps what start loaded.
"""
import os
import sys

from shim import launch
from shim.bundle import (RUNTIME_FILE, go_err, is_marked_deleted, read_bundle_options,
                         read_runtime, read_socket_path, read_spec, write_address, write_all)
from shim.sockets import SOCKET_DIR, UNIX_SCHEME, listen_unix, remove_if_dead, socket_path

RUNTIME = "io.containerd.pyshim.v1"
BINARY = "containerd-shim-pyshim-v1"
VERSION = "0.1.0"
REVISION = ""
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
FEATURES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
SIGKILL = 9


def version_text():
    return ("%s:\n  Runtime:  %s\n  Version:  %s\n  Revision: %s\n  Python:   %d.%d.%d\n"
            "  Template: %s\n"
            % (BINARY, RUNTIME, VERSION, REVISION or "-", *sys.version_info[:3],
               template_status()))


def template_status():
    """Whether a template process (shim/template.py) serves this build's starts."""
    from shim import template_client
    if not template_client.build_id():
        return "none (not an installed build)"
    if not template_client.enabled():
        return "disabled (%s)" % template_client.ENV
    if template_client.alive():
        return "serving (build %s)" % template_client.build_id()
    return "not running (build %s; the next start starts it)" % template_client.build_id()


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
        write_all(2, format_line("warning", msg))
    except OSError:
        pass


# ---- start ------------------------------------------------------------------

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
# Task API version announced to containerd 2.x (both v2 and v3 are served).
TASK_API_VERSION = 3


def start_reply(address, bp, publish_binary=None):
    """What `start` prints: a BootstrapResult protobuf when containerd sent
    BootstrapParams (2.3+); JSON announcing version 3 to containerd 2.0-2.2,
    as their Go shim answers (shim.containerd_binary says why); the plain
    address to 1.6 and 1.7."""
    if bp is None:
        from shim import containerd_binary
        if containerd_binary.is_containerd_2(publish_binary):
            from shim import jsonlite
            return jsonlite.dumps({"version": TASK_API_VERSION, "address": address,
                                   "protocol": "ttrpc"}).encode()
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


def do_start(flags, self_path=None, socket_dir=SOCKET_DIR, stdin_data=None):
    """The `start` action (spec shim-binary.md §4); cwd is the bundle."""
    bundle = os.getcwd()
    if stdin_data is None:
        stdin_data = _read_all_stdin()
    bp = bootstrap_params(stdin_data, flags)
    opts_any, bs_dir = decode_start_input(stdin_data, flags, bp)
    spec = read_spec(bundle)
    group = group_key(spec, flags.id)
    path = socket_path(flags.address, flags.namespace, group, bs_dir or socket_dir)
    address = UNIX_SCHEME + path
    sock = listen_unix(path)
    if sock is None:
        # A live shim already serves this group.
        write_address(bundle, address)
        write_all(1, start_reply(address, bp, flags.publish_binary))
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
            launch.sched_core()
        # PyshimTemplate = false: a fresh interpreter, not a template fork.
        fresh = launch.IN_TEMPLATE and opts.get("template") is False
        pid = launch.serve_process(flags, sock, bundle, debug, env_add, self_path, fresh)
        if opts.get("shim_cgroup"):
            launch.join_cgroup(pid, opts["shim_cgroup"])
        launch.adjust_oom_score(pid)
    except BaseException:
        if launch.will_serve_here():
            launch.cancel_serve_here()      # pid is ours (the template's start)
        elif pid:
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
    write_all(1, start_reply(address, bp, flags.publish_binary))
    return 0


# ---- delete -----------------------------------------------------------------

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
        binary = read_runtime(bundle)
    except FileNotFoundError as e:
        # Create writes `runtime` before it runs runc: without it runc never
        # saw this id (a shim that exited on its idle bound, or died before
        # Create). Nothing to delete; failing here (as the Go shim does)
        # would make containerd keep the bundle forever.
        _warn("no runc container to delete: %s" % go_err(
            "open", os.path.join(bundle, RUNTIME_FILE), e))
        return
    except OSError as e:
        raise RuntimeError(go_err("open", os.path.join(bundle, RUNTIME_FILE), e))
    try:
        opts = read_bundle_options(bundle)
    except (OSError, ValueError) as e:
        _warn("failed to read options.json: %s" % e)
        opts = {}
    r = runc_mod.Runc(namespace=flags.namespace,
                      binary=binary or opts.get("binary_name") or runc_mod.DEFAULT_BINARY,
                      root=opts.get("root") or runc_mod.DEFAULT_ROOT,
                      systemd_cgroup=bool(opts.get("systemd_cgroup")),
                      criu_path=opts.get("criu_path") or "")
    from shim.runc_sync import delete_sync
    try:
        delete_sync(r, flags.id, bundle, force=True, timeout=3.0)
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
    if not is_marked_deleted(bundle):
        _runc_delete(flags, bundle, runc_mod)
    # else: the serving shim's Delete already ran runc delete (the normal
    # path: containerd runs this action after every disconnect).
    try:
        mount.unmount_recursive(os.path.join(bundle, "rootfs"))
    except OSError as e:
        _warn("failed to cleanup rootfs mount: %s" % e)
    _remove_dead_socket(bundle)
    pid_path = os.path.join(bundle, runc_mod.INIT_PID_FILE)
    try:
        pid = runc_mod.read_pid_file(pid_path)
    except OSError as e:
        _warn("failed to read init pid file: %s" % go_err("open", pid_path, e))
        pid = 0
    except ValueError as e:
        _warn("failed to read init pid file %s: %s" % (pid_path, e))
        pid = 0
    write_all(1, _delete_response(pid, 128 + SIGKILL, time.time()))
    return 0


def _remove_dead_socket(bundle):
    """A shim that was killed leaves its socket file behind; remove it when
    nothing listens on it any more (a grouped shim still serving others
    answers the connect and keeps its socket)."""
    path = read_socket_path(bundle)
    if path is None:
        return
    try:
        remove_if_dead(path)
    except OSError as e:
        _warn("failed to remove socket %s: %s" % (path, e))


# ---- -info -------------------------------------------------------------------

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
    write_all(1, info.encode())
    return 0


