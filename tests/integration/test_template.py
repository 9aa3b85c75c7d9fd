"""The template process (issue 12, shim/template.py): `start` forks the
serving shim from a resident, already-imported process. Shown through ctr
on a private containerd: with the template serving (the serving shim is
what a start without it makes), killed mid-run, disabled, refused to a
non-root caller, 20 concurrent starts of one group, containerd restarted.

A serving shim forked from the template is told by the `resource`
extension mapped in it: the template loads it (to copy the caller's
rlimits), a start without the template never does."""
import os
import resource
import signal
import subprocess
import threading
import time

import pytest

from support import template
from support.containerd import GO_RUNTIME, PY_RUNTIME, Containerd
from support.helpers import tracer_pid, wait_status
from support.ksm import Ksmd, mergeable_mappings, merging_pages
from support.leaks import socket_path
from support.shimwire import memory_kib

pytestmark = pytest.mark.integration


def _serving_shim(c, id):
    shims = [p for p, a in c.shims(id=id) if a[-1] not in ("start", "delete")]
    assert len(shims) == 1, c.shims()
    return shims[0]


def _from_template(pid):
    with open("/proc/%d/maps" % pid) as f:
        return "/resource.cpython" in f.read()


def _ancestors(pid):
    out = []
    while pid > 1:
        pid = template.ppid(pid)
        out.append(pid)
    return out


def _read(path):
    with open(path) as f:
        return f.read()


def _context(pid):
    """What a serving shim inherits from its start: cgroups, OOM score,
    limits, nice value, umask, cwd, environment names."""
    status = dict(line.split(":", 1) for line in _read("/proc/%d/status" % pid).splitlines())
    with open("/proc/%d/environ" % pid, "rb") as f:
        env = {e.split(b"=", 1)[0] for e in f.read().split(b"\0") if e}
    return {"cgroup": _read("/proc/%d/cgroup" % pid),
            "oom": _read("/proc/%d/oom_score_adj" % pid).strip(),
            "limits": _read("/proc/%d/limits" % pid),
            "nice": _read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()[16],
            "umask": status.get("Umask", "").strip(),
            "env": env}


def _run_detached(c, id, *extra):
    c.ctr("run", "-d", "--runtime", PY_RUNTIME, *extra, c.image, id, "sleep", "600")
    assert wait_status(c, id, "RUNNING") == "RUNNING"


def _output(c, id, text):
    r = c.ctr("run", "--rm", "--runtime", PY_RUNTIME, c.image, id, "echo", text)
    return r.stdout


@pytest.fixture
def own_template():
    """A template started by this test, in a process context unlike
    containerd's (OOM score, nice value, umask, open-files limit): a
    serving shim must take none of it. Ended (by PID) afterwards."""
    if template.pids():
        for pid in template.pids():
            template.end(pid)       # spawned by this session's earlier starts
    assert not template.pids(), "a template not started by the tests serves this build"

    def unlike_containerd():
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("567")
        os.nice(7)
        os.umask(0o077)
        # The soft limit only: raising a hard one takes CAP_SYS_RESOURCE,
        # which a sandboxed root may lack (the template then refuses).
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (333, hard))

    p = template.start(unlike_containerd)
    yield p
    template.end(p.pid)
    p.wait(10)


def _setenv(env):
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _start(c, env=None):
    """Start containerd c with env applied to the environment it inherits:
    the template on unless env says otherwise, whatever the suite runs with."""
    env = env or {"PYSHIM_TEMPLATE": None}
    old = {k: os.environ.get(k) for k in env}
    _setenv(env)
    try:
        c.start()
    finally:
        _setenv(old)


@pytest.fixture
def cd(request):
    made = []

    def make(env=None):
        c = Containerd()
        _start(c, env)
        made.append(c)
        c.image = c.import_image()
        return c
    yield make
    problems = []
    for c in made:
        problems += c.cleanup()
    assert not problems, problems


