"""shim.runc, shim.runc_errors and shim.runc_sync without root: argv
building, log.json error extraction, bundle files, and the spawn/reap/capture
path driven through a fake runc (a shell script)."""
import json
import os
import stat
import textwrap

import pytest

from shim import bundle as bundle_files, errors, runc as runc_mod, runc_errors, runc_sync
from shim.loop import get_loop
from shim.reaper import Reaper
from shim.runc import Runc, RuncError
from shim.ttrpc import NOT_FOUND

loop = get_loop()


@pytest.fixture(scope="module")
def reaper():
    return Reaper(loop, subreaper=False)


def run(coro, timeout=10):
    return loop.run_until_complete(loop.spawn(coro), timeout=timeout)


# ---- argv -------------------------------------------------------------------

class Recorder(Runc):
    """Runc whose _run records the argv instead of running anything."""

    def __init__(self, **kw):
        Runc.__init__(self, **kw)
        self.calls = []
        self.result = b""

    async def _run(self, bundle, args, stdio=None, stdin_data=None, stdout_only=False):
        self.calls.append((self.command(bundle, *args), stdio, stdin_data, stdout_only))
        if args[0] in ("create", "exec", "restore"):
            pid_file = args[args.index("--pid-file") + 1]
            with open(pid_file, "w") as f:
                f.write("4242")
        if args[0] == "exec":
            spec = args[args.index("--process") + 1]
            with open(spec, "rb") as f:
                self.process_json = f.read()
            self.process_path = spec
        return self.result


def G(bundle, ns="ns1", root="/run/containerd/runc"):
    return ["runc", "--root", "%s/%s" % (root, ns), "--log", "%s/log.json" % bundle,
            "--log-format", "json"]


def test_global_flags():
    r = Runc(namespace="k8s.io")
    assert r.command("/b", "start", "x") == [
        "runc", "--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json",
        "--log-format", "json", "start", "x"]
    r = Runc(namespace="default", binary="crun", root="/var/run/r", systemd_cgroup=True,
             criu_path="/usr/sbin/criu")
    assert r.command("/b", "ps") == [
        "crun", "--root", "/var/run/r/default", "--log", "/b/log.json", "--log-format",
        "json", "--criu", "/usr/sbin/criu", "--systemd-cgroup", "ps"]
    # Empty option values mean the defaults.
    r = Runc(namespace="n", binary="", root="")
    assert r.command("/b")[:3] == ["runc", "--root", "/run/containerd/runc/n"]


def test_create_argv(tmp_path):
    b = str(tmp_path)
    r = Recorder(namespace="ns1")
    pid = run(r.create("c1", b, stdio=(5, 6, 7)))
    assert pid == 4242
    argv, stdio, _, _ = r.calls[0]
    assert argv == G(b) + ["create", "--bundle", b, "--pid-file", b + "/init.pid", "c1"]
    assert stdio == (5, 6, 7)
    r.calls.clear()
    run(r.create("c1", b, console_socket="/tmp/cs.sock", no_pivot=True, no_new_keyring=True))
    assert r.calls[0][0] == G(b) + [
        "create", "--bundle", b, "--pid-file", b + "/init.pid",
        "--console-socket", "/tmp/cs.sock", "--no-pivot", "--no-new-keyring", "c1"]


def test_simple_commands_argv(tmp_path):
    b = str(tmp_path)
    r = Recorder(namespace="ns1")
    run(r.start("c1", b))
    run(r.kill("c1", b, 15))
    run(r.kill("c1", b, 9, all=True))
    run(r.delete("c1", b))
    run(r.delete("c1", b, force=True))
    run(r.pause("c1", b))
    run(r.resume("c1", b))
    assert [c[0][len(G(b)):] for c in r.calls] == [
        ["start", "c1"],
        ["kill", "c1", "15"],
        ["kill", "--all", "c1", "9"],
        ["delete", "c1"],
        ["delete", "--force", "c1"],
        ["pause", "c1"],
        ["resume", "c1"],
    ]


def test_ps_update_argv(tmp_path):
    b = str(tmp_path)
    r = Recorder(namespace="ns1")
    r.result = b"[1, 22, 333]\n"
    assert run(r.ps("c1", b)) == [1, 22, 333]
    assert r.calls[0][0][len(G(b)):] == ["ps", "--format", "json", "c1"]
    assert r.calls[0][3] is True        # stdout only
    r.result = b"null"
    assert run(r.ps("c1", b)) == []
    r.calls.clear()
    run(r.update("c1", b, b'{"pids":{"limit":10}}'))
    argv, _, stdin_data, _ = r.calls[0]
    assert argv[len(G(b)):] == ["update", "--resources", "-", "c1"]
    assert stdin_data == b'{"pids":{"limit":10}}'


