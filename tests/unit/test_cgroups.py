"""shim.cgroups on fixture trees: cgroup discovery (v1, hybrid, v2), the
Metrics it builds (checked through google.protobuf), the v2 OOM watch
(inotify on a plain file behaves like memory.events), and import hygiene.
The real cgroupfs (v1 OOM eventfd, live values) is in
tests/integration/test_stats_oom.py."""
import os
import subprocess
import sys

import pytest

from shim import _native, cgroups
from shim.loop import get_loop
from shim.pb import wkt
from shim.pb2.io.containerd.cgroups.v1 import metrics_pb2 as pb1
from shim.pb2.io.containerd.cgroups.v2 import metrics_pb2 as pb2

loop = get_loop()
PID = 4242
MAX64 = (1 << 64) - 1


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def tree(base, files):
    for rel, text in files.items():
        write(os.path.join(base, rel), text)


MEMORY_STAT_V1 = """\
cache 1000
rss 2000
rss_huge 3000
shmem 0
mapped_file 4000
dirty 5000
writeback 6000
swap 0
pgpgin 7000
pgpgout 8000
pgfault 9000
pgmajfault 10000
inactive_anon 11000
active_anon 12000
inactive_file 13000
active_file 14000
unevictable 15000
hierarchical_memory_limit 33554432
hierarchical_memsw_limit 9223372036854771712
total_cache 101
total_rss 102
total_rss_huge 103
total_shmem 0
total_mapped_file 104
total_dirty 105
total_writeback 106
total_swap 0
total_pgpgin 107
total_pgpgout 108
total_pgfault 109
total_pgmajfault 110
total_inactive_anon 111
total_active_anon 112
total_inactive_file 113
total_active_file 114
total_unevictable 115
"""

THROTTLE_IO_SERVICED = """\
254:0 Read 10
254:0 Write 20
254:0 Sync 25
254:0 Async 5
254:0 Discard 0
254:0 Total 30
7:3 Read 1
Total 31
"""


def v1_tree(tmp, cg="/ns1/c1", comount=False):
    """A hybrid host: v1 controllers + a controller-less unified mount."""
    root, proc = str(tmp / "cgroup"), str(tmp / "proc")
    cpu = "cpu,cpuacct" if comount else "cpu"
    acct = "cpu,cpuacct" if comount else "cpuacct"
    tree(root, {
        "unified/cgroup.procs": "",
        "memory" + cg + "/memory.stat": MEMORY_STAT_V1,
        "memory" + cg + "/memory.usage_in_bytes": "4096000\n",
        "memory" + cg + "/memory.max_usage_in_bytes": "5000000\n",
        "memory" + cg + "/memory.failcnt": "7\n",
        "memory" + cg + "/memory.limit_in_bytes": "33554432\n",
        "memory" + cg + "/memory.kmem.usage_in_bytes": "111\n",
        "memory" + cg + "/memory.kmem.max_usage_in_bytes": "222\n",
        "memory" + cg + "/memory.kmem.failcnt": "0\n",
        "memory" + cg + "/memory.kmem.limit_in_bytes": "9223372036854771712\n",
        "memory" + cg + "/memory.kmem.tcp.usage_in_bytes": "0\n",
        "memory" + cg + "/memory.kmem.tcp.max_usage_in_bytes": "0\n",
        "memory" + cg + "/memory.kmem.tcp.failcnt": "0\n",
        "memory" + cg + "/memory.kmem.tcp.limit_in_bytes": "9223372036854771712\n",
        # no memory.memsw.*: a kernel without swap accounting
        "memory" + cg + "/memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n",
        "pids" + cg + "/pids.current": "2\n",
        "pids" + cg + "/pids.max": "max\n",
        cpu + cg + "/cpu.stat": "nr_periods 11\nnr_throttled 12\nthrottled_time 13\n"
                               "nr_bursts 0\nburst_time 0\n",
        acct + cg + "/cpuacct.usage": "123456789\n",
        acct + cg + "/cpuacct.stat": "user 150\nsystem 25\n",
        acct + cg + "/cpuacct.usage_percpu": "100 200 300 \n",
        "blkio" + cg + "/blkio.throttle.io_serviced": THROTTLE_IO_SERVICED,
        "blkio" + cg + "/blkio.throttle.io_service_bytes":
            "254:0 Read 4096\n254:0 Write 8192\nTotal 12288\n",
        "hugetlb" + cg + "/hugetlb.2MB.usage_in_bytes": "2097152\n",
        "hugetlb" + cg + "/hugetlb.2MB.max_usage_in_bytes": "4194304\n",
        "hugetlb" + cg + "/hugetlb.2MB.failcnt": "1\n",
        "hugetlb" + cg + "/hugetlb.2MB.limit_in_bytes": "0\n",
        "hugetlb" + cg + "/hugetlb.1GB.usage_in_bytes": "0\n",
        "hugetlb" + cg + "/hugetlb.1GB.max_usage_in_bytes": "0\n",
        "hugetlb" + cg + "/hugetlb.1GB.failcnt": "0\n",
        "freezer" + cg + "/freezer.state": "THAWED\n",
        "rdma/cgroup.procs": "",
    })
    if comount:
        # the usual systemd layout: cpu and cpuacct are symlinks
        os.symlink("cpu,cpuacct", os.path.join(root, "cpu"))
        os.symlink("cpu,cpuacct", os.path.join(root, "cpuacct"))
    tree(proc, {
        "%d/cgroup" % PID: (
            "12:name=systemd:/system.slice/containerd.service\n"
            "11:hugetlb:{cg}\n10:pids:{cg}\n9:blkio:{cg}\n8:freezer:{cg}\n"
            "7:memory:{cg}\n6:{cpu}:{cg}\n5:net_cls,net_prio:{cg}\n"
            "4:rdma:/\n0::/system.slice/containerd.service\n").format(
                cg=cg, cpu="cpu,cpuacct" if comount else "cpu:%s\n3:cpuacct" % cg),
        "partitions": "major minor  #blocks  name\n\n 254        0  268435456 vda\n"
                      "   7        3      1024 loop3\n",
    })
    return root, proc


