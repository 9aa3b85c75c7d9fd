"""Blocking runc for the short-lived `delete` action: no loop, no reaper."""
import os

from shim import _native
from shim.runc import LOG_FILE, SIGKILL, devnull, runc_env
from shim.runc_errors import RuncError, error_message, exec_error, log_size, read_log_error


def run_sync(argv, timeout=4.0):
    """Run argv (no loop, no reaper) with stdin /dev/null and stdout+stderr
    captured; SIGKILL it after `timeout` seconds. Returns (status, output);
    status is the exit code, 128+N for a signal, or raises RuncError if it
    could not be started."""
    import time
    from shim.reaper import exit_code
    null = devnull(os.O_RDONLY)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _native.spawn(argv[0], argv, runc_env(), [null, w, w], pdeathsig=SIGKILL)
        except OSError as e:
            raise exec_error(argv[0], e) from None
    finally:
        os.close(null)
        os.close(w)
    # Read until EOF (runc exited, or its children closed the pipe too),
    # waiting in poll(2) rather than polling waitpid, then reap.
    from select import poll, POLLIN
    p = poll()
    p.register(r, POLLIN)
    chunks = []
    deadline = time.monotonic() + timeout
    status = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not p.poll(int(left * 1000) + 1):
                if time.monotonic() < deadline:
                    continue
                os.kill(pid, SIGKILL)
                break
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
        # Bounded: a runc that closed its output but lingers is killed.
        while status is None:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                status = exit_code(st)
            elif time.monotonic() > deadline:
                os.kill(pid, SIGKILL)
                status = exit_code(os.waitpid(pid, 0)[1])
            else:
                time.sleep(0.001)
    finally:
        os.close(r)
    return status, b"".join(chunks)


def delete_sync(runc, id, bundle, force=True, timeout=4.0):
    """Blocking `runc delete [--force] id` for the delete action. Raises
    RuncError (not for "does not exist")."""
    args = ["delete"] + (["--force"] if force else []) + [id]
    argv = runc.command(bundle, *args)
    log_path = os.path.join(bundle, LOG_FILE)
    offset = log_size(log_path)
    status, output = run_sync(argv, timeout)
    if status != 0:
        msg = error_message(read_log_error(log_path, offset), output, status)
        if "does not exist" in msg:
            return
        raise RuncError(msg, status, output)
