"""ttrpc frame encode/decode: native (shim._native) and pure (shim._frame_py).

Every test runs against both implementations. The native one is skipped only
if `shim._native` cannot be imported (the reason is in the skip message and
in a warning); with PYSHIM_REQUIRE_NATIVE=1 that is a failure instead.

Random cases: 4,450 hypothesis examples plus 170,000 seeded random streams
(random bytes, header-shaped garbage, pure-vs-native differential), each
split at random chunk boundaries.
"""
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import _frame_py as pure

try:
    from shim import _native as native

    native.FrameReader  # noqa: B018  (extension built without frame.pxi?)
    NATIVE_ERROR = None
except Exception as e:  # ImportError, AttributeError, or a broken build
    native = None
    import shim

    NATIVE_ERROR = "%s: %s (shim imported from %s)" % (type(e).__name__, e, shim.__file__)
    if os.environ.get("PYSHIM_REQUIRE_NATIVE", "") not in ("", "0"):
        raise
    warnings.warn("shim._native not importable, native frame tests skipped: " + NATIVE_ERROR,
                  stacklevel=1)

MAX = 4194304
HDR = struct.Struct(">IIBB")

_skip_native = pytest.mark.skipif(
    native is None, reason="shim._native not importable: %s" % NATIVE_ERROR)
IMPLS = [
    pytest.param(pure, id="pure"),
    pytest.param(native, id="native", marks=_skip_native),
]
both = pytest.mark.parametrize("impl", IMPLS)

SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- helpers

def split_at(data, cuts):
    """Split `data` at the (unsorted, possibly duplicate) offsets in `cuts`."""
    pts = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for p in pts:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def feed_all(impl, chunks, reader=None):
    r = reader if reader is not None else impl.FrameReader()
    frames = []
    for c in chunks:
        frames.extend(r.feed(c))
    return frames, r


def F(sid, mtype, flags, data):
    """Expected feed() item for a normal frame."""
    return (sid, mtype, flags, data, len(data))


def random_cuts(rng, n, k_max=12):
    return [rng.randint(0, n) for _ in range(rng.randint(0, k_max))]


frame_st = st.tuples(
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.one_of(st.binary(max_size=80), st.binary(min_size=1000, max_size=20000)),
)
small_frame_st = st.tuples(
    st.integers(0, 0xFFFFFFFF), st.integers(0, 255), st.integers(0, 255),
    st.binary(max_size=300))


# ---------------------------------------------------------------- basics

@both
def test_constants(impl):
    assert impl.MAX_DATA == 4194304
    assert impl.HEADER_SIZE == 10
    assert (impl.TYPE_REQUEST, impl.TYPE_RESPONSE, impl.TYPE_DATA) == (1, 2, 3)
    assert (impl.FLAG_REMOTE_CLOSED, impl.FLAG_REMOTE_OPEN, impl.FLAG_NO_DATA) == (1, 2, 4)
    assert issubclass(impl.FrameError, Exception)


REQ_HEX = ("000000280000000101000a17636f6e7461696e6572642e7461736b2e76322e5461736b"
           "120553746174651a060a046e6f7065")
RESP_HEX = ("000000260000000102000a2408051220636f6e7461696e6572206e6f742063726561746564"
            "3a206e6f7420666f756e64")


@both
def test_worked_example_spec_12(impl):
    req = bytes.fromhex(REQ_HEX)
    resp = bytes.fromhex(RESP_HEX)
    assert len(req) == 50 and len(resp) == 48
    r = impl.FrameReader()
    (f,) = r.feed(req)
    assert f == (1, impl.TYPE_REQUEST, 0, req[10:], 40)
    assert len(f[3]) == 0x28 == 40
    assert f[3] == (b"\x0a\x17containerd.task.v2.Task" b"\x12\x05State"
                    b"\x1a\x06\x0a\x04nope")
    assert r.pending() == 0
    (g,) = r.feed(resp)
    assert g == (1, impl.TYPE_RESPONSE, 0, resp[10:], 38)
    assert len(g[3]) == 0x26 == 38
    assert b"container not created: not found" in g[3]
    assert impl.encode_frame(1, impl.TYPE_REQUEST, 0, req[10:]) == req
    assert impl.encode_frame(1, impl.TYPE_RESPONSE, 0, resp[10:]) == resp
    # byte by byte, both frames back to back
    frames, r = feed_all(impl, [bytes([b]) for b in req + resp])
    assert frames == [f, g] and r.pending() == 0


