"""Runtime options: every type containerd may send, as one plain dict.

Keys are those of `containerd.runc.v1.Options` (spec runc.md §3):
no_pivot_root, no_new_keyring, shim_cgroup, io_uid, io_gid, binary_name,
root, criu_path, systemd_cgroup, criu_image_path, criu_work_path.

Accepted Any types:
  containerd.runc.v1.Options            io.containerd.runc.v2 / ctr
  containerd.linux.runc.CreateOptions   legacy io.containerd.runc.v1 clients
  containerd.linux.runc.RuncOptions     legacy runtime (binary) options
  runtimeoptions.v1.Options             what containerd's CRI sends to every
                                        runtime not named io.containerd.runc.v2:
                                        ConfigPath names a TOML file holding the
                                        runc options (BinaryName, Root, ...)
"""

RUNC_OPTIONS = "containerd.runc.v1.Options"
LEGACY_CREATE = "containerd.linux.runc.CreateOptions"
LEGACY_RUNC = "containerd.linux.runc.RuncOptions"
RUNTIME_OPTIONS = "runtimeoptions.v1.Options"
TYPES = (RUNC_OPTIONS, LEGACY_CREATE, LEGACY_RUNC, RUNTIME_OPTIONS)

FIELDS = ("no_pivot_root", "no_new_keyring", "shim_cgroup", "io_uid", "io_gid",
          "binary_name", "root", "criu_path", "systemd_cgroup", "criu_image_path",
          "criu_work_path")

# TOML keys (CRI's runtime options file uses the Go field names).
_TOML_KEYS = {
    "NoPivotRoot": "no_pivot_root", "NoNewKeyring": "no_new_keyring",
    "ShimCgroup": "shim_cgroup", "IoUid": "io_uid", "IoGid": "io_gid",
    "BinaryName": "binary_name", "Root": "root", "CriuPath": "criu_path",
    "SystemdCgroup": "systemd_cgroup", "CriuImagePath": "criu_image_path",
    "CriuWorkPath": "criu_work_path",
    # pyshim's own: false = this runtime's serving shims are fresh
    # interpreters, never forks of the template process (shim/template.py)
    "PyshimTemplate": "template",
}


class OptionsError(ValueError):
    pass


def _fields(msg, names):
    return {n: getattr(msg, n) for n in names}


def decode(any_opts):
    """Options Any (or None) -> dict; OptionsError for an unknown type or
    bad contents. An Any with an empty type_url means "no options"."""
    if any_opts is None or not any_opts.type_url:
        return {}
    url = any_opts.type_url
    if url.startswith("type.googleapis.com/"):
        url = url[len("type.googleapis.com/"):]
    value = any_opts.value or b""
    from shim.pb import DecodeError
    try:
        if url == RUNC_OPTIONS:
            from shim.pb import runc as runc_pb
            return _fields(runc_pb.Options.decode(value), FIELDS)
        if url == LEGACY_CREATE:
            from shim.pb import runctypes
            o = runctypes.CreateOptions.decode(value)
            return _fields(o, ("no_pivot_root", "no_new_keyring", "shim_cgroup", "io_uid",
                               "io_gid", "criu_image_path", "criu_work_path"))
        if url == LEGACY_RUNC:
            from shim.pb import runctypes
            o = runctypes.RuncOptions.decode(value)
            return {"binary_name": o.runtime, "root": o.runtime_root,
                    "criu_path": o.criu_path, "systemd_cgroup": o.systemd_cgroup}
        if url == RUNTIME_OPTIONS:
            from shim.pb import runtimeoptions
            o = runtimeoptions.Options.decode(value)
            return from_toml(o.config_path, getattr(o, "config_body", b""))
    except DecodeError as e:
        raise OptionsError("invalid runtime options %s: %s" % (url, e))
    raise OptionsError("unsupported runtime options type %s" % url)


CHECKPOINT_OPTIONS = "containerd.runc.v1.CheckpointOptions"
LEGACY_CHECKPOINT = "containerd.linux.runc.CheckpointOptions"
CHECKPOINT_FIELDS = ("exit", "open_tcp", "external_unix_sockets", "terminal", "file_locks",
                     "empty_namespaces", "cgroups_mode", "image_path", "work_path")


