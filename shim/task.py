"""The containerd.task.v2.Task service (also served as containerd.task.v3.Task).

One shim process serves any number of containers (a pod, a group); every
call is routed by id. Behaviour and errors follow spec task-service.md.

This file is the service boundary: it checks requests and process states
(shim.process), calls into the container (shim.container), builds the
responses, and makes every publish, so the order of events is decided here
only. Exits come from the reaper through shim.exits.
"""
import os

from shim import errors, execs, jsonlite, options
from shim.container import Container
from shim.errors import already_exists, failed_precondition, invalid_argument, not_found
from shim.exits import ExitRouter
from shim.loop import Future, get_loop
from shim.pb import events as ev
from shim.pb import task as pb
from shim.pb import wkt
from shim.process import (CREATED_CHECKPOINT, DELETED, PAUSED, PAUSING, RUNNING, STOPPED,
                          ZERO_TIME, Process)

EMPTY = wkt.Empty()


def _ts(t):
    if t is None:
        return wkt.Timestamp(seconds=ZERO_TIME)
    sec = int(t)
    return wkt.Timestamp(seconds=sec, nanos=int((t - sec) * 1e9))


class _MethodTable:
    """name -> (request type, bound handler) of a TaskService, made when
    asked: nothing of a method not called is touched."""
    __slots__ = ("service",)

    def __init__(self, service):
        self.service = service

    def get(self, name):
        entry = _METHODS.get(name)
        if entry is None:
            return None
        return entry[0], getattr(self.service, entry[1])


_METHODS = {
    "State": (pb.StateRequest, "state"),
    "Create": (pb.CreateTaskRequest, "create"),
    "Start": (pb.StartRequest, "start"),
    "Delete": (pb.DeleteRequest, "delete"),
    "Pids": (pb.PidsRequest, "pids"),
    "Pause": (pb.PauseRequest, "pause"),
    "Resume": (pb.ResumeRequest, "resume"),
    "Checkpoint": (pb.CheckpointTaskRequest, "checkpoint"),
    "Kill": (pb.KillRequest, "kill"),
    "Exec": (pb.ExecProcessRequest, "exec"),
    "ResizePty": (pb.ResizePtyRequest, "resize_pty"),
    "CloseIO": (pb.CloseIORequest, "close_io"),
    "Update": (pb.UpdateTaskRequest, "update"),
    "Wait": (pb.WaitRequest, "wait"),
    "Stats": (pb.StatsRequest, "stats"),
    "Connect": (pb.ConnectRequest, "connect"),
    "Shutdown": (pb.ShutdownRequest, "shutdown"),
}


