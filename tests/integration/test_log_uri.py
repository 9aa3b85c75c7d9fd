"""Log URIs (spec io.md §5, §6): file:// appends both streams to one file;
binary:// and binary-v2:// hand them to a logger process the shim spawns
(fds 3/4, ready on fd 5, environment of only CONTAINER_ID and
CONTAINER_NAMESPACE). Checked on pyshim and, as the reference, on the Go
shim where the two must agree."""
import json
import os
import sys
import time

import pytest

from shim import ttrpc_client
from shim.pb import task as pb
from shim.pb import wkt
from support.containerd import PY_RUNTIME, pid_alive, task_service, wait_pids_gone
from support.helpers import address_of, wait_file

TASK = task_service()

pytestmark = pytest.mark.integration

# The logger records what it was given, signals ready as told (mode=byte:
# one byte on fd 5; close: EOF on fd 5; none: exit without a word; hold:
# never), then copies fd 3 and fd 4 to out/err files until EOF and writes
# `done`. SIGTERM is ignored so that the test sees the whole output.
LOGGER = r'''#!%(python)s -IS
import os, signal, sys, json
signal.signal(signal.SIGTERM, signal.SIG_IGN)
args = sys.argv[1:]
opts = {}
i = 0
while i < len(args):
    opts[args[i]] = args[i + 1] if i + 1 < len(args) else ""
    i += 2
d = opts["dir"]
fds = []
for fd in range(64):
    try:
        os.fstat(fd)
        fds.append(fd)
    except OSError:
        pass
# /proc/self/environ: the environment as exec'd (Python adds LC_CTYPE).
with open("/proc/self/environ", "rb") as f:
    env = dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if e)
meta = {"argv": sys.argv, "env": env, "cwd": os.getcwd(), "fds": fds,
        "pid": os.getpid()}
with open(os.path.join(d, "meta.json.tmp"), "w") as f:
    json.dump(meta, f)
os.rename(os.path.join(d, "meta.json.tmp"), os.path.join(d, "meta.json"))
mode = opts.get("mode", "byte")
if mode == "byte":
    os.write(5, b"R")
    os.close(5)
elif mode == "close":
    os.close(5)
elif mode == "none":
    sys.exit(3)
elif mode == "hold":
    import time
    time.sleep(3600)
import select
outs = {3: open(os.path.join(d, "out"), "wb"), 4: open(os.path.join(d, "err"), "wb")}
while outs:
    r, _, _ = select.select(list(outs), [], [])
    for fd in r:
        b = os.read(fd, 65536)
        if b:
            outs[fd].write(b)
        else:
            outs.pop(fd).close()
open(os.path.join(d, "done"), "w").close()
'''


@pytest.fixture
def logger(tmp_path):
    path = tmp_path / "logger"
    path.write_text(LOGGER % {"python": sys.executable})
    path.chmod(0o755)
    return str(path)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_file_uri_gets_both_streams(ctr_run, runtime, tmp_path):
    log = tmp_path / "sub" / "dir" / "c.log"
    # The shim copies the two streams independently, so they interleave at
    # any byte: pauses keep each stream's burst whole.
    r = ctr_run("sh", "-c", "echo one; sleep 0.2; echo two >&2; sleep 0.2; seq 1 5000; "
                "sleep 0.2; echo three >&2",
                runtime=runtime, args=["--log-uri", "file://%s" % log])
    assert r.returncode == 0, r.stderr
    # The Go shim publishes the exit without waiting for its copy to drain:
    # give the last bytes a moment to land.
    deadline = time.monotonic() + 5
    while True:
        data = read(str(log)).decode()
        if data.count("\n") >= 5003 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert oct(os.stat(str(log)).st_mode & 0o777) == "0o644"
    # Both streams are appended in arrival order: check each stream's part.
    lines = data.splitlines()
    err = [ln for ln in lines if ln in ("two", "three")]
    out = [ln for ln in lines if ln not in ("two", "three")]
    want_err, want_out = ["two", "three"], ["one"] + [str(i) for i in range(1, 5001)]
    if runtime != PY_RUNTIME:
        # The Go shim's copy can still be running when `ctr run --rm` deletes
        # the task, and then loses the tail (seen under load: no "three"):
        # what it wrote must be an exact prefix. pyshim must lose nothing.
        assert err == want_err[:len(err)] and out == want_out[:len(out)], data[-200:]
        return
    assert err == want_err
    assert out == want_out


