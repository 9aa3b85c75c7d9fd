# ttrpc frames (spec: shared/spec/ttrpc.md §2, §8). Included by native.pyx.
#
# Pure-Python twin with the identical API and semantics: shim/_frame_py.py
# (the docstrings there are the reference; keep both in step).
#
# Wire format: 10-byte header, all big-endian:
#   u32 data length | u32 stream id | u8 type | u8 flags
# followed by `length` bytes of data.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy

MAX_DATA = 4194304
HEADER_SIZE = 10
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
FLAG_REMOTE_CLOSED = 1
FLAG_REMOTE_OPEN = 2
FLAG_NO_DATA = 4

cdef enum:
    _FRAME_MAX_DATA = 4194304
    _FRAME_HEADER_SIZE = 10
    _FRAME_ST_HEADER = 0
    _FRAME_ST_BODY = 1
    _FRAME_ST_SKIP = 2


class FrameError(Exception):
    """Invalid frame (raised by encode_frame; FrameReader never raises it
    for any byte content, see FrameReader)."""


cdef inline void _frame_put_u32(unsigned char *p, unsigned long v) noexcept:
    p[0] = <unsigned char>((v >> 24) & 0xFF)
    p[1] = <unsigned char>((v >> 16) & 0xFF)
    p[2] = <unsigned char>((v >> 8) & 0xFF)
    p[3] = <unsigned char>(v & 0xFF)


cdef inline unsigned long _frame_get_u32(const unsigned char *p) noexcept:
    return ((<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16)
            | (<unsigned long>p[2] << 8) | <unsigned long>p[3])


def encode_frame(stream_id, mtype, flags, data):
    """encode_frame(stream_id, mtype, flags, data) -> bytes

    One ttrpc frame (10-byte header + data) as a single bytes object.
    `data` is bytes or any contiguous bytes-like object (TypeError otherwise).
    Raises FrameError if len(data) > MAX_DATA (4194304; exactly MAX_DATA is
    allowed), stream_id is not in 0..2**32-1, or mtype/flags not in 0..255.
    """
    cdef Py_buffer view
    cdef const unsigned char *src
    cdef Py_ssize_t n
    cdef bint release = False
    cdef unsigned long sid
    cdef unsigned char *out_p
    cdef int t, f
    # Range checks in Python-object space so that huge ints and negatives
    # become FrameError rather than OverflowError.
    if not (0 <= stream_id <= 0xFFFFFFFF):
        raise FrameError("stream id %r outside uint32" % (stream_id,))
    if not (0 <= mtype <= 0xFF):
        raise FrameError("message type %r outside uint8" % (mtype,))
    if not (0 <= flags <= 0xFF):
        raise FrameError("flags %r outside uint8" % (flags,))
    sid = stream_id
    t = mtype
    f = flags
    if type(data) is bytes:
        src = <const unsigned char *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        release = True
        src = <const unsigned char *>view.buf
        n = view.len
    try:
        if n > _FRAME_MAX_DATA:
            raise FrameError(
                "message length %d exceed maximum message size of %d" % (n, _FRAME_MAX_DATA))
        out = PyBytes_FromStringAndSize(NULL, _FRAME_HEADER_SIZE + n)
        out_p = <unsigned char *>PyBytes_AS_STRING(out)
        _frame_put_u32(out_p, <unsigned long>n)
        _frame_put_u32(out_p + 4, sid)
        out_p[8] = <unsigned char>t
        out_p[9] = <unsigned char>f
        if n:
            memcpy(out_p + _FRAME_HEADER_SIZE, src, n)
        return out
    finally:
        if release:
            PyBuffer_Release(&view)


