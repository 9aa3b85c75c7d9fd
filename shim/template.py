"""The template process (issue 12): one resident process per node and per
installed build that has imported everything a serving shim needs, so that
a `start` is a fork of it instead of a new interpreter, and the pages of
those modules are shared by every shim forked from it.

Started by the first `start` that finds none (shim.template_client.spawn);
listens on <shim socket dir>/pyshim-template-<build id> (0600 in a 0700
dir; only uid 0 is served, checked with SO_PEERCRED). For each request
(protocol: shim/template_client.py) it forks a child, which forks the
process that serves the request and exits: that one is no child of the
template. It takes the caller's stdio, cwd, environment, argv, cgroups,
OOM score, rlimits, umask, nice value and CPU affinity, runs today's
`start` (shim.cli.run) and, once that has answered, is itself the serving
process (shim.launch.serve_here): what a `start` makes without the
template (own session, stdio on /dev/null, its serve argv shown), without
a third fork that would copy once more every page the start wrote. The
template ignores SIGCHLD, so the kernel reaps its children: it never
waits on one and no zombie is left. It holds no container state: killing
it loses nothing.

Its heap is made immortal (Python 3.12+: no shim writes the reference
counts of what it holds) and frozen, and its private writable memory is
marked for the kernel's samepage merging; shims forked from it keep the
marks (docs/design.md).

It exits when its socket is gone or replaced, or when the installed build
is no longer its own (a new `pip install`: the next start spawns the new
build's template), checked between requests.
"""
import os
import sys

import _signal

from shim import template_client as client

CHECK_SECONDS = 10.0
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")
SO_PEERCRED = 17
# Modules a serving shim loads (serve mode, a container's create/start,
# the codecs): loaded here once, shared by every shim forked from here.
WARM_MODULES = ("shim.cli", "shim.manager", "shim.launch", "shim.serve", "shim.task",
                "shim.container", "shim.execs", "shim.options", "shim.runc", "shim.mount",
                "shim.cgroups", "shim.io", "shim.jsonlite", "shim.pb.task", "shim.pb.types",
                "shim.pb.events", "shim.pb.wkt", "shim.pb.runc", "shim.pb.bootstrap",
                "shim.pb.runtimeoptions",     # CRI's runtime options: every pod's shim
                "shim.containerd_binary")


def warm_up():
    import importlib
    import resource     # noqa: F401  (take_context: loaded once, here)
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # The socket name's hash, found here: no import (a dlopen, and on 3.11
    # a failed one first) in the start of every shim forked from here.
    from shim import sockets
    sockets.sha256_function()