def test_exec_argv(tmp_path, monkeypatch):
    b = str(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    r = Recorder(namespace="ns1")
    spec = b'{"args":["sh"],"cwd":"/"}'
    pid = run(r.exec("c1", b, spec, "e1", stdio=(1, 2, 3)))
    assert pid == 4242
    argv = r.calls[0][0][len(G(b)):]
    assert argv == ["exec", "--process", r.process_path, "--detach",
                    "--pid-file", b + "/e1.pid", "c1"]
    assert os.path.basename(r.process_path).startswith("runc-process")
    assert os.path.dirname(r.process_path) == b
    assert r.process_json == spec
    assert not os.path.exists(r.process_path)     # removed afterwards
    r.calls.clear()
    run(r.exec("c1", b, spec, "e2", console_socket="/s.sock"))
    argv = r.calls[0][0][len(G(b)):]
    assert argv[:4] == ["exec", "--process", r.process_path, "--console-socket"]
    assert argv[4:] == ["/s.sock", "--detach", "--pid-file", b + "/e2.pid", "c1"]


def test_checkpoint_argv(tmp_path):
    b = str(tmp_path)
    r = Recorder(namespace="ns1")
    run(r.checkpoint("c1", b, "/img", "/work"))
    assert r.calls[-1][0][len(G(b)):] == [
        "checkpoint", "--image-path", "/img", "--work-path", "/work", "--leave-running", "c1"]
    run(r.checkpoint("c1", b, "/img", "/work", leave_running=False, tcp_established=True,
                     ext_unix_sk=True, shell_job=True, file_locks=True,
                     empty_ns=["network", "uts"]))
    assert r.calls[-1][0][len(G(b)):] == [
        "checkpoint", "--image-path", "/img", "--work-path", "/work", "--tcp-established",
        "--ext-unix-sk", "--shell-job", "--file-locks", "--empty-ns", "network",
        "--empty-ns", "uts", "c1"]


def test_restore_argv(tmp_path):
    b = str(tmp_path)
    r = Recorder(namespace="ns1")
    pid = run(r.restore("c1", b, "/ckpt", b + "/work", parent_path="/parent",
                        console_socket="/cs", no_pivot=True))
    assert pid == 4242
    assert r.calls[-1][0][len(G(b)):] == [
        "restore", "--image-path", "/ckpt", "--work-path", b + "/work",
        "--parent-path", "/parent", "--detach", "--pid-file", b + "/init.pid",
        "--console-socket", "/cs", "--no-pivot", "-no-subreaper", "--bundle", b, "c1"]
    run(r.restore("c1", b, "/ckpt", b + "/work", stdio=(4, 5, 6)))
    assert r.calls[-1][0][len(G(b)):] == [
        "restore", "--image-path", "/ckpt", "--work-path", b + "/work", "--detach",
        "--pid-file", b + "/init.pid", "-no-subreaper", "--bundle", b, "c1"]
    assert r.calls[-1][1] == (4, 5, 6)


# ---- log.json errors ----------------------------------------------------------

LOG = (b'{"level":"warning","msg":"a warning","time":"2023-01-01T00:00:00Z"}\n'
       b'{"level":"error","msg":"first error","time":"2023-01-01T00:00:00Z"}\n'
       b'not json at all, error\n'
       b'{"level":"info","msg":"error in an info line","time":"2023-01-01T00:00:00Z"}\n'
       b'{"level":"error","msg":"runc create failed: unable to start container process: '
       b'exec: \\"/bin/nope\\": stat /bin/nope: no such file or directory",'
       b'"time":"2023-01-01T00:00:00Z"}\n'
       b'{"level":"debug","msg":"after","time":"2023-01-01T00:00:00Z"}\n')


def test_last_error_from_log():
    assert runc_errors.last_error_from_log(LOG) == (
        'runc create failed: unable to start container process: exec: "/bin/nope": '
        'stat /bin/nope: no such file or directory')
    assert runc_errors.last_error_from_log(b"") is None
    assert runc_errors.last_error_from_log(b'{"level":"info","msg":"x"}\n') is None
    assert runc_errors.last_error_from_log(b'{"level":"error","msg":"trunc') is None


def test_read_log_error_offset(tmp_path):
    p = tmp_path / "log.json"
    old = b'{"level":"error","msg":"old error"}\n'
    p.write_bytes(old)
    assert runc_errors.read_log_error(str(p), 0) == "old error"
    assert runc_errors.read_log_error(str(p), len(old)) is None
    with open(p, "ab") as f:
        f.write(b'{"level":"error","msg":"new error"}\n')
    assert runc_errors.read_log_error(str(p), len(old)) == "new error"
    # A file that shrank (rotated/truncated) is read from the start.
    p.write_bytes(b'{"level":"error","msg":"fresh"}\n')
    assert runc_errors.read_log_error(str(p), 10000) == "fresh"
    assert runc_errors.read_log_error(str(tmp_path / "missing.json"), 0) is None


def test_error_message_fallbacks():
    assert runc_errors.error_message("from log", b"out", 1) == "from log"
    assert runc_errors.error_message(None, b"  some output\n", 1) == "some output"
    assert runc_errors.error_message(None, b"", 3) == "exit status 3"
    assert runc_errors.error_message("", b"\n", 137) == "exit status 137"


# ---- bundle files -------------------------------------------------------------

def test_bundle_options_roundtrip(tmp_path):
    b = str(tmp_path)
    assert bundle_files.read_bundle_options(b) == {}
    with pytest.raises(FileNotFoundError):
        bundle_files.read_runtime(b)
    opts = {"binary_name": "crun", "root": "/r", "systemd_cgroup": True, "criu_path": "",
            "no_pivot_root": False, "io_uid": 0}
    bundle_files.write_bundle_options(b, opts)
    assert bundle_files.read_bundle_options(b) == opts
    assert json.loads(open(b + "/options.json").read()) == opts
    assert bundle_files.read_runtime(b) == "crun"
    bundle_files.write_bundle_options(b, {})
    assert bundle_files.read_bundle_options(b) == {}
    assert bundle_files.read_runtime(b) == ""
    assert sorted(os.listdir(b)) == ["options.json", "runtime"]   # no temp files left


def test_read_pid_file(tmp_path):
    p = tmp_path / "init.pid"
    p.write_text("12345")
    assert runc_mod.read_pid_file(str(p)) == 12345
    p.write_text("12345\n")
    assert runc_mod.read_pid_file(str(p)) == 12345
    p.write_text("")
    with pytest.raises(ValueError):
        runc_mod.read_pid_file(str(p))
    with pytest.raises(FileNotFoundError):
        runc_mod.read_pid_file(str(tmp_path / "nope.pid"))


# ---- running a fake runc --------------------------------------------------------

FAKE = textwrap.dedent("""\
    #!/bin/sh
    # fake runc: global flags, then a command
    log=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --log) log="$2"; shift 2;;
        --root|--log-format|--criu) shift 2;;
        --systemd-cgroup) shift;;
        *) break;;
      esac
    done
    cmd="$1"; shift
    dir=$(dirname "$log")
    echo "$cmd $*" >> "$dir/calls"
    case "$cmd" in
      start) exit 0;;
      logerr)
        echo '{"level":"error","msg":"older","time":"t"}' >> "$log"
        echo '{"level":"error","msg":"container does not exist","time":"t"}' >> "$log"
        echo '{"level":"info","msg":"bye","time":"t"}' >> "$log"
        echo "noise on stderr" >&2
        exit 1;;
      output) echo "output only"; echo "and stderr" >&2; exit 2;;
      silent) exit 7;;
      ps) echo "a warning" >&2; echo '[12,34]'; exit 0;;
      update) cat > "$dir/stdin"; exit 0;;
      env) env > "$dir/env"; exit 0;;
      kill) echo '{"level":"error","msg":"container not running","time":"t"}' >> "$log"; exit 1;;
      delete) echo '{"level":"error","msg":"container '"$1"' does not exist","time":"t"}' >> "$log"; exit 1;;
      create) echo "to-stdout"; echo "to-stderr" >&2; exit 0;;
      big) i=0; while [ $i -lt 3000 ]; do echo "line $i of a long output"; i=$((i+1)); done; exit 1;;
      *) echo "unknown command $cmd" >&2; exit 99;;
    esac
""")


@pytest.fixture
def fake(tmp_path):
    p = tmp_path / "fake-runc"
    p.write_text(FAKE)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return str(p), str(bundle)


class Cmd(Runc):
    async def do(self, bundle, *args, **kw):
        return await self._run(bundle, list(args), **kw)


def test_fake_success_and_calls(fake, reaper):
    binary, b = fake
    r = Runc(reaper=reaper, namespace="n", binary=binary)
    run(r.start("c1", b))
    assert open(b + "/calls").read() == "start c1\n"


def test_fake_error_from_log(fake, reaper):
    binary, b = fake
    with open(b + "/log.json", "w") as f:
        f.write('{"level":"error","msg":"from an earlier run","time":"t"}\n')
    r = Cmd(reaper=reaper, namespace="n", binary=binary)
    with pytest.raises(RuncError) as ei:
        run(r.do(b, "logerr"))
    assert ei.value.message == "container does not exist"
    assert ei.value.status == 1
    assert b"noise on stderr" in ei.value.output


def test_fake_error_from_output_and_status(fake, reaper):
    binary, b = fake
    with open(b + "/log.json", "w") as f:
        f.write('{"level":"error","msg":"from an earlier run","time":"t"}\n')
    r = Cmd(reaper=reaper, namespace="n", binary=binary)
    with pytest.raises(RuncError) as ei:
        run(r.do(b, "output"))
    assert ei.value.message == "output only\nand stderr"
    assert ei.value.status == 2
    with pytest.raises(RuncError) as ei:
        run(r.do(b, "silent"))
    assert ei.value.message == "exit status 7"


def test_fake_big_output_does_not_block(fake, reaper):
    binary, b = fake
    r = Cmd(reaper=reaper, namespace="n", binary=binary)
    with pytest.raises(RuncError) as ei:
        run(r.do(b, "big"))      # > 64 KiB: must be read while runc runs
    assert ei.value.output.count(b"\n") == 3000


def test_fake_ps_stdout_only(fake, reaper):
    binary, b = fake
    r = Runc(reaper=reaper, namespace="n", binary=binary)
    assert run(r.ps("c1", b)) == [12, 34]


def test_fake_update_stdin(fake, reaper):
    binary, b = fake
    r = Runc(reaper=reaper, namespace="n", binary=binary)
    data = b'{"memory":{"limit":1048576}}' * 5000     # > a pipe buffer
    run(r.update("c1", b, data))
    assert open(b + "/stdin", "rb").read() == data


def test_fake_env_without_notify_socket(fake, reaper, monkeypatch):
    binary, b = fake
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("PYSHIM_TEST_MARK", "kept")
    r = Cmd(reaper=reaper, namespace="n", binary=binary)
    run(r.do(b, "env"))
    env = open(b + "/env").read().splitlines()
    assert "PYSHIM_TEST_MARK=kept" in env
    assert not any(line.startswith("NOTIFY_SOCKET=") for line in env)


def test_fake_kill_and_delete_errors(fake, reaper):
    binary, b = fake
    r = Runc(reaper=reaper, namespace="n", binary=binary)
    with pytest.raises(RuncError) as ei:
        run(r.kill("c1", b, 9))
    assert errors.classify_kill_error(ei.value).code == NOT_FOUND
    run(r.delete("c1", b))          # "does not exist" is fine
    run(r.delete("c1", b, force=True))


def test_fake_create_with_stdio(fake, reaper):
    binary, b = fake
    r = Runc(reaper=reaper, namespace="n", binary=binary)
    rd, wr = os.pipe()
    with open(b + "/init.pid", "w") as f:
        f.write("777")
    try:
        pid = run(r.create("c1", b, stdio=(None, wr, wr)))
        os.close(wr)
        wr = -1
        assert pid == 777
        assert os.read(rd, 1000) == b"to-stdout\nto-stderr\n"
    finally:
        os.close(rd)
        if wr >= 0:
            os.close(wr)


def test_missing_binary(tmp_path, reaper):
    r = Runc(reaper=reaper, namespace="n", binary="runc-does-not-exist-here")
    with pytest.raises(RuncError) as ei:
        run(r.start("c1", str(tmp_path)))
    assert ei.value.message == 'exec: "runc-does-not-exist-here": executable file not found in $PATH'


def test_run_sync_and_delete_sync(fake):
    binary, b = fake
    status, out = runc_sync.run_sync(["/bin/sh", "-c", "echo hi; echo err >&2; exit 4"])
    assert (status, out) == (4, b"hi\nerr\n")
    status, out = runc_sync.run_sync(["/bin/sh", "-c", "sleep 5"], timeout=0.2)
    assert status == 128 + 9
    r = Runc(namespace="n", binary=binary)
    runc_sync.delete_sync(r, "c1", b)         # does not exist: fine
    assert open(b + "/calls").read() == "delete --force c1\n"
