"""shim.bundle: the shim's files in a bundle, each read and written in one
place (address, runtime + options.json, the deleted mark, config.json)."""
import os

import pytest

from shim import bundle


def test_address_round_trip(tmp_path):
    b = str(tmp_path)
    assert bundle.read_address(b) is None and bundle.read_socket_path(b) is None
    bundle.write_address(b, "unix:///run/containerd/s/ab")
    assert (tmp_path / "address").read_text() == "unix:///run/containerd/s/ab"
    assert not (tmp_path / ".address").exists()
    assert bundle.read_address(b) == "unix:///run/containerd/s/ab"
    assert bundle.read_socket_path(b) == "/run/containerd/s/ab"
    # A .address left by a start that died half-way does not stop the next.
    (tmp_path / ".address").write_text("junk")
    bundle.write_address(b, "unix:///s/cd")
    assert bundle.read_socket_path(b) == "/s/cd"
    # Not a unix socket: no path (nothing of ours to remove).
    (tmp_path / "address").write_text("vsock://3:1024\n")
    assert bundle.read_address(b) == "vsock://3:1024"
    assert bundle.read_socket_path(b) is None


def test_options_and_runtime(tmp_path):
    b = str(tmp_path)
    assert bundle.read_bundle_options(b) == {}
    with pytest.raises(FileNotFoundError):
        bundle.read_runtime(b)
    bundle.write_bundle_options(b, {"binary_name": "crun", "root": "/r", "systemd_cgroup": True})
    assert bundle.read_bundle_options(b) == {"binary_name": "crun", "root": "/r",
                                             "systemd_cgroup": True}
    assert bundle.read_runtime(b) == "crun"
    assert oct(os.stat(tmp_path / "options.json").st_mode & 0o777) == "0o600"
    assert [n for n in os.listdir(b) if n.startswith(".")] == []
    (tmp_path / "options.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        bundle.read_bundle_options(b)


def test_deleted_mark(tmp_path):
    b = str(tmp_path)
    assert not bundle.is_marked_deleted(b)
    bundle.mark_deleted(b)
    assert bundle.is_marked_deleted(b)
    bundle.clear_deleted_mark(b)
    bundle.clear_deleted_mark(b)        # twice: no error
    assert not bundle.is_marked_deleted(b)
    bundle.mark_deleted(str(tmp_path / "gone"))     # no bundle: ignored


def test_read_spec(tmp_path):
    b = str(tmp_path)
    with pytest.raises(RuntimeError, match="^open config.json: no such file or directory$"):
        bundle.read_spec(b)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="^config.json: "):
        bundle.read_spec(b)
    (tmp_path / "config.json").write_text('{"ociVersion": "1.0.2"}')
    assert bundle.read_spec(b) == {"ociVersion": "1.0.2"}
