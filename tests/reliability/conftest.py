"""The reliability suite (docs/reliability.md, "The reliability suite"):
bounded checks under churn, faults and hostile input, each on pyshim and on
the Go shim of the same containerd, with a table of figures at the end.

Tests here are marked `reliability` and `integration`; the table is printed
after the session's summary and written to $PYSHIM_RELIABILITY_REPORT (or
reliability-table.md in pytest's base temp dir)."""
import os

import pytest

from support import reltable
from support.containerd import containerd_version


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: the bounded reliability suite "
                            "(tests/reliability), figures beside the Go shim")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(getattr(item, "path", "")).startswith(here + os.sep):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not reltable.rows():
        return
    try:
        version = ".".join(map(str, containerd_version()))
    except Exception:
        version = "?"
    text = reltable.render("reliability suite, containerd %s (pyshim beside the Go shim "
                           "containerd-shim-runc-v2 of the same containerd)" % version)
    terminalreporter.write_sep("=", "reliability table")
    terminalreporter.write(text)
    factory = getattr(config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else "/tmp"
    path = reltable.report_path(base)
    try:
        with open(path, "w") as f:
            f.write(text)
        terminalreporter.write_line("reliability table written to %s" % path)
    except OSError as e:
        terminalreporter.write_line("could not write the reliability table to %s: %s"
                                    % (path, e))


@pytest.fixture
def live(containerd, sleeper):
    """A running `sleep 3600` container on `runtime` (the sleeper fixture):
    (cid, shim address, task service name)."""
    from support.helpers import address_of
    return sleeper, address_of(containerd, sleeper), containerd.task_service
