# cython: language_level=3, boundscheck=False, wraparound=False
"""shim._native: every native piece of pyshim in one extension module.

One module on purpose: each extension module costs ~0.4 MB private memory per
shim process. Each concern lives in its own .pxi and has a Python-visible API
described in docs/design.md.
"""
include "frame.pxi"
include "poller.pxi"
include "sys.pxi"
include "cgroup.pxi"
include "proctitle.pxi"
include "heap.pxi"
