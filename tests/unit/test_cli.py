"""shim.cli without root: Go-style flags, socket naming, start's stdin,
start against a private socket dir with a fake serve process, version/info
output, DeleteResponse encoding."""
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time

import pytest

from shim import cli
from shim.cli import FlagError, parse_flags
from shim.pb import bootstrap, runc as runc_pb, task, types, wkt


# ---- flags --------------------------------------------------------------------

def test_containerd_16_start_argv():
    f = parse_flags(["-namespace", "default", "-address", "/run/containerd/containerd.sock",
                     "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start"])
    assert (f.namespace, f.address, f.publish_binary, f.id, f.debug, f.action) == (
        "default", "/run/containerd/containerd.sock", "/usr/bin/containerd", "c1", True,
        "start")
    assert f.bundle == "" and f.socket == ""


def test_containerd_delete_argv():
    f = parse_flags(["-namespace", "k8s.io", "-address", "/a.sock", "-publish-binary", "/c",
                     "-id", "c2", "-bundle", "/run/b/c2", "delete"])
    assert (f.namespace, f.id, f.bundle, f.debug, f.action) == (
        "k8s.io", "c2", "/run/b/c2", False, "delete")


def test_serve_argv_no_action():
    f = parse_flags(["-namespace", "n", "-id", "c1", "-address", "/a", "-debug"])
    assert f.action == "" and f.debug and f.args == []


def test_equals_and_double_dash():
    f = parse_flags(["--namespace=ns", "-id=c=1", "--debug=false", "-socket", "/s", "start"])
    assert (f.namespace, f.id, f.debug, f.socket, f.action) == ("ns", "c=1", False, "/s",
                                                                 "start")
    f = parse_flags(["-debug=1", "-v=true"])
    assert f.debug and f.v


def test_string_flag_takes_dash_value():
    # Go: a string flag consumes the next word whatever it looks like.
    f = parse_flags(["-id", "-weird", "start"])
    assert (f.id, f.action) == ("-weird", "start")


def test_version_info_flags():
    assert parse_flags(["-v"]).v
    assert parse_flags(["--version"]).version
    assert parse_flags(["-info"]).info


def test_unknown_flags_ignored():
    f = parse_flags(["-namespace", "n", "-future-flag=x", "-other", "-id", "c1", "start"])
    assert (f.namespace, f.id, f.action) == ("n", "c1", "start")
    assert f.unknown == [("future-flag", "x"), ("other", None)]
    # Unknown flag followed by an action word: a bool.
    f = parse_flags(["-namespace", "n", "-newbool", "delete"])
    assert f.action == "delete" and f.unknown == [("newbool", None)]
    # Unknown flag followed by a non-flag, non-action word: its value.
    f = parse_flags(["-namespace", "n", "-newstring", "value", "start"])
    assert f.action == "start" and f.unknown == [("newstring", "value")]


def test_flags_stop_at_first_positional_and_double_dash():
    f = parse_flags(["-namespace", "n", "start", "-id", "x"])
    assert (f.action, f.id, f.args) == ("start", "", ["start", "-id", "x"])
    f = parse_flags(["-namespace", "n", "--", "-id"])
    assert f.action == "-id"
    f = parse_flags(["-namespace", "n", "-", "x"])
    assert f.action == "-"


def test_flag_errors():
    with pytest.raises(FlagError, match="flag needs an argument: -id"):
        parse_flags(["-namespace", "n", "-id"])
    with pytest.raises(FlagError, match="invalid boolean"):
        parse_flags(["-debug=maybe"])
    with pytest.raises(FlagError, match="bad flag syntax"):
        parse_flags(["---x"])
    with pytest.raises(FlagError, match="bad flag syntax"):
        parse_flags(["-=x"])


def test_run_flag_error_exit_2(capfd):
    assert cli.run(["-id"]) == 2
    assert "flag needs an argument" in capfd.readouterr().err


def test_group_key():
    assert cli.group_key({}, "c1") == "c1"
    assert cli.group_key({"annotations": None}, "c1") == "c1"
    assert cli.group_key({"annotations": {"io.kubernetes.cri.sandbox-id": "pod"}}, "c1") == "pod"
    assert cli.group_key({"annotations": {"io.kubernetes.cri.sandbox-id": "pod",
                                          "io.containerd.runc.v2.group": "g1"}}, "c1") == "g1"
    assert cli.group_key({"annotations": {"other": "x"}}, "c1") == "c1"


