"""FUSE rootfs mounts: a Mount of type `fuse.<subtype>` or `fuse3.<subtype>`
(the fuse-overlayfs snapshotter's `fuse3.fuse-overlayfs`, for one) is made
by the mount helper, as containerd's mount package does:

    mount.fuse3 <source> <target> -o <option> ... -t <subtype>

    argv = helper_argv(m.type, m.source, m.options, target)
    await run(reaper, argv)                                   # MountError

The helper starts the FUSE daemon and returns once the mount is there; the
daemon outlives it (a subreaper's orphan, the shim's until the mount goes:
unmounting it, as any mount, with umount2, ends it). Its pid is claimed
from the Reaper at spawn, so the ECHILD containerd retries its helper on
cannot happen here.
"""
import os

from shim import _native
from shim.capture import OutputCapture
from shim.mount import MountError
from shim.runc import devnull, runc_env         # the same child set-up as runc's
from shim.runc_errors import exec_error

EINVAL = 22
SIGKILL = 9

# type prefix -> helper binary (found on PATH, as containerd's exec does).
HELPERS = (("fuse.", "mount.fuse"), ("fuse3.", "mount.fuse3"))


def helper_argv(mtype, source, options, target):
    """The helper's argv for a FUSE mount (mount.is_fuse(mtype))."""
    for prefix, helper in HELPERS:
        if mtype.startswith(prefix):
            argv = [helper, source, target]
            for o in options:
                argv += ["-o", o]
            return argv + ["-t", mtype[len(prefix):]]
    raise ValueError("not a FUSE mount type: %r" % mtype)


def _failed(argv, output, why):
    # containerd's words: mount helper [<helper> [<args>]] failed: "<output>": <why>
    return MountError(EINVAL, "mount helper [%s [%s]] failed: %s: %s" % (
        argv[0], " ".join(argv[1:]), go_quote(output), why))


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text):
    """text as Go's %q writes it: in double quotes, printable characters
    as they are, the others escaped."""
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append("\\x%02x" % ord(ch))
        elif ord(ch) < 0x10000:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append("\\U%08x" % ord(ch))
    out.append('"')
    return "".join(out)


async def run(reaper, argv):
    """Run the helper and await its exit; MountError if it failed."""
    out = OutputCapture(reaper.loop)
    fd0 = devnull(os.O_RDONLY)
    try:
        # PDEATHSIG reaches the helper only: the daemon it forks keeps
        # serving the container if the shim dies.
        pid = _native.spawn(argv[0], argv, runc_env(), [fd0, out.w, out.w], pdeathsig=SIGKILL)
        exited = reaper.watch(pid)
    except OSError as e:
        out.close()
        raise _failed(argv, "", exec_error(argv[0], e).message) from None
    except BaseException:
        out.close()
        raise
    finally:
        os.close(fd0)
    out.start()
    try:
        status = await exited
    finally:
        output = out.finish().decode("utf-8", "replace")
    if status != 0:
        raise _failed(argv, output, "exit status %d" % status)
