"""Runtime options of every type containerd sends, decoded to one dict."""
import pytest

from shim import options
from shim.pb import runc as runc_pb
from shim.pb import runctypes, runtimeoptions, wkt


def pack(msg):
    return wkt.Any(type_url=msg.FULL_NAME, value=msg.encode())


def test_none_and_empty():
    assert options.decode(None) == {}
    assert options.decode(wkt.Any(type_url="", value=b"")) == {}
    # ctr sends the Options type with an empty value
    assert options.decode(wkt.Any(type_url=options.RUNC_OPTIONS))["binary_name"] == ""


def test_runc_v1_options():
    o = options.decode(pack(runc_pb.Options(binary_name="crun", root="/r", systemd_cgroup=True,
                                            io_uid=7, shim_cgroup="/s", no_pivot_root=True)))
    assert (o["binary_name"], o["root"], o["systemd_cgroup"], o["io_uid"], o["shim_cgroup"],
            o["no_pivot_root"]) == ("crun", "/r", True, 7, "/s", True)


def test_type_url_with_google_prefix():
    a = pack(runc_pb.Options(binary_name="crun"))
    a.type_url = "type.googleapis.com/" + a.type_url
    assert options.decode(a)["binary_name"] == "crun"


def test_legacy_create_and_runc_options():
    o = options.decode(pack(runctypes.CreateOptions(shim_cgroup="/x", io_gid=5,
                                                    no_new_keyring=True)))
    assert (o["shim_cgroup"], o["io_gid"], o["no_new_keyring"]) == ("/x", 5, True)
    o = options.decode(pack(runctypes.RuncOptions(runtime="crun", runtime_root="/rr",
                                                  systemd_cgroup=True)))
    assert (o["binary_name"], o["root"], o["systemd_cgroup"]) == ("crun", "/rr", True)


def test_cri_runtimeoptions_toml(tmp_path):
    cfg = tmp_path / "pyshim.toml"
    cfg.write_text('BinaryName = "crun"\nRoot = "/run/pyshim-runc"\nSystemdCgroup = false\n'
                   'IoUid = 1000\nSomethingElse = "ignored"\nPyshimTemplate = false\n')
    o = options.decode(pack(runtimeoptions.Options(config_path=str(cfg))))
    assert o == {"binary_name": "crun", "root": "/run/pyshim-runc", "systemd_cgroup": False,
                 "io_uid": 1000, "template": False}
    assert options.decode(pack(runtimeoptions.Options())) == {}


@pytest.mark.parametrize("body,err", [('BinaryName = 3\n', "must be str"),
                                      ('IoUid = true\n', "must be int"),
                                      ('PyshimTemplate = "no"\n', "must be bool"),
                                      ('not toml at all = = \n', "pyshim.toml")])
def test_cri_runtimeoptions_bad_toml(tmp_path, body, err):
    cfg = tmp_path / "pyshim.toml"
    cfg.write_text(body)
    with pytest.raises(options.OptionsError, match=err):
        options.decode(pack(runtimeoptions.Options(config_path=str(cfg))))


def test_missing_config_file(tmp_path):
    with pytest.raises(options.OptionsError, match="nope.toml"):
        options.decode(pack(runtimeoptions.Options(config_path=str(tmp_path / "nope.toml"))))


def test_unknown_type_and_garbage():
    with pytest.raises(options.OptionsError, match="unsupported runtime options type x.Y"):
        options.decode(wkt.Any(type_url="x.Y", value=b""))
    with pytest.raises(options.OptionsError, match="invalid runtime options"):
        options.decode(wkt.Any(type_url=options.RUNC_OPTIONS, value=b"\x0a\xff"))


def test_decode_checkpoint_options_both_types():
    v1 = runc_pb.CheckpointOptions(exit=True, open_tcp=True, empty_namespaces=["network"],
                                   image_path="/i", work_path="/w")
    o = options.decode_checkpoint(pack(v1))
    assert (o["exit"], o["open_tcp"], o["empty_namespaces"], o["work_path"]) == \
        (True, True, ["network"], "/w")
    # The legacy type: same fields, other numbers for image/work path.
    legacy = runctypes.CheckpointOptions(terminal=True, file_locks=True, work_path="/w2")
    o = options.decode_checkpoint(pack(legacy))
    assert (o["terminal"], o["file_locks"], o["work_path"], o["exit"]) == (True, True, "/w2", False)
    # None / empty Any: all defaults.
    for a in (None, wkt.Any()):
        o = options.decode_checkpoint(a)
        assert o == {"exit": False, "open_tcp": False, "external_unix_sockets": False,
                     "terminal": False, "file_locks": False, "empty_namespaces": [],
                     "cgroups_mode": "", "image_path": "", "work_path": ""}


def test_decode_checkpoint_options_errors():
    with pytest.raises(options.OptionsError, match="unsupported checkpoint options type x.y"):
        options.decode_checkpoint(wkt.Any(type_url="x.y", value=b""))
    with pytest.raises(options.OptionsError, match="invalid checkpoint options"):
        options.decode_checkpoint(wkt.Any(type_url=options.CHECKPOINT_OPTIONS, value=b"\xff\xff"))


FLAT_CASES = [
    'BinaryName = "/usr/sbin/runc"\nSystemdCgroup = true\n# comment\nIoUid = 1000 # uid\n',
    "Root = '/r/x' \n\n",
    'a="x\\"y\\n\\t\\\\"',
    'a = -3\nb = +4\nc = 0\nd = false',
    'x = "a#b" # c',
    'a = ""\nb = \'\'',
]
NOT_FLAT_CASES = [
    'a = """x"""', "a = '''x'''", "[t]\na=1", "a = [1]", "a = 1.5", "a = 01",
    'a = "x" y', "a.b = 1", 'a = "\\u0041"', "a = 1\na = 2", '"quoted" = 1', "a = 1_000",
    "a = 0x10", "a = 1979-05-27", "a = {b = 1}", "a = inf", 'a = "unterminated',
]


@pytest.mark.parametrize("text", FLAT_CASES)
def test_flat_toml_agrees_with_tomllib(text):
    tomllib = pytest.importorskip("tomllib")
    assert options.flat_toml(text) == tomllib.loads(text)


@pytest.mark.parametrize("text", NOT_FLAT_CASES)
def test_flat_toml_leaves_the_rest_to_tomllib(text):
    assert options.flat_toml(text) is None


def test_from_toml_flat_file_loads_no_tomllib(tmp_path):
    """The usual options file must not pull tomllib (and re, datetime...)
    into the serving process."""
    import os
    import subprocess
    import sys
    import shim
    p = tmp_path / "opts.toml"
    p.write_text('BinaryName = "crun"\nSystemdCgroup = true\nIoUid = 7\n')
    code = ("import sys; sys.path.insert(0, %r); from shim import options; "
            "o = options.from_toml(%r); "
            "print(o['binary_name'], o['systemd_cgroup'], o['io_uid'], "
            "'tomllib' in sys.modules, 're' in sys.modules)"
            % (os.path.dirname(os.path.dirname(shim.__file__)), str(p)))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["crun", "True", "7", "False", "False"]
    # A document beyond the flat subset still works, through tomllib.
    p.write_text('BinaryName = "runc"\n[extra]\nx = [1, 2]\n')
    assert options.from_toml(str(p)) == {"binary_name": "runc"}
