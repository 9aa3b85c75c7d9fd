"""Runtime features through CRI: containerd (2.x) asks a runtime handler for
its features (`<shim> -info`, from `runc features`) only when the handler's
runtime_type is io.containerd.runc.v2. The handler form for pyshim that keeps
them is runtime_type = "io.containerd.runc.v2" + runtime_path = <pyshim>
(handler "pyshim-runc" of support.containerd's CRI mode, containerd >= 1.7).

Checked here: that handler reports the same features as the Go shim's
handler "runc" over CRI's Status, the pyshim-named handler reports none
before containerd 2.3.4 (which asks every handler), and a pod on
"pyshim-runc" is really served by pyshim with the typed options.

User namespaces (`hostUsers: false`): a pod sandbox and its containers with
the userns_options the kubelet sends (mode POD, one uid and one gid mapping
of 65536 ids), on the Go shim and on both pyshim handler forms, with the
same outcome: the mapping in the container's uid_map/gid_map, the idmapped
rootfs (root's files are root's inside, the mapped host id's outside), exit
codes, and nothing left after stop/remove. Such a pod cannot use the host
network, so the module's containerd gets a CNI network that configures
nothing (support.cri.write_fake_cni): containerd 2.x creates the pod's
network namespace inside the pod's user namespace itself.
"""
import json
import os
import re
import shutil
import time

import pytest

from support.containerd import (CRI_GO_HANDLER, CRI_NAMESPACE, CRI_PY_HANDLER,
                                CRI_PY_RUNC_HANDLER, Containerd, containerd_version,
                                find_pyshim_binary, mounts_under, pid_alive)

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
        pytest.skip("containerd %s: CRI reports runtime handler features and runs "
                    "user-namespaced pods from 2.0 on"
                    % ".".join(map(str, containerd_version())))
    if find_pyshim_binary() is None:
        pytest.fail("containerd-shim-pyshim-v1 is not installed", pytrace=False)
    pytest.importorskip("grpc")
    c = Containerd(cri=True)
    from support.cri import write_fake_cni
    write_fake_cni(c.cni_dir)      # for the user-namespaced pods' own netns
    # Made by containerd (netns mounts) and libcni (its result cache) for
    # pods with a network namespace; removed at the end if new and empty.
    machine_dirs = [d for d in ("/var/lib/cni/results", "/var/lib/cni", "/run/netns")
                    if not os.path.exists(d)]
    try:
        c.start()
        c.import_cri_images()
    except Exception:
        c.cleanup()
        raise
    yield c
    problems = c.cleanup()
    for d in machine_dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass
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


# ------------------------------------------------------------ user namespaces

# What the kubelet sends for hostUsers: false: one mapping of 65536 ids for
# uids and gids, at a host id that is a multiple of 65536.
USERNS_HOST_ID = 65536 * 7
USERNS_SIZE = 65536
USERNS_HANDLERS = [CRI_GO_HANDLER, CRI_PY_RUNC_HANDLER, CRI_PY_HANDLER]
USERNS_MAP = "0 %d %d" % (USERNS_HOST_ID, USERNS_SIZE)


def _userns_namespace_options(pb):
    ids = [pb.IDMapping(host_id=USERNS_HOST_ID, container_id=0, length=USERNS_SIZE)]
    # network POD (never the host's with a user namespace), pid CONTAINER,
    # ipc POD: the kubelet's defaults.
    return pb.NamespaceOption(network=0, pid=1, ipc=0, userns_options=pb.UserNamespace(
        mode=0, uids=ids, gids=list(ids)))


