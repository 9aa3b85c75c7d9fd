"""The shim's unix socket: its path (what containerd's Go shims compute),
listening on it, and telling a live socket from a stale one.

    path = socket_path(address, namespace, group)   # /run/containerd/s/<sha256>
    sock = listen_unix(path)      # None: a live shim of the group listens
    remove_if_dead(path)          # a killed shim's leftover socket file

Imports only `os` at load time (the serving process loads this module);
`_socket` and `_sha2`/`_sha256` (builtins, not `socket`/`hashlib`) when used.
"""
import os

SOCKET_DIR = "/run/containerd/s"
UNIX_SCHEME = "unix://"
EADDRINUSE = 98


def go_clean(p):
    """Go's path.Clean."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    out = []
    for part in p.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    s = "/".join(out)
    if rooted:
        return "/" + s
    return s or "."


def go_join(*parts):
    """Go's filepath.Join: join the non-empty parts with / and Clean."""
    parts = [p for p in parts if p]
    if not parts:
        return ""
    return go_clean("/".join(parts))


_sha256 = None


def sha256_function():
    """The interpreter's own SHA-256 (`_sha2` since 3.12, `_sha256` up to
    3.11; hashlib, which loads OpenSSL, only without both), found once: the
    template finds it for every shim it forks, which then runs no import
    (on 3.11 the failed `_sha2` one touched the import machinery's objects,
    copying their pages, in every shim)."""
    global _sha256
    if _sha256 is None:
        try:
            from _sha2 import sha256
        except ImportError:
            try:
                from _sha256 import sha256
            except ImportError:
                from hashlib import sha256
        _sha256 = sha256
    return _sha256


def socket_path(address, namespace, group, socket_dir=SOCKET_DIR):
    """/run/containerd/s/<sha256 hex of filepath.Join(address, ns, group)>."""
    sha256 = sha256_function()
    d = sha256(go_join(address, namespace, group).encode("utf-8", "surrogateescape"))
    return "%s/%s" % (socket_dir.rstrip("/") or "", d.hexdigest())


def socket_address(address, namespace, group, socket_dir=SOCKET_DIR):
    return UNIX_SCHEME + socket_path(address, namespace, group, socket_dir)


def _somaxconn():
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def can_connect(path):
    """Someone listens on the unix socket path (1 s to answer)."""
    import _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def listen_unix(path):
    """Bind+listen path (0600, dir 0700). Returns the socket, or None when
    the address is in use by a live listener (an existing shim of the
    group); a stale socket file is removed and bound again."""
    import _socket
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, 0o700, exist_ok=True)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            s.bind(path)
        except OSError as e:
            if e.errno != EADDRINUSE:
                raise
            if can_connect(path):
                s.close()
                return None
            os.unlink(path)
            s.bind(path)
        try:
            s.listen(_somaxconn())
            os.chmod(path, 0o600)
        except BaseException:
            os.unlink(path)
            raise
    except BaseException:
        s.close()
        raise
    return s


def remove_if_dead(path):
    """Remove the socket file at path when nothing listens on it any more (a
    shim that was killed leaves it behind; a grouped shim still serving
    others answers the connect and keeps its socket). OSError if the
    unlink fails."""
    if os.path.exists(path) and not can_connect(path):
        os.unlink(path)
