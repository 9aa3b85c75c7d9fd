"""shim.containerd_binary: containerd 2.x told from its executable's Go
build info, anything unreadable or unlike it taken as 1.x (whose plain
start reply every release accepts)."""
import os
import threading

import pytest

from shim import containerd_binary, manager


def _elf(buildinfo, section=b".go.buildinfo"):
    """A minimal ELF64 LE file: a null section, .shstrtab, and `section`."""
    names = b"\0.shstrtab\0" + section + b"\0"
    body_at = 64
    strtab_at, info_at = body_at, body_at + len(names)
    shoff = info_at + len(buildinfo)

    def shdr(name, offset, size):
        return (name.to_bytes(4, "little") + bytes(20) + offset.to_bytes(8, "little")
                + size.to_bytes(8, "little") + bytes(24))
    header = (b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(24) + shoff.to_bytes(8, "little")
              + bytes(10) + (64).to_bytes(2, "little") + (3).to_bytes(2, "little")
              + (1).to_bytes(2, "little"))
    assert len(header) == 64
    return (header + names + buildinfo + shdr(0, 0, 0) + shdr(1, strtab_at, len(names))
            + shdr(11, info_at, len(buildinfo)))


def _info(text, flags=2):
    return b"\xff Go buildinf:\x08" + bytes([flags]) + bytes(16) + b"\x08go1.24.4" + text


V2 = _info(b"\xcf\x04path\tgithub.com/containerd/containerd/v2/cmd/containerd\nbuild\t-trimpath=true\n")
V2_MOD = _info(b"path\tgithub.com/example/node/cmd/containerd\n"
               b"mod\tgithub.com/containerd/containerd/v2\t(devel)\t\n")
V1 = _info(b"path\tgithub.com/containerd/containerd/cmd/containerd\nbuild\t-compiler=gc\n")
K3S = _info(b"path\tgithub.com/k3s-io/k3s/cmd/server\nmod\tgithub.com/k3s-io/k3s\t(devel)\t\n"
            b"dep\tgithub.com/containerd/containerd/v2\tv2.1.4-k3s1\n")


@pytest.mark.parametrize("data,want", [
    (_elf(V2), True),
    (_elf(V2_MOD), True),
    (_elf(V1), False),
    (_elf(K3S), False),                         # another main module: taken as 1.x
    (_elf(_info(b"path\tgithub.com/containerd/containerd/v2/cmd/x\n", flags=0)), False),
    (_elf(V2, section=b".go.buildinfx"), False),
    (_elf(V2)[:-10], False),                     # section headers cut short
    (_elf(V2)[:40], False),
    (b"#!/bin/sh\n", False),
    (b"", False),
])
def test_told_from_build_info(tmp_path, data, want):
    path = tmp_path / "containerd"
    path.write_bytes(data)
    assert containerd_binary.is_containerd_2(str(path)) is want


def test_not_a_regular_file_or_missing(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(containerd_binary.is_containerd_2(str(fifo))))
    t.start()
    t.join(5)
    assert done == [False]                       # a FIFO with no writer: no hang
    assert containerd_binary.is_containerd_2(str(tmp_path)) is False
    assert containerd_binary.is_containerd_2(str(tmp_path / "none")) is False
    assert containerd_binary.is_containerd_2(None) is False
    assert containerd_binary.is_containerd_2("") is False


def test_start_reply_by_caller(tmp_path):
    v2, v1 = tmp_path / "c2", tmp_path / "c1"
    v2.write_bytes(_elf(V2))
    v1.write_bytes(_elf(V1))
    addr = "unix:///run/containerd/s/abc"
    assert manager.start_reply(addr, None, str(v1)) == addr.encode()
    assert manager.start_reply(addr, None, None) == addr.encode()
    from shim import jsonlite
    assert jsonlite.loads(manager.start_reply(addr, None, str(v2)).decode()) == \
        {"version": 3, "address": addr, "protocol": "ttrpc"}