def test_binary_logger_gets_exact_output_env_and_fds(ctr_run, runtime, containerd, logger,
                                                     tmp_path):
    big = 3 * 1024 * 1024
    r = ctr_run("sh", "-c", "head -c %d /dev/zero | tr '\\0' x; echo err-line >&2" % big,
                runtime=runtime, args=["--log-uri", "binary://%s?dir=%s" % (logger, tmp_path)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    wait_file(str(tmp_path / "done"))
    assert read(str(tmp_path / "out")) == b"x" * big
    assert read(str(tmp_path / "err")) == b"err-line\n"
    with open(str(tmp_path / "meta.json")) as f:
        meta = json.load(f)
    assert meta["argv"][1:] == ["dir", str(tmp_path)]
    assert meta["env"] == {"CONTAINER_ID": r.id, "CONTAINER_NAMESPACE": containerd.namespace}
    assert meta["fds"] == [0, 1, 2, 3, 4, 5]
    assert meta["cwd"] == containerd.bundle(r.id)
    # The logger is ended at delete (SIGTERM, which it ignores here; it exits
    # on EOF by itself).
    assert not wait_pids_gone([meta["pid"]], 15)


@pytest.mark.parametrize("mode", ["close", "byte"])
def test_binary_logger_ready_by_byte_or_eof(ctr_run, logger, tmp_path, mode):
    r = ctr_run("echo", "hello", runtime=PY_RUNTIME,
                args=["--log-uri", "binary://%s?dir=%s&mode=%s" % (logger, tmp_path, mode)])
    assert r.returncode == 0, r.stderr
    wait_file(str(tmp_path / "done"))
    assert read(str(tmp_path / "out")) == b"hello\n"
    with open(str(tmp_path / "meta.json")) as f:
        # Query pairs become argv in URI order.
        assert json.load(f)["argv"][1:] == ["dir", str(tmp_path), "mode", mode]


def test_binary_v2_needs_a_ready_byte(ctr_run, containerd, logger, tmp_path):
    r = ctr_run("echo", "hello", runtime=PY_RUNTIME,
                args=["--log-uri", "binary-v2://%s?dir=%s&mode=close" % (logger, tmp_path)])
    assert r.returncode != 0
    assert "closed its ready pipe without signalling ready" in r.stderr
    assert containerd.tasks().get(r.id) is None
    d2 = tmp_path / "v2ok"
    d2.mkdir()
    r = ctr_run("echo", "v2", runtime=PY_RUNTIME,
                args=["--log-uri", "binary-v2://%s?dir=%s&mode=byte" % (logger, d2)])
    assert r.returncode == 0, r.stderr
    wait_file(str(d2 / "done"))
    assert read(str(d2 / "out")) == b"v2\n"


def test_binary_logger_that_fails_errors_create(ctr_run, containerd, logger, tmp_path):
    r = ctr_run("echo", "x", runtime=PY_RUNTIME,
                args=["--log-uri", "binary://%s?dir=%s&mode=none" % (logger, tmp_path)])
    # A logger that exits without a word closed fd 5: for binary:// that is
    # ready (as in Go); the container's output then has no reader.
    wait_file(str(tmp_path / "meta.json"))
    with open(str(tmp_path / "meta.json")) as f:
        pid = json.load(f)["pid"]
    assert not wait_pids_gone([pid], 10)
    assert containerd.tasks().get(r.id) is None


def test_missing_logger_binary_is_a_clear_error(ctr_run, containerd, tmp_path):
    r = ctr_run("echo", "x", runtime=PY_RUNTIME,
                args=["--log-uri", "binary://%s/nope" % tmp_path])
    assert r.returncode != 0
    assert "failed to start binary logger" in r.stderr
    assert containerd.tasks().get(r.id) is None


def test_binary_logger_for_exec_and_tty(containerd, image, cid, logger, tmp_path):
    containerd.ctr("run", "-d", "--runtime", PY_RUNTIME, image, cid, "sleep", "60")
    d1 = tmp_path / "exec"
    d1.mkdir()
    r = containerd.ctr("task", "exec", "--exec-id", "e1", "--log-uri",
                       "binary://%s?dir=%s" % (logger, d1), cid,
                       "sh", "-c", "echo from-exec; echo e >&2; exit 4", check=False)
    assert r.returncode == 4, r.stderr
    wait_file(str(d1 / "done"))
    assert read(str(d1 / "out")) == b"from-exec\n"
    assert read(str(d1 / "err")) == b"e\n"
    with open(str(d1 / "meta.json")) as f:
        assert json.load(f)["env"]["CONTAINER_ID"] == cid
    # ctr refuses --log-uri with a tty: send the Exec directly.
    d2 = tmp_path / "tty"
    d2.mkdir()
    with open(os.path.join(containerd.bundle(cid), "config.json")) as f:
        proc = json.load(f)["process"]
    proc["args"] = ["sh", "-c", "echo tty-out; echo tty-err >&2"]
    proc["terminal"] = True
    spec = wkt.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                   value=json.dumps(proc).encode())
    uri = "binary://%s?dir=%s" % (logger, d2)
    with ttrpc_client.SyncClient(address_of(containerd, cid), timeout=30) as cl:
        cl.call(TASK, "Exec", pb.ExecProcessRequest(id=cid, exec_id="e2", spec=spec,
                                                    terminal=True, stdout=uri, stderr=uri))
        sid = cl.send_raw_request(TASK, "Wait", pb.WaitRequest(id=cid, exec_id="e2").encode())
        cl.call(TASK, "Start", pb.StartRequest(id=cid, exec_id="e2"), pb.StartResponse)
        assert pb.WaitResponse.decode(cl.recv_response(sid).payload).exit_status == 0
        cl.call(TASK, "Delete", pb.DeleteRequest(id=cid, exec_id="e2"), pb.DeleteResponse)
    wait_file(str(d2 / "done"))
    # A terminal merges both streams into the logger's stdout.
    assert read(str(d2 / "out")) == b"tty-out\r\ntty-err\r\n"
    assert read(str(d2 / "err")) == b""


def test_logger_that_never_signals_fails_create_and_is_ended(ctr_run, logger, tmp_path):
    """Create waits LOGGER_READY_TIMEOUT (30 s) at most, then fails (Go
    waits forever); the logger gets SIGTERM, which it ignores, and SIGKILL
    12 s later: the exiting shim waits for that (Go would leave it behind)."""
    t0 = time.monotonic()
    r = ctr_run("echo", "x", runtime=PY_RUNTIME, timeout=120,
                args=["--log-uri", "binary://%s?dir=%s&mode=hold" % (logger, tmp_path)])
    waited = time.monotonic() - t0
    assert r.returncode != 0
    assert "did not signal ready within 30s" in r.stderr
    assert 25 < waited < 60
    with open(str(tmp_path / "meta.json")) as f:
        pid = json.load(f)["pid"]
    assert not wait_pids_gone([pid], 20), "logger %d still alive" % pid
    assert not pid_alive(pid)
