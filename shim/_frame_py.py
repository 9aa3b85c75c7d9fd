"""ttrpc frames, pure Python (twin of _native/frame.pxi; same API, same tests).

Spec: shared/spec/ttrpc.md §2 (format) and §8 (oversize frames).
Wire format: 10-byte header, all big-endian:
    u32 data length | u32 stream id | u8 type | u8 flags
followed by `length` bytes of data (at most MAX_DATA = 4 MiB, inclusive).

Use `shim.frame`, which picks the native implementation when available.
"""
from _io import BytesIO
from _struct import Struct

__all__ = [
    "MAX_DATA", "HEADER_SIZE", "TYPE_REQUEST", "TYPE_RESPONSE", "TYPE_DATA",
    "FLAG_REMOTE_CLOSED", "FLAG_REMOTE_OPEN", "FLAG_NO_DATA",
    "FrameError", "FrameReader", "encode_frame",
]

MAX_DATA = 4194304
HEADER_SIZE = 10
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
FLAG_REMOTE_CLOSED = 1
FLAG_REMOTE_OPEN = 2
FLAG_NO_DATA = 4

_HDR = Struct(">IIBB")
_pack = _HDR.pack
_unpack_from = _HDR.unpack_from

_ST_HEADER = 0
_ST_BODY = 1
_ST_SKIP = 2


class FrameError(Exception):
    """Invalid frame (raised by encode_frame; FrameReader never raises it
    for any byte content, see FrameReader)."""


def encode_frame(stream_id, mtype, flags, data):
    """encode_frame(stream_id, mtype, flags, data) -> bytes

    One ttrpc frame (10-byte header + data) as a single bytes object.
    `data` is bytes or any contiguous bytes-like object (TypeError otherwise).
    Raises FrameError if len(data) > MAX_DATA (4194304; exactly MAX_DATA is
    allowed), stream_id is not in 0..2**32-1, or mtype/flags not in 0..255.
    """
    if not (0 <= stream_id <= 0xFFFFFFFF):
        raise FrameError("stream id %r outside uint32" % (stream_id,))
    if not (0 <= mtype <= 0xFF):
        raise FrameError("message type %r outside uint8" % (mtype,))
    if not (0 <= flags <= 0xFF):
        raise FrameError("flags %r outside uint8" % (flags,))
    if data.__class__ is not bytes:
        data = bytes(memoryview(data))  # TypeError for non-buffers (int, str)
    n = len(data)
    if n > MAX_DATA:
        raise FrameError(
            "message length %d exceed maximum message size of %d" % (n, MAX_DATA))
    return _pack(n, stream_id, mtype, flags) + data


