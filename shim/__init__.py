"""pyshim: a containerd shim v2 runtime (io.containerd.pyshim.v1)."""
