"""Command line of containerd-shim-pyshim-v1 (spec shim-binary.md).

    containerd-shim-pyshim-v1 [flags] start     print the socket address
    containerd-shim-pyshim-v1 [flags] delete    clean up, print a DeleteResponse
    containerd-shim-pyshim-v1 [flags]           serve (fd 3 or -socket)
    containerd-shim-pyshim-v1 -v | -info

Flags use Go `flag` syntax: one or two dashes, `-flag value` or
`-flag=value`, bool flags without a value, flags before the action word;
unknown flags are ignored. The actions are in shim.manager, serving in
shim.serve. Only small modules (os, sys, the shim's bundle, socket and
manager helpers) are imported at load time: the serving process pays for
every module (see docs/design.md).
"""
import os
import sys

from shim.bundle import write_all
from shim import manager
from shim.manager import BINARY, RUNTIME, version_text
from shim.sockets import listen_unix

ACTIONS = ("start", "delete")

STRING_FLAGS = ("namespace", "id", "address", "publish-binary", "bundle", "socket",
                "debug-socket")
BOOL_FLAGS = ("debug", "v", "version", "info", "h", "help")

USAGE = """Usage of %s:
  -address string       grpc address back to containerd
  -bundle string        path to the bundle if not workdir
  -debug                enable debug output in logs
  -debug-socket string  (ignored)
  -id string            id of the task
  -info                 print RuntimeInfo (protobuf) and exit
  -namespace string     namespace that owns the shim
  -publish-binary string  path to publish binary (ignored)
  -socket string        socket path to serve
  -v, -version          show the shim version and exit
Actions: start, delete; none = serve.
"""


class FlagError(Exception):
    pass


class Flags:
    """Parsed command line; attribute names are the flag names with `-`
    replaced by `_`, plus `action` ("" = serve) and `args` (positionals)."""
    __slots__ = ("namespace", "id", "address", "publish_binary", "bundle", "socket",
                 "debug_socket", "debug", "v", "version", "info", "h", "help",
                 "action", "args", "unknown")

    def __init__(self):
        for n in STRING_FLAGS:
            setattr(self, n.replace("-", "_"), "")
        for n in BOOL_FLAGS:
            setattr(self, n, False)
        self.action = ""
        self.args = []
        self.unknown = []

    def __repr__(self):
        return "Flags(%s)" % ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.__slots__)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_flags(argv):
    """Go `flag` package rules. An unknown `-name=value` is skipped; an
    unknown `-name` is a bool unless the next word is neither a flag nor an
    action word (then it is taken as its value)."""
    f = Flags()
    i = 0
    n = len(argv)
    while i < n:
        a = argv[i]
        if len(a) < 2 or a[0] != "-":
            break
        if a == "--":
            i += 1
            break
        name = a[2:] if a[1] == "-" else a[1:]
        if not name or name[0] in "-=":
            raise FlagError("bad flag syntax: %s" % a)
        i += 1
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in BOOL_FLAGS:
            if value is None:
                v = True
            elif value in _TRUE:
                v = True
            elif value in _FALSE:
                v = False
            else:
                raise FlagError('invalid boolean value "%s" for -%s' % (value, name))
            setattr(f, name, v)
        elif name in STRING_FLAGS:
            if value is None:
                if i >= n:
                    raise FlagError("flag needs an argument: -%s" % name)
                value = argv[i]
                i += 1
            setattr(f, name.replace("-", "_"), value)
        else:
            if value is None and i < n and not argv[i].startswith("-") \
                    and argv[i] not in ACTIONS:
                value = argv[i]
                i += 1
            f.unknown.append((name, value))
    f.args = list(argv[i:])
    f.action = f.args[0] if f.args else ""
    return f


def do_serve(flags, argv=None, self_path=None):
    if not sys.flags.no_site and self_path and argv is not None \
            and os.path.isfile(self_path) and not self_path.endswith(".py"):
        # Started with `site` (e.g. by hand through the #! line): serve from
        # a lean `-I -S` interpreter instead (fds, incl. 3, are inherited).
        exe = sys.executable
        os.execv(exe, [exe, "-I", "-S", os.path.abspath(self_path)] + list(argv))
    listen_fd = 3
    if flags.socket:
        s = listen_unix(flags.socket)
        if s is None:
            raise RuntimeError("socket %s is in use" % flags.socket)
        listen_fd = s.detach()
    else:
        try:
            os.fstat(listen_fd)
        except OSError:
            raise RuntimeError("no listening socket on fd 3 (serve mode is started by `start`)")
    from shim import launch
    argv0 = launch.invoked_as()
    if argv0 and argv is not None:
        launch.show_name([argv0] + list(argv), launch.shown_environ())
    from shim import serve
    serve.serve(flags, listen_fd)
    return 0


def _start_in_template(argv):
    """Exit status of this `start` run by the template process, or None
    (disabled, none there: one is started for next time, or refused)."""
    from shim import template_client
    if not sys.flags.no_site or not template_client.enabled():
        return None
    code = template_client.ask([sys.argv[0] if sys.argv else ""] + list(argv))
    if code is None and not template_client.alive():
        template_client.spawn()
    return code


def run(argv, self_path=None, template=True):
    """Run the command line argv (without the program name); returns the
    exit status. template=False: a `start` runs here, not in the template
    process (shim/template.py), which calls this so."""
    try:
        flags = parse_flags(argv)
    except FlagError as e:
        write_all(2, ("%s\n%s" % (e, USAGE % BINARY)).encode())
        return 2
    if flags.h or flags.help:
        write_all(2, (USAGE % BINARY).encode())
        return 0
    if flags.v or flags.version:
        write_all(1, version_text().encode())
        return 0
    try:
        if flags.info:
            return manager.do_info(flags)
        if not flags.namespace:
            raise RuntimeError("shim namespace cannot be empty")
        if flags.action == "start":
            if template:
                code = _start_in_template(argv)
                if code is not None:
                    return code
            return manager.do_start(flags, self_path)
        if flags.action == "delete":
            return manager.do_delete(flags)
        if flags.action:
            raise RuntimeError("unknown action %r" % flags.action)
        return do_serve(flags, argv, self_path)
    except Exception as e:
        msg = str(e) or e.__class__.__name__
        try:
            write_all(2, ("%s: %s\n" % (RUNTIME, msg)).encode())
        except OSError:
            pass
        return 1


def main(argv=None, self_path=None):
    if argv is None:
        argv = sys.argv[1:]
        from shim import launch
        launch.take_invoked_name()
    code = run(argv, self_path)
    sys.exit(code)


if __name__ == "__main__":
    main()