def _installed_build():
    """BUILD_ID of the build installed where we were loaded from now."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build.py")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("BUILD_ID = "):
            return line.split("=", 1)[1].strip().strip("'\"")
    return ""


def _inode(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def bind(path):
    """Listen on `path`, claimed atomically: bind a private name, then
    link it to `path` (EEXIST: another template got there first, unless
    that socket is dead). Returns the socket, or None."""
    import _socket
    from shim.sockets import can_connect
    d = os.path.dirname(path)
    os.makedirs(d, 0o700, exist_ok=True)
    tmp = "%s.%d" % (path, os.getpid())
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        s.bind(tmp)
        os.chmod(tmp, 0o600)
        s.listen(128)
        for _ in range(2):
            try:
                os.link(tmp, path)
                return s
            except FileExistsError:
                if can_connect(path):
                    s.close()
                    return None
                try:
                    os.unlink(path)     # a dead template's socket
                except OSError:
                    pass
        s.close()
        return None
    except BaseException:
        s.close()
        raise
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def main():
    path = client.socket_path()
    if not client.build_id():
        os._exit(1)
    warm_up()
    listener = bind(path)
    if listener is None:
        os._exit(0)
    me = _inode(path)
    from shim import _native
    try:
        _native.set_comm("pyshim-template")
        _native.set_cmdline_buffer(["pyshim-template", client.build_id()])
    except OSError:
        pass
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)    # no zombies of ours (_dispatch)
    import gc
    gc.collect()
    if os.environ.get("PYSHIM_IMMORTAL", "1") != "0":
        # Python 3.12+: a shim that uses our objects no longer writes their
        # reference counts, so their pages stay shared (docs/design.md).
        _native.make_heap_immortal()
    gc.freeze()     # the heap as forked: no collection touches (copies) its pages
    if os.environ.get("PYSHIM_KSM", "1") != "0":
        # Most pages a shim copies from us end byte-identical in every
        # shim (the same code ran on the same heap): where ksmd runs they
        # are then held once (docs/design.md, memory).
        try:
            _native.share_identical_pages()
        except OSError:         # no /proc: shims are as they were without
            pass
    build = client.build_id()
    listener.settimeout(CHECK_SECONDS)
    import _socket
    # An operator's kill or a service stop: leave as when superseded,
    # without the socket (the next start would find it dead and replace it).
    _on_stop_signals(_terminate)
    try:
        while True:
            try:
                fd, _ = listener._accept()
                conn = _socket.socket(fileno=fd)
            except TimeoutError:
                if _inode(path) != me or _installed_build() != build:
                    break
                continue
            except InterruptedError:
                continue
            except OSError:
                break
            try:
                _dispatch(listener, conn)
            except Exception:
                pass
            finally:
                conn.close()
    except _Terminated:
        pass
    _on_stop_signals(_signal.SIG_IGN)       # leaving anyway: no second raise
    if _inode(path) == me:
        try:
            os.unlink(path)
        except OSError:
            pass
    os._exit(0)


class _Terminated(BaseException):
    """SIGTERM or SIGINT reached the template (not an Exception: _dispatch's
    handler must not swallow it)."""


def _terminate(signum, frame):
    raise _Terminated()


def _on_stop_signals(action):
    """SIGTERM and SIGINT: what an operator's kill or a service stop sends."""
    for signum in (_signal.SIGTERM, _signal.SIGINT):
        _signal.signal(signum, action)


def _dispatch(listener, conn):
    """A child serves the request: it runs the caller's `start`, whose
    serving process is then no child of ours. We do not wait for it
    (SIGCHLD is ignored: the kernel reaps it)."""
    cred = conn.getsockopt(1, SO_PEERCRED, 12)      # SOL_SOCKET
    peer = int.from_bytes(cred[0:4], sys.byteorder)
    uid = int.from_bytes(cred[4:8], sys.byteorder)
    if uid != 0:
        return
    if os.fork() == 0:
        code = 1
        try:
            # As before main() set them: a start's default dispositions.
            _on_stop_signals(_signal.SIG_DFL)
            # A group of its own, as containerd starts a `start` (SCHED_CORE's
            # cookie goes to the start's whole group, which must not be the
            # template's); its leader exits at once, so the start, which
            # becomes the serving process, is no child of ours.
            os.setpgid(0, 0)
            if os.fork():
                code = 0
            else:
                # As any start: it may wait for a process it runs.
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                listener.close()
                conn.settimeout(None)
                code = serve_request(conn, peer)
        finally:
            os._exit(code)


