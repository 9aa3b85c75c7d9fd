"""shim.cli without root: Go-style flags, dispatch, exit codes, version,
and the lean import set of the serving process (the actions themselves:
test_manager.py; sockets: test_sockets.py; bundle files: test_bundle.py)."""
import os
import sys

import pytest

from shim import cli, manager
from shim.cli import FlagError, parse_flags


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
    assert "io.containerd.pyshim.v1" in out and manager.VERSION in out
    assert cli.run(["--version"]) == 0


def test_delete_missing_runtime(tmp_path, capfdbinary, monkeypatch):
    """No `runtime` file: Create never ran runc (e.g. the shim exited on its
    idle bound), so delete succeeds without runc, and containerd can remove
    the bundle (the Go shim exits 1 here and the bundle stays)."""
    from shim.pb import task
    b = tmp_path / "c1"
    b.mkdir()
    monkeypatch.chdir(b)
    assert cli.run(["-namespace", "n", "-id", "c1", "delete"]) == 0
    cap = capfdbinary.readouterr()
    assert b"open %s/runtime: no such file or directory" % bytes(b) in cap.err
    assert task.DeleteResponse.decode(cap.out).exit_status == 137


def test_serve_imports_stay_lean():
    """Importing shim.cli (what the serving process does first) must not pull
    in heavy modules (cli was split into cli, manager, launch, sockets and
    bundle: all of them are loaded by start, whose fork serves)."""
    import subprocess
    code = ("import sys; import shim.cli, shim.manager, shim.launch, shim.sockets, "
            "shim.bundle, shim.log, shim.runc, shim.mount; "
            "bad = {'subprocess','json','logging','argparse','re','enum','socket',"
            "'threading','typing','signal','asyncio','hashlib'} & set(sys.modules); "
            "print(sorted(bad))")
    shim_dir = os.path.dirname(os.path.dirname(cli.__file__))
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import sys; sys.path.append(%r); %s" % (shim_dir, code)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