def test_started_from_the_template_as_without_it(cd, own_template):
    on = cd()
    off = cd({"PYSHIM_TEMPLATE": "0"})
    _run_detached(on, "warm")
    _run_detached(off, "cold")
    warm, cold = _serving_shim(on, "warm"), _serving_shim(off, "cold")
    assert _from_template(warm) and not _from_template(cold)
    assert own_template.pid not in _ancestors(warm)
    # each leads a session of its own (the warm one is the start that
    # answered, detached: launch.serve_here)
    assert os.getsid(warm) == warm and os.getsid(cold) == cold
    assert os.getpgid(warm) == warm and os.getpgid(cold) == cold
    assert os.readlink("/proc/%d/cwd" % warm) == on.bundle("warm")
    cw, cc = _context(warm), _context(cold)
    assert cw["env"] ^ cc["env"] == {b"PYSHIM_TEMPLATE"}     # what turned it off
    assert b"PYSHIM_ARGV0" not in cc["env"]      # the native launcher's note to Python
    cc["env"] = cw["env"]
    assert cw == cc
    assert _context(warm)["oom"] == str(int(_read("/proc/%d/oom_score_adj"
                                                  % on.proc.pid)) + 1)
    assert _output(on, "warm-echo", "hello") == "hello\n"
    assert own_template.poll() is None
    assert template.pids() == [own_template.pid]


def test_first_start_spawns_it_killed_mid_run(cd):
    for pid in template.pids():
        template.end(pid)
    c = cd()
    _run_detached(c, "first")               # no template: starts it, runs here
    assert not _from_template(_serving_shim(c, "first"))
    pids = template.wait_for(template.pids)
    assert len(pids) == 1, pids
    assert template.wait_for(lambda: template.ppid(pids[0]) != c.proc.pid and
                             pids[0] not in _ancestors(os.getpid()))
    _run_detached(c, "second")
    second = _serving_shim(c, "second")
    assert _from_template(second)
    template.end(pids[0])                   # killed mid-run
    r = c.ctr("task", "exec", "--exec-id", "e1", "second", "echo", "still")
    assert r.stdout == "still\n"
    assert _output(c, "after-kill", "works") == "works\n"
    pids = template.wait_for(template.pids)     # the start after the kill spawned one
    assert len(pids) == 1
    _run_detached(c, "third")
    assert _from_template(_serving_shim(c, "third"))
    template.end(pids[0])


def test_terminated_removes_its_socket(cd):
    """SIGTERM (an operator's kill, a service stop): the template stops
    serving, removes its socket and exits 0, as when a new install
    supersedes it; running shims are not touched, the next start spawns a
    new template. (Before: killed by the signal, its socket left behind.)"""
    for pid in template.pids():
        template.end(pid)
    p = template.start()
    try:
        c = cd()
        _run_detached(c, "before")
        assert _from_template(_serving_shim(c, "before"))
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(10) == 0
        assert not os.path.lexists(template.socket_path())
        r = c.ctr("task", "exec", "--exec-id", "e1", "before", "echo", "still")
        assert r.stdout == "still\n"
        _run_detached(c, "after")
        pids = template.wait_for(template.pids)
        assert len(pids) == 1 and pids[0] != p.pid, pids
        template.end(pids[0])
    finally:
        if p.poll() is None:
            template.end(p.pid)
        p.wait(10)


def _mergeable(pid):
    return mergeable_mappings(_read("/proc/%d/smaps" % pid))


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/ksm"), reason="kernel without KSM")
def test_shim_memory_offered_to_samepage_merging(cd, own_template):
    """The template marks its heap, arenas and the interpreter's data
    MERGEABLE: every shim forked from it has them marked (where ksmd runs,
    what shims hold byte-identical is kept once); the container's
    processes, exec'd, have nothing marked."""
    c = cd()
    _run_detached(c, "merge")
    c.ctr("task", "exec", "-d", "--exec-id", "e1", "merge", "sleep", "600")
    shim = _serving_shim(c, "merge")
    for pid in (own_template.pid, shim):
        marked = _mergeable(pid)
        assert {"[heap]", ""} <= marked and any("python" in n for n in marked), marked
    init = c.tasks()["merge"][0]
    execd = [int(p) for p in _read("/proc/%d/task/%d/children" % (shim, shim)).split()]
    assert init in execd and len(execd) == 2, execd
    for pid in execd:
        assert _mergeable(pid) == set(), pid