def runtime_idmap_unsupported():
    """Why the OCI runtime of the handlers cannot run a user-namespaced pod's
    containers (None if it can). containerd 2.x gives their /etc/hosts,
    /etc/hostname and /etc/resolv.conf bind mounts the pod's id mappings and
    refuses to create the task unless `<runtime> features` reports
    mountExtensions.idmap enabled (runc >= 1.2); runc 1.1 would silently
    ignore the mappings."""
    import subprocess
    from support.cgroup import runc_binary
    try:
        out = subprocess.run([runc_binary(), "features"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=30).stdout
        feats = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return "`%s features` failed: %s" % (runc_binary(), e)
    version = subprocess.run([runc_binary(), "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout.split("\n")[0]
    linux = feats.get("linux") or {}
    idmap = (linux.get("mountExtensions") or {}).get("idmap") or {}
    if "user" not in (linux.get("namespaces") or []) or not idmap.get("enabled"):
        return ("%s (%s) reports no idmapped mounts (`features`: mountExtensions.idmap), "
                "so containerd refuses a user-namespaced pod's containers; that needs "
                "runc >= 1.2 (the cgroup v2 node of .ci/v2node has 1.3)"
                % (runc_binary(), version))
    return None


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out after %ss waiting for %s" % (timeout, what)
        time.sleep(0.1)


def _spec_namespace(c, id, kind):
    with open(os.path.join(c.bundle(id, CRI_NAMESPACE), "config.json")) as f:
        spec = json.load(f)
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == kind:
            return ns.get("path", "")
    return None


def _proc_map(pid, name):
    with open("/proc/%d/%s" % (pid, name)) as f:
        return " ".join(f.read().split())


def _userns_pod(c, handler):
    """Runs a user-namespaced pod on `handler`, observes it from inside and
    from the host, stops and removes it, checks that nothing is left; returns
    (what it saw, the CRIError that ended it early or None). What it saw has
    no pids or ids: it compares across handlers."""
    from support.cri import (CONTAINER_EXITED, CONTAINER_RUNNING, SANDBOX_READY, CRIError,
                             cri_pb2)
    pb = cri_pb2()
    cri = c.cri
    name = "userns-" + handler
    log_dir = os.path.join(c.dir, "pod-logs", name)
    os.makedirs(log_dir)
    ns_opts = _userns_namespace_options(pb)
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid="uid-" + name),
        log_directory=log_dir,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=c.cgroup_parent(name),
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns_opts)))
    image = c.import_image(namespace=CRI_NAMESPACE)
    seen, error = {}, None
    pod = cri.run_pod_sandbox(cfg, runtime_handler=handler)
    ids = [pod]
    try:
        assert cri.pod_sandbox_status(pod).status.state == SANDBOX_READY
        shims = [p for p, _ in c.shims(CRI_NAMESPACE)]
        exe = {os.path.basename(os.readlink("/proc/%d/exe" % p)) for p in shims}
        seen["shim"] = "python" if all(e.startswith("python") for e in exe) else sorted(exe)
        # containerd made the pod's network namespace inside its user
        # namespace and pinned both; the pause process runs in them.
        netns = _spec_namespace(c, pod, "network")
        userns = _spec_namespace(c, pod, "user")
        assert netns and userns, (netns, userns)
        pause = c.tasks(CRI_NAMESPACE)[pod][0]
        assert os.stat("/proc/%d/ns/user" % pause).st_ino == os.stat(userns).st_ino
        seen["sandbox_uid_map"] = _proc_map(pause, "uid_map")

        def container(cname, cmd):
            cid = cri.create_container(pod, pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=cname), image=pb.ImageSpec(image=image),
                command=cmd, log_path=cname + ".log",
                linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=ns_opts))), cfg)
            ids.append(cid)
            cri.start_container(cid)
            return cid

        main = container("main", ["sleep", "1000"])
        assert cri.container_status(main).state == CONTAINER_RUNNING
        # It joins the sandbox's user namespace (by /proc/<pause pid>/ns/user).
        assert os.stat(_spec_namespace(c, main, "user")).st_ino == os.stat(userns).st_ino

        def run(*cmd):
            r = cri.exec_sync(main, list(cmd))
            return r.exit_code, r.stdout.decode(), r.stderr.decode()
        # Inside: the mapping, root, and the image's files owned by root.
        seen["uid_map"] = " ".join(run("cat", "/proc/self/uid_map")[1].split())
        seen["gid_map"] = " ".join(run("cat", "/proc/self/gid_map")[1].split())
        seen["id"] = run("id", "-u")[1].strip() + ":" + run("id", "-g")[1].strip()
        seen["owners"] = run("stat", "-c", "%n %u:%g", "/", "/bin", "/bin/busybox")[1].splitlines()
        seen["made"] = run("sh", "-c", "echo x > /made-inside && stat -c %u:%g /made-inside")
        seen["exec_exit"] = run("sh", "-c", "exit 3")[0]
        # Outside: the task runs as the mapped host id in that user namespace;
        # the rootfs shows the mapped ids (idmapped lower layers; the file
        # made inside is on the upper layer, created as the mapped id).
        pid = c.tasks(CRI_NAMESPACE)[main][0]
        with open("/proc/%d/status" % pid) as f:
            seen["host_uid"] = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
        seen["host_uid_map"] = _proc_map(pid, "uid_map")
        rootfs = os.path.join(c.bundle(main, CRI_NAMESPACE), "rootfs")
        seen["host_owners"] = ["%s %d:%d" % (p, st.st_uid, st.st_gid) for p in
                               ("bin/busybox", "made-inside")
                               for st in [os.stat(os.path.join(rootfs, p))]]
        # A container that exits by itself, with its code.
        job = container("job", ["sh", "-c", "echo job as $(id -u); exit 7"])
        _wait(lambda: cri.container_status(job).state == CONTAINER_EXITED, 30, "job to exit")
        st = cri.container_status(job)
        seen["job"] = (st.exit_code, st.reason)
        with open(st.log_path) as f:
            seen["job_log"] = [line.split(" ", 3)[-1] for line in f.read().splitlines()]
    except CRIError as e:
        error = e
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)
    # Nothing left: shim, bundles, runc state, mounts, the pinned namespaces.
    _wait(lambda: not any(pid_alive(p) for p in shims), 20, "the pod's shim to exit")
    for id in ids:
        assert not os.path.exists(c.bundle(id, CRI_NAMESPACE)), id
        assert not os.path.exists(os.path.join(c.cri_runc_base, CRI_NAMESPACE, id)), id
    assert [m for m in mounts_under(c.dir) if any(i in m for i in ids)] == []
    assert not os.path.exists(netns), netns
    assert not os.path.exists(userns), userns
    assert not set(ids) & set(c.containers(CRI_NAMESPACE))
    return seen, error


