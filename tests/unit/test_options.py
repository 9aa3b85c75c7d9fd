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
                   'IoUid = 1000\nSomethingElse = "ignored"\n')
    o = options.decode(pack(runtimeoptions.Options(config_path=str(cfg))))
    assert o == {"binary_name": "crun", "root": "/run/pyshim-runc", "systemd_cgroup": False,
                 "io_uid": 1000}
    assert options.decode(pack(runtimeoptions.Options())) == {}


@pytest.mark.parametrize("body,err", [('BinaryName = 3\n', "must be str"),
                                      ('IoUid = true\n', "must be int"),
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
