"""Starting the serving process for `start`: fork it (the installed
launcher), become it once start has answered (a start in the template
process: serve_here), or spawn a fresh interpreter (development); detach
it, then move it into Options.shim_cgroup and give it the OOM score Go's
shims get.

    pid = serve_process(flags, sock, bundle, debug, env_add, self_path)
    join_cgroup(pid, "/pods/x")
    adjust_oom_score(pid)

Imports only `os` and `sys` at load time.
"""
import os
import sys

from shim.bundle import go_err

EACCES = 13
EPERM = 1
SIGTERM = 15
SIGINT = 2
SIGUSR1 = 10
# The pid whose oom_score_adj the serving process's is one above: our
# parent (containerd), or, in the template process (shim/template.py), the
# parent of the `start` it runs for.
OOM_PARENT = None
# Set in the template process: the serving process's environment is not
# the one it was exec'd with, so /proc/PID/environ is pointed at it too.
SHOW_ENVIRON = False
# Set in the template process: this `start` is a fork of the template.
IN_TEMPLATE = False
# In the template, the `start` becomes the serving process itself once it
# has answered (serve_here), instead of forking one: (flags, listening fd,
# debug) from serve_process until then.
_serve_here = None


def serve_flags(flags, debug):
    """The serving process's command line after its program name (as Go's
    runc shim starts its own: -namespace, -id, -address, -debug)."""
    argv = ["-namespace", flags.namespace, "-id", flags.id, "-address", flags.address]
    if debug:
        argv.append("-debug")
    return argv


def serve_process(flags, sock, bundle, debug, env_add, self_path=None, fresh=False):
    """Start the process that serves on the listening socket `sock` in
    `bundle` (cwd) with env_add added to our environment; returns its pid.
    The caller still owns (and closes) sock. fresh: a new interpreter even
    where a fork would do (the template is turned off for this runtime)."""
    if sys.flags.no_site and not fresh:
        if IN_TEMPLATE:
            return _prepare_serve_here(flags, sock, debug, env_add)
        # The installed launcher (python -I -S): fork, no second start-up.
        return _fork_serve(flags, sock, debug, env_add)
    if IN_TEMPLATE:
        # sys.argv[0] is the native launcher: run the Python one beside it,
        # showing the name containerd used (take_invoked_name).
        env_add = dict(env_add, **{ARGV0_ENV: invoked_as()})
        self_path = os.path.join(os.path.dirname(os.path.realpath(invoked_as())),
                                 PYTHON_LAUNCHER)
    exe, argv = _self_argv(self_path)
    argv = argv + serve_flags(flags, debug)
    environ = dict(os.environ)
    environ.update(env_add)
    env = ["%s=%s" % kv for kv in environ.items()]
    from shim import _native
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        return _native.spawn(exe, argv, env, [null, null, null, sock.fileno()],
                             cwd=bundle, new_session=True, search_path=False)
    finally:
        os.close(null)


def _self_argv(self_path):
    """argv prefix that runs this shim again as the serving process:
    `<python> -I -S <launcher>` (the #! line cannot carry -I -S, see the
    launcher); without a launcher file, `<python> -c ...` (development)."""
    if self_path is None:
        self_path = sys.argv[0] if sys.argv and sys.argv[0] else ""
    exe = sys.executable
    if self_path and not self_path.startswith("-"):
        self_path = os.path.abspath(self_path)
        if os.path.isfile(self_path) and not self_path.endswith(".py"):
            return exe, [exe, "-I", "-S", self_path]
    return exe, [exe, "-c", "from shim.cli import main; main()"]


