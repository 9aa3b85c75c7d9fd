"""The shim's own files in a container's bundle directory: one reader and
writer for each (the serving shim writes them, the `delete` action, a fresh
process run by containerd after every task, reads them back).

  address          unix://<socket path>: written by `start` (read by
                   containerd, by the serving shim to remove its socket on
                   exit, and by `delete` to remove a dead shim's socket)
  runtime          the runc binary name (Options.binary_name, may be empty)
  options.json     JSON object: the decoded containerd.runc.v1.Options
                   fields by their proto names, e.g. {"binary_name": "runc",
                   "root": "", "systemd_cgroup": false, "criu_path": "", ...}
  .pyshim-deleted  the serving shim ran `runc delete` and unmounted the
                   rootfs: `delete` need not start runc again
  config.json      the OCI spec (containerd's; read here by `start`)

Imports only `os` at load time (the serving process loads this module).
"""
import os

ADDRESS_FILE = "address"
RUNTIME_FILE = "runtime"
OPTIONS_FILE = "options.json"
CONFIG_FILE = "config.json"
DELETED_MARK = ".pyshim-deleted"
UNIX_SCHEME = "unix://"


def go_err(op, path, e):
    """Go-style `open /x: no such file or directory` from an OSError."""
    s = e.strerror or str(e)
    return "%s %s: %s" % (op, path, s[:1].lower() + s[1:])


def write_all(fd, data):
    """os.write until all of data is written (a file, a pipe, stdout)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def _write_atomic(path, data):
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp%d" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# ---- address ----------------------------------------------------------------

def write_address(bundle, address):
    """<bundle>/address, atomically (.address O_EXCL, then rename).

    Not O_SYNC (the Go shim's is): the address names the socket of a live
    process, which no machine crash leaves behind, so there is nothing to
    make durable; where the bundle is on disk, O_SYNC made every `start`
    wait for a journal commit (20-180 ms beside an fsync-heavy writer)."""
    path = os.path.join(bundle, ADDRESS_FILE)
    tmp = os.path.join(bundle, "." + ADDRESS_FILE)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:
        os.unlink(tmp)       # left by a start that died half-way
        fd = os.open(tmp, flags, 0o666)
    try:
        write_all(fd, address.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_address(bundle):
    """The address `start` wrote, or None if there is no readable file."""
    try:
        with open(os.path.join(bundle, ADDRESS_FILE)) as f:
            return f.read().strip()
    except OSError:
        return None


def read_socket_path(bundle):
    """The unix socket path of the address file, or None (no file, or an
    address that is not unix://)."""
    address = read_address(bundle)
    if address and address.startswith(UNIX_SCHEME):
        return address[len(UNIX_SCHEME):]
    return None


# ---- config.json ------------------------------------------------------------

def read_spec(bundle):
    """config.json decoded; RuntimeError with Go's text when it cannot be
    opened or parsed."""
    from shim import jsonlite
    try:
        with open(os.path.join(bundle, CONFIG_FILE), "rb") as f:
            return jsonlite.loads(f.read())
    except OSError as e:
        raise RuntimeError(go_err("open", CONFIG_FILE, e))
    except ValueError as e:
        raise RuntimeError("%s: %s" % (CONFIG_FILE, e))


# ---- runtime options ----------------------------------------------------------

def write_bundle_options(bundle, opts):
    """Persist runtime options for the `delete` action: `<bundle>/runtime`
    (binary name, possibly empty = runc) and `<bundle>/options.json` (the
    dict as JSON; keys are the Options field names: binary_name, root,
    systemd_cgroup, criu_path, ...)."""
    from shim import jsonlite
    opts = dict(opts or {})
    _write_atomic(os.path.join(bundle, OPTIONS_FILE), jsonlite.dumps(opts).encode())
    _write_atomic(os.path.join(bundle, RUNTIME_FILE),
                  (opts.get("binary_name") or "").encode())


def read_bundle_options(bundle):
    """The dict write_bundle_options() stored ({} if there is none)."""
    try:
        with open(os.path.join(bundle, OPTIONS_FILE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    if not data.strip():
        return {}
    from shim import jsonlite
    v = jsonlite.loads(data)
    if not isinstance(v, dict):
        raise ValueError("%s/%s: not a JSON object" % (bundle, OPTIONS_FILE))
    return v


def read_runtime(bundle):
    """`<bundle>/runtime` (the runc binary; "" means runc). Raises
    FileNotFoundError if the file is missing (delete action: exit 1)."""
    with open(os.path.join(bundle, RUNTIME_FILE), "rb") as f:
        return f.read().decode("utf-8", "surrogateescape").strip()


# ---- the deleted mark -----------------------------------------------------------

def mark_deleted(bundle):
    """The serving shim ran `runc delete` and unmounted the rootfs: tell the
    `delete` action (which containerd runs after every shim disconnect) that
    it need not start runc again."""
    try:
        os.close(os.open(os.path.join(bundle, DELETED_MARK),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError:
        pass


def clear_deleted_mark(bundle):
    try:
        os.unlink(os.path.join(bundle, DELETED_MARK))
    except OSError:
        pass


def is_marked_deleted(bundle):
    return os.path.exists(os.path.join(bundle, DELETED_MARK))