def _uss(pid):
    m = memory_kib(pid)
    return m["Private_Clean"] + m["Private_Dirty"]


def test_identical_pages_kept_once_with_ksmd_running(cd, own_template):
    """ksmd on (turned on here, put back as found): two shims forked from
    the template have most of what they copied merged, their private
    memory drops below half of what it was; a Go shim has nothing merged."""
    k = Ksmd()
    if not k.available or merging_pages(os.getpid()) is None:
        pytest.skip("no KSM to run here, or the kernel does not say what it merged")
    c = cd()
    _run_detached(c, "twin1")
    _run_detached(c, "twin2")
    c.ctr("run", "-d", "--runtime", GO_RUNTIME, c.image, "go", "sleep", "600")
    shims = [_serving_shim(c, "twin1"), _serving_shim(c, "twin2")]
    go = [p for p, a in c.shims(id="go") if a[-1] not in ("start", "delete")]
    before = [_uss(p) for p in shims]
    # (ksmd counts no scan while nothing is marked: say so, not a timeout)
    assert all(_mergeable(p) for p in shims), "nothing marked for merging"
    try:
        k.merge(timeout=120, pages_to_scan=5000)     # quick even beside a VM's marked memory
        merged = [merging_pages(p) for p in shims]
        after = [_uss(p) for p in shims]
        assert all(m > 200 for m in merged), merged        # of ~640 copied pages
        assert all(a < b / 2 for a, b in zip(after, before)), (before, after)
        assert [merging_pages(p) for p in go] == [0]
        # merged pages stay usable: the shims serve as before
        r = c.ctr("task", "exec", "--exec-id", "e1", "twin1", "echo", "merged")
        assert r.stdout == "merged\n"
    finally:
        k.restore()


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/ksm"), reason="kernel without KSM")
def test_samepage_merging_turned_off(cd):
    """PYSHIM_KSM=0 in containerd's environment: the template the first
    start spawns marks nothing, nor do the shims forked from it."""
    for pid in template.pids():
        template.end(pid)
    c = cd({"PYSHIM_TEMPLATE": None, "PYSHIM_KSM": "0"})
    _run_detached(c, "first")               # spawns the template
    pids = template.wait_for(template.pids)
    assert len(pids) == 1, pids
    try:
        _run_detached(c, "forked")
        shim = _serving_shim(c, "forked")
        assert _from_template(shim)
        assert _mergeable(pids[0]) == set() and _mergeable(shim) == set()
    finally:
        template.end(pids[0])


def test_disabled(cd):
    for pid in template.pids():
        template.end(pid)
    c = cd({"PYSHIM_TEMPLATE": "0"})
    _run_detached(c, "cold")
    assert _output(c, "cold-echo", "plain") == "plain\n"
    assert not _from_template(_serving_shim(c, "cold"))
    assert template.pids() == []
    assert not os.path.exists(template.socket_path())


def test_turned_off_by_the_runtime_options(cd, own_template, tmp_path):
    """`PyshimTemplate = false` in the runtime options TOML (CRI's
    ConfigPath, ctr's --runtime-config-path): that runtime's serving shims
    are fresh interpreters, shown and working as any other."""
    c = cd()
    opts = tmp_path / "pyshim-options.toml"
    opts.write_text("PyshimTemplate = false\n")
    _run_detached(c, "fresh", "--runtime-config-path", str(opts))
    fresh = _serving_shim(c, "fresh")
    assert not _from_template(fresh)
    with open("/proc/%d/cmdline" % fresh, "rb") as f:
        argv = f.read().split(b"\0")
    assert os.path.basename(argv[0]) == b"containerd-shim-pyshim-v1", argv
    assert argv[1:7] == [b"-namespace", c.namespace.encode(), b"-id", b"fresh",
                         b"-address", c.address.encode()], argv
    assert b"PYSHIM_ARGV0" not in _context(fresh)["env"]
    r = c.ctr("task", "exec", "--exec-id", "e1", "fresh", "echo", "from-fresh")
    assert r.stdout == "from-fresh\n"
    _run_detached(c, "forked")          # no such key: the template's fork
    assert _from_template(_serving_shim(c, "forked"))
    assert own_template.poll() is None


