"""Restore a task from a `ctr task checkpoint` image, as the Go client does.

ctr has no command for it: `ctr container restore` wants a *container*
checkpoint (its index names the runtime and snapshotter), and `ctr task
start` creates a plain task. The Go client's NewTask(WithTaskCheckpoint(img))
sends containerd's Tasks.Create with `checkpoint` = the index's criu tar
descriptor (containerd unpacks it and hands the directory to the shim as
CreateTaskRequest.checkpoint; the shim restores at Start). This module does
the same through containerd's gRPC API:

    restore_task(c, id, "containerd.io/checkpoint/<id>:<date>") -> pid

for an existing container `id` without a task (its snapshot is the rootfs,
as NewTask mounts it). No stdio (as `ctr run --null-io`).

The few messages needed are declared here with pyshim's own proto codec
(shim.pb._codec); the transport is grpcio (a test extra), imported lazily.
"""
import json

from shim.pb import _codec as _c
from shim.pb import types
from shim.pb._codec import (BOOL, INT64, MAPF, MESSAGE, OPTIONAL, REPEATED, SINGLE, STRING,
                            UINT32, init)

CHECKPOINT_MEDIA_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
TASKS = "/containerd.services.tasks.v1.Tasks/"
SNAPSHOTS = "/containerd.services.snapshots.v1.Snapshots/"


class Descriptor(_c.Message):
    __slots__ = ("media_type", "digest", "size", "annotations")
    FULL_NAME = "containerd.types.Descriptor"


class CreateTaskRequest(_c.Message):
    __slots__ = ("container_id", "rootfs", "stdin", "stdout", "stderr", "terminal",
                 "checkpoint")
    FULL_NAME = "containerd.services.tasks.v1.CreateTaskRequest"


class CreateTaskResponse(_c.Message):
    __slots__ = ("container_id", "pid")
    FULL_NAME = "containerd.services.tasks.v1.CreateTaskResponse"


class StartRequest(_c.Message):
    __slots__ = ("container_id", "exec_id")
    FULL_NAME = "containerd.services.tasks.v1.StartRequest"


class StartResponse(_c.Message):
    __slots__ = ("pid",)
    FULL_NAME = "containerd.services.tasks.v1.StartResponse"


class MountsRequest(_c.Message):
    __slots__ = ("snapshotter", "key")
    FULL_NAME = "containerd.services.snapshots.v1.MountsRequest"


class MountsResponse(_c.Message):
    __slots__ = ("mounts",)
    FULL_NAME = "containerd.services.snapshots.v1.MountsResponse"


init(Descriptor, (
    (1, "media_type", STRING, SINGLE, None),
    (2, "digest", STRING, SINGLE, None),
    (3, "size", INT64, SINGLE, None),
    (5, "annotations", STRING, MAPF, (STRING, STRING, None)),
))
init(CreateTaskRequest, (
    (1, "container_id", STRING, SINGLE, None),
    (3, "rootfs", MESSAGE, REPEATED, types.Mount),
    (4, "stdin", STRING, SINGLE, None),
    (5, "stdout", STRING, SINGLE, None),
    (6, "stderr", STRING, SINGLE, None),
    (7, "terminal", BOOL, SINGLE, None),
    (8, "checkpoint", MESSAGE, OPTIONAL, Descriptor),
))
init(CreateTaskResponse, (
    (1, "container_id", STRING, SINGLE, None),
    (2, "pid", UINT32, SINGLE, None),
))
init(StartRequest, (
    (1, "container_id", STRING, SINGLE, None),
    (2, "exec_id", STRING, SINGLE, None),
))
init(StartResponse, ((1, "pid", UINT32, SINGLE, None),))
init(MountsRequest, (
    (1, "snapshotter", STRING, SINGLE, None),
    (2, "key", STRING, SINGLE, None),
))
init(MountsResponse, ((1, "mounts", MESSAGE, REPEATED, types.Mount),))


class Client:
    """Unary calls on containerd's gRPC socket in one namespace."""

    def __init__(self, address, namespace, timeout=120):
        import grpc
        self.channel = grpc.insecure_channel("unix://" + address)
        self.metadata = (("containerd-namespace", namespace),)
        self.timeout = timeout

    def call(self, method, request, response_cls):
        fn = self.channel.unary_unary(method, request_serializer=lambda m: m.encode(),
                                      response_deserializer=response_cls.decode)
        return fn(request, timeout=self.timeout, metadata=self.metadata)

    def close(self):
        self.channel.close()


def image_target(c, ref):
    """The target digest of image `ref` (from `ctr image ls`)."""
    for line in c.ctr("image", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == ref:
            return f[2]
    raise LookupError("image %s not found" % ref)


def checkpoint_descriptor(c, ref):
    """The criu tar descriptor in the index of checkpoint image `ref`."""
    index = json.loads(c.ctr("content", "get", image_target(c, ref)).stdout)
    for m in index.get("manifests") or []:
        if m.get("mediaType") == CHECKPOINT_MEDIA_TYPE:
            return Descriptor(media_type=m["mediaType"], digest=m["digest"], size=m["size"])
    raise LookupError("no %s in checkpoint image %s: %s" % (CHECKPOINT_MEDIA_TYPE, ref, index))


def restore_task(c, id, ref):
    """Create container `id`'s task from checkpoint image `ref` and start it
    (the restore happens at Start); returns the new task's pid."""
    info = json.loads(c.ctr("container", "info", id).stdout)
    desc = checkpoint_descriptor(c, ref)
    cl = Client(c.address, c.namespace)
    try:
        mounts = cl.call(SNAPSHOTS + "Mounts", MountsRequest(
            snapshotter=info["Snapshotter"], key=info["SnapshotKey"]), MountsResponse).mounts
        cl.call(TASKS + "Create", CreateTaskRequest(container_id=id, rootfs=mounts,
                                                    checkpoint=desc), CreateTaskResponse)
        return cl.call(TASKS + "Start", StartRequest(container_id=id), StartResponse).pid
    finally:
        cl.close()
