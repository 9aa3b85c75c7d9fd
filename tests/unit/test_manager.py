"""shim.manager without root: start's stdin (runtime Options or
BootstrapParams), start against a private socket dir with a fake serve
process, the DeleteResponse, -info, start's reply."""
import hashlib
import json
import os
import shutil
import socket
import tempfile
import textwrap
import time

import pytest

from shim import cli, manager
from shim.pb import bootstrap, runc as runc_pb, task, types, wkt


# ---- start ----------------------------------------------------------------------

def test_group_key():
    assert manager.group_key({}, "c1") == "c1"
    assert manager.group_key({"annotations": None}, "c1") == "c1"
    pod = {"annotations": {"io.kubernetes.cri.sandbox-id": "pod"}}
    assert manager.group_key(pod, "c1") == "pod"
    assert manager.group_key({"annotations": {"io.kubernetes.cri.sandbox-id": "pod",
                                          "io.containerd.runc.v2.group": "g1"}}, "c1") == "g1"
    assert manager.group_key({"annotations": {"other": "x"}}, "c1") == "c1"


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
    assert manager.decode_start_input(b"", f) == (None, None)
    a = _opts_any(shim_cgroup="/pods/x", binary_name="runc")
    got, sdir = manager.decode_start_input(a.encode(), f)
    assert sdir is None and got.type_url == "containerd.runc.v1.Options"
    assert manager._runc_options(got)["shim_cgroup"] == "/pods/x"
    # Options with an empty value (what ctr sends).
    got, _ = manager.decode_start_input(
        wkt.Any(type_url="containerd.runc.v1.Options").encode(), f)
    assert manager._runc_options(got)["shim_cgroup"] == ""


def test_decode_start_input_bootstrap():
    f = _flags(namespace="n", id="c1")
    a = _opts_any(shim_cgroup="/g")
    bp = bootstrap.BootstrapParams(instance_id="c1", namespace="n",
                                   containerd_ttrpc_address="/t",
                                   extensions=[bootstrap.Extension(value=a)],
                                   socket_dir="/tmp/sockets")
    got, sdir = manager.decode_start_input(bp.encode(), f)
    assert sdir == "/tmp/sockets"
    assert manager._runc_options(got)["shim_cgroup"] == "/g"
    # Not ours (instance id differs): decoded as an Any, which ignores it.
    got, sdir = manager.decode_start_input(bp.encode(), _flags(namespace="n", id="other"))
    assert sdir is None
    assert manager._runc_options(got) == {}
    # No options in the extensions.
    bp = bootstrap.BootstrapParams(instance_id="c1", namespace="n")
    assert manager.decode_start_input(bp.encode(), f) == (None, None)


def test_decode_start_input_garbage():
    with pytest.raises(RuntimeError, match="invalid runtime options"):
        manager.decode_start_input(b"\xff\xff\xff", _flags(namespace="n", id="c1"))


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
    assert manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
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
    manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"")
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
        assert manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
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
    assert manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"") == 0
    assert _wait_file(out)["listening"] == 1


def test_start_without_config_json(start_env):
    bundle, launcher, sdir, out = start_env
    os.unlink(bundle / "config.json")
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
    with pytest.raises(RuntimeError, match="open config.json: no such file or directory"):
        manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=b"")


def test_start_bad_shim_cgroup_cleans_up(start_env):
    bundle, launcher, sdir, out = start_env
    f = _flags(namespace="ns1", id="c1", address="/tmp/x.sock", action="start")
    a = _opts_any(shim_cgroup="/pyshim-test-no-such-cgroup-%d" % os.getpid())
    with pytest.raises(RuntimeError, match="failed to load cgroup"):
        manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=a.encode())
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
        assert manager.do_start(f, self_path=launcher, socket_dir=sdir, stdin_data=a.encode()) == 0
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



# ---- delete and -info ------------------------------------------------------------

def test_delete_response_encoding():
    now = 1700000000.25
    want = task.DeleteResponse(pid=17106, exit_status=137,
                               exited_at=wkt.Timestamp(seconds=1700000000,
                                                       nanos=250000000)).encode()
    assert manager._delete_response(17106, 137, now) == want
    assert manager._encode_delete_response(17106, 137, now) == want
    assert want.startswith(bytes.fromhex("08d285011089011a"))
    m = task.DeleteResponse.decode(manager._encode_delete_response(0, 137, 5.0))
    assert (m.pid, m.exit_status, m.exited_at.seconds) == (0, 137, 5)


def test_info(capfdbinary, tmp_path):
    fake = tmp_path / "fakerunc"
    fake.write_text('#!/bin/sh\n[ "$1" = features ] && echo \'{"ociVersionMin":"1.0.0"}\'\n')
    fake.chmod(0o755)
    a = _opts_any(binary_name=str(fake))
    assert manager.do_info(_flags(info=True), stdin_data=a.encode()) == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.name == "io.containerd.pyshim.v1"
    assert info.version.version == manager.VERSION
    assert info.options.type_url == "containerd.runc.v1.Options"
    assert info.options.value == a.value
    assert info.features.type_url == manager.FEATURES_TYPE
    assert json.loads(info.features.value) == {"ociVersionMin": "1.0.0"}
    # No options, a runc without `features`: name and version only.
    fake.write_text("#!/bin/sh\nexit 1\n")
    opts = _opts_any(binary_name=str(fake)).encode()
    assert manager.do_info(_flags(info=True), stdin_data=opts) == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.features is None
    assert manager.do_info(_flags(info=True), stdin_data=b"") == 0
    info = types.RuntimeInfo.decode(capfdbinary.readouterr().out)
    assert info.name == "io.containerd.pyshim.v1" and info.options is None


def test_start_reply_plain_or_bootstrap_result():
    assert manager.start_reply("unix:///run/containerd/s/ab", None) == b"unix:///run/containerd/s/ab"
    params = bootstrap.BootstrapParams(instance_id="c1", namespace="n").encode()
    bp = manager.bootstrap_params(params, _flags(namespace="n", id="c1"))
    assert bp is not None
    r = bootstrap.BootstrapResult.decode(manager.start_reply("unix:///s/x", bp))
    assert (r.version, r.address, r.protocol) == (3, "unix:///s/x", "ttrpc")
    # An Any, or params for another id/namespace: not a bootstrap.
    a = _opts_any(shim_cgroup="/g").encode()
    assert manager.bootstrap_params(a, _flags(namespace="n", id="c1")) is None
    assert manager.bootstrap_params(b"", _flags(namespace="n", id="c1")) is None
    other = bootstrap.BootstrapParams(instance_id="c1", namespace="m").encode()
    assert manager.bootstrap_params(other, _flags(namespace="n", id="c1")) is None