V2_FILES = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
    "pids.current": "3\n",
    "pids.max": "max\n",
    "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 4\n"
                "nr_throttled 1\nthrottled_usec 77\nnr_bursts 0\nburst_usec 0\n",
    "memory.current": "8388608\n",
    "memory.max": "33554432\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "memory.stat": "anon 1\nfile 2\nkernel_stack 3\nslab 4\nsock 5\nshmem 6\nfile_mapped 7\n"
                   "file_dirty 8\nfile_writeback 9\nanon_thp 10\ninactive_anon 11\n"
                   "active_anon 12\ninactive_file 13\nactive_file 14\nunevictable 15\n"
                   "slab_reclaimable 16\nslab_unreclaimable 17\npgfault 18\npgmajfault 19\n"
                   "workingset_refault 20\nworkingset_activate 21\n"
                   "workingset_nodereclaim 22\npgrefill 23\npgscan 24\npgsteal 25\n"
                   "pgactivate 26\npgdeactivate 27\npglazyfree 28\npglazyfreed 29\n"
                   "thp_fault_alloc 30\nthp_collapse_alloc 31\nzswap 0\npercpu 99\n",
    "memory.events": "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
    "io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
               "7:3 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    "hugetlb.2MB.current": "2097152\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.2MB.events": "max 0\n",
    "hugetlb.1GB.current": "0\n",
    "hugetlb.1GB.max": "1073741824\n",
    "rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n",
    "rdma.max": "mlx4_0 hca_handle=max hca_object=10000\n",
}