@both
def test_result_types(impl):
    (f,) = impl.FrameReader().feed(impl.encode_frame(0xFFFFFFFF, 255, 255, b"x"))
    assert f == (0xFFFFFFFF, 255, 255, b"x", 1)
    assert type(f) is tuple and len(f) == 5
    assert all(type(v) is int for v in f[:3] + f[4:]) and type(f[3]) is bytes
    (f,) = impl.FrameReader().feed(impl.encode_frame(7, 2, 0, b""))
    assert f == (7, 2, 0, b"", 0) and type(f[3]) is bytes


@both
def test_encode_limits(impl):
    FE = impl.FrameError
    frame = impl.encode_frame(1, 1, 0, bytes(MAX))  # exactly MAX_DATA: accepted
    assert len(frame) == MAX + 10 and frame[:10] == HDR.pack(MAX, 1, 1, 0)
    with pytest.raises(FE):
        impl.encode_frame(1, 1, 0, bytes(MAX + 1))
    for sid in (-1, 2 ** 32, 2 ** 64, 2 ** 100, -(2 ** 100)):
        with pytest.raises(FE):
            impl.encode_frame(sid, 1, 0, b"")
    for bad in (-1, 256, 2 ** 70):
        with pytest.raises(FE):
            impl.encode_frame(1, bad, 0, b"")
        with pytest.raises(FE):
            impl.encode_frame(1, 1, bad, b"")
    assert impl.encode_frame(0, 0, 0, b"") == bytes(10)
    assert impl.encode_frame(2 ** 32 - 1, 3, 7, b"") == b"\0\0\0\0\xff\xff\xff\xff\x03\x07"
    # any contiguous bytes-like data; not str/int/None
    assert impl.encode_frame(5, 1, 0, bytearray(b"ab")) == HDR.pack(2, 5, 1, 0) + b"ab"
    assert impl.encode_frame(5, 1, 0, memoryview(b"xabc")[1:]) == HDR.pack(3, 5, 1, 0) + b"abc"
    for bad in ("ab", 3, None):
        with pytest.raises(TypeError):
            impl.encode_frame(5, 1, 0, bad)
    assert type(impl.encode_frame(5, 1, 0, bytearray(b"ab"))) is bytes


@both
def test_feed_accepts_bytes_like(impl):
    wire = impl.encode_frame(3, 1, 0, b"hello") * 2
    r = impl.FrameReader()
    assert r.feed(bytearray(wire[:7])) == []
    assert r.feed(memoryview(wire)[7:15]) == [F(3, 1, 0, b"hello")]
    assert r.feed(memoryview(wire)[15:]) == [F(3, 1, 0, b"hello")]
    assert r.feed(b"") == [] and r.pending() == 0
    for bad in ("abc", 3, None):
        with pytest.raises(TypeError):
            r.feed(bad)
    assert r.pending() == 0


# ---------------------------------------------------------------- round trips

@both
@settings(max_examples=600, **SETTINGS)
@given(frame=frame_st, cuts=st.lists(st.integers(0, 20020), max_size=12))
def test_roundtrip_single_frame_any_split(impl, frame, cuts):
    wire = impl.encode_frame(*frame)
    assert wire == HDR.pack(len(frame[3]), *frame[:3]) + frame[3]
    r = impl.FrameReader()
    got, fed = [], 0
    for c in split_at(wire, cuts):
        got.extend(r.feed(c))
        fed += len(c)
        if fed < len(wire):
            assert got == [] and r.pending() == fed
    assert got == [F(*frame)]
    assert r.pending() == 0


@both
@settings(max_examples=400, **SETTINGS)
@given(frames=st.lists(small_frame_st, max_size=30),
       cuts=st.lists(st.integers(0, 10000), max_size=20))
def test_frame_sequence_any_split(impl, frames, cuts):
    wire = b"".join(impl.encode_frame(*f) for f in frames)
    got, r = feed_all(impl, split_at(wire, cuts))
    assert got == [F(*f) for f in frames]
    assert r.pending() == 0


@both
@settings(max_examples=500, **SETTINGS)
@given(frame=frame_st, data=st.data())
def test_truncated_yields_nothing(impl, frame, data):
    wire = impl.encode_frame(*frame)
    k = data.draw(st.integers(1, len(wire) - 1), label="cut")
    cuts = data.draw(st.lists(st.integers(0, k), max_size=6), label="cuts")
    got, r = feed_all(impl, split_at(wire[:k], cuts))
    assert got == []
    assert r.pending() == k
    # completing it later still works
    assert r.feed(wire[k:]) == [F(*frame)] and r.pending() == 0


# ---------------------------------------------------------------- oversize

@both
@settings(max_examples=25, **SETTINGS)
@given(before=st.lists(small_frame_st, max_size=3),
       after=st.lists(small_frame_st, min_size=1, max_size=3),
       extra=st.integers(1, 3000),
       sid=st.integers(0, 0xFFFFFFFF), mtype=st.integers(0, 255), flags=st.integers(0, 255),
       cuts=st.lists(st.integers(0, MAX + 5000), max_size=25),
       fill=st.sampled_from([0, 0xFF, 0x41]))