# ---- start's stdin --------------------------------------------------------------

def _flags(**kw):
    f = cli.Flags()
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def _opts_any(**kw):
    o = runc_pb.Options(**kw)
    return wkt.Any(type_url="containerd.runc.v1.Options", value=o.encode())


def test_decode_start_input_any():
    f = _flags(namespace="n", id="c1")
    assert cli.decode_start_input(b"", f) == (None, None)
    a = _opts_any(shim_cgroup="/pods/x", binary_name="runc")
    got, sdir = cli.decode_start_input(a.encode(), f)
    assert sdir is None and got.type_url == "containerd.runc.v1.Options"
    assert cli._runc_options(got)["shim_cgroup"] == "/pods/x"
    # Options with an empty value (what ctr sends).
    got, _ = cli.decode_start_input(
        wkt.Any(type_url="containerd.runc.v1.Options").encode(), f)
    assert cli._runc_options(got)["shim_cgroup"] == ""


def test_decode_start_input_bootstrap():
    f = _flags(namespace="n", id="c1")
    a = _opts_any(shim_cgroup="/g")
    bp = bootstrap.BootstrapParams(instance_id="c1", namespace="n",
                                   containerd_ttrpc_address="/t",
                                   extensions=[bootstrap.Extension(value=a)],
                                   socket_dir="/tmp/sockets")
    got, sdir = cli.decode_start_input(bp.encode(), f)
    assert sdir == "/tmp/sockets"
    assert cli._runc_options(got)["shim_cgroup"] == "/g"
    # Not ours (instance id differs): decoded as an Any, which ignores it.
    got, sdir = cli.decode_start_input(bp.encode(), _flags(namespace="n", id="other"))
    assert sdir is None
    assert cli._runc_options(got) == {}
    # No options in the extensions.
    bp = bootstrap.BootstrapParams(instance_id="c1", namespace="n")
    assert cli.decode_start_input(bp.encode(), f) == (None, None)


def test_decode_start_input_garbage():
    with pytest.raises(RuntimeError, match="invalid runtime options"):
        cli.decode_start_input(b"\xff\xff\xff", _flags(namespace="n", id="c1"))


# ---- start with a fake serve process -----------------------------------------------

FAKE_LAUNCHER = textwrap.dedent("""\
    import json, os, sys, time, _socket
    if os.environ.get("FAKE_SERVE_WAIT"):
        time.sleep(float(os.environ["FAKE_SERVE_WAIT"]))
    s = _socket.socket(fileno=3)
    info = {
        "pid": os.getpid(),
        "argv": sys.argv,
        "flags": [sys.flags.isolated, sys.flags.no_site],
        "cwd": os.getcwd(),
        "fds": [os.readlink("/proc/self/fd/%d" % i) for i in range(3)],
        "listening": s.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN),
        "sockname": s.getsockname(),
        "session_leader": os.getsid(0) == os.getpid(),
        "oom": open("/proc/self/oom_score_adj").read().strip(),
        "cgroup": open("/proc/self/cgroup").read().splitlines(),
    }
    s.detach()
    with open(os.environ["FAKE_SERVE_OUT"] + ".tmp", "w") as f:
        json.dump(info, f)
    os.rename(os.environ["FAKE_SERVE_OUT"] + ".tmp", os.environ["FAKE_SERVE_OUT"])
""")


