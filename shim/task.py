"""The containerd.task.v2.Task service (also served as containerd.task.v3.Task).

One shim process serves any number of containers (a pod, a group); every
call is routed by id. Behaviour and errors follow spec task-service.md.
"""
import os

from shim import errors, jsonlite, mount, options, runc as runc_mod
from shim.io import ProcessIO
from shim.loop import Future, get_loop, wait_for
from shim.pb import events as ev
from shim.pb import task as pb
from shim.pb import wkt
from shim.process import (CREATED, CREATED_CHECKPOINT, DELETED, PAUSED, PAUSING,
                          RUNNING, STOPPED, ZERO_TIME, Process)
from shim.errors import (UNKNOWN, Error as TTRPCError, already_exists,
                         failed_precondition, invalid_argument, not_found)

EMPTY = wkt.Empty()
_pidfd_open = getattr(os, "pidfd_open", None)
IO_DRAIN_ON_EXIT = 1.0      # seconds the exit event waits for output to drain
IO_DRAIN_ON_DELETE = 10.0
IO_DRAIN_ON_EXEC_DELETE = 2.0   # Go 1.6: an exec's child may keep its stdout
SIGKILL = 9


def _ts(t):
    if t is None:
        return wkt.Timestamp(seconds=ZERO_TIME)
    sec = int(t)
    return wkt.Timestamp(seconds=sec, nanos=int((t - sec) * 1e9))


class Container:
    def __init__(self, cid, bundle, runc, rootfs_mounted, private_pidns):
        self.id = cid
        self.bundle = bundle
        self.runc = runc
        self.rootfs_mounted = rootfs_mounted
        self.private_pidns = private_pidns
        self.init = None
        self.execs = {}
        self.io_ids = (0, 0)        # Options.io_uid / io_gid for stdio pipes
        self.cgroup = None          # shim.cgroups.Cgroup of the init, once known
        self.oom = None             # OOM watch, from Create to Delete
        self.exit_oom_kills = None  # the cgroup's oom_kill count at the init's exit
        self.criu_work = ""         # Options.criu_work_path or <bundle>/work
        self.restore_from = None    # (image, parent) of a Create from a checkpoint
        self.no_pivot = False

    def process(self, exec_id):
        if not exec_id:
            return self.init
        p = self.execs.get(exec_id)
        if p is None:
            raise not_found("process does not exist %s" % exec_id)
        return p


