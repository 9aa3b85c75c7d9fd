"""One container's mechanics: runc calls, the rootfs mounts, bundle files
(through shim.runc's helpers), stdio, the cgroup and its OOM watch, the
cleanup of every failed step, and settling an exit before it is published.

It never publishes and never imports the service (shim.task): the service
checks requests and states, orders the events and holds/releases exits
(shim.exits); a Container is handed the ExitRouter and callbacks. An exec's
own mechanics are in shim.execs.
"""
import os

from shim import bundle as bundle_files, errors, jsonlite, mount, options, runc as runc_mod
from shim.io import ProcessIO
from shim.loop import wait_for
from shim.process import (CREATED, CREATED_CHECKPOINT, DELETED, PAUSED, PAUSING, RUNNING,
                          STOPPED, Process)

IO_DRAIN_ON_EXIT = 1.0      # seconds the exit event waits for output to drain
IO_DRAIN_ON_DELETE = 10.0
SIGKILL = 9


class Container:
    def __init__(self, cid, bundle, runc, rootfs_mounted, private_pidns, exits=None,
                 log=None, namespace="", reaper=None):
        self.id = cid
        self.bundle = bundle
        self.runc = runc
        self.rootfs_mounted = rootfs_mounted
        self.private_pidns = private_pidns
        self.exits = exits          # shim.exits.ExitRouter
        self.log = log
        self.namespace = namespace
        self.reaper = reaper        # for binary loggers
        self.init = None
        self.execs = {}
        self.opts = {}              # the decoded runc Options
        self.io_ids = (0, 0)        # Options.io_uid / io_gid for stdio pipes
        self.cgroup = None          # shim.cgroups.Cgroup of the init, once known
        self.oom = None             # OOM watch, from Create to Delete
        self.exit_oom_kills = None  # the cgroup's oom_kill count at the init's exit
        self.criu_work = ""         # Options.criu_work_path or <bundle>/work
        self.restore_from = None    # (image, parent) of a Create from a checkpoint
        self.no_pivot = False

    @classmethod
    def new(cls, req, namespace, reaper, exits, log):
        """The container of a Create request, before anything is made."""
        try:
            opts = options.decode(req.options)
        except options.OptionsError as e:
            raise errors.invalid_argument(str(e))
        runc = runc_mod.Runc(
            binary=opts.get("binary_name") or "runc",
            root=opts.get("root") or runc_mod.DEFAULT_ROOT,
            namespace=namespace,
            systemd_cgroup=bool(opts.get("systemd_cgroup")),
            criu_path=opts.get("criu_path") or "",
            reaper=reaper)
        c = cls(req.id, req.bundle, runc, False, _private_pidns(req.bundle), exits, log,
                namespace, reaper)
        c.opts = opts
        c.io_ids = (opts.get("io_uid", 0), opts.get("io_gid", 0))
        c.criu_work = opts.get("criu_work_path") or os.path.join(req.bundle, "work")
        c.no_pivot = bool(opts.get("no_pivot_root"))
        return c

    def process(self, exec_id):
        if not exec_id:
            return self.init
        p = self.execs.get(exec_id)
        if p is None:
            raise errors.not_found("process does not exist %s" % exec_id)
        return p

    def new_io(self, p):
        return ProcessIO(p.stdin, p.stdout, p.stderr, p.terminal, *self.io_ids,
                         container_id=self.id, namespace=self.namespace,
                         reaper=self.reaper)

    # ---- the init --------------------------------------------------------
    async def create_init(self, req):
        """Mount, bundle files, stdio, runc create: the init, its exit held
        (starting) until the service releases it. On failure everything
        made is undone and the error raised."""
        p = Process(self, "", req.stdin, req.stdout, req.stderr, req.terminal, None,
                    status=CREATED_CHECKPOINT if req.checkpoint else CREATED)
        with self.exits.window(p) as w:
            try:
                if req.rootfs:
                    await self._mount_rootfs(req.rootfs)
                bundle_files.write_bundle_options(self.bundle, self.opts)
                bundle_files.clear_deleted_mark(self.bundle)     # a reused bundle dir
                p.io = self.new_io(p)
                p.io.open()
                await p.io.wait_ready()
                if req.checkpoint:
                    # Restored at Start (runc restore); nothing runs until then.
                    self.restore_from = (req.checkpoint, req.parent_checkpoint)
                else:
                    self.exits.hold(p)
                    try:
                        pid = await self.runc.create(
                            self.id, self.bundle,
                            stdio=None if p.terminal else p.io.runc_fds(),
                            console_socket=p.io.console_path, no_pivot=self.no_pivot,
                            no_new_keyring=bool(self.opts.get("no_new_keyring")))
                    except runc_mod.RuncError as e:
                        raise errors.runc_error("OCI runtime create failed", e)
                    await self._init_made(w, p, pid)
            except BaseException:
                if w.abandon():
                    # runc created it but we cannot serve it: do not leave
                    # runc's init waiting behind.
                    try:
                        await self.runc.delete(self.id, self.bundle, force=True)
                    except Exception as e:
                        self.log.warning("delete after failed create: %s" % e)
                if p.io is not None:
                    p.io.close()
                if self.rootfs_mounted:
                    try:
                        mount.unmount_recursive(os.path.join(self.bundle, "rootfs"))
                    except OSError as e:
                        self.log.warning("unmount after failed create: %s" % e)
                raise
        self.init = p
        return p

    async def _mount_rootfs(self, mounts):
        rootfs = os.path.join(self.bundle, "rootfs")
        os.makedirs(rootfs, 0o711, exist_ok=True)
        try:
            await mount.mount_all(mounts, rootfs, self.reaper)
        except OSError as e:
            # The Go shim's words; a refused mount is no shim fault.
            raise errors.unknown("failed to mount rootfs component: %s" % e)
        self.rootfs_mounted = True

    async def _init_made(self, w, p, pid):
        """runc made the init (create or restore): route its exits to p,
        take the pty master, start the copies, find its cgroup."""
        w.known(pid)
        if p.terminal:
            await p.io.receive_console()
        p.io.start()
        self.cgroup = _find_cgroup(pid)

    async def start_init(self, p):
        try:
            await self.runc.start(self.id, self.bundle)
        except runc_mod.RuncError as e:
            raise errors.runc_error("OCI runtime start failed", e)
        if p.status == CREATED:
            p.to(RUNNING)

    async def restore_init(self, p):
        """Start of a container created from a checkpoint: runc restore
        (spec runc.md), then it is running like any other."""
        image, parent = self.restore_from
        with self.exits.window(p) as w:
            try:
                try:
                    pid = await self.runc.restore(
                        self.id, self.bundle, image, work_path=self.criu_work,
                        parent_path=parent, stdio=None if p.terminal else p.io.runc_fds(),
                        console_socket=p.io.console_path, no_pivot=self.no_pivot)
                except runc_mod.RuncError as e:
                    raise errors.runc_error("OCI runtime restore failed", e)
                await self._init_made(w, p, pid)
            except BaseException:
                if w.abandon(forget=False):
                    try:
                        await self.runc.kill(self.id, self.bundle, SIGKILL, all=True)
                    except Exception as e:
                        self.log.warning("kill after failed restore: %s" % e)
                raise
        self.restore_from = None
        if p.status == CREATED_CHECKPOINT:
            p.to(RUNNING)
        return pid

    async def delete_init(self):
        """runc delete, drain and close stdio, stop the OOM watch, unmount,
        mark the bundle deleted. The init is then DELETED."""
        p = self.init
        was_created = p.status == CREATED
        try:
            await self.runc.delete(self.id, self.bundle)
        except runc_mod.RuncError as e:
            # As in Go: runc no longer knows a container that was checkpointed
            # with exit, or one created from a checkpoint and never started.
            if "does not exist" not in str(e):
                raise errors.runc_error("failed to delete task", e)
        if p.status == CREATED_CHECKPOINT:
            self.restore_from = None
            if not p.exited.done():
                p.record_exit(0, None)
                p.exited_at = None
                p.exited.set_result(None)
        elif was_created:
            # runc killed its waiting init: give the reaper a moment.
            try:
                await wait_for(p.exited, 2.0)
            except TimeoutError:
                pass
        else:
            await p.io.wait_copied(IO_DRAIN_ON_DELETE)
        p.io.close()
        if self.oom is not None:
            self.oom.close()
        cleaned = True
        if self.rootfs_mounted:
            try:
                mount.unmount_recursive(os.path.join(self.bundle, "rootfs"))
            except OSError as e:
                cleaned = False
                self.log.warning("unmount rootfs of %s: %s" % (self.id, e))
        if cleaned:
            bundle_files.mark_deleted(self.bundle)
        self.exits.forget(p)
        p.to(DELETED)

    # ---- exits -----------------------------------------------------------
    async def settle_exit(self, p, status, when):
        """Everything that must happen between p's exit and its /tasks/exit."""
        if p is self.init:
            if not self.private_pidns:
                # Shared pid namespace: nothing kills the rest for us.
                try:
                    await self.runc.kill(self.id, self.bundle, SIGKILL, all=True)
                except Exception as e:
                    self.log.warning("killall of %s failed: %s" % (self.id, e))
            # As the Go shim (containerd issue 10589): the init stays in its
            # state until every exec that was starting or running has
            # exited, so its exit is the container's last; meanwhile Exec is
            # still accepted and an exec's Start refused (init reaped).
            for ex in list(self.execs.values()):
                if ex.starting or ex.status == RUNNING or (ex.status == STOPPED and ex.pid):
                    await ex.exited
            p.record_exit(status, when)
        # Let the last output reach the client before the exit event.
        if p.io is not None:
            await p.io.wait_copied(IO_DRAIN_ON_EXIT)
        if p is self.init:
            # An OOM kill is reported before the exit it caused, and its
            # count kept for Stats until Delete (the cgroup may be gone).
            if self.oom is not None:
                self.exit_oom_kills = self.oom.at_exit()
            elif self.cgroup is not None:
                from shim import cgroups
                self.exit_oom_kills = cgroups.oom_kills(self.cgroup)

    def watch_oom(self, on_oom, loop):
        if self.cgroup is None or self.oom is not None:
            return
        from shim import cgroups
        try:
            self.oom = cgroups.watch_oom(self.cgroup, loop, on_oom)
        except OSError as e:
            self.log.warning("cannot watch OOM events of %s: %s" % (self.id, e))

    # ---- runc operations on a created container ----------------------------
    async def pause(self):
        p = self.init
        p.to(PAUSING)
        try:
            await self.runc.pause(self.id, self.bundle)
        except runc_mod.RuncError as e:
            if p.status == PAUSING:
                p.to(RUNNING)
            raise errors.runc_error("OCI runtime pause failed", e)
        if p.status == PAUSING:
            p.to(PAUSED)

    async def resume(self):
        try:
            await self.runc.resume(self.id, self.bundle)
        except runc_mod.RuncError as e:
            raise errors.runc_error("OCI runtime resume failed", e)
        if self.init.status == PAUSED:
            self.init.to(RUNNING)

    async def kill(self, p, signum, all=False):
        if p.exec_id:
            try:
                p.signal(signum)
            except OSError as e:
                raise errors.classify_kill_error(e)
            return
        try:
            await self.runc.kill(self.id, self.bundle, signum, all=all)
        except runc_mod.RuncError as e:
            raise errors.classify_kill_error(str(e))

    async def update(self, resources):
        try:
            await self.runc.update(self.id, self.bundle, resources)
        except runc_mod.RuncError as e:
            raise errors.unknown(str(e))

    async def pids(self):
        """[(pid, exec_id or "")] of every process in the container."""
        try:
            pids = await self.runc.ps(self.id, self.bundle)
        except runc_mod.RuncError as e:
            raise errors.unknown("failed to list pids: %s" % e)
        by_pid = {p.pid: p.exec_id for p in self.execs.values() if p.pid}
        return [(pid, by_pid.get(pid, "")) for pid in pids]

    async def checkpoint(self, path, o):
        """runc checkpoint of the init; o: decoded CheckpointOptions."""
        work = o["work_path"]
        if not work:
            work = os.path.join(self.criu_work, "criu-work")   # removed afterwards
        try:
            await self.runc.checkpoint(
                self.id, self.bundle, path, work_path=work, leave_running=not o["exit"],
                tcp_established=o["open_tcp"], ext_unix_sk=o["external_unix_sockets"],
                shell_job=o["terminal"], file_locks=o["file_locks"],
                empty_ns=o["empty_namespaces"])
        except runc_mod.RuncError as e:
            raise checkpoint_error(e, self.bundle, work)
        finally:
            if not o["work_path"]:
                _remove_tree(work)


