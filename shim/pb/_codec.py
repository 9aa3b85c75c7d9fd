"""Lean proto3 codec runtime used by the generated ``shim.pb.<name>`` modules.

The serving shim imports only this module and the generated modules (never
google.protobuf), so it is kept small: no ``re``/``enum``/``typing``/
``dataclasses``; ``struct`` and ``time`` are imported lazily and only when a
float/double field or a timestamp helper is actually used.

Messages are ``__slots__`` classes described by a field table (see ``init``);
encoding and decoding are table-driven loops over that table.  See
docs/codec.md for the API and the naming scheme of the generated modules.
"""

__all__ = (
    "DecodeError", "Message", "Enum",
    "any_pack", "any_unpack", "timestamp", "timestamp_ns", "ts_to_float", "ts_to_ns",
)


class DecodeError(ValueError):
    """Raised by ``Cls.decode`` for truncated or malformed input."""


# Field kinds (the proto scalar type, or message / map).
STRING = 1
BYTES = 2
MESSAGE = 3
UINT32 = 4
UINT64 = 5
INT32 = 6
INT64 = 7
BOOL = 8
ENUM = 9
SINT32 = 10
SINT64 = 11
FIXED32 = 12
FIXED64 = 13
SFIXED32 = 14
SFIXED64 = 15
FLOAT = 16
DOUBLE = 17
MAP = 18

# Field modes.
SINGLE = 0     # proto3 implicit presence: default value is not emitted
OPTIONAL = 1   # explicit presence (message fields, proto3 `optional`): None = absent
REPEATED = 2   # repeated, one tag per element (strings, bytes, messages, [packed=false])
PACKED = 3     # repeated scalar, emitted packed (proto3 default)
MAPF = 4       # map<k, v>; the table entry's `sub` is (key_kind, value_kind, value_class)

_M64 = 0xFFFFFFFFFFFFFFFF
_M32 = 0xFFFFFFFF
_MAX_DEPTH = 100

# wire type per kind
_WT = {STRING: 2, BYTES: 2, MESSAGE: 2, MAP: 2,
       UINT32: 0, UINT64: 0, INT32: 0, INT64: 0, BOOL: 0, ENUM: 0, SINT32: 0, SINT64: 0,
       FIXED32: 5, SFIXED32: 5, FLOAT: 5, FIXED64: 1, SFIXED64: 1, DOUBLE: 1}

_struct = None


def _st():
    global _struct
    if _struct is None:
        import struct
        _struct = struct
    return _struct


# ---------------------------------------------------------------- encoding

def _wvar(out, v):
    """Append varint v (>= 0; negatives as 64-bit two's complement)."""
    if v < 0:
        v &= _M64
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _varint_bytes(v):
    out = bytearray()
    _wvar(out, v)
    return bytes(out)


def _put(out, kind, v):
    """Append the value part (no tag) of one element of `kind`."""
    if kind == STRING:
        b = v.encode()
        n = len(b)
        if n < 0x80:
            out.append(n)
        else:
            _wvar(out, n)
        out += b
    elif kind <= ENUM:
        if kind == BYTES:
            n = len(v)
            if n < 0x80:
                out.append(n)
            else:
                _wvar(out, n)
            out += v
        elif kind == MESSAGE:   # callers check the class (_wrong_class)
            b = _encode(v)
            n = len(b)
            if n < 0x80:
                out.append(n)
            else:
                _wvar(out, n)
            out += b
        elif kind == BOOL:
            out.append(1 if v else 0)
        elif 0 <= v < 0x80:   # uint32, uint64, int32, int64, enum
            out.append(v)
        else:
            _wvar(out, v)
    elif kind == SINT32:
        _wvar(out, ((v << 1) ^ (v >> 31)) & _M32)
    elif kind == SINT64:
        _wvar(out, ((v << 1) ^ (v >> 63)) & _M64)
    elif kind == FIXED32:
        out += v.to_bytes(4, "little")
    elif kind == SFIXED32:
        out += v.to_bytes(4, "little", signed=True)
    elif kind == FIXED64:
        out += v.to_bytes(8, "little")
    elif kind == SFIXED64:
        out += v.to_bytes(8, "little", signed=True)
    elif kind == FLOAT:
        out += _st().pack("<f", v)
    elif kind == DOUBLE:
        out += _st().pack("<d", v)
    else:
        raise TypeError("bad field kind %r" % (kind,))


