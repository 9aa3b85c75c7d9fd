"""The kernel's samepage merging (/sys/kernel/mm/ksm) for a test or a
bench row: run ksmd until what is marked is merged, read what a process
has merged, and put ksmd back as it was found (pages it merged unmerged if
it was off). Only memory a process marked is scanned (pyshim's template
and shims, a VM's if any), so turning ksmd on touches nothing else. A
VM's memory can make a full scan long at ksmd's default rate (100 pages per
20 ms): a test that only needs the merge done asks for a faster scan, which
restore() puts back too.

    k = Ksmd()            # k.available: KSM there and ours to turn on
    k.merge()             # ksmd on, until 3 more full scans are done
    k.merge(pages_to_scan=5000)   # the same, scanning faster (a test)
    merging_pages(pid)    # pages of pid kept once with another's
    mergeable_mappings(open("/proc/PID/smaps").read())   # names of marked mappings
    k.restore()

stdlib only.
"""
import os
import time

DIR = "/sys/kernel/mm/ksm/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def mergeable_mappings(smaps):
    """Names of the mappings in an smaps text whose VmFlags say "mg"
    (madvise MERGEABLE): "" for anonymous ones."""
    out, name = set(), None
    for line in smaps.splitlines():
        f = line.split()
        if f and "-" in f[0] and ":" not in f[0]:      # a mapping's header line
            name = f[5] if len(f) > 5 else ""
        elif f and f[0] == "VmFlags:" and "mg" in f[1:]:
            out.add(name)
    return out


def merging_pages(pid):
    """Pages of pid that ksmd merged (/proc/PID/ksm_stat, Linux 6.1+;
    /proc/PID/ksm_merging_pages before), None if the kernel does not say."""
    for line in _read("/proc/%d/ksm_stat" % pid).splitlines():
        if line.startswith("ksm_merging_pages "):
            return int(line.split()[1])
    text = _read("/proc/%d/ksm_merging_pages" % pid).strip()
    return int(text) if text.isdigit() else None


class Ksmd:
    def __init__(self):
        self.available = os.access(DIR + "run", os.W_OK)
        self.was = self._get("run") if self.available else None
        self.rate_was = self._get("pages_to_scan") if self.available else None
        self.pid = next((int(d) for d in os.listdir("/proc") if d.isdigit()
                         and _read("/proc/%s/comm" % d).strip() == "ksmd"), None)

    def _get(self, name):
        return _read(DIR + name).strip()

    def _set(self, name, value):
        with open(DIR + name, "w") as f:
            f.write(value)

    def merge(self, timeout=300.0, pages_to_scan=None):
        """Run ksmd until 3 more full scans are done (the first sees a page,
        the second merges it); returns the seconds that took. pages_to_scan:
        pages per ksmd wake-up until restore() (default: as found)."""
        if pages_to_scan is not None:
            self._set("pages_to_scan", str(pages_to_scan))
        scans = int(self._get("full_scans"))
        t0 = time.monotonic()
        self._set("run", "1")
        while int(self._get("full_scans")) < scans + 3:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("ksmd did not finish 3 scans in %.0f s" % timeout)
            time.sleep(0.2)
        return time.monotonic() - t0

    def _cpu(self):
        fields = _read("/proc/%d/stat" % self.pid).rsplit(")", 1)[-1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK if len(fields) > 12 else 0.0

    def cpu_share(self, seconds):
        """ksmd's CPU over the next `seconds`, as a share of one core."""
        if self.pid is None:
            return 0.0
        t0, c0 = time.monotonic(), self._cpu()
        time.sleep(seconds)
        return (self._cpu() - c0) / (time.monotonic() - t0)

    def restore(self):
        if self.available and self._get("pages_to_scan") != self.rate_was:
            self._set("pages_to_scan", self.rate_was)
        if self.available and self.was != "1":
            self._set("run", "2")       # stop and unmerge all
            self._set("run", self.was)