def checkpoint_error(err, bundle, work_path):
    """Go shim's checkpoint failure: copy <work>/dump.log to
    <bundle>/criu-dump.log and return Error(UNKNOWN, "<first line of
    the runc error> path= <bundle>/criu-dump.log")."""
    dump = os.path.join(bundle, "criu-dump.log")
    try:
        with open(os.path.join(work_path, "dump.log"), "rb") as src:
            data = src.read()
        with open(dump, "wb") as dst:
            dst.write(data)
    except OSError:
        pass
    first = str(err).split("\n", 1)[0]
    return errors.unknown("%s path= %s" % (first, dump))


def _remove_tree(path):
    """rm -rf without importing shutil (serve-process imports cost RSS)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            d = os.path.join(root, name)
            try:
                if os.path.islink(d):
                    os.unlink(d)
                else:
                    os.rmdir(d)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _find_cgroup(pid):
    """The init's cgroup (for Stats and OOM), or None if it cannot be found."""
    from shim import cgroups
    try:
        return cgroups.find(pid)
    except OSError:
        return None


def _private_pidns(bundle):
    """Whether the container gets its own new PID namespace (then the kernel
    kills the rest when the init dies)."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            spec = jsonlite.loads(f.read())
    except (OSError, ValueError):
        return True
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "pid":
            return not ns.get("path")
    return False