def v2_tree(tmp, cg="/ns1/c1", files=V2_FILES):
    root, proc = str(tmp / "cgroup"), str(tmp / "proc")
    tree(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    tree(root + cg, files)
    tree(proc, {"%d/cgroup" % PID: "0::%s\n" % cg})
    return root, proc


def unpack(any_, cls):
    assert isinstance(any_, wkt.Any)
    m = cls()
    m.ParseFromString(any_.value)
    return any_.type_url, m


# ------------------------------------------------------------------ find

def test_find_v1_hybrid(tmp_path):
    root, proc = v1_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    assert cg.version == 1
    d = lambda c: os.path.join(root, c, "ns1/c1")  # noqa: E731
    assert cg.paths == {c: d(c) for c in ("hugetlb", "pids", "blkio", "freezer", "memory",
                                          "cpu", "cpuacct")} | {"rdma": os.path.join(root, "rdma")}
    assert cg.path == d("memory")
    assert cg.exists()
    assert "v1" in repr(cg)


def test_find_v1_comounted_controllers(tmp_path):
    root, proc = v1_tree(tmp_path, comount=True)
    cg = cgroups.find(PID, root=root, proc=proc)
    assert cg.paths["cpu"] == os.path.join(root, "cpu/ns1/c1")
    assert cg.paths["cpuacct"] == os.path.join(root, "cpuacct/ns1/c1")
    m = cg.metrics()
    assert m.cpu.usage.total == 123456789 and m.cpu.throttling.periods == 11


def test_find_v1_controller_dir_only_under_joined_name(tmp_path):
    root, proc = str(tmp_path / "cgroup"), str(tmp_path / "proc")
    tree(root, {"net_cls,net_prio/a/net_cls.classid": "0\n", "memory/a/memory.stat": ""})
    tree(proc, {"%d/cgroup" % PID: "3:net_cls,net_prio:/a\n2:memory:/a\n"})
    cg = cgroups.find(PID, root=root, proc=proc)
    assert cg.paths == {"net_cls": root + "/net_cls,net_prio/a",
                        "net_prio": root + "/net_cls,net_prio/a", "memory": root + "/memory/a"}


def test_find_v1_localizes_against_mount_root(tmp_path):
    # A host that bind-mounts only its own subtree /outer of the memory
    # hierarchy at <root>/memory: /proc/<pid>/cgroup still says /outer/...
    root, proc = str(tmp_path / "cgroup"), str(tmp_path / "proc")
    tree(root, {"memory/inner/memory.stat": "", "pids/outer/inner/pids.current": "1\n"})
    tree(proc, {
        "%d/cgroup" % PID: "2:memory:/outer/inner\n1:pids:/outer/inner\n",
        "self/mountinfo":
            "30 20 0:27 /outer %s/memory rw - cgroup cgroup rw,memory\n"
            "31 20 0:28 / %s/pids rw - cgroup cgroup rw,pids\n"
            "32 20 0:29 / /proc rw - proc proc rw\n" % (root, root),
    })
    cg = cgroups.find(PID, root=root, proc=proc)
    assert cg.paths == {"memory": root + "/memory/inner", "pids": root + "/pids/outer/inner"}


def test_find_v2(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    assert (cg.version, cg.path, cg.paths) == (2, root + "/ns1/c1", {})
    assert cg.exists()


def test_find_v2_root_cgroup(tmp_path):
    root, proc = str(tmp_path / "cgroup"), str(tmp_path / "proc")
    tree(root, {"cgroup.controllers": "memory\n"})
    tree(proc, {"%d/cgroup" % PID: "0::/\n"})
    assert cgroups.find(PID, root=root, proc=proc).path == root


def test_find_process_gone(tmp_path):
    root, proc = v1_tree(tmp_path)
    with pytest.raises(ProcessLookupError) as e:
        cgroups.find(PID + 1, root=root, proc=proc)
    assert "process %d not found" % (PID + 1) in str(e.value)
    assert isinstance(e.value, OSError)


def test_find_cgroup_gone(tmp_path):
    root, proc = v1_tree(tmp_path, cg="/gone")
    for c in os.listdir(root):
        subprocess.run(["rm", "-rf", os.path.join(root, c, "gone")], check=True)
    subprocess.run(["rm", "-rf", root + "/rdma"], check=True)   # the one at "/"
    with pytest.raises(FileNotFoundError):
        cgroups.find(PID, root=root, proc=proc)
    root2, proc2 = v2_tree(tmp_path / "v2")
    subprocess.run(["rm", "-rf", root2 + "/ns1"], check=True)
    with pytest.raises(FileNotFoundError):
        cgroups.find(PID, root=root2, proc=proc2)


def test_find_real_self():
    # Whatever this host is, our own process has a cgroup.
    cg = cgroups.find(os.getpid())
    assert cg.version in (1, 2) and cg.exists()
    type_url, _ = unpack(cg.stats(), pb1.Metrics if cg.version == 1 else pb2.Metrics)
    assert type_url == "io.containerd.cgroups.v%d.Metrics" % cg.version


# ------------------------------------------------------------------ v1 stats

def test_stats_v1_all_fields(tmp_path):
    root, proc = v1_tree(tmp_path)
    any_ = cgroups.find(PID, root=root, proc=proc).stats()
    type_url, m = unpack(any_, pb1.Metrics)
    assert type_url == "io.containerd.cgroups.v1.Metrics"

    assert (m.pids.current, m.pids.limit) == (2, 0)    # v1: "max" -> 0, as Go
    u = m.cpu.usage
    assert (u.total, u.user, u.kernel, list(u.per_cpu)) == \
        (123456789, 1500000000, 250000000, [100, 200, 300])   # USER_HZ ticks -> ns
    t = m.cpu.throttling
    assert (t.periods, t.throttled_periods, t.throttled_time) == (11, 12, 13)

    mem = m.memory
    assert (mem.cache, mem.rss, mem.rss_huge, mem.mapped_file, mem.dirty, mem.writeback,
            mem.pg_pg_in, mem.pg_pg_out, mem.pg_fault, mem.pg_maj_fault, mem.inactive_anon,
            mem.active_anon, mem.inactive_file, mem.active_file, mem.unevictable) == \
        tuple(range(1000, 15001, 1000))
    assert mem.hierarchical_memory_limit == 33554432
    assert mem.hierarchical_swap_limit == 9223372036854771712
    assert (mem.total_cache, mem.total_rss, mem.total_rss_huge, mem.total_mapped_file,
            mem.total_dirty, mem.total_writeback, mem.total_pg_pg_in, mem.total_pg_pg_out,
            mem.total_pg_fault, mem.total_pg_maj_fault, mem.total_inactive_anon,
            mem.total_active_anon, mem.total_inactive_file, mem.total_active_file,
            mem.total_unevictable) == tuple(range(101, 116))
    assert (mem.usage.usage, mem.usage.max, mem.usage.failcnt, mem.usage.limit) == \
        (4096000, 5000000, 7, 33554432)
    assert not mem.HasField("swap")                     # no memsw files
    assert (mem.kernel.usage, mem.kernel.max, mem.kernel.limit) == \
        (111, 222, 9223372036854771712)
    assert mem.HasField("kernel_tcp") and mem.kernel_tcp.limit == 9223372036854771712
    oc = m.memory_oom_control
    assert (oc.oom_kill_disable, oc.under_oom, oc.oom_kill) == (0, 1, 3)

    b = m.blkio
    assert [(e.major, e.minor, e.op, e.value, e.device) for e in b.io_serviced_recursive] == [
        (254, 0, "Read", 10, "/dev/vda"), (254, 0, "Write", 20, "/dev/vda"),
        (254, 0, "Sync", 25, "/dev/vda"), (254, 0, "Async", 5, "/dev/vda"),
        (254, 0, "Discard", 0, "/dev/vda"), (254, 0, "Total", 30, "/dev/vda"),
        (7, 3, "Read", 1, "/dev/loop3")]
    assert [(e.op, e.value) for e in b.io_service_bytes_recursive] == \
        [("Read", 4096), ("Write", 8192)]
    assert len(b.sectors_recursive) == 0

    # Go's order: /sys/kernel/mm/hugepages-<kB> names, 1GB before 2MB
    assert [(h.pagesize, h.usage, h.max, h.failcnt) for h in m.hugetlb] == \
        [("1GB", 0, 0, 0), ("2MB", 2097152, 4194304, 1)]
    assert not m.HasField("rdma")        # rdma root dir has no rdma.* files
    assert not m.network and not m.HasField("cgroup_stats")   # Go never fills them


def test_stats_v1_blkio_cfq_preferred(tmp_path):
    root, proc = v1_tree(tmp_path)
    d = root + "/blkio/ns1/c1/"
    tree(d, {
        "blkio.io_serviced_recursive": "254:0 Read 3\n254:0 Write 4\nTotal 7\n",
        "blkio.io_service_bytes_recursive": "254:0 Read 300\nTotal 300\n",
        "blkio.sectors_recursive": "254:0 6\n",
        "blkio.time_recursive": "254:0 9\n",
        "blkio.io_queued_recursive": "Total 0\n",
    })
    b = cgroups.find(PID, root=root, proc=proc).metrics().blkio
    assert [(e.op, e.value) for e in b.io_serviced_recursive] == [("Read", 3), ("Write", 4)]
    assert [(e.major, e.op, e.value) for e in b.sectors_recursive] == [(254, "", 6)]
    assert [(e.op, e.value) for e in b.io_time_recursive] == [("", 9)]
    assert b.io_queued_recursive == []


def test_stats_v1_blkio_cfq_empty_falls_back_to_throttle(tmp_path):
    root, proc = v1_tree(tmp_path)
    tree(root + "/blkio/ns1/c1/", {"blkio.io_serviced_recursive": "Total 0\n"})
    b = cgroups.find(PID, root=root, proc=proc).metrics().blkio
    assert len(b.io_serviced_recursive) == 7 and len(b.io_service_bytes_recursive) == 2


def test_stats_v1_rdma(tmp_path):
    root, proc = v1_tree(tmp_path)
    tree(root + "/rdma", {"rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n",
                          "rdma.max": "mlx4_0 hca_handle=max hca_object=10000\n"})
    _, m = unpack(cgroups.find(PID, root=root, proc=proc).stats(), pb1.Metrics)
    assert [(e.device, e.hca_handles, e.hca_objects) for e in m.rdma.current] == \
        [("mlx4_0", 2, 2000)]
    assert [(e.device, e.hca_handles, e.hca_objects) for e in m.rdma.limit] == \
        [("mlx4_0", 4294967295, 10000)]


def test_stats_v1_missing_files_leave_parts_unset(tmp_path):
    root, proc = v1_tree(tmp_path)
    for rel in ("memory/ns1/c1/memory.stat", "pids/ns1/c1/pids.current",
                "cpuacct/ns1/c1/cpuacct.usage_percpu", "cpuacct/ns1/c1/cpuacct.stat",
                "memory/ns1/c1/memory.kmem.tcp.usage_in_bytes"):
        os.unlink(os.path.join(root, rel))
    subprocess.run(["rm", "-rf", root + "/blkio", root + "/hugetlb"], check=True)
    _, m = unpack(cgroups.find(PID, root=root, proc=proc).stats(), pb1.Metrics)
    assert not m.HasField("pids") and not m.HasField("memory")
    assert not m.HasField("blkio") and len(m.hugetlb) == 0
    assert m.memory_oom_control.oom_kill == 3       # its own file is still there
    assert m.cpu.usage.total == 123456789 and m.cpu.usage.user == 0
    assert list(m.cpu.usage.per_cpu) == []
    assert m.cpu.throttling.periods == 11


def test_stats_v1_cgroup_removed_after_find(tmp_path):
    root, proc = v1_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    subprocess.run(["rm", "-rf", root], check=True)
    assert not cg.exists()
    _, m = unpack(cg.stats(), pb1.Metrics)
    assert m.ByteSize() == 0


def test_stats_v1_odd_values(tmp_path):
    root, proc = v1_tree(tmp_path)
    d = root + "/memory/ns1/c1/"
    tree(d, {"memory.stat": "cache -5\nrss garbage\nbad line here\n\nrss_huge 7\n",
             "memory.limit_in_bytes": "-1\n"})
    mem = cgroups.find(PID, root=root, proc=proc).metrics().memory
    assert (mem.cache, mem.rss, mem.rss_huge, mem.usage.limit) == (0, 0, 7, 0)


def test_stats_lean_bytes_equal_google(tmp_path):
    root, proc = v1_tree(tmp_path)
    any_ = cgroups.find(PID, root=root, proc=proc).stats()
    g = pb1.Metrics()
    g.ParseFromString(any_.value)
    assert g.SerializeToString(deterministic=True) == any_.value
    root2, proc2 = v2_tree(tmp_path / "v2")
    any2 = cgroups.find(PID, root=root2, proc=proc2).stats()
    g2 = pb2.Metrics()
    g2.ParseFromString(any2.value)
    assert g2.SerializeToString(deterministic=True) == any2.value


# ------------------------------------------------------------------ v2 stats

def test_stats_v2_all_fields(tmp_path):
    root, proc = v2_tree(tmp_path)
    type_url, m = unpack(cgroups.find(PID, root=root, proc=proc).stats(), pb2.Metrics)
    assert type_url == "io.containerd.cgroups.v2.Metrics"
    assert (m.pids.current, m.pids.limit) == (3, MAX64)   # v2: "max" -> 2^64-1, as Go
    c = m.cpu
    assert (c.usage_usec, c.user_usec, c.system_usec, c.nr_periods, c.nr_throttled,
            c.throttled_usec) == (5000, 3000, 2000, 4, 1, 77)
    mem = m.memory
    names = ("anon file kernel_stack slab sock shmem file_mapped file_dirty file_writeback "
             "anon_thp inactive_anon active_anon inactive_file active_file unevictable "
             "slab_reclaimable slab_unreclaimable pgfault pgmajfault workingset_refault "
             "workingset_activate workingset_nodereclaim pgrefill pgscan pgsteal pgactivate "
             "pgdeactivate pglazyfree pglazyfreed thp_fault_alloc thp_collapse_alloc").split()
    assert [getattr(mem, n) for n in names] == list(range(1, 32))
    assert (mem.usage, mem.usage_limit, mem.swap_usage, mem.swap_limit) == \
        (8388608, 33554432, 0, MAX64)
    e = m.memory_events
    assert (e.low, e.high, e.max, e.oom, e.oom_kill) == (0, 0, 9, 2, 1)
    assert [(x.major, x.minor, x.rbytes, x.wbytes, x.rios, x.wios) for x in m.io.usage] == \
        [(254, 0, 4096, 8192, 1, 2), (7, 3, 512, 0, 1, 0)]
    assert [(h.pagesize, h.current, h.max) for h in m.hugetlb] == \
        [("1GB", 0, 1073741824), ("2MB", 2097152, MAX64)]
    assert [(x.device, x.hca_handles, x.hca_objects) for x in m.rdma.current] == \
        [("mlx4_0", 2, 2000)]
    assert [(x.device, x.hca_handles, x.hca_objects) for x in m.rdma.limit] == \
        [("mlx4_0", 4294967295, 10000)]


def test_stats_v2_minimal_cgroup(tmp_path):
    # Only the core files: no controllers enabled for this cgroup.
    root, proc = v2_tree(tmp_path, files={"cgroup.procs": "1\n",
                                          "cpu.stat": "usage_usec 9\n"})
    _, m = unpack(cgroups.find(PID, root=root, proc=proc).stats(), pb2.Metrics)
    assert m.cpu.usage_usec == 9
    for f in ("pids", "memory", "memory_events", "io", "rdma"):
        assert not m.HasField(f), f
    assert len(m.hugetlb) == 0


# ------------------------------------------------------------------ v2 OOM watch

def run_until(cond, timeout=5.0):
    import time
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        loop.call_later(0.02, lambda: None)
        loop.run_once()
    return True


def spin(seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        loop.call_later(0.02, lambda: None)
        loop.run_once()


def test_oom_watch_v2_counts_increases_of_oom_kill(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    ev = cg.path + "/memory.events"
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        assert h.last == 1 and not h.closed          # counted from the current value
        write(ev, "low 0\nhigh 0\nmax 10\noom 2\noom_kill 1\n")    # modified, no new kill
        spin(0.2)
        assert calls == []
        write(ev, "low 0\nhigh 0\nmax 11\noom 3\noom_kill 2\n")
        assert run_until(lambda: len(calls) == 1)
        write(ev, "low 0\nhigh 0\nmax 12\noom 5\noom_kill 4\n")    # +2 seen at once: one call
        assert run_until(lambda: len(calls) == 2)
        spin(0.1)
        assert len(calls) == 2
        # poll() with nothing pending is a no-op
        h.poll()
        assert len(calls) == 2
        # the cgroup goes away: the watch ends by itself
        os.unlink(ev)
        assert run_until(lambda: h.closed)
        assert len(calls) == 2
    finally:
        h.close()
    h.close()                                    # idempotent


def test_oom_watch_v2_poll_delivers_before_the_loop_does(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        write(cg.path + "/memory.events", "oom 3\noom_kill 2\n")
        h.poll()                                 # e.g. from the exit handler
        assert calls == [1]
        spin(0.1)
        assert calls == [1]
    finally:
        h.close()
    assert loop.poller.handlers(h.fd) == (None, None)


def test_oom_watch_close_unregisters_and_closes_fd(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    h = cgroups.watch_oom(cg, loop, lambda: None)
    fd = h.fd
    assert loop.poller.handlers(fd)[0] is not None
    h.close()
    assert h.closed and loop.poller.handlers(fd) == (None, None)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_oom_watch_errors(tmp_path):
    root, proc = v2_tree(tmp_path, files={"cgroup.procs": ""})     # no memory.events
    cg = cgroups.find(PID, root=root, proc=proc)
    with pytest.raises(FileNotFoundError):
        cgroups.watch_oom(cg, loop, lambda: None)
    root1, proc1 = str(tmp_path / "c1"), str(tmp_path / "p1")
    tree(root1, {"pids/a/pids.current": "1\n"})
    tree(proc1, {"%d/cgroup" % PID: "1:pids:/a\n"})
    cg1 = cgroups.find(PID, root=root1, proc=proc1)
    assert cg1.path is None
    with pytest.raises(FileNotFoundError):
        cgroups.watch_oom(cg1, loop, lambda: None)    # no memory controller


def test_oom_kills_counter_v1_and_v2(tmp_path):
    root, proc = v1_tree(tmp_path / "1")
    assert cgroups.oom_kills(cgroups.find(PID, root=root, proc=proc)) == 3
    root, proc = v2_tree(tmp_path / "2")
    cg = cgroups.find(PID, root=root, proc=proc)
    assert cgroups.oom_kills(cg) == 1
    os.unlink(cg.path + "/memory.events")
    assert cgroups.oom_kills(cg) is None


def test_oom_watch_v1_at_exit_reports_a_kill_the_eventfd_missed(tmp_path):
    # A fixture tree's event_control is a plain file: the eventfd never
    # fires, as when a wake-up is lost, so only the counter tells.
    root, proc = v1_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    write(cg.path + "/cgroup.event_control", "")
    oc = cg.path + "/memory.oom_control"
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        assert h.base == 3                      # kills before the watch are not ours
        assert h.at_exit() == 3 and calls == []
        write(oc, "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
        assert h.at_exit() == 5 and calls == [1]    # one OOM, however many kills
        assert h.at_exit() == 5 and calls == [1]    # and only once
    finally:
        h.close()


def test_oom_watch_v2_at_exit_reports_once_and_knows_the_count_when_gone(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    ev = cg.path + "/memory.events"
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        write(ev, "oom 3\noom_kill 2\n")
        assert h.at_exit() == 2 and calls == [1]
        spin(0.1)
        assert calls == [1]                     # the inotify wake-up adds nothing
        # The cgroup is removed before the exit is handled (systemd removes
        # an empty scope): the count the watch saw.
        os.unlink(ev)
        assert h.at_exit() == 2 and calls == [1]
    finally:
        h.close()


def test_oom_watch_v2_at_exit_without_memory_events_seen(tmp_path):
    # The cgroup vanished before any read after the kill: an OOM reported
    # by the watch is counted as a kill.
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    h = cgroups.watch_oom(cg, loop, lambda: None)
    try:
        assert (h.base, h.reported) == (1, 0)
        h.reported = 1                          # e.g. a v1 eventfd wake-up
        os.unlink(cg.path + "/memory.events")
        assert h.at_exit() == 2
    finally:
        h.close()


@pytest.mark.parametrize("version", [1, 2])
def test_oom_stats_hold_only_the_count(tmp_path, version):
    root, proc = (v1_tree if version == 1 else v2_tree)(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    if version == 1:
        url, m = unpack(cg.oom_stats(4), pb1.Metrics)
        assert (url, m.memory_oom_control.oom_kill) == ("io.containerd.cgroups.v1.Metrics", 4)
        assert [f.name for f, _ in m.ListFields()] == ["memory_oom_control"]
    else:
        url, m = unpack(cg.oom_stats(4), pb2.Metrics)
        assert (url, m.memory_events.oom_kill) == ("io.containerd.cgroups.v2.Metrics", 4)
        assert [f.name for f, _ in m.ListFields()] == ["memory_events"]


def test_inotify_native(tmp_path):
    p = str(tmp_path / "f")
    write(p, "x")
    fd = _native.inotify_init()
    try:
        assert _native.inotify_read(fd) == []
        wd = _native.inotify_add_watch(fd, p, _native.IN_MODIFY)
        write(p, "y")
        write(p, "z")
        evs = _native.inotify_read(fd)
        assert evs and all(w == wd and m & _native.IN_MODIFY for w, m in evs)
        _native.inotify_rm_watch(fd, wd)
        assert _native.inotify_read(fd) == [(wd, _native.IN_IGNORED)]
        with pytest.raises(OSError):
            _native.inotify_add_watch(fd, str(tmp_path / "missing"), _native.IN_MODIFY)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ memory rules

def test_import_and_stats_load_nothing_heavy(tmp_path):
    root, proc = v1_tree(tmp_path)
    root2, proc2 = v2_tree(tmp_path / "v2")
    site_dir = os.path.dirname(os.path.dirname(cgroups.__file__))
    code = (
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "import os, shim._native, shim.pb, shim.loop  # the serving shim has these\n"
        "before = set(sys.modules)\n"
        "import shim.cgroups as c\n"
        "after_import = set(sys.modules) - before\n"
        "c.find(%d, root=%r, proc=%r).stats()\n"
        "c.find(%d, root=%r, proc=%r).stats()\n"
        "print(sorted(after_import)); print(sorted(set(sys.modules) - before))\n"
        % (site_dir, PID, root, proc, PID, root2, proc2))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True,
                         capture_output=True, text=True, cwd="/").stdout.splitlines()
    on_import, after_stats = eval(out[0]), eval(out[1])
    assert on_import == ["shim.cgroups"]
    assert set(after_stats) <= {"shim.cgroups", "shim.pb.cgroups1", "shim.pb.cgroups2",
                                "shim.pb.wkt", "shim.cgroup_stats_v1",
                                "shim.cgroup_stats_v2"}, after_stats


def test_oom_watch_v2_at_exit_reads_the_parent_when_the_cgroup_is_gone(tmp_path):
    # The systemd driver: the scope's cgroup is removed before the (rate-
    # limited) inotify wake-up or the exit is handled. The parent's
    # memory.events counts the subtree's kills: a rise there is the OOM.
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    parent = os.path.dirname(cg.path) + "/memory.events"
    write(parent, "oom 0\noom_kill 4\n")
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        assert h.ancestor_bases == [(os.path.dirname(cg.path), 4)]
        write(parent, "oom 1\noom_kill 5\n")
        os.unlink(cg.path + "/memory.events")
        assert h.at_exit() == h.base + 1 and calls == [1]
    finally:
        h.close()


def test_oom_watch_v2_at_exit_parent_without_a_kill_reports_nothing(tmp_path):
    root, proc = v2_tree(tmp_path)
    cg = cgroups.find(PID, root=root, proc=proc)
    write(os.path.dirname(cg.path) + "/memory.events", "oom_kill 4\n")
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        os.unlink(cg.path + "/memory.events")
        assert h.at_exit() == h.base and calls == []
    finally:
        h.close()


def test_oom_watch_v2_at_exit_reads_the_nearest_ancestor_left(tmp_path):
    # crun's systemd driver: the init runs in <scope>/container and systemd
    # removes the scope with it, so the parent is gone too; the slice above
    # is the nearest ancestor left and its rise is the OOM.
    root, proc = v2_tree(tmp_path, cg="/system.slice/crun-c1.scope/container")
    cg = cgroups.find(PID, root=root, proc=proc)
    scope = os.path.dirname(cg.path)
    slice_ = os.path.dirname(scope)
    write(scope + "/memory.events", "oom_kill 0\n")
    write(slice_ + "/memory.events", "oom_kill 4\n")
    calls = []
    h = cgroups.watch_oom(cg, loop, lambda: calls.append(1))
    try:
        write(slice_ + "/memory.events", "oom_kill 5\n")
        os.unlink(cg.path + "/memory.events")
        os.unlink(scope + "/memory.events")
        assert h.at_exit() == h.base + 1 and calls == [1]
    finally:
        h.close()
