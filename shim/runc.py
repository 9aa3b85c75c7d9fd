"""The runc driver (spec runc.md): argv, running runc on the loop, errors.

    r = Runc(reaper=reaper, namespace="default")      # binary/root/... optional
    await r.create(id, bundle, stdio=(fd0, fd1, fd2))  # -> init pid
    await r.start(id, bundle)
    await r.kill(id, bundle, 9, all=True)
    pids = await r.ps(id, bundle)

Every invocation is `<binary> --root <root>/<ns> --log <bundle>/log.json
--log-format json [--criu p] [--systemd-cgroup] <command> ...`, spawned with
shim._native.spawn (PDEATHSIG=SIGKILL, env minus NOTIFY_SOCKET, stdin
/dev/null unless given, stdout+stderr into one non-blocking pipe). The pid is
claimed from the Reaper right after spawn, so its exit status cannot be lost
to waitpid(-1). A failure raises RuncError (shim.runc_errors) with runc's own
error text. The blocking runc of the `delete` action is shim.runc_sync.

The shim's bundle files (runtime, options.json, the deleted mark) are read
and written by shim.bundle.
"""
import os

from shim import _native
from shim.capture import OutputCapture
from shim.runc_errors import RuncError, error_message, exec_error, log_size, read_log_error

DEFAULT_BINARY = "runc"
DEFAULT_ROOT = "/run/containerd/runc"
INIT_PID_FILE = "init.pid"
LOG_FILE = "log.json"
SIGKILL = 9


# ---- pid file -----------------------------------------------------------------

def read_pid_file(path):
    """The pid runc wrote with --pid-file (ValueError / OSError on failure)."""
    with open(path, "rb") as f:
        data = f.read()
    return int(data.strip())


# ---- environment / fds -----------------------------------------------------

def runc_env():
    """The shim's environment minus NOTIFY_SOCKET, as KEY=VALUE strings."""
    return ["%s=%s" % (k, v) for k, v in os.environ.items() if k != "NOTIFY_SOCKET"]


def devnull(mode=os.O_RDWR):
    return os.open("/dev/null", mode | os.O_CLOEXEC)


