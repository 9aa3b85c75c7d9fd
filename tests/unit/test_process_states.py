"""The process state table (shim.process): every operation in every state,
allowed or refused with the Go runc shim's error (its code and text), and
the transitions. Written out in full here, independently of how process.py
builds its table."""
import pytest

from shim.errors import FAILED_PRECONDITION, NOT_FOUND, UNKNOWN
from shim.process import (CREATED, CREATED_CHECKPOINT, DELETED, EXEC_RULES, EXEC_STATES,
                          INIT_RULES, INIT_STATES, PAUSED, PAUSING, RUNNING, STOPPED,
                          Process, StateError)

C, CC, R, PG, P, S, D = (CREATED, CREATED_CHECKPOINT, RUNNING, PAUSING, PAUSED, STOPPED,
                         DELETED)
OK = None

# op: {state: None | text (Unknown) | (code, text)}, states in the order
# created, created-from-checkpoint, running, pausing, paused, stopped, deleted.
INIT = {
    "start": [OK, OK, "cannot start a running process", "cannot start a pausing process",
              "cannot start a paused process", "cannot start a stopped process",
              "cannot start a deleted process"],
    "delete": [OK, OK, "cannot delete a running process", "cannot delete a pausing process",
               "cannot delete a paused process", OK, "cannot delete a deleted process"],
    "kill": [OK, OK, OK, OK, OK, OK, (NOT_FOUND, "cannot kill a deleted process: not found")],
    "pause": ["cannot pause task in created state", "cannot pause task in created state", OK,
              "cannot pause a pausing container", "cannot pause a paused container",
              "cannot pause a stopped container", "cannot pause a deleted process"],
    "resume": ["cannot resume task in created state", "cannot resume task in created state",
               "cannot resume a running process", "cannot resume a pausing container", OK,
               "cannot resume a stopped container", "cannot resume a deleted process"],
    "update": [OK, OK, OK, OK, OK, "cannot update a stopped container",
               "cannot update a deleted process"],
    "checkpoint": ["cannot checkpoint a task in created state",
                   "cannot checkpoint a task in created state", OK, OK, OK,
                   "cannot checkpoint a stopped container",
                   "cannot checkpoint a deleted process"],
    "exec": [OK, "cannot exec in a created state", OK, "cannot exec in a paused state",
             "cannot exec in a paused state", "cannot exec in a stopped state",
             "cannot exec in a deleted state"],
    "resize": [OK, OK, OK, OK, OK, OK, "cannot resize a deleted process"],
}
INIT_ORDER = (C, CC, R, PG, P, S, D)

# states created, running, stopped, deleted
EXEC = {
    "start": [OK, "cannot start a running process", "cannot start a stopped process",
              "cannot start a deleted process"],
    "delete": [OK, "cannot delete a running process", OK, "cannot delete a deleted process"],
    "kill": [(FAILED_PRECONDITION, "process not created: failed precondition"), OK,
             (NOT_FOUND, "process already finished: not found"),
             (NOT_FOUND, "cannot kill a deleted process: not found")],
    "resize": [OK, OK, "cannot resize a stopped container", "cannot resize a deleted process"],
}
EXEC_ORDER = (C, R, S, D)


class _Container:
    id = "c1"


def proc(state, exec_id=""):
    return Process(_Container(), exec_id, "", "", "", False, None, status=state)


def cases(table, order, exec_id):
    for op, row in table.items():
        for state, want in zip(order, row):
            yield pytest.param(op, state, want, exec_id, id="%s-%s-%s" % (
                "exec" if exec_id else "init", op, state))


def test_tables_cover_every_state_and_operation():
    assert set(INIT_STATES) == set(INIT_ORDER) and set(EXEC_STATES) == set(EXEC_ORDER)
    assert set(INIT_RULES) == set(INIT) and set(EXEC_RULES) == set(EXEC)
    for rules, states in ((INIT_RULES, INIT_STATES), (EXEC_RULES, EXEC_STATES)):
        for op, row in rules.items():
            assert set(row) == set(states), op


@pytest.mark.parametrize("op,state,want,exec_id",
                         list(cases(INIT, INIT_ORDER, "")) + list(cases(EXEC, EXEC_ORDER, "e1")))
def test_operation_in_state(op, state, want, exec_id):
    p = proc(state, exec_id)
    if want is None:
        p.require(op)
        return
    code, text = want if isinstance(want, tuple) else (UNKNOWN, want)
    with pytest.raises(StateError) as ei:
        p.require(op)
    assert (ei.value.code, ei.value.message) == (code, text)


def test_start_in_flight_reads_as_running():
    for state in (C, CC):
        p = proc(state)
        p.starting = True
        with pytest.raises(StateError, match="^cannot start a running process$"):
            p.require("start")
        p.require("delete")             # the init: runc delete --force is fine
    e = proc(C, "e1")
    e.starting = True
    for op in ("start", "delete"):
        with pytest.raises(StateError, match="^cannot %s a running process$" % op):
            e.require(op)
    with pytest.raises(StateError, match="process not created"):
        e.require("kill")


def test_exec_with_held_exit_is_finished_for_kill():
    e = proc(R, "e1")
    e.held_exit = (0, 1.0)
    with pytest.raises(StateError) as ei:
        e.require("kill")
    assert ei.value.code == NOT_FOUND


LEGAL = {C: {R, S, D}, CC: {R, S, D}, R: {PG, S}, PG: {P, R, S}, P: {R, S}, S: {D}, D: set()}


@pytest.mark.parametrize("src", INIT_ORDER)
@pytest.mark.parametrize("dst", INIT_ORDER)
def test_transitions(src, dst):
    p = proc(src)
    if dst in LEGAL[src]:
        p.to(dst)
        assert p.status == dst
    else:
        with pytest.raises(StateError, match="illegal transition"):
            p.to(dst)
        assert p.status == src
    e = proc(src, "e1") if src in EXEC_STATES else None
    if e is not None:
        if dst in LEGAL[src] and dst in EXEC_STATES:
            e.to(dst)
        else:
            with pytest.raises(StateError):
                e.to(dst)


def test_wire_status_and_exit():
    assert proc(CC).wire_status == CREATED and proc(D).wire_status == STOPPED
    assert proc(P).wire_status == PAUSED
    for state in (C, CC, R, PG, P):
        p = proc(state)
        p.record_exit(137, 5.0)
        assert (p.status, p.exit_status, p.exited_at, p.reaped) == (S, 137, 5.0, True)
    p = proc(D, "e1")
    p.record_exit(1, 6.0)               # a late exit keeps it deleted
    assert (p.status, p.exit_status) == (D, 1)