def _wrong_class(cls, v):
    raise TypeError("expected %s, got %s" % (cls.FULL_NAME, type(v).__name__))


def _encode(msg):
    out = bytearray()
    name = None
    try:
        for name, kind, mode, tag, sub in msg._f:
            v = getattr(msg, name)
            if mode == SINGLE:
                if not v:
                    # default: omitted; but -0.0 is not the default (protobuf
                    # compares the bit pattern)
                    if kind < FLOAT or v != 0 or str(v)[0] != "-":
                        continue
                out += tag
                if kind == STRING:
                    b = v.encode()
                    n = len(b)
                    if n < 0x80:
                        out.append(n)
                    else:
                        _wvar(out, n)
                    out += b
                elif (kind == UINT32 or kind == UINT64) and v < 0x80:
                    out.append(v)
                else:
                    _put(out, kind, v)
            elif mode == OPTIONAL:
                if v is None:
                    continue
                if kind == MESSAGE and v.__class__ is not sub:
                    _wrong_class(sub, v)
                out += tag
                _put(out, kind, v)
            elif mode == REPEATED:
                for x in v:
                    if kind == MESSAGE and x.__class__ is not sub:
                        _wrong_class(sub, x)
                    out += tag
                    _put(out, kind, x)
            elif mode == PACKED:
                if not v:
                    continue
                body = bytearray()
                for x in v:
                    _put(body, kind, x)
                out += tag
                _wvar(out, len(body))
                out += body
            else:  # MAPF
                if not v:
                    continue
                kk, vk, vcls = sub
                ktag = 8 | _WT[kk]
                vtag = 16 | _WT[vk]
                for k, x in sorted(v.items()):
                    if vk == MESSAGE and x.__class__ is not vcls:
                        _wrong_class(vcls, x)
                    e = bytearray()
                    e.append(ktag)
                    _put(e, kk, k)
                    e.append(vtag)
                    _put(e, vk, x)
                    out += tag
                    _wvar(out, len(e))
                    out += e
    except (AttributeError, TypeError) as e:
        raise TypeError("%s.%s: cannot encode: %s" % (msg.FULL_NAME, name, e)) from None
    except (ValueError, OverflowError) as e:  # out-of-range ints, lone surrogates, ...
        raise ValueError("%s.%s: cannot encode: %s" % (msg.FULL_NAME, name, e)) from None
    return bytes(out)


# ---------------------------------------------------------------- decoding

def _rvar(buf, pos, end):
    """Read a varint at pos; return (value masked to 64 bits, new pos)."""
    if pos >= end:
        raise DecodeError("truncated varint")
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    r = b & 0x7F
    shift = 7
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        r |= (b & 0x7F) << shift
        if b < 0x80:
            return r & _M64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _conv(kind, v):
    """Convert a raw varint to the value of a varint-kind field."""
    if kind == UINT64:
        return v
    if kind == UINT32:
        return v & _M32
    if kind == INT32 or kind == ENUM:
        v &= _M32
        return v - 0x100000000 if v & 0x80000000 else v
    if kind == INT64:
        return v - 0x10000000000000000 if v & 0x8000000000000000 else v
    if kind == BOOL:
        return v != 0
    if kind == SINT32:
        v &= _M32
        return (v >> 1) ^ -(v & 1)
    if kind == SINT64:
        return (v >> 1) ^ -(v & 1)
    raise DecodeError("kind %d is not a varint kind" % kind)


def _fixed(kind, b):
    if kind == FIXED32 or kind == FIXED64:
        return int.from_bytes(b, "little")
    if kind == SFIXED32 or kind == SFIXED64:
        return int.from_bytes(b, "little", signed=True)
    if kind == FLOAT:
        return _st().unpack("<f", b)[0]
    return _st().unpack("<d", b)[0]


