"""Test support: a private containerd (support.containerd) and the offline
busybox image (support.image). stdlib only, so bench/ can import it too."""
