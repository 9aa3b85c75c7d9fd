"""shim.sockets: the socket path containerd's Go shims compute, listening,
a live socket told from a stale one."""
import hashlib
import os
import socket
import tempfile

import pytest

from shim import sockets


def test_socket_address_hash():
    h = hashlib.sha256(b"/run/containerd/containerd.sock/default/c1").hexdigest()
    assert sockets.socket_address("/run/containerd/containerd.sock", "default", "c1") == \
        "unix:///run/containerd/s/" + h
    assert sockets.socket_path("/run/containerd/containerd.sock", "default", "c1") == \
        "/run/containerd/s/" + h
    assert len(h) == 64 and h == h.lower()


def test_socket_path_loads_no_openssl():
    """The hash comes from the interpreter's own SHA-2 (`_sha2` since Python
    3.12, `_sha256` before), not hashlib: hashlib loads libcrypto, ~0.4 MiB
    private per shim (it did so on Python 3.12+, Debian trixie's 3.13)."""
    import subprocess
    import sys
    shim_dir = os.path.dirname(os.path.dirname(sockets.__file__))
    code = ("import sys; sys.path.append(%r); from shim import sockets; "
            "print(sockets.socket_path('/run/c.sock', 'ns', 'c1')); "
            "print(sorted({'hashlib', '_hashlib'} & set(sys.modules)))" % shim_dir)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    path, loaded = r.stdout.split()
    assert path == "/run/containerd/s/" + hashlib.sha256(b"/run/c.sock/ns/c1").hexdigest()
    assert loaded == "[]"


def test_socket_address_is_path_joined():
    # filepath.Join cleans: duplicate and trailing slashes, "." and "..".
    want = sockets.socket_address("/a/b.sock", "ns", "g")
    assert sockets.socket_address("/a//b.sock/", "ns", "g") == want
    assert sockets.socket_address("/a/./x/../b.sock", "ns", "g") == want
    assert sockets.socket_address("/tmp/x.sock", "ns", "c1", socket_dir="/tmp/s/") == \
        "unix:///tmp/s/" + hashlib.sha256(b"/tmp/x.sock/ns/c1").hexdigest()


@pytest.mark.parametrize("path,clean", [
    ("", "."), ("/", "/"), ("//a//b/", "/a/b"), ("a/../..", ".."), ("/../a", "/a"),
    ("a/./b/.", "a/b"), ("./", "."), ("/a/b/../../..", "/"),
])
def test_go_clean(path, clean):
    assert sockets.go_clean(path) == clean


def test_go_join():
    assert sockets.go_join("/a", "", "b") == "/a/b"
    assert sockets.go_join("", "") == ""
    assert sockets.go_join("a", "b/") == "a/b"


@pytest.fixture
def sdir():
    # Socket paths must stay below 108 bytes: a short directory in /tmp.
    d = tempfile.mkdtemp(prefix="ps", dir="/tmp")
    yield os.path.join(d, "s")
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_listen_unix_modes_live_and_stale(sdir):
    path = os.path.join(sdir, "a")
    s = sockets.listen_unix(path)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert oct(os.stat(sdir).st_mode & 0o777) == "0o700"
        assert sockets.can_connect(path)
        assert sockets.listen_unix(path) is None        # live: the group's shim
        sockets.remove_if_dead(path)
        assert os.path.exists(path)                     # live: kept
    finally:
        s.close()
    assert not sockets.can_connect(path)
    s = sockets.listen_unix(path)                       # stale: replaced
    assert s is not None
    s.close()
    sockets.remove_if_dead(path)
    assert not os.path.exists(path)
    sockets.remove_if_dead(path)                        # gone already: no error


def test_remove_if_dead_bound_never_listening(sdir):
    os.makedirs(sdir)
    path = os.path.join(sdir, "b")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    sockets.remove_if_dead(path)
    assert not os.path.exists(path)