def _read1(kind, wt, buf, pos, end, depth):
    """Read one value of `kind` whose tag had wire type wt (already checked)."""
    if wt == 0:
        v, pos = _rvar(buf, pos, end)
        return _conv(kind, v), pos
    if wt == 2:
        n, pos = _rvar(buf, pos, end)
        e = pos + n
        if e > end:
            raise DecodeError("truncated length-delimited field")
        if kind == STRING:
            return buf[pos:e].decode(), e
        if kind == BYTES:
            return buf[pos:e], e
        raise DecodeError("unexpected length-delimited value")
    n = 4 if wt == 5 else 8
    e = pos + n
    if e > end:
        raise DecodeError("truncated fixed-width field")
    return _fixed(kind, buf[pos:e]), e


def _skip(buf, pos, end, tag, depth):
    """Skip the value of an unknown field; return the position after it."""
    wt = tag & 7
    if tag < 8:
        raise DecodeError("field number 0")
    if wt == 0:
        _, pos = _rvar(buf, pos, end)
        return pos
    if wt == 2:
        n, pos = _rvar(buf, pos, end)
        pos += n
    elif wt == 5:
        pos += 4
    elif wt == 1:
        pos += 8
    elif wt == 3:
        if depth >= _MAX_DEPTH:
            raise DecodeError("nesting too deep")
        num = tag >> 3
        while True:
            t, pos = _rvar(buf, pos, end)
            if t > _M32:
                raise DecodeError("bad tag")
            if t & 7 == 4:
                if t >> 3 != num:
                    raise DecodeError("mismatched end-group")
                return pos
            pos = _skip(buf, pos, end, t, depth + 1)
    else:
        raise DecodeError("invalid wire type %d" % wt)
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _read_entry(sub, buf, pos, end, depth):
    """Decode one map entry message occupying buf[pos:end]; return (k, v)."""
    kk, vk, vcls = sub
    k = v = None
    ktag = 8 | _WT[kk]
    vtag = 16 | _WT[vk]
    while pos < end:
        t, pos = _rvar(buf, pos, end)
        if t == ktag:
            k, pos = _read1(kk, ktag & 7, buf, pos, end, depth)
        elif t == vtag:
            if vk == MESSAGE:
                n, pos = _rvar(buf, pos, end)
                e = pos + n
                if e > end:
                    raise DecodeError("truncated map value")
                if v is None:
                    v = vcls()
                _merge(v, buf, pos, e, depth + 1)
                pos = e
            else:
                v, pos = _read1(vk, vtag & 7, buf, pos, end, depth)
        else:
            if t > _M32:
                raise DecodeError("bad tag")
            pos = _skip(buf, pos, end, t, depth)
    if k is None:
        k = _DEFAULTS[kk]
    if v is None:
        v = vcls() if vk == MESSAGE else _DEFAULTS[vk]
    return k, v


def _merge(msg, buf, pos, end, depth):
    """Decode buf[pos:end] into msg (protobuf merge semantics)."""
    if depth > _MAX_DEPTH:
        raise DecodeError("nesting too deep")
    d = msg._d
    if d is None:
        d = _build_dec(msg.__class__)
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _rvar(buf, pos - 1, end)
            if tag > _M32:
                raise DecodeError("bad tag")
        h = d.get(tag)
        if h is None:
            pos = _skip(buf, pos, end, tag, depth)
            continue
        name, kind, mode, _, sub = h
        wt = tag & 7
        if wt == 2:
            if pos >= end:
                raise DecodeError("truncated length")
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                n, pos = _rvar(buf, pos - 1, end)
            e = pos + n
            if e > end:
                raise DecodeError("truncated length-delimited field")
            if kind == STRING:
                val = buf[pos:e].decode()
            elif kind == MESSAGE:
                if mode == OPTIONAL:
                    cur = getattr(msg, name)
                    if cur is None:
                        cur = sub()
                        setattr(msg, name, cur)
                    _merge(cur, buf, pos, e, depth + 1)
                    pos = e
                    continue
                val = sub()
                _merge(val, buf, pos, e, depth + 1)
            elif kind == BYTES:
                val = buf[pos:e]
            elif mode == MAPF:
                k, v = _read_entry(sub, buf, pos, e, depth + 1)
                getattr(msg, name)[k] = v
                pos = e
                continue
            else:
                # packed repeated scalars
                lst = getattr(msg, name)
                ew = _WT[kind]
                if ew == 0:
                    p = pos
                    while p < e:
                        v, p = _rvar(buf, p, e)
                        lst.append(_conv(kind, v))
                else:
                    w = 4 if ew == 5 else 8
                    if n % w:
                        raise DecodeError("bad packed fixed-width length")
                    for p in range(pos, e, w):
                        lst.append(_fixed(kind, buf[p:p + w]))
                pos = e
                continue
            pos = e
        elif wt == 0:
            if pos >= end:
                raise DecodeError("truncated varint")
            v = buf[pos]
            pos += 1
            if v >= 0x80:
                v, pos = _rvar(buf, pos - 1, end)
            if kind == UINT32 or kind == UINT64:
                val = v if v < 0x80 else _conv(kind, v)
            else:
                val = _conv(kind, v)
        else:  # 5 or 1: fixed width
            e = pos + (4 if wt == 5 else 8)
            if e > end:
                raise DecodeError("truncated fixed-width field")
            val = _fixed(kind, buf[pos:e])
            pos = e
        if mode == REPEATED or mode == PACKED:
            getattr(msg, name).append(val)
        else:
            setattr(msg, name, val)
    if pos != end:
        raise DecodeError("truncated message")


