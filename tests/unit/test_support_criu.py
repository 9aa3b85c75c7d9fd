"""The parts of tests/support/criu.py (and the Debian entry it takes from
support/cri.py) that need no root, network or criu."""
import os

from support import cri, criu


def test_parse_version():
    assert criu.parse_version("Version: 4.1.1\n") == (4, 1, 1)
    assert criu.parse_version("Version: 3.17\nGitID: v3.17\n") == (3, 17)
    assert criu.parse_version("criu: command not found") is None
    assert criu.parse_version("Version: 3.17.1") < criu.MIN_VERSION <= (4, 1, 1)


def test_parse_simulation():
    out = ("NOTE: This is only a simulation!\n"
           "Inst gcc-14-base (14.2.0-19 Debian:13.2/stable [amd64])\n"
           "Inst libc6 [2.36-9] (2.41-12+deb13u5 Debian:13.2/stable [amd64])\n"
           "Conf gcc-14-base (14.2.0-19 Debian:13.2/stable [amd64])\n"
           "Inst criu (4.1.1-1 Debian:13.2/stable [amd64])\n")
    assert criu.parse_simulation(out) == [("gcc-14-base", "14.2.0-19"),
                                          ("libc6", "2.41-12+deb13u5"), ("criu", "4.1.1-1")]


def test_write_wrapper(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr" / "lib" / "x86_64-linux-gnu" / "ld-linux-x86-64.so.2").write_text("")
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "criu").write_text("")
    path = tmp_path / "bin" / "criu"
    criu.write_wrapper(str(root), str(path))
    lib = "%s/usr/lib/x86_64-linux-gnu" % root
    assert path.read_text().splitlines()[-1] == (
        'exec %s/ld-linux-x86-64.so.2 --library-path %s %s/usr/sbin/criu "$@"' % (lib, lib, root))
    assert os.access(str(path), os.X_OK)


def test_debian_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(cri, "_codename", lambda: "bookworm")
    key = "/usr/share/keyrings/debian-archive-keyring.gpg"
    debian = str(tmp_path / "debian.sources")
    security = {"file": debian, "types": ["deb"], "uris": ["http://m.example/debian-security"],
                "suites": ["bookworm-security"], "components": ["main"], "signed-by": key}
    main = {"file": debian, "types": ["deb"], "uris": ["http://m.example/debian"],
            "suites": ["bookworm", "bookworm-updates"], "components": ["main"],
            "signed-by": key}
    src = dict(main, types=["deb-src"])
    other = {"file": str(tmp_path / "docker.list"), "types": ["deb"],
             "uris": ["https://download.example/linux/debian"], "suites": ["bookworm"],
             "components": ["stable"], "signed-by": "/etc/apt/keyrings/docker.asc"}
    assert cri.debian_archive([other, security, src, main]) == ("http://m.example/debian", key)
    assert cri.debian_archive([other, security, src]) is None
    # one-line sources.list entries, no Signed-By
    line = {"file": cri.APT_SOURCES, "types": ["deb"], "uris": ["http://m.example/debian/"],
            "suites": ["bookworm"], "components": ["main", "contrib"], "signed-by": ""}
    assert cri.debian_archive([line]) == ("http://m.example/debian/", "")
