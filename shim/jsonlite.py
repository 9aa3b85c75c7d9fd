"""JSON through the C accelerator `_json` alone.

`import json` pulls in `re` and costs ~1.1 MB of private memory in every
shim; the C scanner and encoder it wraps cost ~0.06 MB. Same results as
json.loads / json.dumps(separators=(",", ":")) for what the shim reads and
writes (OCI specs, runc output, options).
"""
import _json


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"),
                "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-types a JSONDecoder
_WS = " \t\n\r"


def loads(s):
    """Parse one JSON document (str or bytes); ValueError on bad input."""
    if isinstance(s, (bytes, bytearray)):
        s = s.decode("utf-8")
    end = len(s)
    i = 0
    while i < end and s[i] in _WS:
        i += 1
    try:
        obj, i = _scan(s, i)
    except StopIteration as e:
        raise ValueError("invalid JSON at offset %d" % e.value) from None
    except SystemError:
        # _json builds its error from sys.modules["json.decoder"], which the
        # serving shim never imports: it then fails without an exception.
        raise ValueError("invalid JSON") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    while i < end and s[i] in _WS:
        i += 1
    if i != end:
        raise ValueError("extra data at offset %d" % i)
    return obj


def _default(o):
    raise TypeError("not JSON serializable: %r" % (o,))


_encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None,
                             ":", ",", False, False, True)


def dumps(obj):
    return "".join(_encode(obj, 0))
