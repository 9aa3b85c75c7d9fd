"""A small client for containerd's CRI plugin (Kubernetes CRI v1), for tests.

    pb = cri_pb2()                       # generated message classes (runtime.v1)
    c = CRIClient("/run/.../c.sock")     # containerd's grpc socket
    pod = c.run_pod_sandbox(pb.PodSandboxConfig(...), runtime_handler="pyshim")
    r = c.exec_sync(cid, ["echo", "hi"])
    ws = StreamClient(c.exec(cid, ["sh"], tty=True, stdin=True).url)
    ws.resize(100, 30); ws.send_stdin(b"stty size\\n"); ws.read_until(b"30 100")

The CRI schema (k8s.io/cri-api/pkg/apis/runtime/v1/api.proto) is not part of
this repository: api_proto() takes it from Debian's containerd source package
(the version installed here) at test time, in this order:

  1. $PYSHIM_CRI_API_PROTO (a path);
  2. the test cache: <cache_dir()>/cri/<containerd version>/api.proto;
  3. the containerd-suite cache (~/.cache/containerd-suite/*/gopath/...),
     unless $PYSHIM_CRI_NO_SUITE_CACHE is set;
  4. `apt-get source --download-only containerd=<version>`, extracting only
     that file from the orig tarball; when apt has no deb-src entry for it,
     deb-src entries are derived from the machine's Debian `deb` entries into
     /etc/apt/sources.list.d/pyshim-deb-src.sources (then apt-get update);
     containerd 2.x's Debian source vendors no cri-api, so for it instead:
     `apt-get download` of the cri-api library package it builds with
     (golang-k8s-cri-api-dev, or golang-github-kubernetes-cri-api-dev in
     older releases), extracting the file from the .deb.

cri_pb2() strips the gogoproto import and options from a copy and compiles it
with protoc (Debian protobuf-compiler) into the cache, then imports it. gRPC
calls go through grpcio's generic unary_unary (no generated stubs). The
streaming (Exec/Attach) URLs are served by StreamClient, a stdlib websocket
client speaking the `v4.channel.k8s.io` subprotocol.
"""
import base64
import glob
import hashlib
import importlib.util
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

from .image import cache_dir

API_PROTO_SUBPATH = "vendor/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
SUITE_CACHE_GLOB = os.path.join(
    "~", ".cache", "containerd-suite", "*", "gopath", "src", "github.com", "containerd",
    "containerd", API_PROTO_SUBPATH)
APT_SOURCES = "/etc/apt/sources.list"
APT_SOURCES_D = "/etc/apt/sources.list.d"
OUR_SOURCES = os.path.join(APT_SOURCES_D, "pyshim-deb-src.sources")

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"

# NamespaceMode and ContainerState values of the CRI API.
NS_POD, NS_CONTAINER, NS_NODE = 0, 1, 2
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1


class CRISetupError(RuntimeError):
    """The CRI schema or its compiler is not available."""


# ---------------------------------------------------------------- api.proto

def containerd_version():
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containerd"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    v = r.stdout.strip()
    if r.returncode != 0 or not v:
        raise CRISetupError("containerd is not installed as a Debian package "
                            "(dpkg-query -W containerd); set PYSHIM_CRI_API_PROTO")
    return v


