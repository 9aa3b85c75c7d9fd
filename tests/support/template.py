"""The template process of the installed build (shim/template.py), as the
tests see it: find it, start one with a chosen process context, end the
ones the tests started (by PID) and remove their socket.

    pids()                   live templates of this build
    start(preexec=None)      start one (the tests' child); returns Popen
    end(pid)                 SIGKILL + wait gone, remove a dead socket

stdlib + the installed shim package.
"""
import os
import signal
import subprocess
import sys
import time

from shim import template_client

NAME = b"pyshim-template"


def socket_path(build_id=None):
    if build_id:
        return "%s/%s%s" % (template_client.SOCKET_DIR, template_client.SOCKET_PREFIX, build_id)
    return template_client.socket_path()


def ppid(pid):
    """The parent pid of pid (0 if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pids(build_id=None):
    """PIDs of processes showing `pyshim-template <build id>` (default: the
    installed build's). A template's own forks show its name until they
    take the caller's (a probe's connection makes one too): they are not
    templates, and are left out (their parent shows the name)."""
    want = NAME + b"\0" + (build_id or template_client.build_id()).encode() + b"\0"
    named = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if f.read() == want:
                    named.add(int(d))
        except OSError:
            pass
    return sorted(p for p in named if ppid(p) not in named)


def wait_for(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return cond()


def start(preexec=None, pkg=None, env=None):
    """Start a template as the tests' own child (its own session); returns
    the Popen once it listens (its pid is the template's). pkg: the dir
    holding the `shim` package it runs (default: the installed one); env:
    added to the PATH it gets, as containerd's environment would be."""
    pkg = pkg or os.path.dirname(os.path.dirname(template_client.__file__))
    code = ("import sys; sys.path.append(%r); from shim.template import main; main()" % pkg)
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, preexec_fn=preexec, cwd="/",
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})})
    if not wait_for(lambda: p.pid in pids() and template_client.alive()):
        p.kill()
        p.wait(10)
        raise AssertionError("the template did not come up")
    return p


def _gone(pid):
    """No such process, or a zombie (its fds, the socket, are closed)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def end(pid, build_id=None):
    """SIGKILL the template `pid` (one the tests started), wait until it is
    gone, and remove its socket if no live template is left on it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for(lambda: _gone(pid), 10.0)
    path = socket_path(build_id)
    if not template_client.alive(path):
        try:
            os.unlink(path)
        except OSError:
            pass