def _memfd(data):
    fd = os.memfd_create("runc-stdin", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---- the driver ------------------------------------------------------------

class Runc:
    def __init__(self, reaper=None, namespace="default", binary=DEFAULT_BINARY,
                 root=DEFAULT_ROOT, systemd_cgroup=False, criu_path="", loop=None):
        self.reaper = reaper
        self.namespace = namespace
        self.binary = binary or DEFAULT_BINARY
        self.root = os.path.join(root or DEFAULT_ROOT, namespace)
        self.systemd_cgroup = bool(systemd_cgroup)
        self.criu_path = criu_path or ""
        self._loop = loop

    @property
    def loop(self):
        if self._loop is None:
            if self.reaper is not None:
                self._loop = self.reaper.loop
            else:
                from shim.loop import get_loop
                self._loop = get_loop()
        return self._loop

    # -- argv --
    def command(self, bundle, *args):
        """Full argv: binary, global flags, then args."""
        argv = [self.binary, "--root", self.root,
                "--log", os.path.join(bundle, LOG_FILE), "--log-format", "json"]
        if self.criu_path:
            argv += ["--criu", self.criu_path]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        argv.extend(args)
        return argv

    # -- running --
    async def _run(self, bundle, args, stdio=None, stdin_data=None, stdout_only=False):
        """Run runc with args, await its exit; returns its stdout (bytes) if
        stdout_only, else the combined output. Raises RuncError on failure.

        stdio: (fd0, fd1, fd2) for runc itself (None entries = /dev/null);
        then nothing is captured. stdin_data: bytes fed on stdin."""
        argv = self.command(bundle, *args)
        log_path = os.path.join(bundle, LOG_FILE)
        offset = log_size(log_path)
        loop = self.loop
        out = err = None
        opened = []
        try:
            if stdio is not None:
                fds = list(stdio)[:3]
                while len(fds) < 3:
                    fds.append(None)
                for i in range(3):
                    if fds[i] is None:
                        fd = devnull()
                        opened.append(fd)
                        fds[i] = fd
            else:
                if stdin_data is not None:
                    fd0 = _memfd(stdin_data)
                else:
                    fd0 = devnull(os.O_RDONLY)
                opened.append(fd0)
                out = OutputCapture(loop)
                if stdout_only:
                    err = OutputCapture(loop)
                    fds = [fd0, out.w, err.w]
                else:
                    fds = [fd0, out.w, out.w]
            try:
                pid = _native.spawn(self.binary, argv, runc_env(), fds, pdeathsig=SIGKILL)
            except OSError as e:
                raise exec_error(self.binary, e) from None
            exited = self.reaper.watch(pid)
        except BaseException:
            for c in (out, err):
                if c is not None:
                    c.close()
            raise
        finally:
            for fd in opened:
                os.close(fd)
        for c in (out, err):
            if c is not None:
                c.start()
        try:
            status = await exited
        finally:
            output = out.finish() if out is not None else b""
            errput = err.finish() if err is not None else b""
        if status != 0:
            captured = errput if stdout_only else output
            msg = error_message(read_log_error(log_path, offset), captured, status)
            raise RuncError(msg, status, captured)
        return output

    # -- commands --
    async def create(self, id, bundle, stdio=None, console_socket=None, no_pivot=False,
                     no_new_keyring=False):
        """runc create; returns the init pid (from <bundle>/init.pid)."""
        pid_file = os.path.join(bundle, INIT_PID_FILE)
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        args.append(id)
        await self._run(bundle, args, stdio=stdio)
        return read_pid_file(pid_file)

    async def start(self, id, bundle):
        await self._run(bundle, ["start", id])

    async def exec(self, id, bundle, process_spec_json, exec_id, stdio=None,
                   console_socket=None):
        """runc exec --detach of an OCI Process JSON; returns the pid (from
        <bundle>/<exec_id>.pid)."""
        pid_file = os.path.join(bundle, "%s.pid" % exec_id)
        spec_path = _write_process_file(process_spec_json)
        try:
            args = ["exec", "--process", spec_path]
            if console_socket:
                args += ["--console-socket", console_socket]
            args += ["--detach", "--pid-file", pid_file, id]
            await self._run(bundle, args, stdio=stdio)
        finally:
            try:
                os.unlink(spec_path)
            except OSError:
                pass
        return read_pid_file(pid_file)

    async def kill(self, id, bundle, signal, all=False):
        args = ["kill"]
        if all:
            args.append("--all")
        args += [id, str(int(signal))]
        await self._run(bundle, args)

    async def delete(self, id, bundle, force=False):
        """runc delete [--force]; a container that does not exist is fine."""
        args = ["delete"]
        if force:
            args.append("--force")
        args.append(id)
        try:
            await self._run(bundle, args)
        except RuncError as e:
            if "does not exist" not in e.message:
                raise

    async def pause(self, id, bundle):
        await self._run(bundle, ["pause", id])

    async def resume(self, id, bundle):
        await self._run(bundle, ["resume", id])

    async def ps(self, id, bundle):
        """Pids of every process in the container's cgroup."""
        out = await self._run(bundle, ["ps", "--format", "json", id], stdout_only=True)
        from shim import jsonlite
        try:
            pids = jsonlite.loads(out) if out.strip() else []
        except ValueError as e:
            raise RuncError("unable to parse runc ps output: %s" % e, 0, out)
        return [int(p) for p in pids or ()]

    async def state(self, id, bundle):
        """`runc state` as a dict (ociVersion, id, pid, status, ...)."""
        out = await self._run(bundle, ["state", id], stdout_only=True)
        from shim import jsonlite
        return jsonlite.loads(out)

    async def update(self, id, bundle, resources_json):
        """runc update --resources - with the LinuxResources JSON on stdin."""
        await self._run(bundle, ["update", "--resources", "-", id],
                        stdin_data=bytes(resources_json or b"{}"))

    async def checkpoint(self, id, bundle, image_path, work_path=None, parent_path=None,
                         leave_running=True, tcp_established=False, ext_unix_sk=False,
                         shell_job=False, file_locks=False, empty_ns=(), cgroups_mode=""):
        args = ["checkpoint"] + _criu_args(image_path, work_path, parent_path, tcp_established,
                                           ext_unix_sk, shell_job, file_locks, empty_ns,
                                           cgroups_mode)
        if leave_running:
            args.append("--leave-running")
        args.append(id)
        await self._run(bundle, args)

    async def restore(self, id, bundle, image_path, work_path=None, parent_path=None,
                      stdio=None, console_socket=None, no_pivot=False,
                      tcp_established=False, ext_unix_sk=False, shell_job=False,
                      file_locks=False, empty_ns=(), cgroups_mode=""):
        """runc restore --detach (Start of a checkpointed create); returns the
        init pid."""
        pid_file = os.path.join(bundle, INIT_PID_FILE)
        args = ["restore"] + _criu_args(image_path, work_path, parent_path, tcp_established,
                                        ext_unix_sk, shell_job, file_locks, empty_ns,
                                        cgroups_mode)
        args += ["--detach", "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        args += ["-no-subreaper", "--bundle", bundle, id]
        await self._run(bundle, args, stdio=stdio)
        return read_pid_file(pid_file)


def _criu_args(image_path, work_path, parent_path, tcp_established, ext_unix_sk,
               shell_job, file_locks, empty_ns, cgroups_mode):
    # Same order as go-runc's CheckpointOpts.args().
    a = []
    if image_path:
        a += ["--image-path", image_path]
    if work_path:
        a += ["--work-path", work_path]
    if parent_path:
        a += ["--parent-path", parent_path]
    if tcp_established:
        a.append("--tcp-established")
    if ext_unix_sk:
        a.append("--ext-unix-sk")
    if shell_job:
        a.append("--shell-job")
    if file_locks:
        a.append("--file-locks")
    if cgroups_mode:
        a += ["--manage-cgroups-mode", cgroups_mode]
    for ns in empty_ns or ():
        a += ["--empty-ns", ns]
    return a


def _write_process_file(data):
    """Write the OCI Process JSON to $XDG_RUNTIME_DIR (else $TMPDIR or /tmp)
    as runc-process<random>; returns the path."""
    d = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    if isinstance(data, str):
        data = data.encode("utf-8")
    for _ in range(100):
        path = os.path.join(d, "runc-process%s" % os.urandom(6).hex())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path
    raise OSError(17, "cannot create a runc-process file in %s" % d)
