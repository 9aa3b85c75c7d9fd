"""The template process's parts that need no containerd: the request
encoding, the caller's cgroups, what the template imports, and a start
relayed through a template on a private socket (tests/integration/
test_template.py runs it through containerd)."""
import os
import subprocess
import sys

import pytest

from shim import template, template_client
from support.ksm import mergeable_mappings

SHIM_DIR = os.path.dirname(os.path.dirname(template.__file__))


def test_request_round_trip():
    env = {"TTRPC_ADDRESS": "/run/c.sock.ttrpc", "EMPTY": "", "EQ": "a=b"}
    payload = template_client.encode_request(["/bin/shim", "-id", "x", "start"], env,
                                             "/run/bundle", 42)
    assert template_client.decode_request(payload) == (
        42, "/run/bundle", ["/bin/shim", "-id", "x", "start"], env)


@pytest.mark.parametrize("bad", [b"", b"1\0/\0", b"1\0/\x002\0only-one\0", b"1\0/\x001\0x"])
def test_malformed_requests(bad):
    with pytest.raises(ValueError):
        template_client.decode_request(bad)


def test_disabled_by_env(monkeypatch):
    for v in ("0", "false", "off", "NO"):
        assert not template_client.enabled({"PYSHIM_TEMPLATE": v})
    assert template_client.enabled({}) == bool(template_client.build_id())
    assert template_client.socket_path().startswith("/run/containerd/s/pyshim-template-")


def test_join_cgroups_writes_each_hierarchy(monkeypatch, tmp_path):
    mountinfo = ("30 20 0:26 / %s/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
                 "31 20 0:27 /sub %s/memory rw - cgroup cgroup rw,memory\n"
                 "32 20 0:28 / %s/unified rw - cgroup2 cgroup2 rw\n"
                 "33 20 0:29 / /proc rw - proc proc rw\n") % ((tmp_path,) * 3)
    for d in ("cpu,cpuacct/a/b", "memory/c", "unified/u"):
        (tmp_path / d).mkdir(parents=True)
    files = {"/proc/self/mountinfo": mountinfo.encode(), "/proc/self/cgroup": b"other"}
    monkeypatch.setattr(template, "_read", lambda p: files[p])
    template.join_cgroups("4:cpu,cpuacct:/a/b\n3:memory:/sub/c\n2:pids:/p\n0::/u\n")
    mine = b"%d" % os.getpid()
    assert (tmp_path / "cpu,cpuacct/a/b/cgroup.procs").read_bytes() == mine
    assert (tmp_path / "memory/c/cgroup.procs").read_bytes() == mine     # under the mount's root
    assert (tmp_path / "unified/u/cgroup.procs").read_bytes() == mine
    with pytest.raises(RuntimeError):   # outside what is mounted here
        template.join_cgroups("3:memory:/elsewhere\n")


def test_same_cgroups_nothing_written(monkeypatch):
    monkeypatch.setattr(template, "_read", lambda p: b"0::/x\n")
    template.join_cgroups("0::/x\n")       # would fail on any write


def test_template_imports_stay_lean():
    """The template loads what a serving shim loads, nothing heavy: every
    serving shim forked from it carries its modules."""
    code = ("import sys; sys.path.append(%r); from shim import template; template.warm_up(); "
            "bad = {'subprocess','json','logging','argparse','re','enum','socket',"
            "'threading','typing','signal','asyncio','hashlib'} & set(sys.modules); "
            "print(sorted(bad))" % SHIM_DIR)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _python(code):
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import sys; sys.path.append(%r); from shim import _native; " % SHIM_DIR
                        + code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_heap_made_immortal_as_the_template_does():
    """Python 3.12+: what the template holds when it is forked is immortal
    (using it writes no reference count, so a shim does not copy its page);
    what is made later is not. 3.11 has no immortal objects: nothing done."""
    out = _python(
        "from shim import template; template.warm_up(); import gc; gc.collect(); "
        "n = _native.make_heap_immortal(); from shim import sockets; from shim.pb import task; "
        "f, c, t = sockets.socket_path, sockets.socket_path.__code__, task.CreateTaskRequest; "
        "objs = [f, c, c.co_consts, sockets.__dict__, t, sys.modules]; "
        "before = [sys.getrefcount(o) for o in objs]; keep = objs * 100; "
        "after = [sys.getrefcount(o) for o in objs]; new = object(); m = sys.getrefcount(new); "
        "keep = [new] * 100; print(n, before == after, sys.getrefcount(new) - m)")
    n, same, added = out.split()
    if sys.version_info < (3, 12):
        assert (n, same, added) == ("0", "False", "100")
    else:
        assert int(n) > 10000
        assert same == "True"           # immortal: no count written
        assert added == "100"           # made after: counted as ever


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/ksm"), reason="kernel without KSM")
def test_share_identical_pages_marks_private_writable_memory():
    out = _python("print(_native.share_identical_pages(), flush=True); "
                  "print(open('/proc/self/smaps').read())")
    marked, smaps = out.split("\n", 1)
    assert int(marked) > 0
    names = mergeable_mappings(smaps)
    # the malloc heap, anonymous memory (Python's arenas), the interpreter's data
    assert "[heap]" in names and "" in names, names
    assert any("python" in n for n in names), names
    assert not {"[stack]", "[vdso]", "[vvar]"} & names, names
    # the marks belong to the mappings: a fork (a shim forked from the
    # template) keeps them, an exec (runc, a container) drops them
    forked = _python("_native.share_identical_pages(); import os; pid = os.fork(); "
                     "os.waitpid(pid, 0) if pid else "
                     "(print(open('/proc/self/smaps').read(), flush=True), os._exit(0))")
    assert mergeable_mappings(forked) == names
    execd = _python("_native.share_identical_pages(); import os; "
                    "os.execv('/bin/cat', ['cat', '/proc/self/smaps'])")
    assert "VmFlags" in execd and mergeable_mappings(execd) == set()
