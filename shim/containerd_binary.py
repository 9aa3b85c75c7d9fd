"""Which containerd runs a `start`, told from its executable (the
`-publish-binary` argument containerd passes with its own path).

containerd 1.6 and 1.7 take only a plain address from `start`; 1.7 rejects
a reply announcing shim version 3. containerd 2.0-2.2 take the plain
address as version 2 and then run `start` for each container of a pod and
Shutdown after each of its tasks; told version 3 (JSON, as their Go shim
answers) they hand a pod's containers to the sandbox's shim directly. They
pass nothing else that tells them from 1.7 (the same arguments,
environment and stdin), but their executable does: the Go build info
(the `.go.buildinfo` section, Go 1.18+) names the main package, under the
module `github.com/containerd/containerd/v2` from 2.0 on. Anything else
(another daemon, a binary without build info, k3s's multi-call binary)
is taken as 1.x: the plain address is what every release accepts.
"""
import os

V2_MAIN = (b"\tgithub.com/containerd/containerd/v2/cmd/",
           b"\nmod\tgithub.com/containerd/containerd/v2\t")
_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_MAX_SECTIONS = 1 << 12
_MAX_BUILDINFO = 64 << 10


def _u(data, offset, size):
    return int.from_bytes(data[offset:offset + size], "little")


def _buildinfo(path):
    """The `.go.buildinfo` section of the ELF64 little-endian file at path
    (its first 64 KiB), or b"" (not such a file, or no such section)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)    # a FIFO never blocks
    try:
        if os.fstat(fd).st_mode & 0o170000 != 0o100000:     # a regular file only
            return b""
        eh = os.pread(fd, 64, 0)
        if len(eh) < 64 or eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            return b""
        shoff = _u(eh, 0x28, 8)
        shentsize, shnum, shstrndx = _u(eh, 0x3A, 2), _u(eh, 0x3C, 2), _u(eh, 0x3E, 2)
        if shentsize < 64 or not 0 < shnum <= _MAX_SECTIONS or shstrndx >= shnum:
            return b""
        table = os.pread(fd, shentsize * shnum, shoff)
        if len(table) < shentsize * shnum:
            return b""

        def section(i):     # Elf64_Shdr: sh_name, ..., sh_offset, sh_size
            at = i * shentsize
            return _u(table, at, 4), _u(table, at + 24, 8), _u(table, at + 32, 8)
        _, offset, size = section(shstrndx)
        strtab = os.pread(fd, min(size, _MAX_BUILDINFO), offset)
        for i in range(shnum):
            name, offset, size = section(i)
            if strtab[name:name + 14] == b".go.buildinfo\0":
                return os.pread(fd, min(size, _MAX_BUILDINFO), offset)
        return b""
    finally:
        os.close(fd)


def is_containerd_2(path):
    """True when the executable at path is containerd 2.x; False when it is
    anything else or cannot be read."""
    if not path:
        return False
    try:
        info = _buildinfo(path)
    except OSError:
        return False
    # Inline strings (flag 2 at offset 15) since Go 1.18; containerd 2.x
    # needs a newer Go, so older layouts are never 2.x.
    if not info.startswith(_BUILDINFO_MAGIC) or len(info) < 16 or not info[15] & 2:
        return False
    return any(marker in info for marker in V2_MAIN)