class TaskService:
    def __init__(self, namespace, reaper, publisher, log, shutdown_cb=None):
        self.loop = get_loop()
        self.namespace = namespace
        self.reaper = reaper
        self.publisher = publisher
        self.log = log
        self.containers = {}
        self.by_pid = {}            # pid -> Process (running/created ones)
        self.creating = 0           # Creates/exec Starts whose pid is not known yet
        self.early_exits = {}       # pid -> (status, when) reaped before known
        self.shutdown_cb = shutdown_cb
        self.shutdown_asked = False     # Shutdown came while tasks remained
        self.create_requests = 0    # Creates received (serve's idle exit)
        self.closing = False        # the shim is exiting (set by serve)
        reaper.on_exit = self._on_exit

    # ---- table used by the ttrpc server ----------------------------------
    def methods(self):
        return {
            "State": (pb.StateRequest, self.state),
            "Create": (pb.CreateTaskRequest, self.create),
            "Start": (pb.StartRequest, self.start),
            "Delete": (pb.DeleteRequest, self.delete),
            "Pids": (pb.PidsRequest, self.pids),
            "Pause": (pb.PauseRequest, self.pause),
            "Resume": (pb.ResumeRequest, self.resume),
            "Checkpoint": (pb.CheckpointTaskRequest, self.checkpoint),
            "Kill": (pb.KillRequest, self.kill),
            "Exec": (pb.ExecProcessRequest, self.exec),
            "ResizePty": (pb.ResizePtyRequest, self.resize_pty),
            "CloseIO": (pb.CloseIORequest, self.close_io),
            "Update": (pb.UpdateTaskRequest, self.update),
            "Wait": (pb.WaitRequest, self.wait),
            "Stats": (pb.StatsRequest, self.stats),
            "Connect": (pb.ConnectRequest, self.connect),
            "Shutdown": (pb.ShutdownRequest, self.shutdown),
        }

    def _container(self, cid):
        c = self.containers.get(cid)
        if c is None or c.init is None:
            # A Create still in flight has reserved the id but has no init
            # yet: as in Go, the container does not exist until Create returns.
            raise not_found("container not created")
        return c

    def _publish(self, topic, msg):
        self.publisher.publish(topic, msg)

    # ---- exits -----------------------------------------------------------
    def _on_exit(self, pid, status, when):
        p = self.by_pid.get(pid)
        if p is None:
            if self.creating:
                self.early_exits[pid] = (status, when)
            return
        if p.starting:
            p.held_exit = (status, when)
            return
        self._process_exited(p, status, when)

    def _begin_pid_window(self):
        """A runc create/exec is about to run: exits of pids we do not know
        yet are kept until _end_pid_window."""
        self.creating += 1

    def _register_pid(self, p, pid):
        """p's pid is known: route its exits to p from now on, and take an
        exit that was reaped before (held until p.starting ends)."""
        p.pid = pid
        self.by_pid[pid] = p
        early = self.early_exits.pop(pid, None)
        if early is not None:
            p.held_exit = early

    def _end_pid_window(self):
        self.creating -= 1
        if not self.creating:
            self.early_exits = {}

    def _release_held_exit(self, p):
        p.starting = False
        if p.held_exit is not None:
            held, p.held_exit = p.held_exit, None
            self._process_exited(p, *held)

    def _process_exited(self, p, status, when):
        if self.by_pid.get(p.pid) is p:
            del self.by_pid[p.pid]
        if p.reaped or p.status in (STOPPED, DELETED):
            return
        if p is p.container.init:
            p.reaped = True         # stopped once its execs are settled
        else:
            p.record_exit(status, when)
        if p.io is not None:
            p.io.process_exited()
        self.loop.spawn(self._finish_exit(p, status, when))

    async def _finish_exit(self, p, status, when):
        c = p.container
        if p is c.init:
            if not c.private_pidns:
                # Shared pid namespace: nothing kills the rest for us.
                try:
                    await c.runc.kill(c.id, c.bundle, 9, all=True)
                except Exception as e:
                    self.log.warning("killall of %s failed: %s" % (c.id, e))
            # As the Go shim (containerd issue 10589): the init stays in its
            # state until every exec that was starting or running has
            # exited, so its exit is the container's last; meanwhile Exec is
            # still accepted and an exec's Start refused (init reaped).
            for e in list(c.execs.values()):
                if e.starting or e.status == RUNNING or (e.status == STOPPED
                                                          and e.pid):
                    await e.exited
            p.record_exit(status, when)
        # Let the last output reach the client before the exit event.
        if p.io is not None:
            await p.io.wait_copied(IO_DRAIN_ON_EXIT)
        if p is c.init:
            # An OOM kill is reported before the exit it caused, and its
            # count kept for Stats until Delete (the cgroup may be gone).
            if c.oom is not None:
                c.exit_oom_kills = c.oom.at_exit()
            elif c.cgroup is not None:
                from shim import cgroups
                c.exit_oom_kills = cgroups.oom_kills(c.cgroup)
        self._publish("/tasks/exit", ev.TaskExit(
            container_id=c.id, id=p.id, pid=p.pid, exit_status=p.exit_status,
            exited_at=_ts(p.exited_at)))
        p.exited.set_result(None)

    # ---- RPCs ------------------------------------------------------------
    async def create(self, req, ctx):
        self.create_requests += 1
        cid = req.id
        if not cid:
            raise invalid_argument("id must not be empty")
        if cid in self.containers:
            raise already_exists("container %s" % cid)
        if self.closing:
            # Requests in flight are still being answered, but a task made
            # now would die with the shim.
            raise failed_precondition("shim is shutting down")
        bundle = req.bundle
        try:
            opts = options.decode(req.options)
        except options.OptionsError as e:
            raise invalid_argument(str(e))
        runc = runc_mod.Runc(
            binary=opts.get("binary_name") or "runc",
            root=opts.get("root") or runc_mod.DEFAULT_ROOT,
            namespace=self.namespace,
            systemd_cgroup=bool(opts.get("systemd_cgroup")),
            criu_path=opts.get("criu_path") or "",
            reaper=self.reaper)
        container = Container(cid, bundle, runc, False, _private_pidns(bundle))
        container.io_ids = (opts.get("io_uid", 0), opts.get("io_gid", 0))
        container.criu_work = opts.get("criu_work_path") or os.path.join(bundle, "work")
        container.no_pivot = bool(opts.get("no_pivot_root"))
        # Reserve the id before the first await: a concurrent duplicate
        # Create must not touch this container's mounts.
        self.containers[cid] = container
        io = None
        p = None
        pid = 0
        self._begin_pid_window()
        try:
            rootfs = os.path.join(bundle, "rootfs")
            if req.rootfs:
                os.makedirs(rootfs, 0o711, exist_ok=True)
                try:
                    mount.mount_all(req.rootfs, rootfs)
                except OSError as e:
                    # The Go shim's words; a refused mount is no shim fault.
                    raise TTRPCError(UNKNOWN, "failed to mount rootfs component: %s" % e)
                container.rootfs_mounted = True
            runc_mod.write_bundle_options(bundle, opts)
            runc_mod.clear_deleted_mark(bundle)     # a reused bundle dir
            io = ProcessIO(req.stdin, req.stdout, req.stderr, req.terminal,
                           *container.io_ids, container_id=cid,
                           namespace=self.namespace, reaper=self.reaper)
            io.open()
            await io.wait_ready()
            if req.checkpoint:
                # Restored at Start (runc restore); nothing runs until then.
                container.restore_from = (req.checkpoint, req.parent_checkpoint)
                p = Process(container, "", req.stdin, req.stdout, req.stderr, req.terminal, io,
                            status=CREATED_CHECKPOINT)
                container.init = p
                pid = 0
            else:
                pid = await self._runc_create(container, req, io, opts)
                p = Process(container, "", req.stdin, req.stdout, req.stderr, req.terminal, io)
                p.starting = True       # hold an exit until /tasks/create is out
                await self._init_made(container, p, pid)
                container.init = p
        except BaseException:
            if p is not None and pid:
                if self.by_pid.get(pid) is p:
                    del self.by_pid[pid]
                if not p.held_exit:
                    # runc created it but we cannot serve it: do not leave
                    # runc's init waiting behind.
                    try:
                        await runc.delete(cid, bundle, force=True)
                    except Exception as e:
                        self.log.warning("delete after failed create: %s" % e)
            if io is not None:
                io.close()
            if container.rootfs_mounted:
                try:
                    mount.unmount_all(os.path.join(bundle, "rootfs"))
                except OSError as e:
                    self.log.warning("unmount after failed create: %s" % e)
            del self.containers[cid]
            raise
        finally:
            self._end_pid_window()
        self._publish("/tasks/create", ev.TaskCreate(
            container_id=cid, bundle=bundle, rootfs=list(req.rootfs),
            io=ev.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                         terminal=req.terminal),
            checkpoint=req.checkpoint, pid=pid))
        # Watched from now on (as Go): a container can be OOM-killed in its
        # first milliseconds, long before Start returns.
        self._watch_oom(container)
        self._release_held_exit(p)
        return pb.CreateTaskResponse(pid=pid)

    async def _init_made(self, c, p, pid):
        """runc made the init (create or restore): route its exits to p,
        take the pty master, start the copies, find its cgroup."""
        self._register_pid(p, pid)
        if p.terminal:
            await p.io.receive_console()
        p.io.start()
        c.cgroup = _find_cgroup(pid)

    async def _runc_create(self, c, req, io, opts):
        try:
            return await c.runc.create(
                c.id, c.bundle, stdio=None if req.terminal else io.runc_fds(),
                console_socket=io.console_path, no_pivot=c.no_pivot,
                no_new_keyring=bool(opts.get("no_new_keyring")))
        except runc_mod.RuncError as e:
            raise errors.runc_error("OCI runtime create failed", e)

    async def start(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        if p.exec_id:
            return await self._start_exec(c, p)
        p.require("start")
        if p.status == CREATED_CHECKPOINT:
            return await self._start_restore(c, p)
        p.starting = True
        try:
            try:
                await c.runc.start(c.id, c.bundle)
            except runc_mod.RuncError as e:
                raise errors.runc_error("OCI runtime start failed", e)
            if p.status == CREATED:
                p.to(RUNNING)
            self._publish("/tasks/start", ev.TaskStart(container_id=c.id, pid=p.pid))
        finally:
            self._release_held_exit(p)
        return pb.StartResponse(pid=p.pid)

    async def _start_restore(self, c, p):
        """Start of a container created from a checkpoint: runc restore
        (spec runc.md), then it is running like any other."""
        image, parent = c.restore_from
        io = p.io
        p.starting = True
        pid = 0
        self._begin_pid_window()
        try:
            try:
                pid = await c.runc.restore(
                    c.id, c.bundle, image, work_path=c.criu_work, parent_path=parent,
                    stdio=None if p.terminal else io.runc_fds(),
                    console_socket=io.console_path, no_pivot=c.no_pivot)
            except runc_mod.RuncError as e:
                raise errors.runc_error("OCI runtime restore failed", e)
            await self._init_made(c, p, pid)
            c.restore_from = None
            if p.status == CREATED_CHECKPOINT:
                p.to(RUNNING)
            self._publish("/tasks/start", ev.TaskStart(container_id=c.id, pid=pid))
            self._watch_oom(c)
        except BaseException:
            if pid and self.by_pid.get(pid) is p and p.held_exit is None:
                try:
                    await c.runc.kill(c.id, c.bundle, SIGKILL, all=True)
                except Exception as e:
                    self.log.warning("kill after failed restore: %s" % e)
            raise
        finally:
            self._end_pid_window()
            self._release_held_exit(p)
        return pb.StartResponse(pid=pid)

    def _watch_oom(self, c):
        if c.cgroup is None or c.oom is not None:
            return
        from shim import cgroups
        try:
            c.oom = cgroups.watch_oom(c.cgroup, self.loop, lambda: self._publish(
                "/tasks/oom", ev.TaskOOM(container_id=c.id)))
        except OSError as e:
            self.log.warning("cannot watch OOM events of %s: %s" % (c.id, e))

    async def _start_exec(self, c, p):
        p.require("start")
        if c.init.reaped:
            raise failed_precondition("container %s init process is not running" % c.id)
        # Paused: runc would put the new process into the frozen cgroup and hang.
        c.init.require("exec")
        if p.exited.done():         # a failed Start before released Wait
            p.exited = Future()
        p.starting = True
        io = p.io = ProcessIO(p.stdin, p.stdout, p.stderr, p.terminal, *c.io_ids,
                              container_id=c.id, namespace=self.namespace,
                              reaper=self.reaper)
        pid = 0
        self._begin_pid_window()
        try:
            io.open()
            await io.wait_ready()
            try:
                pid = await c.runc.exec(
                    c.id, c.bundle, p.spec, p.exec_id,
                    stdio=None if p.terminal else io.runc_fds(),
                    console_socket=io.console_path)
            except runc_mod.RuncError as e:
                raise errors.runc_error("OCI runtime exec failed", e)
            self._register_pid(p, pid)
            if p.held_exit is None and _pidfd_open is not None:
                try:
                    p.pidfd = _pidfd_open(pid)
                except OSError:
                    pass
            if p.terminal:
                await io.receive_console()
            io.start()
            p.to(RUNNING)
            p.spec = None           # runc has it; not needed any more
        except BaseException:
            if pid:
                if self.by_pid.get(pid) is p:
                    del self.by_pid[pid]
                if p.held_exit is None:
                    try:
                        p.signal(SIGKILL)   # runc started it, but we cannot serve it
                    except OSError:
                        pass
                p.close_pidfd()
                p.held_exit = None
                p.pid = 0
            io.close()
            p.starting = False
            # The exec stays created (it may be deleted); Wait returns now.
            p.exited.set_result(None)
            raise
        finally:
            self._end_pid_window()
        self._publish("/tasks/exec-started", ev.TaskExecStarted(
            container_id=c.id, exec_id=p.exec_id, pid=pid))
        self._release_held_exit(p)
        return pb.StartResponse(pid=pid)

    async def delete(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.require("delete")
        if p.exec_id:
            del c.execs[p.exec_id]
            if p.io is not None:
                await p.io.wait_copied(IO_DRAIN_ON_EXEC_DELETE)
                p.io.close()
            try:
                os.unlink(os.path.join(c.bundle, "%s.pid" % p.exec_id))
            except OSError:
                pass
            p.to(DELETED)
            return pb.DeleteResponse(pid=p.pid, exit_status=p.exit_status,
                                     exited_at=_ts(p.exited_at))
        was_created = p.status == CREATED
        try:
            await c.runc.delete(c.id, c.bundle)
        except runc_mod.RuncError as e:
            # As in Go: runc no longer knows a container that was checkpointed
            # with exit, or one created from a checkpoint and never started.
            if "does not exist" not in str(e):
                raise errors.runc_error("failed to delete task", e)
        if p.status == CREATED_CHECKPOINT:
            c.restore_from = None
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
        if c.oom is not None:
            c.oom.close()
        cleaned = True
        if c.rootfs_mounted:
            try:
                mount.unmount_all(os.path.join(c.bundle, "rootfs"))
            except OSError as e:
                cleaned = False
                self.log.warning("unmount rootfs of %s: %s" % (c.id, e))
        if cleaned:
            runc_mod.mark_deleted(c.bundle)
        self.by_pid.pop(p.pid, None)
        del self.containers[c.id]
        p.to(DELETED)
        self._publish("/tasks/delete", ev.TaskDelete(
            container_id=c.id, pid=p.pid, exit_status=p.exit_status,
            exited_at=_ts(p.exited_at)))
        if self.shutdown_asked:
            self._shutdown_if_idle()
        return pb.DeleteResponse(pid=p.pid, exit_status=p.exit_status,
                                 exited_at=_ts(p.exited_at))

    async def state(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        status = p.wire_status
        if p.exec_id and c.init.status in (PAUSED, PAUSING) and status == RUNNING:
            status = c.init.status
        return pb.StateResponse(
            id=p.id, bundle=c.bundle, pid=p.pid, status=status, stdin=p.stdin,
            stdout=p.stdout, stderr=p.stderr, terminal=p.terminal,
            exit_status=p.exit_status, exited_at=_ts(p.exited_at))

    async def wait(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        await p.exited
        return pb.WaitResponse(exit_status=p.exit_status, exited_at=_ts(p.exited_at))

    async def kill(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.require("kill")
        if p.exec_id:
            try:
                p.signal(req.signal)
            except OSError as e:
                raise errors.classify_kill_error(e)
            return EMPTY
        try:
            await c.runc.kill(c.id, c.bundle, req.signal, all=req.all)
        except runc_mod.RuncError as e:
            raise errors.classify_kill_error(str(e))
        return EMPTY

    async def pids(self, req, ctx):
        c = self._container(req.id)
        try:
            pids = await c.runc.ps(c.id, c.bundle)
        except runc_mod.RuncError as e:
            raise TTRPCError(UNKNOWN, "failed to list pids: %s" % e)
        from shim.pb import types
        by_pid = {p.pid: p for p in c.execs.values() if p.pid}
        out = []
        for pid in pids:
            info = None
            e = by_pid.get(pid)
            if e is not None:
                from shim.pb import runc as runc_pb
                d = runc_pb.ProcessDetails(exec_id=e.exec_id)
                info = wkt.Any(type_url=d.FULL_NAME, value=d.encode())
            out.append(types.ProcessInfo(pid=pid, info=info))
        return pb.PidsResponse(processes=out)

    async def pause(self, req, ctx):
        c = self._container(req.id)
        p = c.init
        p.require("pause")
        p.to(PAUSING)
        try:
            await c.runc.pause(c.id, c.bundle)
        except runc_mod.RuncError as e:
            if p.status == PAUSING:
                p.to(RUNNING)
            raise errors.runc_error("OCI runtime pause failed", e)
        if p.status == PAUSING:
            p.to(PAUSED)
        self._publish("/tasks/paused", ev.TaskPaused(container_id=c.id))
        return EMPTY

    async def resume(self, req, ctx):
        c = self._container(req.id)
        p = c.init
        p.require("resume")
        try:
            await c.runc.resume(c.id, c.bundle)
        except runc_mod.RuncError as e:
            raise errors.runc_error("OCI runtime resume failed", e)
        if p.status == PAUSED:
            p.to(RUNNING)
        self._publish("/tasks/resumed", ev.TaskResumed(container_id=c.id))
        return EMPTY

    async def update(self, req, ctx):
        c = self._container(req.id)
        c.init.require("update")
        value = req.resources.value if req.resources is not None else b"{}"
        try:
            await c.runc.update(c.id, c.bundle, value)
        except runc_mod.RuncError as e:
            raise TTRPCError(UNKNOWN, str(e))
        return EMPTY

    async def close_io(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        if p.io is not None:
            p.io.close_stdin()
        return EMPTY

    async def resize_pty(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.require("resize")
        if p.io is not None:
            try:
                p.io.resize(req.width, req.height)
            except OSError as e:
                raise TTRPCError(UNKNOWN, "resize pty: %s" % (e.strerror or e))
        return EMPTY

    async def exec(self, req, ctx):
        c = self._container(req.id)
        eid = req.exec_id
        if not eid:
            raise invalid_argument("exec id must not be empty")
        if eid in c.execs:
            raise already_exists("id %s" % eid)
        c.init.require("exec")
        value = req.spec.value if req.spec is not None else b""
        try:
            spec = jsonlite.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise TTRPCError(UNKNOWN, "invalid process spec: %s" % e)
        if not isinstance(spec, dict):
            raise TTRPCError(UNKNOWN, "invalid process spec: not a JSON object")
        spec["terminal"] = bool(req.terminal)
        p = Process(c, eid, req.stdin, req.stdout, req.stderr, req.terminal, None)
        p.spec = jsonlite.dumps(spec)
        c.execs[eid] = p
        self._publish("/tasks/exec-added", ev.TaskExecAdded(container_id=c.id, exec_id=eid))
        return EMPTY

    async def checkpoint(self, req, ctx):
        """runc checkpoint of the init (spec task-service.md Checkpoint)."""
        c = self._container(req.id)
        p = c.init
        p.require("checkpoint")
        try:
            o = options.decode_checkpoint(req.options)
        except options.OptionsError as e:
            raise invalid_argument(str(e))
        work = o["work_path"]
        if not work:
            work = os.path.join(c.criu_work, "criu-work")   # removed afterwards
        try:
            await c.runc.checkpoint(
                c.id, c.bundle, req.path, work_path=work, leave_running=not o["exit"],
                tcp_established=o["open_tcp"], ext_unix_sk=o["external_unix_sockets"],
                shell_job=o["terminal"], file_locks=o["file_locks"],
                empty_ns=o["empty_namespaces"])
        except runc_mod.RuncError as e:
            raise _checkpoint_error(e, c.bundle, work)
        finally:
            if not o["work_path"]:
                _remove_tree(work)
        # The Go runc shim never sends it; containerd's shim README says it should.
        self._publish("/tasks/checkpointed", ev.TaskCheckpointed(
            container_id=c.id, checkpoint=req.path))
        return EMPTY

    async def stats(self, req, ctx):
        c = self._container(req.id)
        cg = c.cgroup
        if cg is not None and cg.exists():
            return pb.StatsResponse(stats=cg.stats())
        if cg is not None and c.exit_oom_kills is not None:
            # Stopped, and its cgroup removed (systemd does so when it is
            # empty): the OOM count is what a caller still needs to know.
            return pb.StatsResponse(stats=cg.oom_stats(c.exit_oom_kills))
        raise not_found("cgroup does not exist")

    async def connect(self, req, ctx):
        c = self.containers.get(req.id)
        pid = c.init.pid if c is not None and c.init is not None else 0
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=pid)

    async def shutdown(self, req, ctx):
        # With tasks left, remember it: containerd 2.x does not send another
        # Shutdown after deleting the tasks of a pod's sandbox shim (the
        # Go shim forgets it, and such a shim stays behind).
        self.shutdown_asked = True
        self._shutdown_if_idle()
        return EMPTY

    def _shutdown_if_idle(self):
        if not self.containers and self.shutdown_cb is not None:
            # Reply first, then exit (containerd ignores a closed connection).
            self.loop.call_soon(self.shutdown_cb)


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


def _checkpoint_error(err, bundle, work_path):
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
    return TTRPCError(UNKNOWN, "%s path= %s" % (first, dump))


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
