"""The reliability suite's table: one row per check, pyshim beside the Go shim.

    reltable.record("mixed churn: wrong exit codes", "py", 0)
    reltable.render()        # a Markdown table, rows in the order first recorded

Tests record figures as they go (a failing test still records what it saw);
tests/reliability/conftest.py prints the table at the end of the session and
writes it to $PYSHIM_RELIABILITY_REPORT (or reliability-table.md in pytest's
base temp dir).
"""
import os

REPORT_ENV = "PYSHIM_RELIABILITY_REPORT"
COLUMNS = (("py", "pyshim"), ("go", "Go"))

_rows = {}


def runtime_key(runtime):
    """'py' or 'go' for a runtime name (io.containerd.pyshim.v1 / runc.v2)."""
    return "py" if "pyshim" in runtime else "go"


def record(check, runtime, value):
    """Set the cell of `check` for `runtime` ('py', 'go' or a runtime name)."""
    key = runtime if runtime in ("py", "go") else runtime_key(runtime)
    _rows.setdefault(check, {})[key] = value


def rows():
    return list(_rows.items())


def clear():
    _rows.clear()


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.2f" % v
    return str(v).replace("|", "/")


def render(title=None):
    if not _rows:
        return ""
    lines = []
    if title:
        lines += ["", title, ""]
    lines.append("| check | %s |" % " | ".join(name for _k, name in COLUMNS))
    lines.append("|---|%s" % ("---|" * len(COLUMNS)))
    for check, cells in _rows.items():
        lines.append("| %s | %s |" % (check, " | ".join(_cell(cells.get(k))
                                                        for k, _n in COLUMNS)))
    return "\n".join(lines) + "\n"


def report_path(default_dir):
    return os.environ.get(REPORT_ENV) or os.path.join(str(default_dir),
                                                      "reliability-table.md")