def test_forked_shims_import_nothing(cd, own_template, tmp_path):
    """Whatever a serving shim runs was imported by the template: a shim
    forked from it reads no Python module (an import would be read on the
    start's critical path, slow on a busy node's disk, and held privately
    in every shim), for ctr's plain runs and with runtime options (CRI's
    ConfigPath, here `ctr run --runtime-config-path`). Failed before: each
    start tried `_sha2` (3.11 has `_sha256`) and each one with runtime
    options imported shim.pb.runtimeoptions."""
    import re
    import shutil
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    c = cd()
    opts = tmp_path / "options.toml"
    opts.write_text("SystemdCgroup = false\n")
    log = tmp_path / "trace"
    tracer = subprocess.Popen([strace, "-f", "-qq", "-o", str(log), "-e",
                               "trace=execve,open,openat,stat,lstat,newfstatat,statx",
                               "-p", str(own_template.pid)])
    try:
        deadline = time.monotonic() + 30
        while tracer_pid(own_template.pid) == 0:
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        _run_detached(c, "plain")
        _run_detached(c, "with-options", "--runtime-config-path", str(opts))
        assert _output(c, "once", "hi") == "hi\n"
    finally:
        tracer.terminate()
        tracer.wait(30)
    lines = log.read_text().splitlines()
    ran_other = {ln.split()[0] for ln in lines if " execve(" in ln}     # runc, ...
    ran_other.add(str(own_template.pid))        # its own checks of the install
    ours = [ln for ln in lines if ln.split()[0] not in ran_other]
    assert [ln for ln in ours if "config.json" in ln], lines           # traced
    module = re.compile(r'"[^"]*(/python3[^"/]*"|/python3[^"]*/[^"]*"|\.pyc?"|\.so(\.[0-9]+)*")')
    assert [ln for ln in ours if module.search(ln)] == []


def test_start_failing_after_its_socket_serves_nothing(cd, own_template, tmp_path):
    """A start that fails once its socket is listening (here: the shim
    cgroup of the runtime options does not exist) fails `ctr run` with the
    reason and leaves nothing behind: the template's start serves only once
    it has answered (launch.serve_here), and not after a failure."""
    c = cd()
    opts = tmp_path / "pyshim-options.toml"
    opts.write_text('ShimCgroup = "/pyshim-test-no-such-cgroup-%d"\n' % os.getpid())
    r = c.ctr("run", "-d", "--runtime", PY_RUNTIME, "--runtime-config-path", str(opts),
              c.image, "nocg", "sleep", "600", check=False)
    assert r.returncode != 0 and "failed to load cgroup" in r.stderr, r.stderr
    time.sleep(0.5)
    assert c.shims(id="nocg") == []
    assert not os.path.exists(socket_path(c, "nocg"))
    assert c.ctr("task", "ls", "-q").stdout.split() == []
    c.ctr("container", "delete", "nocg", check=False)
    assert _output(c, "after-nocg", "fine") == "fine\n"
    assert own_template.poll() is None


