"""Lean protobuf codec; message modules are generated at build time from proto/."""
