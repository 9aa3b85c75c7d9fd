"""Time-budgeted, seeded fuzzing of every decoder the shim exposes to input:

  ttrpc frames      shim._native.FrameReader and shim._frame_py.FrameReader:
                    never raise, whatever the bytes and chunking
  ttrpc requests    the Request envelope, then the request message of every
                    method the Task service registers (as the server's
                    _on_frame does): a message or ValueError (the codec's
                    DecodeError), and decode(encode(m)) == m for what decodes
  runtime options   shim.options.decode / decode_checkpoint of an Any of
                    every known type (and unknown ones): a dict or
                    OptionsError
  TOML              shim.options.from_toml (the CRI options file): a dict or
                    OptionsError; flat_toml (the reader that avoids tomllib)
                    agrees with tomllib wherever it answers
  JSON              shim.jsonlite.loads: what json.loads gives, or ValueError

Every case is also bounded in time (no hang) and in memory (tracemalloc
peak, relative to the input's size).

Budget: PYSHIM_FUZZ_SECONDS per target (default 2: the CI run, about 20 s in
all); seed: PYSHIM_FUZZ_SEED (default fixed per target, so CI is
reproducible; a failure names the seed and case to replay). Release checks
run longer, e.g. PYSHIM_FUZZ_SECONDS=300 with a few seeds (docs/reliability.md).

Complements tests/unit/test_codec.py (hypothesis and differential fuzz of
the codec against google.protobuf) and tests/unit/test_frame.py (frame
properties): this file fuzzes what the serving shim actually calls, under
one time budget.
"""
import json
import os
import random
import time
import tracemalloc
import zlib

import pytest

from shim import _frame_py, jsonlite, options
from shim.pb import DecodeError
from shim.pb import _codec
from shim.pb import runc as runc_pb
from shim.pb import runctypes, runtimeoptions, wkt
from shim.pb import ttrpc as pb_ttrpc

try:
    from shim import _native
except ImportError:         # the pure reader is still fuzzed
    _native = None

try:
    import tomllib
except ImportError:         # Python < 3.11: flat_toml is then the only reader
    tomllib = None

BUDGET = float(os.environ.get("PYSHIM_FUZZ_SECONDS") or 2.0)
MIN_CASES = 200             # even on a very slow machine
CASE_SECONDS = 2.0          # a single case taking longer is a hang
MEM_SLACK = 1 << 20         # bytes a case may use beyond MEM_FACTOR * input


def seed_for(name):
    env = os.environ.get("PYSHIM_FUZZ_SEED")
    return int(env) if env else zlib.crc32(name.encode())


def fuzz(name, make_case, check, mem_factor=64, mem_extra=0):
    """Run check(case) on cases from make_case(rng) for BUDGET seconds
    (at least MIN_CASES), each under tracemalloc: it must return within
    CASE_SECONDS and peak below mem_factor * len(case) + mem_extra + MEM_SLACK."""
    seed = seed_for(name)
    rng = random.Random(seed)
    start = time.monotonic()
    n = 0
    tracemalloc.start()
    try:
        while n < MIN_CASES or time.monotonic() - start < BUDGET:
            case = make_case(rng)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.monotonic()
            try:
                check(case)
            except AssertionError:
                raise
            except Exception as e:
                raise AssertionError("%s: seed %d case %d: unexpected %s: %s\ninput: %r"
                                     % (name, seed, n, type(e).__name__, e,
                                        _short(case))) from e
            took = time.monotonic() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            size = _size(case)
            assert took < CASE_SECONDS, "%s: seed %d case %d took %.1fs: %r" % (
                name, seed, n, took, _short(case))
            assert peak < mem_factor * size + mem_extra + MEM_SLACK, \
                "%s: seed %d case %d peaked at %d bytes for %d of input: %r" % (
                    name, seed, n, peak, size, _short(case))
            n += 1
    finally:
        tracemalloc.stop()
    print("%s: %d cases in %.1fs (seed %d)" % (name, n, time.monotonic() - start, seed))
    return n


def _size(case):
    if isinstance(case, (bytes, bytearray, str)):
        return len(case)
    if isinstance(case, tuple):
        return sum(_size(x) for x in case)
    if isinstance(case, list):
        return sum(_size(x) for x in case)
    return 0


def _short(case, limit=300):
    r = repr(case)
    return r if len(r) <= limit else r[:limit] + "...(%d chars)" % len(r)


# ---- mutation --------------------------------------------------------------------

INTERESTING = (b"\x00", b"\xff", b"\x80", b"\xff\xff\xff\xff\x0f", b"\x80" * 10,
               b"\xff" * 10 + b"\x01", b"\x7f", b"\x0a\xff\xff\xff\xff\x07", b"\x12\x00")


def mutate(rng, data, corpus=()):
    """A few random edits of `data` (bytes)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:                   # truncate
            del b[i:]
        elif op == 1 and b:                 # flip a bit
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
        elif op == 2:                       # insert random bytes
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and b:                 # delete a range
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and b:                 # duplicate a range
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 32)]
        elif op == 5 and corpus:            # splice another input in
            other = rng.choice(corpus)
            j = rng.randrange(len(other) + 1)
            b[i:] = other[j:]
        elif op == 6:                       # an interesting varint/length
            b[i:i] = rng.choice(INTERESTING)
        elif op == 7 and b:                 # overwrite a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 8:                       # random bytes altogether
            b = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(b)


# ---- random valid messages from the codec's field tables -------------------------------

_INT_RANGES = {
    _codec.INT32: (-(1 << 31), (1 << 31) - 1), _codec.SINT32: (-(1 << 31), (1 << 31) - 1),
    _codec.SFIXED32: (-(1 << 31), (1 << 31) - 1), _codec.UINT32: (0, (1 << 32) - 1),
    _codec.FIXED32: (0, (1 << 32) - 1), _codec.INT64: (-(1 << 63), (1 << 63) - 1),
    _codec.SINT64: (-(1 << 63), (1 << 63) - 1), _codec.SFIXED64: (-(1 << 63), (1 << 63) - 1),
    _codec.UINT64: (0, (1 << 64) - 1), _codec.FIXED64: (0, (1 << 64) - 1),
}
_WORDS = ("", "c1", "exec-1", "/run/x", "containerd.runc.v1.Options", "é", "a" * 40)


def random_value(rng, kind, sub, depth):
    if kind == _codec.STRING:
        return rng.choice(_WORDS) if rng.random() < 0.7 else \
            "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(8)))
    if kind == _codec.BYTES:
        return rng.randbytes(rng.randrange(24))
    if kind == _codec.BOOL:
        return rng.random() < 0.5
    if kind in (_codec.DOUBLE, _codec.FLOAT):
        return rng.choice((0.0, 1.5, -2.0, 1e10))
    if kind == _codec.ENUM:
        return 0
    if kind == _codec.MESSAGE:
        return random_message(rng, sub, depth + 1)
    lo, hi = _INT_RANGES[kind]
    return rng.choice((0, 1, lo, hi, rng.randint(lo, hi)))


def random_message(rng, cls, depth=0):
    """An instance of `cls` with random values in a random subset of fields
    (fields whose random value the class refuses are left default)."""
    m = cls()
    if depth > 3:
        return m
    for name, kind, mode, _tag, sub in cls._f:
        if rng.random() < 0.4:
            continue
        try:
            if mode == _codec.MAPF:
                kk, vk, vc = sub
                v = {random_value(rng, kk, None, depth): random_value(rng, vk, vc, depth)
                     for _ in range(rng.randrange(3))}
            elif mode in (_codec.REPEATED, _codec.PACKED):
                v = [random_value(rng, kind, sub, depth) for _ in range(rng.randrange(4))]
            else:
                v = random_value(rng, kind, sub, depth)
            setattr(m, name, v)
            m.encode()
        except (TypeError, ValueError, OverflowError):
            try:
                delattr(m, name)
            except AttributeError:
                pass
            m = _rebuild_without(cls, m, name)
    return m


def _rebuild_without(cls, m, name):
    fresh = cls()
    for n, *_rest in cls._f:
        if n != name:
            try:
                setattr(fresh, n, getattr(m, n))
            except (TypeError, ValueError, AttributeError):
                pass
    return fresh


def task_methods():
    """{method: request class} as the shim's Task service registers them."""
    from shim.task import TaskService

    class Handlers:             # methods() only needs attributes to name
        def __getattr__(self, name):
            return None
    return {m: cls for m, (cls, _h) in TaskService.methods(Handlers()).items()}


# ---- ttrpc frames --------------------------------------------------------------------------

def frame_stream(rng):
    """Frame-shaped bytes: good frames, oversize and huge declared lengths,
    random bytes; then chunk boundaries."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.4:
            parts.append(_frame_py.encode_frame(rng.randrange(1 << 32), rng.randrange(256),
                                                rng.randrange(256),
                                                rng.randbytes(rng.randrange(64))))
        elif r < 0.6:
            length = rng.choice((_frame_py.MAX_DATA, _frame_py.MAX_DATA + 1, 1 << 31,
                                 0xFFFFFFFF, rng.randrange(1 << 32)))
            parts.append(length.to_bytes(4, "big") + rng.randbytes(6)
                         + rng.randbytes(rng.randrange(128)))
        else:
            parts.append(rng.randbytes(rng.randrange(64)))
    data = mutate(rng, b"".join(parts)) if rng.random() < 0.3 else b"".join(parts)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(6)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def check_frames(reader_cls):
    def check(chunks):
        r = reader_cls()
        total = 0
        for c in chunks:
            for sid, mtype, flags, data, length in r.feed(c):
                assert 0 <= sid < 1 << 32 and 0 <= mtype < 256 and 0 <= flags < 256
                assert (data is None) == (length > _frame_py.MAX_DATA)
                if data is not None:
                    assert len(data) == length
                    total += length
        assert 0 <= r.pending() and total <= sum(len(c) for c in chunks)
    return check


@pytest.mark.parametrize("impl", ["native", "pure"])
def test_fuzz_frame_reader(impl):
    if impl == "native":
        if _native is None or not hasattr(_native, "FrameReader"):
            pytest.skip("shim._native not built")
        cls = _native.FrameReader
    else:
        cls = _frame_py.FrameReader
    # At most one frame's buffer (the native reader allocates a declared
    # length <= MAX_DATA up front, as Go's ttrpc does; an oversize one is
    # discarded as it streams) plus a few times the input.
    fuzz("frames-" + impl, frame_stream, check_frames(cls), mem_factor=8,
         mem_extra=_frame_py.MAX_DATA + _frame_py.HEADER_SIZE)


# ---- ttrpc requests --------------------------------------------------------------------------

def test_fuzz_request_decoders():
    methods = task_methods()
    names = sorted(methods)
    corpus = []
    rng0 = random.Random(seed_for("requests-corpus"))
    for name in names:
        for _ in range(8):
            payload = random_message(rng0, methods[name]).encode()
            corpus.append(pb_ttrpc.Request(service="containerd.task.v2.Task", method=name,
                                           payload=payload,
                                           timeout_nano=rng0.choice((0, 10**9))).encode())

    def make(rng):
        base = rng.choice(corpus)
        if rng.random() < 0.5:
            return mutate(rng, base, corpus)
        # A good envelope around a mutated payload (the second decode).
        req = pb_ttrpc.Request.decode(base)
        req.payload = mutate(rng, req.payload, corpus)
        return req.encode()

    def check(data):
        try:
            req = pb_ttrpc.Request.decode(data)
        except ValueError:
            return
        cls = methods.get(req.method)
        if cls is None:
            return                  # Unimplemented: nothing decoded
        try:
            msg = cls.decode(req.payload)
        except ValueError:
            return
        assert isinstance(msg, cls)
        assert cls.decode(msg.encode()) == msg

    fuzz("requests", make, check)


# ---- runtime options -----------------------------------------------------------------------

OPTION_TYPES = {
    options.RUNC_OPTIONS: runc_pb.Options,
    options.LEGACY_CREATE: runctypes.CreateOptions,
    options.LEGACY_RUNC: runctypes.RuncOptions,
    options.RUNTIME_OPTIONS: runtimeoptions.Options,
    options.CHECKPOINT_OPTIONS: runc_pb.CheckpointOptions,
    options.LEGACY_CHECKPOINT: runctypes.CheckpointOptions,
}


def test_fuzz_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # a mutated config_path names nothing real
    rng0 = random.Random(seed_for("options-corpus"))
    corpus = []
    for url, cls in OPTION_TYPES.items():
        for _ in range(8):
            m = random_message(rng0, cls)
            if cls is runtimeoptions.Options:
                m.config_path = ""
                if hasattr(m, "config_body"):
                    m.config_body = toml_text(rng0).encode()
            corpus.append((url, m.encode()))
    urls = list(OPTION_TYPES) + ["", "x.Unknown", "type.googleapis.com/" + options.RUNC_OPTIONS]

    def make(rng):
        url, value = rng.choice(corpus)
        if rng.random() < 0.1:
            url = rng.choice(urls)
        return url, mutate(rng, value, [v for _u, v in corpus]) if rng.random() < 0.8 else value

    def check(case):
        url, value = case
        any_opts = wkt.Any(type_url=url, value=value)
        for fn in (options.decode, options.decode_checkpoint):
            try:
                out = fn(any_opts)
            except options.OptionsError:
                continue
            assert isinstance(out, dict)

    fuzz("options", make, check)


# ---- TOML --------------------------------------------------------------------------------

TOML_KEYS = ("BinaryName", "Root", "SystemdCgroup", "NoPivotRoot", "NoNewKeyring", "IoUid",
             "IoGid", "ShimCgroup", "CriuPath", "Other", "a-b", "_k", '"quoted"', "a.b", "é")
TOML_VALUES = ('"runc"', "'lit'", "true", "false", "0", "-12", "+5", "007", "1.5", "1e3",
               "[1, 2]", "{a = 1}", '"""multi"""', '"esc\\n\\t\\u00e9"', '"\\x"', "1979-05-27",
               "0x1f", "inf", "nan", '"unterminated', "''", "'''x'''", '""', '"a#b"',
               '"q\\"q"', "tru", "1_000", "- 1", '"\\\\"')


def toml_text(rng):
    lines = []
    for _ in range(rng.randint(0, 6)):
        r = rng.random()
        if r < 0.65:
            sep = rng.choice(("=", " = ", "= ", " ="))
            tail = rng.choice(("", "", " # c", "#c", " x", "  "))
            lines.append(rng.choice(TOML_KEYS) + sep + rng.choice(TOML_VALUES) + tail)
        else:
            lines.append(rng.choice(("", "# comment", "[table]", "[[arr]]", "key", "= 1",
                                     "  # indented", "\t", "a = 1 = 2")))
    text = rng.choice(("\n", "\r\n")).join(lines)
    if rng.random() < 0.2:
        text = mutate(rng, text.encode()).decode("utf-8", "replace")
    return text


def test_fuzz_toml():
    def make(rng):
        return toml_text(rng)

    def check(text):
        try:
            out = options.from_toml("", text.encode("utf-8", "surrogatepass"))
        except options.OptionsError:
            pass
        else:
            assert isinstance(out, dict)
        flat = options.flat_toml(text)
        if flat is None or tomllib is None:
            return
        try:
            full = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise AssertionError("flat_toml accepted what tomllib refuses: %r -> %r"
                                 % (text, flat))
        assert flat == full, (text, flat, full)

    fuzz("toml", make, check)


@pytest.mark.parametrize("text", ["# bell \x07\nRoot = \"/r\"", "Root = \"/r\"\x0bIoUid = 1",
                                  "Root = \"/r\"\rIoUid = 1"],
                         ids=["control-in-comment", "vertical-tab", "bare-cr"])
def test_flat_toml_refuses_what_toml_refuses(text):
    """Control characters (even in comments) and line ends other than LF or
    CRLF: str.splitlines() and str.strip() used to accept them."""
    if tomllib is not None:
        with pytest.raises(tomllib.TOMLDecodeError):
            tomllib.loads(text)
    assert options.flat_toml(text) is None


# ---- JSON ----------------------------------------------------------------------------------

JSON_SEEDS = ('{"args":["sh","-c","exit 3"],"cwd":"/","env":["A=b"],"user":{"uid":0,"gid":0},'
              '"terminal":false}', '[1,2.5,-3e2,true,false,null,"\\u00e9\\n"]', '{"a":{}}',
              '"x"', '0', '{"pids":[1,2,3]}', '{"ociVersion":"1.0.2","process":{"args":[]}}')


def same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_fuzz_json():
    corpus = [s.encode() for s in JSON_SEEDS]

    def make(rng):
        return mutate(rng, rng.choice(corpus), corpus).decode("utf-8", "replace") \
            if rng.random() < 0.8 else mutate(rng, rng.choice(corpus), corpus)

    def check(data):
        try:
            got = jsonlite.loads(data)
        except ValueError:
            got = ValueError
        if isinstance(data, bytes):
            return          # json.loads guesses UTF-16/32 for bytes; the shim reads UTF-8
        try:
            want = json.loads(data)
        except ValueError:
            want = ValueError
        assert (got is ValueError) == (want is ValueError), (data, got, want)
        if got is not ValueError:
            assert same(got, want), (data, got, want)

    fuzz("json", make, check)


@pytest.mark.parametrize("doc", ["[" * 100000, '{"a":' * 100000, "[" * 100000 + "]" * 100000],
                         ids=["open-arrays", "open-objects", "balanced-arrays"])
def test_json_deep_nesting_is_a_value_error(doc):
    """An Exec whose process spec is '[' * 100000 once got Unknown (a
    RecursionError) instead of 'invalid process spec'."""
    with pytest.raises(ValueError):
        jsonlite.loads(doc)


# Run in a fresh interpreter as the shim runs (python -I -S, the installed
# package on sys.path, json never imported): mutated JSON through
# jsonlite.loads; prints the first exception that is not a ValueError.
_SERVING_JSON_PROBE = r"""
import random, sys, time
sys.path.append(sys.argv[1])
from shim import jsonlite
rng = random.Random(int(sys.argv[2]))
seeds = [b'{"args":["true"],"cwd":"/"}', b'[1,2,{"a":null}]', b'"x"']
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end or n < 200:
    b = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b) + 1)
        op = rng.randrange(3)
        if op == 0: del b[i:i + rng.randint(1, 4)]
        elif op == 1: b[i:i] = bytes([rng.randrange(32, 127)])
        else: b[i:] = b""
    n += 1
    try:
        jsonlite.loads(bytes(b))
    except ValueError:
        pass
    except BaseException as e:
        print("%s %s on %r (%d cases)" % (type(e).__name__, e, bytes(b), n))
        sys.exit(1)
print("ok %d cases" % n)
"""


def test_fuzz_json_as_the_serving_shim_imports_it():
    """In the serving shim (json.decoder never imported) malformed JSON made
    CPython 3.11's _json fail with SystemError instead of ValueError: an Exec
    with the process spec '{"a": 1' got Unknown."""
    import subprocess
    import sys
    import shim
    site = os.path.dirname(os.path.dirname(shim.__file__))
    r = subprocess.run([sys.executable, "-I", "-S", "-c", _SERVING_JSON_PROBE, site,
                        str(seed_for("json-serving")), str(min(BUDGET, 5.0))],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr


def test_decode_error_is_the_documented_error():
    # What the server catches (ValueError) is what the codec raises.
    assert issubclass(DecodeError, ValueError)
    with pytest.raises(DecodeError):
        pb_ttrpc.Request.decode(b"\x0a\xff\xff\xff\xff\x0f")