_DEFAULTS = {STRING: "", BYTES: b"", UINT32: 0, UINT64: 0, INT32: 0, INT64: 0, BOOL: False,
             ENUM: 0, SINT32: 0, SINT64: 0, FIXED32: 0, FIXED64: 0, SFIXED32: 0,
             SFIXED64: 0, FLOAT: 0.0, DOUBLE: 0.0, MESSAGE: None}


# ---------------------------------------------------------------- classes

class Message:
    """Base of all generated message classes.

    ``Cls(**fields)``; ``m.encode() -> bytes``; ``Cls.decode(buf) -> Cls``;
    ``Cls.FULL_NAME``; ``==``; ``repr``.
    """

    __slots__ = ()
    FULL_NAME = ""
    _f = ()          # encode table: (name, kind, mode, tag bytes, sub), by field number
    _d = None        # decode table (tag int -> such a tuple), built on first decode
    _dflt = ()       # (name, immutable default)
    _lists = ()      # names of repeated fields
    _maps = ()       # names of map fields
    _names = ()      # all field names, in field-number order

    def __init__(self, **kw):
        for n, v in self._dflt:
            setattr(self, n, v)
        for n in self._lists:
            setattr(self, n, [])
        for n in self._maps:
            setattr(self, n, {})
        if kw:
            for n, v in kw.items():
                if n not in self._names:
                    raise TypeError("%s has no field %r" % (self.FULL_NAME, n))
                setattr(self, n, v)

    def encode(self):
        """Serialize to proto3 binary (deterministic: fields by number, maps by key)."""
        return _encode(self)

    @classmethod
    def decode(cls, buf):
        """Parse proto3 binary; raises DecodeError on malformed input."""
        if buf.__class__ is not bytes:
            if not isinstance(buf, (bytes, bytearray, memoryview)):
                raise TypeError("%s.decode() needs bytes, not %s"
                                % (cls.__name__, type(buf).__name__))
            buf = bytes(buf)
        msg = cls()
        try:
            _merge(msg, buf, 0, len(buf), 0)
        except DecodeError as e:
            raise DecodeError("%s: %s" % (cls.FULL_NAME, e)) from None
        except Exception as e:  # UnicodeDecodeError, IndexError, RecursionError, ...
            raise DecodeError("%s: %s: %s" % (cls.FULL_NAME, type(e).__name__, e)) from None
        return msg

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        for n in self._names:
            if getattr(self, n) != getattr(other, n):
                return False
        return True

    __hash__ = None

    def __repr__(self):
        parts = []
        for name, kind, mode, _tag, sub in self._f:
            v = getattr(self, name)
            if mode == OPTIONAL:
                if v is None:
                    continue
            elif not v and (kind < FLOAT or str(v)[0] != "-"):
                continue
            if kind == ENUM and sub is not None and mode <= OPTIONAL:
                parts.append("%s=%s" % (name, sub.name(v)))
            else:
                parts.append("%s=%r" % (name, v))
        return "%s(%s)" % (self.__class__.__name__, ", ".join(parts))