class TaskService:
    def __init__(self, namespace, reaper, publisher, log, shutdown_cb=None):
        self.loop = get_loop()
        self.namespace = namespace
        self.reaper = reaper
        self.publisher = publisher
        self.log = log
        self.containers = {}
        self.exits = ExitRouter(self._on_exited)
        self.shutdown_cb = shutdown_cb
        self.shutdown_asked = False     # Shutdown came while tasks remained
        self.created = False        # a Create succeeded once (serve's idle exit)
        self.creating = {}          # id -> Future done when its Create in flight returns
        self.closing = False        # the shim is exiting (set by serve)
        reaper.on_exit = self.exits.on_exit

    def methods(self):
        """The table used by the ttrpc server: name -> (request type, handler)."""
        return {name: (req, getattr(self, attr)) for name, (req, attr) in _METHODS.items()}

    def method_table(self):
        """methods() resolved per call (ttrpc.Server.register_service)."""
        return _MethodTable(self)

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
    def _on_exited(self, p, status, when):
        """The ExitRouter's callback: p exited (and is no longer held)."""
        if p.reaped or p.status in (STOPPED, DELETED):
            return
        if p is p.container.init:
            p.reaped = True         # stopped once its execs are settled
        else:
            p.record_exit(status, when)
        if p.io is not None:
            p.io.process_exited()
        self.loop.spawn(self._publish_exit(p, status, when))

    async def _publish_exit(self, p, status, when):
        c = p.container
        await c.settle_exit(p, status, when)
        self._publish("/tasks/exit", ev.TaskExit(
            container_id=c.id, id=p.id, pid=p.pid, exit_status=p.exit_status,
            exited_at=_ts(p.exited_at)))
        p.exited.set_result(None)

    def _watch_oom(self, c):
        c.watch_oom(lambda: self._publish("/tasks/oom", ev.TaskOOM(container_id=c.id)),
                    self.loop)

    # ---- RPCs ------------------------------------------------------------
    async def create(self, req, ctx):
        cid = req.id
        if not cid:
            raise invalid_argument("id must not be empty")
        if cid in self.containers:
            raise already_exists("container %s" % cid)
        if self.closing:
            # Requests in flight are still being answered, but a task made
            # now would die with the shim.
            raise failed_precondition("shim is shutting down")
        c = Container.new(req, self.namespace, self.reaper, self.exits, self.log)
        # Reserve the id before the first await: a concurrent duplicate
        # Create must not touch this container's mounts.
        self.containers[cid] = c
        settled = self.creating[cid] = Future()
        try:
            p = await c.create_init(req)
        except BaseException:
            del self.containers[cid]
            raise
        finally:
            del self.creating[cid]
            settled.set_result(None)
        self.created = True
        self._publish("/tasks/create", ev.TaskCreate(
            container_id=cid, bundle=req.bundle, rootfs=list(req.rootfs),
            io=ev.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
                         terminal=req.terminal),
            checkpoint=req.checkpoint, pid=p.pid))
        # Watched from now on (as Go): a container can be OOM-killed in its
        # first milliseconds, long before Start returns.
        self._watch_oom(c)
        self.exits.release(p)
        return pb.CreateTaskResponse(pid=p.pid)

    async def start(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.require("start")
        if p.exec_id:
            return await self._start_exec(c, p)
        restore = p.status == CREATED_CHECKPOINT
        self.exits.hold(p)
        try:
            if restore:
                await c.restore_init(p)
            else:
                await c.start_init(p)
            self._publish("/tasks/start", ev.TaskStart(container_id=c.id, pid=p.pid))
            if restore:
                self._watch_oom(c)
        finally:
            self.exits.release(p)
        return pb.StartResponse(pid=p.pid)

    async def _start_exec(self, c, p):
        if c.init.reaped:
            raise failed_precondition("container %s init process is not running" % c.id)
        # Paused: runc would put the new process into the frozen cgroup and hang.
        c.init.require("exec")
        self.exits.hold(p)
        pid = await execs.start(c, p)
        self._publish("/tasks/exec-started", ev.TaskExecStarted(
            container_id=c.id, exec_id=p.exec_id, pid=pid))
        self.exits.release(p)
        return pb.StartResponse(pid=pid)

    async def delete(self, req, ctx):
        c = self._container(req.id)
        p = c.process(req.exec_id)
        p.require("delete")
        if p.exec_id:
            await execs.delete(c, p)
            return pb.DeleteResponse(pid=p.pid, exit_status=p.exit_status,
                                     exited_at=_ts(p.exited_at))
        await c.delete_init()
        del self.containers[c.id]
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
        await c.kill(p, req.signal, all=req.all)
        return EMPTY

    async def pids(self, req, ctx):
        # A restarted containerd (2.x) asks Pids to tell a shim serving a
        # task from one leaked between `start` and Create, which it deletes:
        # a Create still in flight is answered once settled (as the Go shim
        # before 2.3 did), or the task it makes would be left to nobody.
        settled = self.creating.get(req.id)
        if settled is not None:
            await settled
        c = self._container(req.id)
        from shim.pb import types
        out = []
        for pid, exec_id in await c.pids():
            info = None
            if exec_id:
                from shim.pb import runc as runc_pb
                d = runc_pb.ProcessDetails(exec_id=exec_id)
                info = wkt.Any(type_url=d.FULL_NAME, value=d.encode())
            out.append(types.ProcessInfo(pid=pid, info=info))
        return pb.PidsResponse(processes=out)

    async def pause(self, req, ctx):
        c = self._container(req.id)
        c.init.require("pause")
        await c.pause()
        self._publish("/tasks/paused", ev.TaskPaused(container_id=c.id))
        return EMPTY

    async def resume(self, req, ctx):
        c = self._container(req.id)
        c.init.require("resume")
        await c.resume()
        self._publish("/tasks/resumed", ev.TaskResumed(container_id=c.id))
        return EMPTY

    async def update(self, req, ctx):
        c = self._container(req.id)
        c.init.require("update")
        await c.update(req.resources.value if req.resources is not None else b"{}")
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
                raise errors.unknown("resize pty: %s" % (e.strerror or e))
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
            raise errors.unknown("invalid process spec: %s" % e)
        if not isinstance(spec, dict):
            raise errors.unknown("invalid process spec: not a JSON object")
        spec["terminal"] = bool(req.terminal)
        p = Process(c, eid, req.stdin, req.stdout, req.stderr, req.terminal, None)
        p.spec = jsonlite.dumps(spec)
        c.execs[eid] = p
        self._publish("/tasks/exec-added", ev.TaskExecAdded(container_id=c.id, exec_id=eid))
        return EMPTY

    async def checkpoint(self, req, ctx):
        """runc checkpoint of the init (spec task-service.md Checkpoint)."""
        c = self._container(req.id)
        c.init.require("checkpoint")
        try:
            o = options.decode_checkpoint(req.options)
        except options.OptionsError as e:
            raise invalid_argument(str(e))
        await c.checkpoint(req.path, o)
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