@pytest.fixture
def start_env(tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": {}}))
    launcher = tmp_path / "containerd-shim-fake-v1"
    launcher.write_text(FAKE_LAUNCHER)
    # Socket paths must stay below 108 bytes: a short directory in /tmp.
    short = tempfile.mkdtemp(prefix="ps", dir="/tmp")
    sdir = os.path.join(short, "s")
    out = tmp_path / "serve.json"
    monkeypatch.setenv("FAKE_SERVE_OUT", str(out))
    monkeypatch.chdir(bundle)
    yield bundle, str(launcher), sdir, out
    shutil.rmtree(short, ignore_errors=True)


def _wait_file(p, timeout=10):
    """The fake serve process's report; the process (our child) is reaped."""
    deadline = time.monotonic() + timeout
    while not p.exists():
        if time.monotonic() > deadline:
            raise AssertionError("%s did not appear" % p)
        time.sleep(0.02)
    info = json.loads(p.read_text())
    try:
        os.waitpid(info["pid"], 0)
    except ChildProcessError:
        pass
    return info


def test_start_spawns_serve(start_env, capfd):
    bundle, launcher, sdir, out = start_env
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", debug=True, action="start")
    assert cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
    h = hashlib.sha256(b"/tmp/x.sock/ns1/c1").hexdigest()
    addr = "unix://%s/%s" % (sdir, h)
    cap = capfd.readouterr()
    assert cap.out == addr and cap.err == ""
    assert (bundle / "address").read_text() == addr
    assert not (bundle / ".address").exists()
    st = os.stat(os.path.join(sdir, h))
    assert oct(st.st_mode & 0o777) == "0o600"
    assert oct(os.stat(sdir).st_mode & 0o777) == "0o700"
    info = _wait_file(out)
    assert info["argv"] == [launcher, "-namespace", "ns1", "-id", "c1",
                            "-address", "/tmp/x.sock", "-debug"]
    assert info["flags"] == [1, 1]          # python -I -S
    assert info["cwd"] == str(bundle)
    assert info["fds"] == ["/dev/null"] * 3
    assert info["listening"] == 1
    assert info["sockname"] == os.path.join(sdir, h)
    assert info["session_leader"]
    parent = int(open("/proc/%d/oom_score_adj" % os.getpid()).read())
    assert int(info["oom"]) == min(1000, parent + 1)


def test_start_groups_by_annotation(start_env, capfd):
    bundle, launcher, sdir, out = start_env
    (bundle / "config.json").write_text(json.dumps(
        {"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}))
    f = _flags(namespace="k8s.io", id="c9", address="/run/c.sock", action="start")
    cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"")
    h = hashlib.sha256(b"/run/c.sock/k8s.io/pod1").hexdigest()
    assert capfd.readouterr().out == "unix://%s/%s" % (sdir, h)
    assert "-debug" not in _wait_file(out)["argv"]


def test_start_existing_live_shim(start_env, capfd):
    bundle, launcher, sdir, out = start_env
    os.makedirs(sdir, 0o700)
    h = hashlib.sha256(b"/tmp/x.sock/ns1/c1").hexdigest()
    live = socket.socket(socket.AF_UNIX)
    live.bind(os.path.join(sdir, h))
    live.listen(5)
    try:
        f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
        assert cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
        assert capfd.readouterr().out == "unix://%s/%s" % (sdir, h)
        assert (bundle / "address").read_text() == "unix://%s/%s" % (sdir, h)
        time.sleep(0.3)
        assert not out.exists()           # no new serve process
    finally:
        live.close()


def test_start_stale_socket_is_replaced(start_env, capfd):
    bundle, launcher, sdir, out = start_env
    os.makedirs(sdir, 0o700)
    h = hashlib.sha256(b"/tmp/x.sock/ns1/c1").hexdigest()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.path.join(sdir, h))       # bound, never listening: refused
    dead.close()
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
    assert cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
    assert _wait_file(out)["listening"] == 1


def test_start_without_config_json(start_env):
    bundle, launcher, sdir, out = start_env
    os.unlink(bundle / "config.json")
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
    with pytest.raises(RuntimeError, match="open config.json: no such file or directory"):
        cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"")


def test_start_bad_shim_cgroup_cleans_up(start_env):
    bundle, launcher, sdir, out = start_env
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
    a = _opts_any(shim_cgroup="/pyshim-test-no-such-cgroup-%d" % os.getpid())
    with pytest.raises(RuntimeError, match="failed to load cgroup"):
        cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=a.encode())
    h = hashlib.sha256(b"/tmp/x.sock/ns1/c1").hexdigest()
    assert not os.path.exists(os.path.join(sdir, h))


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/pids/"),
                    reason="needs root and a cgroup v1 pids hierarchy")
def test_start_joins_shim_cgroup(start_env, capfd, monkeypatch):
    bundle, launcher, sdir, out = start_env
    name = "pyshim-cg-test-%d" % os.getpid()
    dirs = ["/sys/fs/cgroup/pids/" + name]
    if os.path.isdir("/sys/fs/cgroup/memory"):
        dirs.append("/sys/fs/cgroup/memory/" + name)
    for d in dirs:
        os.mkdir(d)
    monkeypatch.setenv("FAKE_SERVE_WAIT", "0.5")
    try:
        f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
        a = _opts_any(shim_cgroup="/" + name)
        assert cli.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=a.encode()) == 0
        info = _wait_file(out)
        joined = [line for line in info["cgroup"] if line.endswith(":/" + name)]
        assert len(joined) == len(dirs), info["cgroup"]
    finally:
        for d in dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)