def decode_checkpoint(any_opts):
    """Checkpoint options Any -> dict with CHECKPOINT_FIELDS. ctr and the Go
    client send containerd.runc.v1.CheckpointOptions to io.containerd.runc.*
    runtimes and the legacy containerd.linux.runc.CheckpointOptions (same
    fields) to every other runtime name, pyshim's included."""
    from shim.pb import DecodeError
    from shim.pb import runc as runc_pb
    url = any_opts.type_url if any_opts is not None else ""
    if url.startswith("type.googleapis.com/"):
        url = url[len("type.googleapis.com/"):]
    try:
        if not url:
            msg = runc_pb.CheckpointOptions()       # all defaults
        elif url == CHECKPOINT_OPTIONS:
            msg = runc_pb.CheckpointOptions.decode(any_opts.value or b"")
        elif url == LEGACY_CHECKPOINT:
            from shim.pb import runctypes
            msg = runctypes.CheckpointOptions.decode(any_opts.value or b"")
        else:
            raise OptionsError("unsupported checkpoint options type %s" % url)
    except DecodeError as e:
        raise OptionsError("invalid checkpoint options %s: %s" % (url, e))
    d = _fields(msg, CHECKPOINT_FIELDS)
    d["empty_namespaces"] = list(d["empty_namespaces"])
    return d


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TOML_CONTROL = frozenset([chr(c) for c in range(32) if c not in (9, 10)] + ["\x7f"])


def _flat_value(v):
    """(value, rest of the line) of one TOML scalar at the start of v, or
    None for anything but a bool, a plain decimal int or a one-line string."""
    if v.startswith('"'):
        out = []
        i = 1
        while i < len(v):
            c = v[i]
            if c == "\\":
                e = _ESCAPES.get(v[i + 1:i + 2])
                if e is None:
                    return None             # \uXXXX and friends: tomllib
                out.append(e)
                i += 2
                continue
            if c == '"':
                if not out and v[i + 1:i + 2] == '"':
                    return None             # \"\"\" multi-line string
                return "".join(out), v[i + 1:]
            out.append(c)
            i += 1
        return None
    if v.startswith("'"):
        j = v.find("'", 1)
        if j < 0 or j == 1 and v[2:3] == "'":
            return None
        return v[1:j], v[j + 1:]
    tok, hashmark, comment = v.partition("#")
    rest = hashmark + comment
    tok = tok.strip(" \t")
    if tok == "true":
        return True, rest
    if tok == "false":
        return False, rest
    digits = tok[1:] if tok[:1] in "+-" else tok
    if digits.isdigit() and digits.isascii() and (digits == "0" or digits[0] != "0"):
        return int(tok), rest
    return None


def flat_toml(text):
    """The top-level `key = value` pairs of a flat TOML document (bare keys;
    bools, decimal ints, basic and literal one-line strings; comments), or
    None if it uses anything else: tables, arrays, dates, floats, quoted or
    dotted keys, multi-line strings, duplicates (tomllib judges those)."""
    # TOML: lines end at LF or CRLF only, whitespace is space and tab, and
    # no other control character may appear (not even in comments).
    text = text.replace("\r\n", "\n")
    if not _TOML_CONTROL.isdisjoint(text):
        return None
    out = {}
    for line in text.split("\n"):
        line = line.strip(" \t")
        if not line or line[0] == "#":
            continue
        key, eq, v = line.partition("=")
        key = key.strip(" \t")
        if not eq or not key or not _BARE_KEY.issuperset(key) or key in out:
            return None
        got = _flat_value(v.strip(" \t"))
        if got is None:
            return None
        value, rest = got
        rest = rest.strip(" \t")
        if rest and rest[0] != "#":
            return None
        out[key] = value
    return out


def from_toml(path, body=b""):
    """The runc options in CRI's runtime options file (TOML)."""
    if not path and not body:
        return {}
    try:
        if not body:
            with open(path, "rb") as f:
                body = f.read()
        text = body.decode("utf-8")
    except (OSError, ValueError) as e:
        raise OptionsError("runtime options config %s: %s" % (path or "<body>", e))
    # The usual file is flat `Key = value` lines: read those without tomllib,
    # which would pull re, datetime and more into every pod's shim (~1 MB).
    data = flat_toml(text)
    if data is None:
        try:
            import tomllib          # Python 3.11+
        except ImportError:
            raise OptionsError("runtime options config %s: this TOML needs Python >= 3.11"
                               % (path or "<body>"))
        try:
            data = tomllib.loads(text)
        except ValueError as e:
            raise OptionsError("runtime options config %s: %s" % (path or "<body>", e))
    out = {}
    for key, value in data.items():
        name = _TOML_KEYS.get(key, key if key in FIELDS else None)
        if name is None:
            continue           # other runtimes' keys: not ours to judge
        want = bool if name in ("no_pivot_root", "no_new_keyring", "systemd_cgroup",
                                "template") \
            else int if name in ("io_uid", "io_gid") else str
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise OptionsError("runtime options config %s: %s must be %s"
                               % (path or "<body>", key, want.__name__))
        out[name] = value
    return out