def _recv_request(conn):
    """(fds, payload) of one request; ValueError if malformed."""
    import _socket
    hdr_len = len(client.MAGIC) + 4
    data, anc, _, _ = conn.recvmsg(hdr_len, _socket.CMSG_SPACE(3 * 4),
                                   _socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, cdata in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            for i in range(0, len(cdata) - len(cdata) % 4, 4):
                fds.append(int.from_bytes(cdata[i:i + 4], sys.byteorder))
    while len(data) < hdr_len:
        b = conn.recv(hdr_len - len(data))
        if not b:
            break
        data += b
    if len(data) != hdr_len or not data.startswith(client.MAGIC) or len(fds) != 3:
        raise ValueError("bad request")
    n = int.from_bytes(data[len(client.MAGIC):], "little")
    if n > 64 << 20:
        raise ValueError("request too large")
    chunks = []
    while n:
        b = conn.recv(min(n, 1 << 20))
        if not b:
            raise ValueError("short request")
        chunks.append(b)
        n -= len(b)
    return fds, b"".join(chunks)


def serve_request(conn, peer):
    """In the grandchild: become the caller's `start` and run it. Returns
    the exit status (nothing accepted: 1, the caller starts by itself)."""
    try:
        fds, payload = _recv_request(conn)
        ppid, cwd, argv, env = client.decode_request(payload)
        _show_as_start(argv)
        take_context(peer)
        os.chdir(cwd)
    except Exception:
        return 1
    for i, fd in enumerate(fds):
        os.dup2(fd, i)          # inheritable, as the caller's own stdio
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = list(argv)
    from shim import launch
    launch.OOM_PARENT = ppid
    launch.SHOW_ENVIRON = True
    launch.IN_TEMPLATE = True
    try:
        conn.sendall(b"A")
    except OSError:
        return 1                # the caller gave up: it starts by itself
    from shim import cli
    try:
        code = cli.run(argv[1:], template=False)
    except BaseException:
        code = 1
    serve = launch.will_serve_here()
    if serve and code:
        launch.cancel_serve_here()
        serve = False
    if serve:
        launch.detach_here()    # the answer is on the caller's stdout: let go of it
    try:
        conn.sendall(b"X%d\n" % code)
    except OSError:
        pass
    conn.close()
    if serve:
        launch.serve_here()     # the serving process from here on (never returns)
    return code


def _show_as_start(argv):
    """This process is the caller's `start` now: ps shows it so (as the
    caller shows itself), not as one more template."""
    from shim import _native
    try:
        _native.set_comm(os.path.basename(argv[0])[:15])
        _native.set_cmdline_buffer(argv)
    except OSError:
        pass


# ---- the caller's process context -------------------------------------------------

def _read(path):
    with open(path, "rb") as f:
        return f.read()


def take_context(peer):
    """Make this process what the caller's own fork would be: same
    namespaces (else refuse), cgroups, oom_score_adj, rlimits, umask, nice
    value, CPU affinity. Raises on any failure (the caller starts by
    itself then)."""
    proc = "/proc/%d" % peer
    for ns in NAMESPACES:
        try:
            theirs = os.stat("%s/ns/%s" % (proc, ns)).st_ino
        except FileNotFoundError:
            continue
        if theirs != os.stat("/proc/self/ns/%s" % ns).st_ino:
            raise RuntimeError("caller in another %s namespace" % ns)
    join_cgroups(_read(proc + "/cgroup").decode())
    score = _read(proc + "/oom_score_adj")
    with open("/proc/self/oom_score_adj", "wb") as f:
        f.write(score)
    import resource
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            r = getattr(resource, name)
            resource.setrlimit(r, resource.prlimit(peer, r))
    for line in _read(proc + "/status").decode().splitlines():
        if line.startswith("Umask:"):
            os.umask(int(line.split()[1], 8))
            break
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, peer))
    os.sched_setaffinity(0, os.sched_getaffinity(peer))


def _cgroup_mounts():
    """[(fstype, options set, root, mount point)] of cgroup filesystems."""
    out = []
    for line in _read("/proc/self/mountinfo").decode("utf-8", "surrogateescape").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        r = right.split(" ")
        if r[0] not in ("cgroup", "cgroup2"):
            continue
        f = left.split(" ")
        if len(f) < 5:
            continue
        opts = set(r[2].split(",")) if len(r) > 2 else set()
        out.append((r[0], opts, f[3].replace("\\040", " "), f[4].replace("\\040", " ")))
    return out


def join_cgroups(theirs):
    """Move this process into the cgroups listed in `theirs` (the caller's
    /proc/PID/cgroup), each hierarchy through its mount point."""
    if theirs == _read("/proc/self/cgroup").decode():
        return
    mounts = _cgroup_mounts()
    data = b"%d" % os.getpid()
    for line in theirs.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if not path:
            continue
        if ctrls:
            want = set(ctrls.split(","))
            found = [m for m in mounts if m[0] == "cgroup" and want <= m[1]]
        else:
            found = [m for m in mounts if m[0] == "cgroup2"]
        if not found:
            continue        # a hierarchy not mounted here: as for a fork
        _, _, root, mp = found[0]
        rel = path
        if root != "/":
            if not (path == root or path.startswith(root + "/")):
                raise RuntimeError("cgroup %s outside mount %s" % (path, mp))
            rel = path[len(root):]
        with open(os.path.join(mp, rel.lstrip("/"), "cgroup.procs"), "wb") as f:
            f.write(data)