# ---- other actions / outputs -----------------------------------------------------------

def test_empty_namespace(capfd):
    assert cli.run(["-id", "c1", "start"]) == 1
    assert "shim namespace cannot be empty" in capfd.readouterr().err
    assert cli.run(["-id", "c1", "delete"]) == 1


def test_unknown_action(capfd):
    assert cli.run(["-namespace", "n", "-id", "c1", "frobnicate"]) == 1
    assert "unknown action" in capfd.readouterr().err


def test_version(capfd):
    assert cli.run(["-v"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("containerd-shim-pyshim-v1")
    assert "io.containerd.pyshim.v1" in out and cli.VERSION in out
    assert cli.run(["--version"]) == 0


def test_delete_response_encoding():
    now = 1700000000.25
    want = task.DeleteResponse(pid=17106, exit_status=137,
                               exited_at=wkt.Timestamp(seconds=1700000000,
                                                       nanos=250000000)).encode()
    assert cli._delete_response(17106, 137, now) == want
    assert cli._encode_delete_response(17106, 137, now) == want
    assert want.startswith(bytes.fromhex("08d285011089011a"))
    m = task.DeleteResponse.decode(cli._encode_delete_response(0, 137, 5.0))
    assert (m.pid, m.exit_status, m.exited_at.seconds) == (0, 137, 5)


def test_delete_missing_runtime(tmp_path, capfd, monkeypatch):
    b = tmp_path / "c1"
    b.mkdir()
    monkeypatch.chdir(b)
    assert cli.run(["-namespace", "n", "-id", "c1", "delete"]) == 1
    err = capfd.readouterr().err
    assert "open %s/runtime: no such file or directory" % b in err


def test_info(capfdbinary, tmp_path):
    fake = tmp_path / "fakerunc"
    fake.write_text('#!/bin/sh\n[ "$1" = features ] && echo \'{"ociVersionMin":"1.0.0"}\'\n')
    fake.chmod(0o755)
    a = _opts_any(binary_name=str(fake))
    assert cli.do_info(_flags(info=True), stdin_data=a.encode()) == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.name == "io.containerd.pyshim.v1"
    assert info.version.version == cli.VERSION
    assert info.options.type_url == "containerd.runc.v1.Options"
    assert info.options.value == a.value
    assert info.features.type_url == cli.FEATURES_TYPE
    assert json.loads(info.features.value) == {"ociVersionMin": "1.0.0"}
    # No options, a runc without `features`: name and version only.
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert cli.do_info(_flags(info=True), stdin_data=_opts_any(binary_name=str(fake)).encode()) == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.features is None
    assert cli.do_info(_flags(info=True), stdin_data=b"") == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.name == "io.containerd.pyshim.v1" and info.options is None


def test_serve_imports_stay_lean():
    """Importing shim.cli (what the serving process does first) must not pull
    in heavy modules."""
    import subprocess
    code = ("import sys; import shim.cli, shim.log, shim.runc, shim.mount; "
            "bad = {'subprocess','json','logging','argparse','re','enum','socket',"
            "'threading','typing','signal','asyncio','hashlib'} & set(sys.modules); "
            "print(sorted(bad))")
    shim_dir = os.path.dirname(os.path.dirname(cli.__file__))
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import sys; sys.path.append(%r); %s" % (shim_dir, code)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_start_reply_plain_or_bootstrap_result():
    assert cli.start_reply("unix:///run/containerd/s/ab", None) == b"unix:///run/containerd/s/ab"
    bp = cli.bootstrap_params(bootstrap.BootstrapParams(instance_id="c1", namespace="n").encode(),
                              _flags(namespace="n", id="c1"))
    assert bp is not None
    r = bootstrap.BootstrapResult.decode(cli.start_reply("unix:///s/x", bp))
    assert (r.version, r.address, r.protocol) == (3, "unix:///s/x", "ttrpc")
    # An Any, or params for another id/namespace: not a bootstrap.
    a = _opts_any(shim_cgroup="/g").encode()
    assert cli.bootstrap_params(a, _flags(namespace="n", id="c1")) is None
    assert cli.bootstrap_params(b"", _flags(namespace="n", id="c1")) is None
    other = bootstrap.BootstrapParams(instance_id="c1", namespace="m").encode()
    assert cli.bootstrap_params(other, _flags(namespace="n", id="c1")) is None