cdef class FrameReader:
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
    plus the chunk being fed; data arriving in many small chunks is copied
    once into its final bytes object (no quadratic re-copying).

    pending() -> int: bytes of an incomplete frame received so far (header
    bytes, plus data bytes buffered or already discarded). 0 means the reader
    is at a frame boundary; >0 at EOF means a short read mid-frame (a failed
    connection, spec §8).
    """

    cdef unsigned char _hdr[10]
    cdef Py_ssize_t _hdr_have
    cdef int _state
    cdef unsigned long _sid
    cdef int _mtype
    cdef int _flags
    cdef unsigned long long _len
    cdef unsigned long long _have
    cdef object _body

    def __cinit__(self):
        self._hdr_have = 0
        self._state = _FRAME_ST_HEADER
        self._len = 0
        self._have = 0
        self._body = None

    def pending(self):
        """Bytes of the current incomplete frame seen so far (0 = at a frame boundary)."""
        if self._state == _FRAME_ST_HEADER:
            return self._hdr_have
        return _FRAME_HEADER_SIZE + self._have

    def feed(self, chunk):
        """feed(chunk: bytes-like) -> list of (stream_id, mtype, flags, data, length).

        See the class docstring: data is bytes, or None for an oversize frame
        (length > MAX_DATA) whose data was discarded.
        """
        cdef Py_buffer view
        cdef bint release = False
        cdef const unsigned char *p
        cdef const unsigned char *h
        cdef Py_ssize_t n, pos = 0, avail, take
        cdef unsigned long long length, left
        cdef list out = []
        if type(chunk) is bytes:
            p = <const unsigned char *>PyBytes_AS_STRING(chunk)
            n = PyBytes_GET_SIZE(chunk)
        else:
            PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
            release = True
            p = <const unsigned char *>view.buf
            n = view.len
        try:
            while pos < n:
                if self._state == _FRAME_ST_HEADER:
                    if self._hdr_have == 0 and n - pos >= _FRAME_HEADER_SIZE:
                        h = p + pos
                        pos += _FRAME_HEADER_SIZE
                    else:
                        take = _FRAME_HEADER_SIZE - self._hdr_have
                        if take > n - pos:
                            take = n - pos
                        memcpy(self._hdr + self._hdr_have, p + pos, take)
                        self._hdr_have += take
                        pos += take
                        if self._hdr_have < _FRAME_HEADER_SIZE:
                            break
                        self._hdr_have = 0
                        h = self._hdr
                    length = _frame_get_u32(h)
                    if length > _FRAME_MAX_DATA:
                        self._sid = _frame_get_u32(h + 4)
                        self._mtype = h[8]
                        self._flags = h[9]
                        self._len = length
                        self._have = 0
                        self._state = _FRAME_ST_SKIP
                        continue
                    avail = n - pos
                    if <unsigned long long>avail >= length:
                        # Whole data in this chunk: one copy, straight out.
                        out.append((_frame_get_u32(h + 4), h[8], h[9],
                                    PyBytes_FromStringAndSize(<const char *>(p + pos),
                                                              <Py_ssize_t>length),
                                    length))
                        pos += <Py_ssize_t>length
                        continue
                    # Partial data: allocate the final bytes object once and
                    # fill it in place as chunks arrive (it is private to us
                    # until complete, so writing into it is safe).
                    self._sid = _frame_get_u32(h + 4)
                    self._mtype = h[8]
                    self._flags = h[9]
                    self._len = length
                    self._body = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                    memcpy(PyBytes_AS_STRING(self._body), p + pos, avail)
                    self._have = avail
                    self._state = _FRAME_ST_BODY
                    pos = n
                elif self._state == _FRAME_ST_BODY:
                    left = self._len - self._have
                    take = n - pos
                    if <unsigned long long>take > left:
                        take = <Py_ssize_t>left
                    memcpy(PyBytes_AS_STRING(self._body) + self._have, p + pos, take)
                    self._have += take
                    pos += take
                    if self._have == self._len:
                        out.append((self._sid, self._mtype, self._flags, self._body,
                                    self._len))
                        self._body = None
                        self._have = 0
                        self._state = _FRAME_ST_HEADER
                else:  # _FRAME_ST_SKIP: discard without buffering
                    left = self._len - self._have
                    take = n - pos
                    if <unsigned long long>take > left:
                        take = <Py_ssize_t>left
                    self._have += take
                    pos += take
                    if self._have == self._len:
                        out.append((self._sid, self._mtype, self._flags, None, self._len))
                        self._have = 0
                        self._state = _FRAME_ST_HEADER
            return out
        finally:
            if release:
                PyBuffer_Release(&view)