class FrameReader:
    """Incremental ttrpc frame assembly from a byte stream.

    feed(chunk) -> list of 5-tuples (stream_id, mtype, flags, data, length),
    in wire order, one per frame completed by this chunk. `length` is the
    data length declared in the header; every tuple has 5 items:

    * normal frame: `data` is bytes and len(data) == length (0 .. MAX_DATA,
      inclusive);
    * oversize frame (length > MAX_DATA, spec §8): `data` is None. Its data
      was read and thrown away without being buffered; the tuple is produced
      once the last discarded byte has been fed, so the stream is in sync
      again for the next frame. A server replies on stream_id with code 8
      "message length <length> exceed maximum message size of 4194304".

    Every 10-byte header is acceptable to the framing layer (unknown types
    and flags are passed through for the caller to ignore), so feed() never
    raises FrameError for any byte content; it only raises TypeError for a
    non-bytes-like chunk. Memory: at most one frame's data (<= MAX_DATA)
    plus the chunk being fed; data arriving in many small chunks is appended
    to a BytesIO whose buffer becomes the result without a final copy (no
    quadratic re-copying, no 2x peak).

    pending() -> int: bytes of an incomplete frame received so far (header
    bytes, plus data bytes buffered or already discarded). 0 means the reader
    is at a frame boundary; >0 at EOF means a short read mid-frame (a failed
    connection, spec §8).
    """

    __slots__ = ("_hdr", "_state", "_sid", "_mtype", "_flags", "_len", "_have", "_buf")

    def __init__(self):
        self._hdr = b""        # partial header bytes (state header)
        self._state = _ST_HEADER
        self._sid = 0
        self._mtype = 0
        self._flags = 0
        self._len = 0          # declared data length of the current frame
        self._have = 0         # data bytes received (buffered or discarded)
        self._buf = None       # BytesIO with the current frame's data (state body)

    def pending(self):
        """Bytes of the current incomplete frame seen so far (0 = at a frame boundary)."""
        if self._state == _ST_HEADER:
            return len(self._hdr)
        return HEADER_SIZE + self._have

    def feed(self, chunk):
        """feed(chunk: bytes-like) -> list of (stream_id, mtype, flags, data, length).

        See the class docstring: data is bytes, or None for an oversize frame
        (length > MAX_DATA) whose data was discarded.
        """
        if chunk.__class__ is not bytes:
            chunk = bytes(memoryview(chunk))  # TypeError for non-buffers
        n = len(chunk)
        state = self._state
        if state == _ST_HEADER and n >= HEADER_SIZE and not self._hdr:
            # Fast path: the chunk is exactly one whole frame (typical).
            length, sid, mtype, flags = _unpack_from(chunk)
            if length + HEADER_SIZE == n and length <= MAX_DATA:
                return [(sid, mtype, flags, chunk[HEADER_SIZE:], length)]
        out = []
        pos = 0
        while pos < n:
            if state == _ST_HEADER:
                hdr = self._hdr
                if hdr:
                    need = HEADER_SIZE - len(hdr)
                    hdr += chunk[pos:pos + need]
                    pos += need
                    if len(hdr) < HEADER_SIZE:
                        self._hdr = hdr
                        break
                    self._hdr = b""
                    length, sid, mtype, flags = _unpack_from(hdr)
                elif n - pos >= HEADER_SIZE:
                    length, sid, mtype, flags = _unpack_from(chunk, pos)
                    pos += HEADER_SIZE
                else:
                    self._hdr = chunk[pos:]
                    break
                if length > MAX_DATA:
                    self._sid = sid
                    self._mtype = mtype
                    self._flags = flags
                    self._len = length
                    self._have = 0
                    state = _ST_SKIP
                    continue
                end = pos + length
                if end <= n:
                    out.append((sid, mtype, flags, chunk[pos:end], length))
                    pos = end
                    continue
                self._sid = sid
                self._mtype = mtype
                self._flags = flags
                self._len = length
                buf = self._buf = BytesIO()
                buf.write(memoryview(chunk)[pos:] if pos else chunk)
                self._have = n - pos
                state = _ST_BODY
                pos = n
            elif state == _ST_BODY:
                take = self._len - self._have
                if take >= n - pos:
                    take = n - pos
                    self._buf.write(memoryview(chunk)[pos:] if pos else chunk)
                else:
                    self._buf.write(memoryview(chunk)[pos:pos + take])
                self._have += take
                pos += take
                if self._have == self._len:
                    buf = self._buf
                    self._buf = None
                    self._have = 0
                    state = _ST_HEADER
                    # getvalue() hands over BytesIO's own buffer (no copy)
                    # once it is the only reference holder.
                    out.append((self._sid, self._mtype, self._flags, buf.getvalue(),
                                self._len))
                    del buf
            else:  # _ST_SKIP: discard without buffering
                take = self._len - self._have
                if take > n - pos:
                    take = n - pos
                self._have += take
                pos += take
                if self._have == self._len:
                    self._have = 0
                    state = _ST_HEADER
                    out.append((self._sid, self._mtype, self._flags, None, self._len))
        self._state = state
        return out
