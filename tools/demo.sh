#!/usr/bin/env bash
# pyshim demo: run one container through pyshim on a private containerd.
#
#   sudo tools/demo.sh                                # from the repo root
#   RUNTIME=io.containerd.runc.v2 tools/demo.sh       # same, with the Go shim
#
# On a fresh Debian bookworm machine it
#   1. installs what is missing: apt packages (containerd runc crun criu
#      busybox-static protobuf-compiler, plus python3/pip/gcc if absent) and
#      pyshim itself (`pip install .`, only if containerd-shim-pyshim-v1 is not
#      installed yet; REINSTALL=1 forces it);
#   2. starts a private containerd (own root, state, socket, config under a
#      temp dir in /run; it does not touch a system containerd);
#   3. builds the busybox image offline (tools/mkimage.py) and imports it;
#   4. runs `ctr run --rm --runtime $RUNTIME IMAGE demo-<pid> echo "hello from pyshim"`
#      and prints its output;
#   5. stops containerd and removes everything it created (also on error/^C).
set -euo pipefail

RUNTIME=${RUNTIME:-io.containerd.pyshim.v1}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

say() { if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (containerd and runc need it): sudo $0"

# ---- 1. dependencies ---------------------------------------------------
export DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1 \
       PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
pkgs=(containerd runc crun criu busybox-static protobuf-compiler)
command -v "$PYTHON" >/dev/null || pkgs+=(python3 python3-pip python3-dev)
command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

SCRIPTS=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ "$RUNTIME" = io.containerd.pyshim.v1 ]; then
    if [ ! -x "$SCRIPTS/containerd-shim-pyshim-v1" ] || [ "${REINSTALL:-0}" = 1 ]; then
        if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
        fi
        say "pip install .  (builds the Cython extension; needs PyPI for Cython/protobuf)"
        "$PYTHON" -m pip install -q .
    fi
    [ -x "$SCRIPTS/containerd-shim-pyshim-v1" ] || die "containerd-shim-pyshim-v1 not in $SCRIPTS"
    say "shim: $SCRIPTS/containerd-shim-pyshim-v1"
fi

# ---- 2. private containerd ---------------------------------------------
TMP=$(mktemp -d /run/pyshim-demo-XXXXXX)
SOCK=$TMP/c.sock
NS=pyshim-demo-$$
ID=demo-$$
CTRD_PID=

ctr_() { ctr --address "$SOCK" -n "$NS" "$@"; }
# The template process pyshim's first start spawns (docs/design.md, warm
# start) outlives containerd: the one this demo spawned is ended by PID.
templates() {
    local d
    for d in /proc/[0-9]*; do
        case "$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null)" in
            "pyshim-template "*) echo "${d#/proc/}" ;;
        esac
    done
}
TEMPLATES_BEFORE=" $(templates | tr '\n' ' ') "

cleanup() {
    local rc=$? pid mp d id
    trap - EXIT INT TERM
    set +e
    if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
        ctr_ task kill -s SIGKILL "$ID" >/dev/null 2>&1
        ctr_ task delete -f "$ID" >/dev/null 2>&1
        ctr_ container delete "$ID" >/dev/null 2>&1
        kill -TERM "$CTRD_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CTRD_PID" 2>/dev/null
        wait "$CTRD_PID" 2>/dev/null
    fi
    # Shims of our containerd (their argv has "-address $SOCK"), by PID.
    for d in /proc/[0-9]*; do
        if { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -qF -- "-address $SOCK "; then
            kill -KILL "${d#/proc/}" 2>/dev/null
        fi
    done
    for pid in $(templates); do
        case "$TEMPLATES_BEFORE" in *" $pid "*) continue ;; esac
        id=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -d' ' -f2)
        kill -KILL "$pid" 2>/dev/null
        [ -n "$id" ] && rm -f "/run/containerd/s/pyshim-template-$id"
    done
    # Containers left in the shims' runc root, then the root itself.
    if [ -d "/run/containerd/runc/$NS" ]; then
        for d in "/run/containerd/runc/$NS"/*; do
            [ -e "$d" ] && runc --root "/run/containerd/runc/$NS" delete --force "${d##*/}" >/dev/null 2>&1
        done
        rmdir "/run/containerd/runc/$NS" 2>/dev/null
    fi
    # Snapshot mounts under our dir, deepest first.
    awk '{print $5}' /proc/self/mountinfo | grep -F "$TMP/" | sort -r | while read -r mp; do
        umount "$mp" 2>/dev/null || umount -l "$mp"
    done
    # ctr's default cgroup is /<namespace>/<id>: remove the empty /<namespace>.
    for d in /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/"$NS"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rm -rf "$TMP"
    say "cleaned up"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cat >"$TMP/config.toml" <<EOF
version = 2
root = "$TMP/root"
state = "$TMP/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[debug]
  address = ""
[metrics]
  address = ""
EOF

say "starting containerd (socket $SOCK, log $TMP/containerd.log)"
# The installed shim must be on containerd's PATH: containerd looks up
# containerd-shim-pyshim-v1 for runtime io.containerd.pyshim.v1.
PATH="$SCRIPTS:$PATH" setsid containerd --config "$TMP/config.toml" \
    </dev/null >"$TMP/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 200); do
    [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1 && break
    kill -0 "$CTRD_PID" 2>/dev/null || { cat "$TMP/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
done
ctr --address "$SOCK" version >/dev/null || { tail -20 "$TMP/containerd.log" >&2; die "containerd did not start"; }

# ---- 3. image ------------------------------------------------------------
say "building busybox image (tools/mkimage.py) and importing it"
IMAGE=$("$PYTHON" tools/mkimage.py "$TMP/busybox.tar")
ctr_ image import "$TMP/busybox.tar" >/dev/null

# ---- 4. run --------------------------------------------------------------
say "ctr run --rm --runtime $RUNTIME $IMAGE $ID echo \"hello from pyshim\""
set +e
OUT=$(ctr_ run --rm --runtime "$RUNTIME" "$IMAGE" "$ID" echo "hello from pyshim" </dev/null)
RC=$?
set -e
echo "---- container output ----"
printf '%s\n' "$OUT"
echo "--------------------------"
if [ "$RC" != 0 ]; then
    say "ctr run failed (exit $RC); last containerd log lines:"
    tail -20 "$TMP/containerd.log" >&2
    exit "$RC"
fi
say "container exited 0 (runtime $RUNTIME)"