def _fork_serve(flags, sock, debug, env_add):
    """Fork the serving process from this start process instead of starting
    a second interpreter (what Go must do): it saves ~20 ms on every shim
    start, and the modules start imported are ones serve needs anyway. The
    child detaches (new session, stdio on /dev/null, only the listening
    socket kept), shows the name containerd invoked it under with the serve
    flags (show_name), and serves."""
    null = os.open("/dev/null", os.O_RDWR)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(null)
        os.close(ready_w)
        # Until the child has let go of our stdout (containerd reads it to
        # EOF) and shows its serve argv: EOF here.
        try:
            while os.read(ready_r, 64):
                pass
        finally:
            os.close(ready_r)
        return pid
    try:
        # A SIGTERM that arrives before the loop reads signals must wait for
        # it (signalfd), not kill the shim before it removes its socket.
        import _signal
        # SIGUSR1 (state dump) likewise: its default action would kill us.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, {SIGTERM, SIGINT, SIGUSR1})
        os.setsid()
        # containerd waits for EOF on start's stdout, which we hold: let go
        # of it first; the parent goes on once we show our serve argv (on a
        # busy node every step before that is latency for the container).
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.environ.update(env_add)
        argv0 = invoked_as()
        if argv0:
            show_name([argv0] + serve_flags(flags, debug), shown_environ())
        os.close(ready_w)
        lfd = sock.detach()
        os.set_inheritable(lfd, False)
    except BaseException:
        os._exit(1)
    _serve_forever(flags, lfd, debug)


def _serve_forever(flags, lfd, debug):
    """Serve on the listening socket lfd, every other fd closed, until the
    shim's end; the process exits there."""
    code = 1
    try:
        os.closerange(3, lfd)
        os.closerange(lfd + 1, 1 << 16)
        loop = sys.modules.get("shim.loop")
        if loop is not None:
            loop.renew()    # forked from the template: its epoll fd is closed now
        flags.debug = debug
        flags.action = ""
        from shim import serve
        serve.serve(flags, lfd)
        code = 0
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _prepare_serve_here(flags, sock, debug, env_add):
    """In the template's `start` (itself a fork of the template, and no
    child of it): this process is the serving one. A third process would
    cost a fork and copy once more every page the start has written; this
    one is already detached from the template, so it only has to finish the
    start (cgroup, OOM score, the answer) and then serve_here(). Until then
    it shows its serve argv (as a forked serving process does before start
    answers) and defers the signals serve reads. Returns our pid."""
    global _serve_here
    import _signal
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {SIGTERM, SIGINT, SIGUSR1})
    os.environ.update(env_add)
    argv0 = invoked_as()
    if argv0:
        show_name([argv0] + serve_flags(flags, debug), shown_environ())
    _serve_here = (flags, os.dup(sock.fileno()), debug)     # the caller closes sock
    return os.getpid()


def will_serve_here():
    return _serve_here is not None


def cancel_serve_here():
    """The start failed after serve_process: this process does not serve."""
    global _serve_here
    if _serve_here is not None:
        os.close(_serve_here[1])
        _serve_here = None


