"""ttrpc frames: encode_frame / FrameReader / FrameError (spec: ttrpc.md §2, §8).

Picks the native implementation (shim._native, from _native/frame.pxi) and
falls back to the pure-Python twin (shim._frame_py) when the extension cannot
be imported or the environment has PYSHIM_PURE=1 (any value but "" or "0").
Both have the same API and semantics; see shim._frame_py for the docs:

    encode_frame(stream_id, mtype, flags, data) -> bytes   # FrameError if invalid
    r = FrameReader()
    for stream_id, mtype, flags, data, length in r.feed(chunk):
        if data is None:        # oversize frame (length > MAX_DATA): its data
            ...                 # was discarded; reply code 8 (spec §8)
    r.pending()                 # > 0 at EOF: short read mid-frame

IMPLEMENTATION is "native" or "pure"; NATIVE_IMPORT_ERROR holds the reason
the native one is not used (None when it is, or when PYSHIM_PURE chose pure).
"""
import os as _os

NATIVE_IMPORT_ERROR = None

if _os.environ.get("PYSHIM_PURE", "") not in ("", "0"):
    _impl = None
else:
    try:
        from shim import _native as _impl
        _impl.FrameReader  # noqa: B018  (an extension built without frame.pxi is no use)
    except (ImportError, AttributeError) as _e:
        NATIVE_IMPORT_ERROR = "%s: %s" % (type(_e).__name__, _e)
        _impl = None

if _impl is None:
    from shim import _frame_py as _impl
    IMPLEMENTATION = "pure"
else:
    IMPLEMENTATION = "native"

MAX_DATA = _impl.MAX_DATA
HEADER_SIZE = _impl.HEADER_SIZE
TYPE_REQUEST = _impl.TYPE_REQUEST
TYPE_RESPONSE = _impl.TYPE_RESPONSE
TYPE_DATA = _impl.TYPE_DATA
FLAG_REMOTE_CLOSED = _impl.FLAG_REMOTE_CLOSED
FLAG_REMOTE_OPEN = _impl.FLAG_REMOTE_OPEN
FLAG_NO_DATA = _impl.FLAG_NO_DATA
FrameError = _impl.FrameError
FrameReader = _impl.FrameReader
encode_frame = _impl.encode_frame

del _impl
