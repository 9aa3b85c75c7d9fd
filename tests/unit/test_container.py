"""shim.container helpers that need no runc: the checkpoint failure (moved
from shim.runc) and reading the pid namespace from config.json."""
import json

from shim import container
from shim.errors import UNKNOWN
from shim.runc import RuncError


def test_checkpoint_error(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "dump.log").write_text("criu said no\n")
    e = container.checkpoint_error(RuncError("criu failed: type NOTIFY errno 0\nmore"),
                                   str(tmp_path), str(work))
    dump = str(tmp_path / "criu-dump.log")
    assert e.code == UNKNOWN
    assert e.message == "criu failed: type NOTIFY errno 0 path= %s" % dump
    assert open(dump).read() == "criu said no\n"


def test_private_pidns(tmp_path):
    def spec(namespaces):
        (tmp_path / "config.json").write_text(json.dumps({"linux": {"namespaces": namespaces}}))
        return container._private_pidns(str(tmp_path))
    assert spec([{"type": "pid"}]) is True
    assert spec([{"type": "pid", "path": "/proc/1/ns/pid"}]) is False
    assert spec([{"type": "mount"}]) is False
    (tmp_path / "config.json").write_text("{")
    assert container._private_pidns(str(tmp_path)) is True