def test_oversize_discarded_stream_stays_in_sync(impl, before, after, extra, sid, mtype,
                                                   flags, cuts, fill):
    declared = MAX + extra
    # the discarded data is frame-shaped garbage in one variant: must not matter
    body = bytes([fill]) * declared
    wire = (b"".join(impl.encode_frame(*f) for f in before)
            + HDR.pack(declared, sid, mtype, flags) + body
            + b"".join(impl.encode_frame(*f) for f in after))
    got, r = feed_all(impl, split_at(wire, cuts))
    assert got == ([F(*f) for f in before] + [(sid, mtype, flags, None, declared)]
                   + [F(*f) for f in after])
    assert r.pending() == 0


@both
def test_oversize_pending_and_streaming(impl):
    """Oversize data streamed in small chunks: reported once, after the last byte."""
    declared = MAX + 1
    r = impl.FrameReader()
    assert r.feed(HDR.pack(declared, 9, 1, 0)[:4]) == []
    assert r.pending() == 4
    assert r.feed(HDR.pack(declared, 9, 1, 0)[4:]) == []
    assert r.pending() == 10
    chunk = b"\0" * 65536
    fed = 0
    while declared - fed > len(chunk):
        assert r.feed(chunk) == []
        fed += len(chunk)
        assert r.pending() == 10 + fed
    tail = declared - fed
    nxt = impl.encode_frame(11, 1, 0, b"next")
    out = r.feed(b"\0" * tail + nxt[:3])
    assert out == [(9, 1, 0, None, declared)]
    assert r.pending() == 3
    assert r.feed(nxt[3:]) == [F(11, 1, 0, b"next")]
    assert r.pending() == 0


@both
def test_length_exactly_max_accepted(impl):
    wire = impl.encode_frame(1, 1, 0, b"\x07" * MAX) + impl.encode_frame(3, 1, 0, b"z")
    for chunk_size in (len(wire), 1 << 20, 4093):
        got, r = feed_all(impl, [wire[i:i + chunk_size] for i in range(0, len(wire), chunk_size)])
        assert len(got) == 2
        assert got[0][:3] == (1, 1, 0) and got[0][3] == b"\x07" * MAX and got[0][4] == MAX
        assert got[1] == F(3, 1, 0, b"z") and r.pending() == 0


@both
def test_huge_declared_length_memory_bounded(impl):
    """Declared 4 GiB: the data is discarded as it streams, never buffered."""
    r = impl.FrameReader()
    chunk = b"\xab" * (1 << 16)
    r.feed(HDR.pack(0xFFFFFFFF, 1, 1, 0))
    tracemalloc.start()
    try:
        for _ in range(256):  # 16 MiB of discarded data
            assert r.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak
    assert r.pending() == 10 + 256 * len(chunk)


@both
def test_large_frame_memory_about_one_copy(impl):
    """A 4 MiB frame in 64 KiB chunks: peak ~ MAX_DATA + chunk, not 2x."""
    wire = impl.encode_frame(1, 1, 0, b"\x5a" * MAX)
    chunks = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
    r = impl.FrameReader()
    tracemalloc.start()
    try:
        out = []
        for c in chunks:
            out.extend(r.feed(c))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out) == 1 and out[0][3] == b"\x5a" * MAX
    assert peak < MAX * 1.3 + 65536 * 4, peak


# ---------------------------------------------------------------- efficiency