def test_refused_to_non_root(own_template, tmp_path):
    path = template.socket_path()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    # Past the modes (a link in an open dir, the socket made 0666 for the
    # test): SO_PEERCRED still refuses uid 65534.
    d = "/run/pyshim-test-template-%d" % os.getpid()
    os.mkdir(d, 0o755)
    link = d + "/t"
    try:
        os.link(path, link)
        os.chmod(link, 0o666)
        probe = ("import sys, os, _socket; sys.path.append(%r); "
                 "from shim import template_client as t; os.setgid(65534); os.setuid(65534); "
                 "s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM); s.connect(%r); "
                 "print('connected'); print(t.ask(['x', 'start'], %r))"
                 % (os.path.dirname(os.path.dirname(template.template_client.__file__)),
                    link, link))
        r = subprocess.run([os.sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert (r.returncode, r.stdout) == (0, "connected\nNone\n"), r.stderr
    finally:
        os.chmod(path, 0o600)
        for p in (link, d):
            try:
                (os.unlink if p == link else os.rmdir)(p)
            except OSError:
                pass
    assert own_template.poll() is None


def test_concurrent_starts_of_one_group(cd, own_template):
    c = cd()
    ids = ["g%02d" % i for i in range(20)]
    errors = []

    def run(id):
        r = c.ctr("run", "-d", "--runtime", PY_RUNTIME, "--annotation",
                  "io.containerd.runc.v2.group=grp", c.image, id, "sleep", "600", check=False)
        if r.returncode:
            errors.append((id, r.stderr))
    threads = [threading.Thread(target=run, args=(id,)) for id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for id in ids:
        assert wait_status(c, id, "RUNNING") == "RUNNING"
    serving = {p for p, a in c.shims() if a[-1] not in ("start", "delete")}
    assert len(serving) == 1, c.shims()
    assert _from_template(serving.pop())
    with open(os.path.join(c.bundle(ids[0]), "address")) as f:
        address = f.read()
    for id in ids[1:]:
        with open(os.path.join(c.bundle(id), "address")) as f:
            assert f.read() == address


def test_containerd_restart(cd, own_template):
    c = cd()
    _run_detached(c, "before")
    shim = _serving_shim(c, "before")
    c.stop()
    _start(c)
    assert wait_status(c, "before", "RUNNING") == "RUNNING"
    assert _serving_shim(c, "before") == shim
    assert own_template.poll() is None
    _run_detached(c, "after")
    assert _from_template(_serving_shim(c, "after"))
    r = c.ctr("task", "exec", "--exec-id", "e", "before", "echo", "ok")
    assert r.stdout == "ok\n"
    c.ctr("task", "kill", "-s", "SIGKILL", "before")
    assert wait_status(c, "before", "STOPPED") == "STOPPED"


def test_version_tells_whether_a_template_serves(own_template, pyshim_binary):
    def version(**env):
        environ = {k: v for k, v in os.environ.items() if k != "PYSHIM_TEMPLATE"}
        r = subprocess.run([pyshim_binary, "-v"], capture_output=True, text=True, timeout=30,
                           env=dict(environ, **env))
        assert r.returncode == 0, r.stderr
        return [line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                if line.strip().startswith("Template:")][0]
    assert version().startswith("serving (build ")
    assert version(PYSHIM_TEMPLATE="0").startswith("disabled")
    template.end(own_template.pid)
    own_template.wait(10)
    assert version().startswith("not running")


def test_superseded_by_a_new_install(tmp_path, pyshim_binary):
    """A template whose installed build changed under it (a new `pip
    install`) exits by itself once idle (checked every CHECK_SECONDS) and
    removes its socket; the next start spawns the new build's."""
    import shutil
    from shim import template as template_mod
    for pid in template.pids():
        template.end(pid)
    assert not template.pids(), "a template not started by the tests serves this build"
    pkg = tmp_path / "site"
    shutil.copytree(os.path.dirname(template_mod.__file__), str(pkg / "shim"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    p = template.start(pkg=str(pkg))
    try:
        assert template.pids() == [p.pid]
        (pkg / "shim" / "_build.py").write_text("BUILD_ID = 'a-newer-build'\n")
        p.wait(template_mod.CHECK_SECONDS + 10)
        assert not os.path.exists(template.socket_path())
    finally:
        if p.poll() is None:
            template.end(p.pid)
            p.wait(10)