def detach_here():
    """Before the start's answer reaches its caller: a new session, and
    the caller's stdio let go (containerd reads start's stdout to EOF)."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def serve_here():
    """Serve on the socket serve_process prepared (after detach_here and the
    answer); never returns."""
    flags, lfd, debug = _serve_here
    _serve_forever(flags, lfd, debug)


ARGV0_ENV = "PYSHIM_ARGV0"
# The Python launcher, installed beside the native one (setup.py).
PYTHON_LAUNCHER = "pyshim-launcher"


def take_invoked_name():
    """The native launcher (_native/launcher.c) execs the Python one with
    the name containerd ran it under in PYSHIM_ARGV0: make that our
    argv[0] (invoked_as) and drop it from the environment; the serving
    process then shows the environment without it (SHOW_ENVIRON)."""
    global SHOW_ENVIRON
    argv0 = os.environ.pop(ARGV0_ENV, None)
    if argv0:
        if sys.argv:
            sys.argv[0] = argv0
        SHOW_ENVIRON = True


def shown_environ():
    """The environment /proc/PID/environ should show (SHOW_ENVIRON), else
    None (it shows what we were exec'd with, which is ours)."""
    if not SHOW_ENVIRON:
        return None
    return ["%s=%s" % kv for kv in os.environ.items()]


def invoked_as():
    """The shim binary's path as containerd ran it (the drop-in's
    .../containerd-shim-runc-v2, a symlink, stays that): the launcher hands
    its $0 to Python as the script path. "" when there is no launcher
    (python -c, development)."""
    a = sys.argv[0] if sys.argv else ""
    return "" if not a or a in ("-c", "-m") else a


def show_name(argv, environ=None):
    """Show this serving process to process tools (ps, pgrep, pidof,
    monitoring agents that count shims by name) as the Go shim it stands
    in for shows: /proc/PID/cmdline = argv (argv[0]: the binary as
    invoked), /proc/PID/comm = basename of argv[0] cut to 15 bytes, which is
    what the kernel gives an exec'd binary ("containerd-shim" for both
    containerd-shim-runc-v2 and containerd-shim-pyshim-v1), where an
    unnamed pyshim would show python3's.

    cmdline: the kernel's argv area is pointed at a new buffer holding
    argv (prctl PR_SET_MM_MAP, no capability needed): the result is byte
    for byte what Go's shim shows. Overwriting the original argv area in
    place (python3 -I -S <launcher> <start's flags> start, always longer
    than the serve argv) is the fallback where the kernel refuses that
    (built without CONFIG_CHECKPOINT_RESTORE): it leaves a tail of NULs,
    which ps and `pgrep -a` print as trailing spaces and which defeats
    anchored `pgrep -f '...$'` patterns."""
    from shim import _native
    try:
        _native.set_comm(os.path.basename(argv[0]))
    except OSError:
        pass
    try:
        _native.set_cmdline_buffer(argv, environ)
    except OSError:
        if not _native.set_cmdline(argv) and "-debug" in argv:
            _native.set_cmdline([a for a in argv if a != "-debug"])


def sched_core():
    """SCHED_CORE set by containerd: a new core-scheduling cookie for the
    start process's group (containerd starts it as a group leader), which
    the serve process forked next inherits. As in Go, failure fails start."""
    from shim import _native
    try:
        _native.sched_core_create()
    except OSError as e:
        raise RuntimeError("enable sched core support: %s" % (e.strerror or e))


def _cgroup_v1_mounts():
    """Mount points of the cgroup v1 hierarchies, from mountinfo. (cgroups.py
    parses the same file for each hierarchy's root, not its mount point.)"""
    out = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype = right.split(" ", 1)[0]
        if fstype == "cgroup":
            fields = left.split(" ")
            if len(fields) > 4 and fields[4] not in out:
                out.append(fields[4].replace("\\040", " "))
    return out


def join_cgroup(pid, cg):
    """Move pid into cgroup `cg` (Options.shim_cgroup): cgroup v1/hybrid:
    every v1 hierarchy where that cgroup exists; v2: /sys/fs/cgroup<cg>."""
    rel = cg.strip("/")
    data = b"%d" % pid
    v1 = _cgroup_v1_mounts()
    targets = []
    if v1:
        for mp in v1:
            d = os.path.join(mp, rel)
            if os.path.isdir(d):
                targets.append(os.path.join(d, "cgroup.procs"))
    else:
        d = os.path.join("/sys/fs/cgroup", rel)
        if os.path.isdir(d):
            targets.append(os.path.join(d, "cgroup.procs"))
    if not targets:
        raise RuntimeError("failed to load cgroup %s: cgroup deleted" % cg)
    for t in targets:
        try:
            fd = os.open(t, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise RuntimeError("failed to join cgroup %s: %s" % (cg, go_err("write", t, e)))


def adjust_oom_score(pid, parent=None):
    """oom_score_adj of pid = parent's + 1 (max 1000). A refused write
    (EACCES/EPERM: we may not lower it) is ignored."""
    if parent is None:
        parent = OOM_PARENT or os.getppid()
    p = "/proc/%d/oom_score_adj" % parent
    try:
        with open(p, "rb") as f:
            score = int(f.read().strip())
    except (OSError, ValueError) as e:
        raise RuntimeError("get parent OOM score: %s" % e)
    score = max(-1000, min(1000, score + 1))
    try:
        fd = os.open("/proc/%d/oom_score_adj" % pid, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % score)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (EACCES, EPERM):
            return
        raise RuntimeError("set shim OOM score: %s" % e)