@both
def test_large_frame_many_small_chunks_linear(impl):
    data = bytes(range(256)) * (MAX // 256)
    wire = impl.encode_frame(5, 1, 0, data)
    chunks = [wire[i:i + 64] for i in range(0, len(wire), 64)]  # 65,537 feeds
    r = impl.FrameReader()
    t0 = time.perf_counter()
    out = []
    for c in chunks:
        out.extend(r.feed(c))
    elapsed = time.perf_counter() - t0
    assert out == [F(5, 1, 0, data)] and r.pending() == 0
    assert elapsed < 5.0, elapsed  # quadratic copying would take minutes


@both
def test_many_small_frames_one_chunk(impl):
    frames = [(2 * i + 1, 1, 0, b"m" * (i % 60)) for i in range(100_000)]
    wire = b"".join(impl.encode_frame(*f) for f in frames)
    r = impl.FrameReader()
    t0 = time.perf_counter()
    out = r.feed(wire)
    elapsed = time.perf_counter() - t0
    assert out == [F(*f) for f in frames] and r.pending() == 0
    assert elapsed < 5.0, elapsed


# ---------------------------------------------------------------- garbage

def _check_garbage(impl, rng, wire):
    """Feed `wire` split randomly; only FrameError may escape (none expected);
    the bytes accounted for by frames + pending() must equal the input."""
    r = impl.FrameReader()
    frames = []
    for c in split_at(wire, random_cuts(rng, len(wire))):
        try:
            frames.extend(r.feed(c))
        except impl.FrameError:
            return None
    used = 0
    for sid, mtype, flags, data, length in frames:
        assert 0 <= sid <= 0xFFFFFFFF and 0 <= mtype <= 255 and 0 <= flags <= 255
        if data is None:
            assert MAX < length <= 0xFFFFFFFF
        else:
            assert type(data) is bytes and len(data) == length <= MAX
        used += 10 + length
    assert used + r.pending() == len(wire)
    return frames, r.pending()


def _shaped_garbage(rng):
    """Concatenated frame-like headers with small/edge lengths and random data,
    possibly truncated, with random bytes spliced in."""
    parts = []
    for _ in range(rng.randint(0, 6)):
        length = rng.choice((0, 1, 2, 5, 17, rng.randint(0, 200),
                             MAX, MAX + 1, 0xFFFFFFFF, rng.getrandbits(32)))
        hdr = HDR.pack(length, rng.getrandbits(32), rng.getrandbits(8), rng.getrandbits(8))
        parts.append(hdr + rng.randbytes(min(length, rng.randint(0, 220))))
    if rng.random() < 0.3:
        parts.insert(rng.randint(0, len(parts)), rng.randbytes(rng.randint(1, 12)))
    return b"".join(parts)


@both
@pytest.mark.parametrize("seed", [1, 2])
def test_random_bytes_only_frameerror(impl, seed):
    rng = random.Random(seed)
    for _ in range(20_000):
        _check_garbage(impl, rng, rng.randbytes(rng.randint(0, 64)))


@both
@pytest.mark.parametrize("seed", [3, 4])
def test_header_shaped_garbage_only_frameerror(impl, seed):
    rng = random.Random(seed)
    for _ in range(15_000):
        _check_garbage(impl, rng, _shaped_garbage(rng))


@both
@settings(max_examples=700, **SETTINGS)
@given(wire=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_hypothesis_garbage_only_frameerror(impl, wire, cuts):
    r = impl.FrameReader()
    total = 0
    for c in split_at(wire, cuts):
        try:
            for _, _, _, data, length in r.feed(c):
                assert data is None or len(data) == length
                total += 10 + length
        except impl.FrameError:
            return
    assert total + r.pending() == len(wire)


@_skip_native
@pytest.mark.parametrize("seed", [5, 6])
def test_pure_and_native_agree(seed):
    rng = random.Random(seed)
    for _ in range(15_000):
        kind = rng.random()
        if kind < 0.4:
            wire = _shaped_garbage(rng)
        elif kind < 0.7:
            wire = rng.randbytes(rng.randint(0, 64))
        else:
            wire = b"".join(
                pure.encode_frame(rng.getrandbits(32), rng.getrandbits(8), rng.getrandbits(8),
                                  rng.randbytes(rng.randint(0, 40)))
                for _ in range(rng.randint(0, 5)))
        chunks = split_at(wire, random_cuts(rng, len(wire)))
        rp, rn = pure.FrameReader(), native.FrameReader()
        for c in chunks:
            assert rp.feed(c) == rn.feed(c)
            assert rp.pending() == rn.pending()


# ---------------------------------------------------------------- shim.frame

def _selected(env_extra, tmp_path):
    env = dict(os.environ)
    env.pop("PYSHIM_PURE", None)
    env.update(env_extra)
    # import the same `shim` as this process does (installed package)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    out = subprocess.run(
        [sys.executable, "-c",
         "import shim.frame as f, shim._frame_py as p;"
         "print(f.IMPLEMENTATION, f.FrameReader is p.FrameReader, f.NATIVE_IMPORT_ERROR)"],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, check=True)
    return out.stdout.split()[:2]


def test_frame_module_selection(tmp_path):
    assert _selected({"PYSHIM_PURE": "1"}, tmp_path) == ["pure", "True"]
    if native is not None:
        assert _selected({}, tmp_path) == ["native", "False"]
        assert _selected({"PYSHIM_PURE": "0"}, tmp_path) == ["native", "False"]
    else:
        assert _selected({}, tmp_path) == ["pure", "True"]


def test_frame_module_exports():
    import shim.frame as f
    impl = pure if f.IMPLEMENTATION == "pure" else native
    assert f.FrameReader is impl.FrameReader
    assert f.encode_frame is impl.encode_frame
    assert f.FrameError is impl.FrameError
    assert f.MAX_DATA == MAX and f.HEADER_SIZE == 10
