"""stdio URI parsing (spec io.md §1, §5): schemes, and the argv a binary://
logger gets from its URI."""
import pytest

from shim.io import logger_argv, parse_uri
from shim.ttrpc import INVALID_ARGUMENT, TTRPCError


@pytest.mark.parametrize("uri,want", [
    ("", ("", "")),
    ("/run/containerd/fifo/x/id-stdout", ("fifo", "/run/containerd/fifo/x/id-stdout")),
    ("fifo:///a/b", ("fifo", "/a/b")),
    ("file:///var/log/c.log", ("file", "/var/log/c.log")),
    ("binary:///usr/bin/logger?a=b", ("binary", "/usr/bin/logger")),
    ("binary-v2:///usr/bin/logger", ("binary-v2", "/usr/bin/logger")),
])
def test_parse_uri(uri, want):
    assert parse_uri(uri) == want


@pytest.mark.parametrize("uri", ["tcp://1.2.3.4:5", "relative/path", "binary://host/x",
                                 "file://rel.log"])
def test_parse_uri_rejects(uri):
    with pytest.raises(TTRPCError) as e:
        parse_uri(uri)
    assert e.value.code == INVALID_ARGUMENT


@pytest.mark.parametrize("uri,argv", [
    ("binary:///bin/log", ["/bin/log"]),
    ("binary:///bin/log?k=v", ["/bin/log", "k", "v"]),
    # A key without a value adds only the key; pairs keep the URI's order.
    ("binary:///bin/log?flag&id=7&empty=", ["/bin/log", "flag", "id", "7", "empty"]),
    ("binary:///bin/my%20log?msg=a%2Fb+c&x=%zz", ["/bin/my log", "msg", "a/b c", "x", "%zz"]),
    ("binary-v2:///bin/log?a=1&&b=2", ["/bin/log", "a", "1", "b", "2"]),
])
def test_logger_argv(uri, argv):
    assert logger_argv(uri) == argv
