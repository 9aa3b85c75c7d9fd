"""Runtime features through CRI: containerd (2.x) asks a runtime handler for
its features (`<shim> -info`, from `runc features`) only when the handler's
runtime_type is io.containerd.runc.v2. The handler form for pyshim that keeps
them is runtime_type = "io.containerd.runc.v2" + runtime_path = <pyshim>
(handler "pyshim-runc" of support.containerd's CRI mode, containerd >= 1.7).

Checked here: that handler reports the same features as the Go shim's
handler "runc" over CRI's Status, the pyshim-named handler reports none
before containerd 2.3.4 (which asks every handler), and a pod on
"pyshim-runc" is really served by pyshim with the typed options.
"""
import os
import shutil

import pytest

from support.containerd import (CRI_GO_HANDLER, CRI_NAMESPACE, CRI_PY_HANDLER,
                                CRI_PY_RUNC_HANDLER, Containerd, containerd_version,
                                find_pyshim_binary)

pytestmark = pytest.mark.integration


def _fields(data):
    """(field number, value) of a protobuf message: varints as int,
    length-delimited as bytes (all that StatusResponse needs here)."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise ValueError("unexpected wire type %d" % wire)
        yield field, value


def _varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7f) << shift
        if b < 0x80:
            return value, i
        shift += 7


def handler_features(c):
    """{handler name: {"recursive_read_only_mounts": bool, "user_namespaces": bool}}
    from CRI Status (StatusResponse.runtime_handlers, field 3). Decoded by
    hand: the api.proto of containerd 1.6 that the other CRI tests compile
    predates that field."""
    status = c.cri.channel.unary_unary("/runtime.v1.RuntimeService/Status",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
    out = {}
    for field, value in _fields(status(b"", timeout=30)):
        if field != 3:
            continue
        h = dict(_fields(value))
        feats = dict(_fields(h.get(2, b"")))
        out[h.get(1, b"").decode()] = {"recursive_read_only_mounts": bool(feats.get(1)),
                                      "user_namespaces": bool(feats.get(2))}
    return out


@pytest.fixture(scope="module")
def containerd():
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("needs root and runc")
    if containerd_version() < (2, 0, 0):
        pytest.skip("containerd %s's CRI reports no runtime handler features (2.0+)"
                    % ".".join(map(str, containerd_version())))
    if find_pyshim_binary() is None:
        pytest.fail("containerd-shim-pyshim-v1 is not installed", pytrace=False)
    pytest.importorskip("grpc")
    c = Containerd(cri=True)
    try:
        c.start()
        c.import_cri_images()
    except Exception:
        c.cleanup()
        raise
    yield c
    problems = c.cleanup()
    if problems:
        pytest.fail("CRI containerd left things behind:\n  %s" % "\n  ".join(problems),
                    pytrace=False)


def test_runc_v2_handler_with_pyshim_path_reports_go_features(containerd):
    feats = handler_features(containerd)
    assert CRI_GO_HANDLER in feats and CRI_PY_RUNC_HANDLER in feats, feats
    # Same runc, same `runc features`: the same answer as the Go shim's.
    assert feats[CRI_PY_RUNC_HANDLER] == feats[CRI_GO_HANDLER], feats
    # Recursive read-only mounts need runc's "rro" (runc >= 1.1) and a kernel
    # >= 5.12: both true on every machine this runs on.
    assert feats[CRI_GO_HANDLER]["recursive_read_only_mounts"], feats
    # The pyshim-named handler: containerd before 2.3.4 never asks it (no
    # features); 2.3.4 and 2.4 ask every handler, and pyshim answers `-info`
    # with the runc options from its ConfigPath TOML.
    if containerd.version < (2, 3, 4):
        assert feats.get(CRI_PY_HANDLER, {}) == {"recursive_read_only_mounts": False,
                                                 "user_namespaces": False}, feats
    else:
        assert feats[CRI_PY_HANDLER] == feats[CRI_GO_HANDLER], feats


def test_pod_on_runc_v2_handler_is_served_by_pyshim(containerd):
    from support.cri import CONTAINER_RUNNING, cri_pb2
    pb = cri_pb2()
    c = containerd
    name = "features-pod"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=name),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=c.cgroup_parent(name),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=2))))
    pod = c.cri.run_pod_sandbox(cfg, runtime_handler=CRI_PY_RUNC_HANDLER)
    try:
        image = c.import_image(namespace=CRI_NAMESPACE)
        cid = c.cri.create_container(pod, pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=image),
            command=["sleep", "1000"]), cfg)
        c.cri.start_container(cid)
        assert c.cri.container_status(cid).state == CONTAINER_RUNNING
        r = c.cri.exec_sync(cid, ["sh", "-c", "echo hi from $(hostname)"])
        assert (r.exit_code, r.stdout) == (0, b"hi from %s\n" % os.uname().nodename.encode())
        # Both tasks are served by one pyshim process (python, not Go).
        shims = [p for p, argv in c.shims(CRI_NAMESPACE) if "start" not in argv
                 and "delete" not in argv]
        assert len(shims) == 1, shims
        exe = os.path.basename(os.readlink("/proc/%d/exe" % shims[0]))
        assert exe.startswith("python"), exe
        # The typed options arrived: runc state under the handler's Root.
        assert sorted(os.listdir(os.path.join(c.cri_runc_base, CRI_NAMESPACE))) \
            == sorted([pod, cid])
    finally:
        c.cri.stop_pod_sandbox(pod)
        c.cri.remove_pod_sandbox(pod)
