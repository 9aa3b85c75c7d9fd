"""shim.serve's settings from the environment."""
import pytest

from shim import serve


@pytest.mark.parametrize("value, seconds", [
    (None, 30.0), ("", 30.0), ("2", 2.0), ("0.5", 0.5),
    ("0", 0.0), ("-1", -1.0),                   # <= 0: never exit for want of a Create
    ("soon", 30.0), ("nan", 30.0), ("inf", 30.0), ("1e12", 30.0),   # not usable: default
])
def test_idle_exit_seconds(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(serve.IDLE_EXIT_ENV, raising=False)
    else:
        monkeypatch.setenv(serve.IDLE_EXIT_ENV, value)
    assert serve._idle_exit_seconds() == seconds
