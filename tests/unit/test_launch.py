"""shim.launch.show_name: the serving process shows the name it was invoked
under (/proc/self/cmdline, /proc/self/comm), in a child process so that
pytest's own name is left alone."""
import os
import subprocess
import sys

import shim

SHIM_DIR = os.path.dirname(os.path.dirname(shim.__file__))

PROBE = """
import sys
sys.path.append(%(dir)r)
from shim import launch, _native
if %(refuse)r:
    def refused(args, environ=None):
        raise OSError(22, "prctl(PR_SET_MM_MAP)")
    _native.set_cmdline_buffer = refused
launch.show_name(%(argv)r, %(environ)r)
sys.stdout.write(repr((open("/proc/self/cmdline", "rb").read(),
                       open("/proc/self/comm", "rb").read(),
                       open("/proc/self/environ", "rb").read())))
"""


def _show(argv, refuse=False, environ=None):
    code = PROBE % {"dir": SHIM_DIR, "argv": argv, "refuse": refuse, "environ": environ}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, "-namespace", "ns", "-id",
                        "a-rather-long-container-id", "-address", "/run/containerd.sock",
                        "-publish-binary", "/usr/bin/containerd", "start"],
                       capture_output=True, text=True, timeout=30, env={"EXECD": "1"})
    assert r.returncode == 0, r.stderr
    return eval(r.stdout)


def test_drop_in_name_exact():
    argv = ["/usr/local/bin/containerd-shim-runc-v2", "-namespace", "ns", "-id", "c1",
            "-address", "/run/containerd.sock", "-debug"]
    cmdline, comm, _ = _show(argv)
    assert cmdline == ("\0".join(argv) + "\0").encode()      # no NUL tail: as Go's
    assert comm == b"containerd-shim\n"                      # basename, 15 bytes


def test_own_name_and_long_argv():
    argv = ["/opt/venv/bin/containerd-shim-pyshim-v1", "-namespace", "x" * 3000]
    cmdline, comm, _ = _show(argv)
    assert cmdline == ("\0".join(argv) + "\0").encode()      # any length
    assert comm == b"containerd-shim\n"


def test_fallback_overwrites_the_argv_area():
    # Where the kernel refuses PR_SET_MM_MAP: the original argv area
    # (python -I -S -c <probe> <start's flags>), NUL-padded.
    argv = ["/usr/bin/containerd-shim-runc-v2", "-namespace", "ns", "-id", "c1"]
    cmdline, comm, _ = _show(argv, refuse=True)
    assert cmdline.startswith(("\0".join(argv) + "\0").encode())
    assert cmdline.rstrip(b"\0") == "\0".join(argv).encode()
    assert comm == b"containerd-shim\n"


def test_environ_shown_as_given():
    # A serving process forked from the template process: /proc/PID/environ
    # shows the environment it serves with, not the template's.
    argv = ["/usr/bin/containerd-shim-runc-v2", "-namespace", "ns"]
    env = ["TTRPC_ADDRESS=/run/c.sock.ttrpc", "NAMESPACE=ns", "EMPTY="]
    cmdline, comm, environ = _show(argv, environ=env)
    assert cmdline == ("\0".join(argv) + "\0").encode()
    assert environ == ("\0".join(env) + "\0").encode()
    _, _, environ = _show(argv)
    assert environ == b"EXECD=1\0"          # None: left as exec'd
