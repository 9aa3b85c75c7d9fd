"""Lean protobuf codec; message modules are generated at build time from proto/.

    from shim.pb import task, events      # generated: one module per proto package
    from shim.pb import DecodeError, any_pack, any_unpack, timestamp

See docs/codec.md. Never imports google.protobuf.
"""
from shim.pb._codec import (  # noqa: F401
    DecodeError, any_pack, any_unpack, timestamp, timestamp_ns, ts_to_float, ts_to_ns,
)