# containerd 2.1's CRI gives a user-namespaced container's task runc options
# (IoUid/IoGid: the mapped owner of its stdio), converting the handler's
# options: a handler of type io.containerd.pyshim.v1 has CRI's
# runtimeoptions.v1.Options (ConfigPath) there, which it cannot convert, so
# it refuses the container before any shim is asked (client/task.go
# getRuncOptions, from container_start_linux.go updateContainerIOOwner).
FORM_A_REFUSAL = 'can\'t unmarshal type "runtimeoptions.v1.Options"'


def test_user_namespace_pod_same_as_go(containerd):
    """hostUsers: false through CRI on the Go shim ("runc") and on pyshim
    as handler form B ("pyshim-runc"): the same outcome. Form A ("pyshim")
    runs the user-namespaced sandbox, but containerd 2.1 itself refuses its
    containers (FORM_A_REFUSAL). containerd checks no handler feature for
    such pods; the kubelet does (user_namespaces in CRI Status: form B and
    the Go shim with runc >= 1.2, see the first test)."""
    why = runtime_idmap_unsupported()
    if why:
        pytest.skip(why)
    want = {
        "sandbox_uid_map": USERNS_MAP,
        "uid_map": USERNS_MAP, "gid_map": USERNS_MAP, "host_uid_map": USERNS_MAP,
        "id": "0:0", "owners": ["/ 0:0", "/bin 0:0", "/bin/busybox 0:0"],
        "made": (0, "0:0\n", ""), "exec_exit": 3,
        "host_uid": str(USERNS_HOST_ID),
        "host_owners": ["bin/busybox %d:%d" % (USERNS_HOST_ID, USERNS_HOST_ID),
                        "made-inside %d:%d" % (USERNS_HOST_ID, USERNS_HOST_ID)],
        "job": (7, "Error"), "job_log": ["job as 0"],
    }
    for handler in (CRI_GO_HANDLER, CRI_PY_RUNC_HANDLER, CRI_PY_HANDLER):
        seen, error = _userns_pod(containerd, handler)
        shim = seen.pop("shim")
        assert shim == (["containerd-shim-runc-v2"] if handler == CRI_GO_HANDLER
                        else "python"), (handler, shim)
        refused = error is not None and FORM_A_REFUSAL in str(error)
        if handler == CRI_PY_HANDLER and (refused or containerd.version[:2] == (2, 1)):
            # Refused by containerd, not by pyshim: the sandbox ran mapped.
            assert refused, error
            assert seen == {"sandbox_uid_map": USERNS_MAP}, seen
            continue
        assert error is None, "%s: %s" % (handler, error)
        assert seen == want, handler
