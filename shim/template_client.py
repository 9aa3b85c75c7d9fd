"""`start` through the template process (shim/template.py): hand this
start's argv, environment, cwd and stdio to the resident template, which
forks a process that runs the start from there, and exit with its status.

    code = ask(sys.argv)      # None: no template (spawn() one) or refused
    spawn()                   # start the template, detached, for next time

The request is one stream on the template's unix socket:
    b"PYSHIMT1" + payload length (4 bytes, little endian), with this
    process's fds 0, 1, 2 attached (SCM_RIGHTS); then the payload:
    NUL-terminated fields  ppid, cwd, argc, argv..., env entries...
The template's answer: b"A" once the request is accepted (the start runs
there from then on, writing to our stdout/stderr itself), then
b"X<status>\\n". A close before b"A" means refused: start here instead.

Imports only `os` and `sys` at load time (`start` loads this module, and
a serving process forked by a fallback start keeps it).
"""
import os
import sys

ENV = "PYSHIM_TEMPLATE"
SOCKET_DIR = "/run/containerd/s"
SOCKET_PREFIX = "pyshim-template-"
MAGIC = b"PYSHIMT1"
# How long an accepted-or-refused answer may take (the template forks at
# once); the start itself is not bounded here, as a local start is not.
ACCEPT_TIMEOUT = 5.0


def build_id():
    """This install's identity (setup.py writes shim/_build.py); "" when
    running from a source tree, where no template is used."""
    try:
        from shim._build import BUILD_ID
    except ImportError:
        return ""
    return BUILD_ID


def enabled(environ=None):
    """The template is used unless PYSHIM_TEMPLATE is 0/false/no/off (in
    containerd's environment, which every `start` inherits)."""
    value = (environ if environ is not None else os.environ).get(ENV, "")
    return value.strip().lower() not in ("0", "false", "no", "off") and bool(build_id())


def socket_path(socket_dir=SOCKET_DIR):
    return "%s/%s%s" % (socket_dir, SOCKET_PREFIX, build_id())


def encode_request(argv, environ, cwd, ppid):
    """The payload of a request (module docstring)."""
    fields = [b"%d" % ppid, os.fsencode(cwd), b"%d" % len(argv)]
    fields += [os.fsencode(a) for a in argv]
    fields += [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in environ.items()]
    return b"".join(f + b"\0" for f in fields)


def decode_request(payload):
    """(ppid, cwd, argv, env dict) of a payload; ValueError if malformed."""
    if not payload.endswith(b"\0"):
        raise ValueError("request not NUL-terminated")
    fields = payload[:-1].split(b"\0")
    if len(fields) < 4:
        raise ValueError("request too short")
    ppid = int(fields[0])
    cwd = os.fsdecode(fields[1])
    argc = int(fields[2])
    if argc < 1 or len(fields) < 3 + argc:
        raise ValueError("bad argc")
    argv = [os.fsdecode(a) for a in fields[3:3 + argc]]
    env = {}
    for entry in fields[3 + argc:]:
        k, sep, v = entry.partition(b"=")
        if sep and k:
            env[os.fsdecode(k)] = os.fsdecode(v)
    return ppid, cwd, argv, env


def ask(argv, path=None):
    """Run this `start` (argv, with argv[0]) in the template. Returns its
    exit status, or None when there is no template or it refused (nothing
    was read from stdin, nothing written: start here). A template lost
    after it accepted is an error (status 1), as a crashed start is."""
    import _socket
    path = path or socket_path()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(ACCEPT_TIMEOUT)
        try:
            s.connect(path)
            payload = encode_request(argv, os.environ, os.getcwd(), os.getppid())
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
            s.sendmsg([MAGIC + len(payload).to_bytes(4, "little")],
                      [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            s.sendall(payload)
            if s.recv(1) != b"A":
                return None
        except OSError:
            return None
        # Accepted: the start runs there; wait for as long as it takes.
        s.settimeout(None)
        answer = b""
        try:
            while not answer.endswith(b"\n"):
                b = s.recv(64)
                if not b:
                    break
                answer += b
        except OSError:
            pass
        if answer.startswith(b"X") and answer.endswith(b"\n"):
            try:
                return int(answer[1:-1])
            except ValueError:
                pass
        _error("the template process lost this start")
        return 1
    finally:
        s.close()


def alive(path=None):
    from shim.sockets import can_connect
    return can_connect(path or socket_path())


def _error(msg):
    from shim.bundle import write_all
    try:
        write_all(2, ("io.containerd.pyshim.v1: %s\n" % msg).encode())
    except OSError:
        pass


def spawn():
    """Start the template for the starts to come, fully detached: double
    fork (not our child, nor containerd's), its own session, stdio on
    /dev/null, cwd /, a fresh `python -I -S` that imports shim.template.
    Never fails the caller: a template that cannot start is no template."""
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.append(%r); from shim.template import main; main()"
            % pkg_dir)
    argv = [sys.executable, "-I", "-S", "-c", code]
    env = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}
    if "PYSHIM_KSM" in os.environ:      # the node's choice (shim.template.main)
        env["PYSHIM_KSM"] = os.environ["PYSHIM_KSM"]
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            os.chdir("/")
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass
