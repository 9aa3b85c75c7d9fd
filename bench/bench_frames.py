"""ttrpc frame throughput: native (shim._native) vs pure Python (shim._frame_py).

Run against the installed package (from the repo root):
    pytest bench/bench_frames.py
Each round encodes and decodes: encode_frame() then FrameReader.feed().
Cases: one typical 60-byte request frame (50 bytes of data), one 4 KiB frame
(4096 bytes of data), each encoded and fed one at a time (100 per round),
and a batch of 100 small frames (50 bytes of data each) encoded, joined and
fed at once. After the run a table prints frames/s
per implementation and the native/pure ratio (from the fastest round,
the least disturbed by other load on the machine).
"""
import sys

import pytest

from shim import _frame_py as pure

try:
    from shim import _native as native

    native.FrameReader  # noqa: B018
    NATIVE_ERROR = None
except Exception as e:
    native = None
    NATIVE_ERROR = "%s: %s" % (type(e).__name__, e)

IMPLS = [
    pytest.param(pure, id="pure"),
    pytest.param(native, id="native", marks=pytest.mark.skipif(
        native is None, reason="shim._native not importable: %s" % NATIVE_ERROR)),
]

PAYLOAD_60 = bytes(range(50))            # + 10-byte header = 60-byte frame
PAYLOAD_4K = bytes(range(256)) * 16      # 4096 bytes of data
BATCH = 100
INNER = 100

_results = {}  # (case, impl name) -> frames per second


def _single(impl, data):
    # 100 frames one at a time per round, to amortize the timer overhead
    encode, feed = impl.encode_frame, impl.FrameReader().feed
    loop = range(INNER)

    def run():
        for _ in loop:
            feed(encode(1, 1, 0, data))
    return run, INNER


def _batch(impl):
    encode, reader = impl.encode_frame, impl.FrameReader()
    ids = range(1, 2 * BATCH, 2)
    data = PAYLOAD_60

    def run():
        out = reader.feed(b"".join([encode(i, 1, 0, data) for i in ids]))
        assert len(out) == BATCH
    return run, BATCH


CASES = {
    "60B request": lambda impl: _single(impl, PAYLOAD_60),
    "4KiB frame": lambda impl: _single(impl, PAYLOAD_4K),
    "100 x 60B batch": _batch,
}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    if not _results:
        return
    pm = request.config.pluginmanager
    tr, capman = pm.get_plugin("terminalreporter"), pm.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled():
        _print_table(tr.write_line if tr is not None else print)


def _print_table(write):
    write("")
    write("ttrpc frames encoded+decoded per second (fastest round; least disturbed by load)")
    write("%-18s %14s %14s %8s" % ("case", "native", "pure", "ratio"))
    for case in CASES:
        n = _results.get((case, "native"))
        p = _results.get((case, "pure"))
        write("%-18s %14s %14s %8s" % (
            case,
            "%.0f" % n if n else "-",
            "%.0f" % p if p else "-",
            "%.1fx" % (n / p) if n and p else "-"))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_frames(benchmark, impl, case):
    run, frames = CASES[case](impl)
    name = "native" if impl is native else "pure"
    benchmark.group = case
    benchmark.extra_info["frames_per_round"] = frames
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        _results[(case, name)] = frames / stats.stats.min


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"] + sys.argv[1:]))