def _safe(version):
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def _install(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = "%s.tmp.%d" % (dst, os.getpid())
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def api_proto(use_suite_cache=None):
    """Path of the CRI v1 api.proto (see the module docstring for the order)."""
    env = os.environ.get("PYSHIM_CRI_API_PROTO")
    if env:
        if not os.path.isfile(env):
            raise CRISetupError("PYSHIM_CRI_API_PROTO=%s: no such file" % env)
        return env
    version = containerd_version()
    cached = os.path.join(cache_dir(), "cri", _safe(version), "api.proto")
    if os.path.isfile(cached):
        return cached
    if use_suite_cache is None:
        use_suite_cache = not os.environ.get("PYSHIM_CRI_NO_SUITE_CACHE")
    if use_suite_cache:
        want = "/%s/" % version
        for p in sorted(glob.glob(os.path.expanduser(SUITE_CACHE_GLOB))):
            if want in p:
                return _install(p, cached)
    if _major(version) >= 2:
        return fetch_api_proto_deb(cached)
    return fetch_api_proto(version, cached)


def _major(version):
    """Major of a Debian version such as 2.1.9+ds1-5 (or 1:2.1.9...), 0 if none."""
    m = re.match(r"^(?:\d+:)?(\d+)", version)
    return int(m.group(1)) if m else 0


def _apt_get(args, cwd=None, timeout=600):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(["apt-get", "-q"] + list(args), cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)


def fetch_api_proto(version, dest):
    """apt-get source --download-only containerd=VERSION in a temp dir beside
    dest, extract api.proto from the orig tarball to dest; returns dest.
    Adds deb-src entries (OUR_SOURCES) when apt lacks them."""
    if shutil.which("apt-get") is None:
        raise CRISetupError("apt-get not found: cannot fetch the CRI api.proto; "
                            "set PYSHIM_CRI_API_PROTO")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="src.", dir=os.path.dirname(dest))
    try:
        args = ["source", "--download-only", "containerd=%s" % version]
        r = _apt_get(args, cwd=tmp)
        if r.returncode != 0:
            if ensure_deb_src():
                u = _apt_get(["update"])
                if u.returncode != 0:
                    raise CRISetupError("apt-get update failed:\n%s" % u.stdout[-2000:])
            else:
                _apt_get(["update"])   # maybe just stale lists
            r = _apt_get(args, cwd=tmp)
        if r.returncode != 0:
            raise CRISetupError("apt-get source --download-only containerd=%s failed:\n%s"
                                % (version, r.stdout[-2000:]))
        tars = sorted(glob.glob(os.path.join(tmp, "containerd_*.orig*.tar.*")))
        if not tars:
            raise CRISetupError("apt-get source gave no orig tarball: %s" % os.listdir(tmp))
        out = os.path.join(tmp, "x")
        os.mkdir(out)
        for t in tars:
            _extract(t, out)
            found = glob.glob(os.path.join(out, "*", API_PROTO_SUBPATH))
            if found:
                return _install(found[0], dest)
        raise CRISetupError("%s not found in %s" % (API_PROTO_SUBPATH,
                                                    ", ".join(map(os.path.basename, tars))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The cri-api library package, by its name in Debian >= trixie / before it.
CRI_API_DEBS = ("golang-k8s-cri-api-dev", "golang-github-kubernetes-cri-api-dev")
DEB_API_PROTO = "usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"


def fetch_api_proto_deb(dest):
    """apt-get download the first cri-api library package apt knows (after
    an apt-get update if none), copy its api.proto to dest; returns dest."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CRISetupError("apt-get/dpkg-deb not found: cannot fetch the CRI api.proto; "
                            "set PYSHIM_CRI_API_PROTO")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="deb.", dir=os.path.dirname(dest))
    try:
        out = ""
        for update in (False, True):
            if update:
                _apt_get(["update"])
            for name in CRI_API_DEBS:
                r = _apt_get(["download", name], cwd=tmp)
                out += r.stdout[-1000:]
                if r.returncode == 0:
                    break
            else:
                continue
            break
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if not debs:
            raise CRISetupError("apt-get download %s failed:\n%s"
                                % (" / ".join(CRI_API_DEBS), out))
        x = os.path.join(tmp, "x")
        subprocess.run(["dpkg-deb", "-x", debs[0], x], check=True)
        found = os.path.join(x, DEB_API_PROTO)
        if not os.path.isfile(found):
            raise CRISetupError("%s has no %s" % (os.path.basename(debs[0]), DEB_API_PROTO))
        return _install(found, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(tarball, out):
    """Extract */API_PROTO_SUBPATH from tarball into out: tar if it can (xz
    needs xz-utils, Priority standard), else Python's tarfile."""
    r = subprocess.run(["tar", "-xf", tarball, "-C", out, "--wildcards",
                        "*/" + API_PROTO_SUBPATH],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode == 0:
        return
    import tarfile
    with tarfile.open(tarball) as tf:
        for m in tf:
            parts = m.name.split("/", 1)
            if m.isfile() and len(parts) == 2 and parts[1] == API_PROTO_SUBPATH:
                src = tf.extractfile(m)
                path = os.path.join(out, parts[0], API_PROTO_SUBPATH)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    shutil.copyfileobj(src, f)
                return


# --- deb-src entries (derived from the machine's Debian `deb` entries) ------

def _parse_deb822(path):
    out, cur, key = [], {}, None
    with open(path) as f:
        lines = f.read().splitlines() + [""]
    for line in lines:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key:
            cur[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            cur[key] = value.strip()
    res = []
    for e in out:
        if e.get("enabled", "yes").lower() == "no":
            continue
        res.append({"file": path, "types": e.get("types", "").split(),
                    "uris": e.get("uris", "").split(), "suites": e.get("suites", "").split(),
                    "components": e.get("components", "").split(),
                    "signed-by": e.get("signed-by", "")})
    return res


def _parse_one_line(path):
    res = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(deb|deb-src)(?:\s+\[([^\]]*)\])?\s+(\S+)\s+(\S+)\s*(.*)$", line)
            if not m:
                continue
            opts = dict(o.partition("=")[::2] for o in (m.group(2) or "").split())
            res.append({"file": path, "types": [m.group(1)], "uris": [m.group(3)],
                        "suites": [m.group(4)], "components": m.group(5).split(),
                        "signed-by": opts.get("signed-by", "")})
    return res


def apt_entries():
    entries = []
    if os.path.isfile(APT_SOURCES):
        entries += _parse_one_line(APT_SOURCES)
    for path in sorted(glob.glob(os.path.join(APT_SOURCES_D, "*"))):
        try:
            if path.endswith(".list"):
                entries += _parse_one_line(path)
            elif path.endswith(".sources"):
                entries += _parse_deb822(path)
        except (OSError, UnicodeDecodeError):
            continue
    return entries


def _codename():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("VERSION_CODENAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _is_debian(e, codename):
    if "deb" not in e["types"]:
        return False
    if "debian-archive-keyring" in e["signed-by"]:
        return True
    base = os.path.basename(e["file"])
    if base == "debian.sources":
        return True
    if base == "sources.list" and codename and "main" in e["components"]:
        return all(s == codename or s.startswith(codename + "-") for s in e["suites"])
    return False


def debian_archive(entries=None):
    """(uri, signed_by) of this machine's main Debian archive: the first
    Debian `deb` entry (as derive_deb_src tells them) that is not the
    security archive. signed_by may be ''. None when there is no such entry.
    For private apt setups of other Debian suites (support/criu.py)."""
    if entries is None:
        entries = apt_entries()
    codename = _codename()
    for e in entries:
        if not _is_debian(e, codename):
            continue
        if not [s for s in e["suites"] if not s.endswith("-security")]:
            continue
        for uri in e["uris"]:
            if not uri.rstrip("/").endswith("-security"):
                return uri, e["signed-by"]
    return None


def derive_deb_src(entries):
    """deb822 text with the deb-src entries the Debian deb entries lack ('' if none)."""
    have = {(u.rstrip("/"), s) for e in entries if "deb-src" in e["types"]
            for u in e["uris"] for s in e["suites"]}
    codename = _codename()
    stanzas = []
    for e in entries:
        if not _is_debian(e, codename):
            continue
        for uri in e["uris"]:
            suites = [s for s in e["suites"] if (uri.rstrip("/"), s) not in have]
            if not suites:
                continue
            lines = ["Types: deb-src", "URIs: " + uri, "Suites: " + " ".join(suites)]
            if e["components"]:
                lines.append("Components: " + " ".join(e["components"]))
            if e["signed-by"]:
                lines.append("Signed-By: " + e["signed-by"])
            stanzas.append("\n".join(lines) + "\n")
            have.update((uri.rstrip("/"), s) for s in suites)
    if not stanzas:
        return ""
    return ("# Written by pyshim's tests (tests/support/cri.py): source entries derived\n"
            "# from this machine's Debian entries, for `apt-get source containerd`.\n\n"
            + "\n".join(stanzas))


def ensure_deb_src():
    """Write OUR_SOURCES if Debian deb-src entries are missing; True if written."""
    entries = [e for e in apt_entries() if e["file"] != OUR_SOURCES]
    text = derive_deb_src(entries)
    if not text:
        return False
    old = None
    if os.path.exists(OUR_SOURCES):
        with open(OUR_SOURCES) as f:
            old = f.read()
    if text == old:
        return False
    with open(OUR_SOURCES + ".tmp", "w") as f:
        f.write(text)
    os.replace(OUR_SOURCES + ".tmp", OUR_SOURCES)
    return True


# ------------------------------------------------------------ compile + load

_GOGO_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"github\.com/gogo/protobuf/'
                          r'gogoproto/gogo\.proto"\s*;\s*$', re.M)
_GOGO_FILE_OPTION = re.compile(r"^\s*option\s+\(gogoproto\.[A-Za-z0-9_]+\)\s*=\s*[^;]*;\s*$", re.M)
_GOGO_FIELD_OPTION = re.compile(r"\(gogoproto\.[A-Za-z0-9_]+\)\s*=\s*"
                                r"(?:\"(?:[^\"\\]|\\.)*\"|[A-Za-z0-9_.+-]+)")


def strip_gogo(text):
    """The proto source without the gogoproto import and options."""
    text = _GOGO_IMPORT.sub("", text)
    text = _GOGO_FILE_OPTION.sub("", text)

    def fix_brackets(m):
        inner = _GOGO_FIELD_OPTION.sub("", m.group(1))
        parts = [p.strip() for p in inner.split(",") if p.strip()]
        return " [%s]" % ", ".join(parts) if parts else ""
    return re.sub(r"\s*\[([^\[\]]*gogoproto[^\[\]]*)\]", fix_brackets, text)


_pb = None


def cri_pb2():
    """The generated CRI v1 message module (compiled on first use, cached)."""
    global _pb
    if _pb is not None:
        return _pb
    if shutil.which("protoc") is None:
        raise CRISetupError("protoc not found (apt-get install protobuf-compiler)")
    with open(api_proto(), "rb") as f:
        src = strip_gogo(f.read().decode("utf-8"))
    ver = subprocess.run(["protoc", "--version"], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout.strip()
    key = hashlib.sha256((ver + "\0" + src).encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), "cri", "pb-" + key)
    mod_path = os.path.join(out, "pyshim_cri_api_pb2.py")
    if not os.path.isfile(mod_path):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="pb.", dir=os.path.dirname(out))
        try:
            with open(os.path.join(tmp, "pyshim_cri_api.proto"), "w") as f:
                f.write(src)
            r = subprocess.run(["protoc", "-I", tmp, "--python_out", tmp,
                                os.path.join(tmp, "pyshim_cri_api.proto")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
            if r.returncode != 0:
                raise CRISetupError("protoc failed on the CRI api.proto:\n%s" % r.stdout)
            try:
                os.rename(tmp, out)
                tmp = None
            except OSError:
                if not os.path.isfile(mod_path):   # not a concurrent builder's result
                    raise
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("pyshim_cri_api_pb2", mod_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pyshim_cri_api_pb2"] = mod
    spec.loader.exec_module(mod)
    _pb = mod
    return mod


# ---------------------------------------------------------------- gRPC client

class CRIError(RuntimeError):
    """A CRI call failed: .code is the grpc.StatusCode, .details its message."""

    def __init__(self, method, code, details):
        super().__init__("%s: %s: %s" % (method, code.name if code else code, details))
        self.method = method
        self.code = code
        self.details = details


class CRIClient:
    """CRI RuntimeService/ImageService over containerd's grpc socket. Every
    method returns the response message (or the useful part of it) and raises
    CRIError on a gRPC error. `pb` is the message module."""

    def __init__(self, socket_path, timeout=60.0):
        import grpc
        self._grpc = grpc
        self.pb = cri_pb2()
        self.timeout = timeout
        self.channel = grpc.insecure_channel("unix://" + os.path.abspath(socket_path))
        self._methods = {}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method, request=None, timeout=None, service=RUNTIME_SERVICE, **fields):
        """Call `service/method` with `request` (or a <method>Request built
        from fields); returns the <method>Response."""
        if request is None:
            request = getattr(self.pb, method + "Request")(**fields)
        resp_cls = getattr(self.pb, method + "Response")
        fn = self._methods.get((service, method))
        if fn is None:
            fn = self.channel.unary_unary("/%s/%s" % (service, method),
                                          request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=resp_cls.FromString)
            self._methods[(service, method)] = fn
        try:
            return fn(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            raise CRIError(method, code, details) from None

    # ---- runtime: general
    def version(self):
        return self.call("Version", version="v1")

    def status(self, verbose=False):
        return self.call("Status", verbose=verbose)

    # ---- pods
    def run_pod_sandbox(self, config, runtime_handler="", timeout=None):
        """-> pod sandbox id"""
        return self.call("RunPodSandbox", config=config, runtime_handler=runtime_handler,
                         timeout=timeout).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id, timeout=None):
        return self.call("StopPodSandbox", pod_sandbox_id=pod_id, timeout=timeout)

    def remove_pod_sandbox(self, pod_id, timeout=None):
        return self.call("RemovePodSandbox", pod_sandbox_id=pod_id, timeout=timeout)

    def pod_sandbox_status(self, pod_id, verbose=False):
        return self.call("PodSandboxStatus", pod_sandbox_id=pod_id, verbose=verbose)

    def list_pod_sandbox(self):
        return list(self.call("ListPodSandbox").items)

    # ---- containers
    def create_container(self, pod_id, config, sandbox_config, timeout=None):
        """-> container id"""
        return self.call("CreateContainer", pod_sandbox_id=pod_id, config=config,
                         sandbox_config=sandbox_config, timeout=timeout).container_id

    def start_container(self, cid, timeout=None):
        return self.call("StartContainer", container_id=cid, timeout=timeout)

    def stop_container(self, cid, grace=0, timeout=None):
        """StopContainer: SIGTERM, SIGKILL after `grace` seconds."""
        req = self.pb.StopContainerRequest(container_id=cid, timeout=grace)
        return self.call("StopContainer", req, timeout=timeout or self.timeout + grace)

    def remove_container(self, cid, timeout=None):
        return self.call("RemoveContainer", container_id=cid, timeout=timeout)

    def list_containers(self, pod_id=None):
        flt = self.pb.ContainerFilter(pod_sandbox_id=pod_id) if pod_id else None
        return list(self.call("ListContainers", filter=flt).containers)

    def container_status(self, cid, verbose=False):
        """-> ContainerStatus message (state, exit_code, reason, log_path, ...)"""
        return self.call("ContainerStatus", container_id=cid, verbose=verbose).status

    def container_stats(self, cid):
        return self.call("ContainerStats", container_id=cid).stats

    def list_container_stats(self, pod_id=None):
        flt = self.pb.ContainerStatsFilter(pod_sandbox_id=pod_id) if pod_id else None
        return list(self.call("ListContainerStats", filter=flt).stats)

    def update_container_resources(self, cid, linux=None, timeout=None):
        return self.call("UpdateContainerResources", container_id=cid, linux=linux,
                         timeout=timeout)

    def reopen_container_log(self, cid):
        return self.call("ReopenContainerLog", container_id=cid)

    def exec_sync(self, cid, cmd, timeout=10):
        """-> ExecSyncResponse (stdout, stderr bytes, exit_code). `timeout`
        is the exec's own timeout in seconds (0 = none)."""
        req = self.pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout)
        return self.call("ExecSync", req, timeout=(timeout or 60) + 30)

    def exec(self, cid, cmd, tty=False, stdin=False, stdout=True, stderr=None):
        """-> the streaming URL for the exec (stderr defaults to not tty)."""
        if stderr is None:
            stderr = not tty
        return self.call("Exec", container_id=cid, cmd=list(cmd), tty=tty, stdin=stdin,
                         stdout=stdout, stderr=stderr).url

    def attach(self, cid, tty=False, stdin=True, stdout=True, stderr=None):
        """-> the streaming URL to attach to the container's stdio."""
        if stderr is None:
            stderr = not tty
        return self.call("Attach", container_id=cid, tty=tty, stdin=stdin, stdout=stdout,
                         stderr=stderr).url

    # ---- images
    def list_images(self):
        return list(self.call("ListImages", service=IMAGE_SERVICE).images)

    def image_status(self, ref):
        """-> Image message, or None when CRI does not know the image."""
        r = self.call("ImageStatus", service=IMAGE_SERVICE,
                      image=self.pb.ImageSpec(image=ref))
        return r.image if r.HasField("image") else None


# ------------------------------------------------------- streaming (websocket)

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class StreamError(RuntimeError):
    pass


class StreamClient:
    """A websocket client for CRI's streaming server (kubelet remotecommand,
    subprotocol v4.channel.k8s.io): every message is one binary frame whose
    first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 error/status
    JSON, 4 resize JSON). Received data accumulates per channel in
    `self.data[ch]` (bytes); `closed` becomes True when the server closes."""

    PROTOCOL = "v4.channel.k8s.io"

    def __init__(self, url, timeout=10.0, protocol=PROTOCOL):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "ws"):
            raise StreamError("unsupported streaming URL %s" % url)
        self.url = url
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.data = {STDOUT: b"", STDERR: b"", ERROR: b""}
        self.closed = False
        self.close_code = None
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + u.query if u.query else "")
        req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: %s\r\nOrigin: http://%s\r\n\r\n"
               % (path or "/", u.netloc, key, protocol, u.netloc))
        self.sock.sendall(req.encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            self._fill(deadline)
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        self.status_line = lines[0]
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if " 101 " not in self.status_line + " ":
            rest = self._buf.decode("utf-8", "replace")
            raise StreamError("websocket upgrade refused: %s %s" % (self.status_line, rest))
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if self.headers.get("sec-websocket-accept") != accept:
            raise StreamError("bad Sec-WebSocket-Accept %r" % self.headers.get(
                "sec-websocket-accept"))
        self.protocol = self.headers.get("sec-websocket-protocol", "")
        if self.protocol != protocol:
            raise StreamError("server chose subprotocol %r, not %r" % (self.protocol, protocol))

    # ---- raw frames
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("websocket: timed out")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise socket.timeout("websocket: timed out")
        b = self.sock.recv(65536)
        if not b:
            raise EOFError("websocket: connection closed without a close frame")
        self._buf += b

    def _need(self, n, deadline):
        while len(self._buf) < n:
            self._fill(deadline)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv_frame(self, deadline):
        """One complete message (fragments joined) -> (opcode, payload)."""
        op, msg = None, b""
        while True:
            b0, b1 = self._need(2, deadline)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._need(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._need(8, deadline))[0]
            mask = self._need(4, deadline) if b1 & 0x80 else None
            payload = self._need(n, deadline)
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            if opcode >= 8:            # control frames may come between fragments
                if opcode == OP_PING:
                    self._send_frame(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                return opcode, payload
            if op is None:
                op = opcode
            msg += payload
            if fin:
                return op, msg

    # ---- channels
    def send(self, channel, data):
        if isinstance(data, str):
            data = data.encode()
        self._send_frame(OP_BINARY, bytes([channel]) + data)

    def send_stdin(self, data):
        self.send(STDIN, data)

    def resize(self, width, height):
        self.send(RESIZE, json.dumps({"Width": width, "Height": height}).encode())

    def pump(self, timeout):
        """Receive messages for up to `timeout` s (or until closed). Returns
        False once the stream is closed."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                op, payload = self.recv_frame(deadline)
            except socket.timeout:
                return True
            except (EOFError, ConnectionError):
                self.closed = True
                break
            if op == OP_CLOSE:
                self.closed = True
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 \
                    else None
                try:
                    self._send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                break
            if op == OP_TEXT:          # base64 protocols only; not ours
                raise StreamError("unexpected text frame %r" % payload[:80])
            if not payload:
                continue
            ch = payload[0]
            self.data[ch] = self.data.get(ch, b"") + payload[1:]
        return False

    def read_until(self, want, channel=STDOUT, timeout=10.0):
        """Pump until `want` (bytes, or a compiled bytes regex) is in
        data[channel]; returns data[channel]. Raises StreamError on timeout."""
        deadline = time.monotonic() + timeout

        def found():
            d = self.data.get(channel, b"")
            return want.search(d) if hasattr(want, "search") else want in d
        while not found():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise StreamError("%r not seen on channel %d within %ss (closed=%s); got %r, "
                                  "error channel %r" % (want, channel, timeout, self.closed,
                                                        self.data.get(channel, b"")[-500:],
                                                        self.data.get(ERROR, b"")))
            self.pump(min(left, 0.2))
        return self.data[channel]

    def wait_closed(self, timeout=10.0):
        """Pump until the server closes the stream; returns the data dict."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError("stream not closed within %ss; got %r" % (timeout, self.data))
            self.pump(min(left, 0.5))
        return self.data

    def status(self):
        """The v4 status JSON of the error channel (dict), or None."""
        raw = self.data.get(ERROR, b"")
        return json.loads(raw) if raw.strip() else None

    def exit_code(self):
        """The exit code from the v4 status: 0 on Success, the ExitCode cause
        of a NonZeroExitCode failure; None when there is no status yet."""
        st = self.status()
        if st is None:
            return None
        if st.get("status") == "Success":
            return 0
        for c in (st.get("details") or {}).get("causes") or []:
            if c.get("reason") == "ExitCode":
                return int(c.get("message"))
        raise StreamError("stream failed: %r" % st)

    def close(self):
        if self.sock is None:
            return
        try:
            if not self.closed:
                self._send_frame(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------- a fake CNI

FAKE_CNI_TYPE = "pyshim-fake-net"

_FAKE_CNI_PLUGIN = '''#!%(python)s
# A CNI plugin that configures nothing (pyshim tests, support/cri.py): ADD
# answers with an address so that containerd's CRI accepts the pod network;
# installed as "loopback" too, for the loopback network CRI always adds.
import json, os, sys
cmd = os.environ.get("CNI_COMMAND", "")
conf = json.loads(sys.stdin.read() or "{}")
version = conf.get("cniVersion", "1.0.0")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": version,
                      "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
elif cmd == "ADD":
    lo = os.environ.get("CNI_IFNAME") == "lo"
    ip = {"address": "127.0.0.1/8" if lo else conf.get("address", "%(address)s"),
          "interface": 0}
    if not version.startswith("1."):
        ip["version"] = "4"
    print(json.dumps({"cniVersion": version,
                      "interfaces": [{"name": os.environ.get("CNI_IFNAME", "eth0"),
                                      "sandbox": os.environ.get("CNI_NETNS", "")}],
                      "ips": [ip]}))
'''


def write_fake_cni(directory, address="10.254.0.2/24"):
    """Make `directory` (a CRI bin_dir and conf_dir at once) hold a CNI
    network whose plugin configures nothing and reports `address` for every
    pod, and a `loopback` plugin that does the same for lo. For pods that
    need a network namespace of their own (user-namespaced pods cannot use
    the host's) where no traffic is needed. Returns the conflist path."""
    plugin = _FAKE_CNI_PLUGIN % {"python": sys.executable, "address": address}
    for name in (FAKE_CNI_TYPE, "loopback"):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(plugin)
        os.chmod(path, 0o755)
    conf = os.path.join(directory, "10-pyshim-fake.conflist")
    with open(conf, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "pyshim-fake",
                   "plugins": [{"type": FAKE_CNI_TYPE, "address": address}]}, f)
    return conf