class Enum:
    """Base of generated enum classes: plain int class attributes per value.

    ``types.Status.RUNNING == 2``; ``types.Status.name(2) == "RUNNING"``.
    """

    __slots__ = ()
    FULL_NAME = ""
    _names = {}

    @classmethod
    def name(cls, value):
        n = cls._names.get(value)
        return n if n is not None else str(value)


def init(cls, fields):
    """Attach the field table to a generated message class.

    fields: tuple of (number, name, kind, mode, sub) in any order, where sub is
    the message class (MESSAGE), the enum class or None (ENUM), a tuple
    (key_kind, value_kind, value_class_or_enum_or_None) for maps, else None.
    Called once per class at the end of the generated module (so forward and
    self references resolve).
    """
    enc = []
    dflt = []
    lists = []
    maps = []
    for num, name, kind, mode, sub in sorted(fields):
        if mode == MAPF:
            wt = 2
            kk, vk, vc = sub
            sub = (kk, vk, vc if vk == MESSAGE else None)
            maps.append(name)
        elif mode == PACKED or mode == REPEATED:
            wt = 2 if mode == PACKED else _WT[kind]
            lists.append(name)
        else:
            wt = _WT[kind]
            dflt.append((name, None if mode == OPTIONAL else _DEFAULTS[kind]))
        enc.append((name, kind, mode, _tag_bytes((num << 3) | wt), sub))
    cls._f = tuple(enc)
    cls._d = None       # built on first decode (many classes are only ever encoded)
    cls._dflt = tuple(dflt)
    cls._lists = tuple(lists)
    cls._maps = tuple(maps)
    cls._names = cls.__dict__.get("__slots__", ())
    if tuple(e[0] for e in enc) != tuple(cls._names):
        raise TypeError("%s: __slots__ must list the fields in field-number order" % cls.__name__)


def _build_dec(cls):
    """Decode table: tag int -> the encode-table tuple (name, kind, mode, tag bytes, sub).
    Repeated scalars get an entry for both the packed and the unpacked form."""
    dec = {}
    for spec in cls._f:
        name, kind, mode, tagb, sub = spec
        tag, _ = _rvar(tagb, 0, len(tagb))
        if mode == PACKED or mode == REPEATED:
            wt = _WT[kind]
            if wt != 2:
                num = tag >> 3
                for t, m in (((num << 3) | wt, REPEATED), ((num << 3) | 2, PACKED)):
                    dec[t] = spec if m == mode else (name, kind, m, _tag_bytes(t), sub)
                continue
        dec[tag] = spec
    cls._d = dec
    return dec


_TAGS = {}


def _tag_bytes(tag):
    b = _TAGS.get(tag)
    if b is None:
        b = _TAGS[tag] = _varint_bytes(tag)
    return b


# ---------------------------------------------------------------- helpers

def any_pack(msg, type_url=None):
    """Wrap msg in a google.protobuf.Any; type_url defaults to msg.FULL_NAME
    (containerd uses bare full names, no ``type.googleapis.com/`` prefix)."""
    from shim.pb import wkt
    return wkt.Any(type_url=type_url if type_url is not None else msg.FULL_NAME,
                   value=msg.encode())


def any_unpack(any, cls):
    """Decode any.value as cls; the type_url must name cls (an optional
    ``<host>/`` prefix is accepted). Raises DecodeError otherwise."""
    url = any.type_url
    if url != cls.FULL_NAME and url.rpartition("/")[2] != cls.FULL_NAME:
        raise DecodeError("Any holds %r, not %s" % (url, cls.FULL_NAME))
    return cls.decode(any.value)


def timestamp_ns(ns):
    """google.protobuf.Timestamp from integer nanoseconds since the epoch."""
    from shim.pb import wkt
    s, n = divmod(ns, 1000000000)
    return wkt.Timestamp(seconds=s, nanos=n)


def timestamp(t=None):
    """google.protobuf.Timestamp from a float time (time.time() if None)."""
    if t is None:
        import time
        return timestamp_ns(time.time_ns())
    s = int(t // 1)
    n = int(round((t - s) * 1e9))
    if n >= 1000000000:
        s += 1
        n -= 1000000000
    from shim.pb import wkt
    return wkt.Timestamp(seconds=s, nanos=n)


def ts_to_float(ts):
    return ts.seconds + ts.nanos / 1e9


def ts_to_ns(ts):
    return ts.seconds * 1000000000 + ts.nanos
