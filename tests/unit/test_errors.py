"""shim.errors: the codes and error type, and the translation of runc's
failures into the Go shim's errors (moved here from shim.runc)."""
import pytest

from shim import errors, ttrpc
from shim.errors import NOT_FOUND, UNKNOWN, Error
from shim.runc import RuncError


def test_transport_reexports_the_same_type_and_codes():
    assert ttrpc.TTRPCError is Error
    assert (ttrpc.NOT_FOUND, ttrpc.UNKNOWN, ttrpc.INTERNAL) == (5, 2, 13)
    e = ttrpc.not_found("container c1")
    assert isinstance(e, Error) and (e.code, str(e)) == (NOT_FOUND, "container c1: not found")


@pytest.mark.parametrize("make,code,suffix", [
    (errors.not_found, errors.NOT_FOUND, ": not found"),
    (errors.already_exists, errors.ALREADY_EXISTS, ": already exists"),
    (errors.failed_precondition, errors.FAILED_PRECONDITION, ": failed precondition"),
    (errors.invalid_argument, errors.INVALID_ARGUMENT, ": invalid argument"),
    (errors.unimplemented, errors.UNIMPLEMENTED, ": not implemented"),
])
def test_constructors_add_errdefs_suffix(make, code, suffix):
    e = make("x")
    assert (e.code, e.message) == (code, "x" + suffix)


@pytest.mark.parametrize("msg,code,text", [
    ("container not running", NOT_FOUND, "process already finished: not found"),
    ("os: process already finished", NOT_FOUND, "process already finished: not found"),
    ("kill failed: No such process", NOT_FOUND, "process already finished: not found"),
    ("container does not exist", NOT_FOUND, "no such container: not found"),
    ("permission denied", UNKNOWN, "unknown error after kill: permission denied"),
])
def test_classify_kill_error(msg, code, text):
    e = errors.classify_kill_error(msg)
    assert (e.code, e.message) == (code, text)
    e = errors.classify_kill_error(RuncError(msg))
    assert (e.code, e.message) == (code, text)


def test_classify_kill_esrch():
    e = errors.classify_kill_error(ProcessLookupError(3, "No such process"))
    assert (e.code, e.message) == (NOT_FOUND, "process already finished: not found")


def test_runc_error():
    e = errors.runc_error("OCI runtime create failed", RuncError("boom"))
    assert (e.code, e.message, str(e)) == (UNKNOWN, "OCI runtime create failed: boom",
                                           "OCI runtime create failed: boom")
