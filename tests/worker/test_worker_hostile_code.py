"""Hostile user code against the real worker: every read of a user object is guarded (issue 13,
item 5).

The objects of ``pymods/sp_hostile.py`` raise ``SystemExit`` or ``KeyboardInterrupt`` when the
worker reads them to build a reply (a message, a type name, a traceback, a hash). Before the
fix each of these ended the worker (status 1, every session lost); now the request gets an
error reply and the worker keeps serving, its sessions intact.
"""

from __future__ import annotations

import pytest
from snakeport.types import Atom
from sp_client import A, Worker


@pytest.fixture
def w():
    """A worker with 2 call threads and a ref that must outlive every attack."""
    worker = Worker("--threads", "2")
    # A ref that must outlive every attack (the session is not lost).
    worker.keep = worker.call("sp_testmod", "Box", [42])
    yield worker
    worker.kill()


def still_serving(w: Worker) -> None:
    assert w.proc.poll() is None, w.stderr_text()
    assert w.ok("ping") == A("pong")
    assert w.call("operator", "add", [1, 2]) == 3
    assert w.ok("method", "s1", w.keep, "get", [], {}, {}) == 42


def error_of(w: Worker, module: str, function: str, args=(), opts=None) -> dict:
    err = w.error("call", "s1", module, function, list(args), {}, opts or {})
    still_serving(w)
    return err


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_message_whose_truth_value_exits(make_worker, threads: str) -> None:
    # The issue: __str__ returned a str subclass whose __bool__ raised SystemExit; the
    # worker exited with status 1.
    w = make_worker("--threads", threads)
    for function, message in [("raise_str_exits", "boom"), ("raise_empty_str_exits", "EmptyStrExits")]:
        err = w.error("call", "s1", "sp_hostile", function, [], {}, {})
        assert err[A("reason")] == A("python_error")
        assert err[A("message")] == message and type(err[A("message")]) is str
        assert err[A("type")] == f"sp_hostile.{message if message != 'boom' else 'StrExits'}"
        assert w.ok("ping") == A("pong")


def test_a_message_that_exits(w) -> None:
    err = error_of(w, "sp_hostile", "raise_str_raises_exit")
    assert (err[A("reason")], err[A("message")]) == (A("python_error"), "StrRaisesExit")


def test_an_exception_type_whose_module_exits(w) -> None:
    # The issue: a class whose __module__ raises SystemExit. The name is read with type's own
    # getter (the metaclass's property is never called).
    err = error_of(w, "sp_hostile", "raise_module_exits")
    assert err[A("reason")] == A("python_error") and err[A("message")] == "x"
    assert err[A("type")] == "sp_hostile.ModuleExitsError"
    assert err[A("traceback")], err  # formatted, or its one-line fallback


@pytest.mark.parametrize("function", ["opaque", "opaque_list"])
@pytest.mark.parametrize("mode", ["auto", "ref"])
def test_a_result_type_whose_module_exits(w, function: str, mode: str) -> None:
    value = w.call("sp_hostile", function, opts={A("result"): A(mode)})
    refs = [value] if mode == "ref" or function == "opaque" else [value[1]]
    for ref in refs:
        assert ref[0] == A("$snakeport_ref")
        assert ref[3] in ("sp_hostile.Opaque", "builtins.list")
    still_serving(w)


def test_a_result_type_whose_module_is_not_a_string(w) -> None:
    ref = w.call("sp_hostile", "weird_module")
    assert ref[0] == A("$snakeport_ref") and ref[3] == "?.WeirdModule"
    still_serving(w)


@pytest.mark.parametrize("function", ["type_hash_exits", "type_hash_exits_list"])
def test_a_result_type_whose_hash_exits(w, function: str) -> None:
    # Looking the result's type up among the data types hashes it: its metaclass's
    # __hash__ raises KeyboardInterrupt. Before the fix it escaped the call thread.
    err = error_of(w, "sp_hostile", function)
    if function == "type_hash_exits":
        assert err[A("reason")] == A("python_error")
        assert err[A("type")] == "builtins.KeyboardInterrupt"
        assert err[A("message")].startswith("the result could not be read: ")
    else:
        # Inside a container the conversion reads it: a conversion that raises (numpy,
        # pandas, encoders, or this) makes the result not_encodable, naming what raised.
        assert err[A("reason")] == A("not_encodable")
        assert "KeyboardInterrupt" in err[A("message")]
    still_serving(w)


def test_an_exception_whose_traceback_exits(w) -> None:
    err = error_of(w, "sp_hostile", "raise_traceback_exits")
    assert err[A("reason")] == A("python_error") and err[A("message")] == "y"
    assert err[A("traceback")] == ["sp_hostile.TracebackExits: <traceback could not be formatted>"]


def test_an_exception_whose_note_exits(w) -> None:
    err = error_of(w, "sp_hostile", "raise_notes_exit")
    assert err[A("reason")] == A("python_error") and err[A("message")] == "with a note"


def test_system_exit_raised_by_a_call_is_an_error(w) -> None:
    err = error_of(w, "sp_hostile", "exit_now")
    assert (err[A("reason")], err[A("type")], err[A("message")]) == (A("python_error"), "builtins.SystemExit", "9")


def test_an_attribute_error_whose_message_exits(w) -> None:
    obj = w.call("sp_hostile", "missing_attribute_exits")
    err = w.error("method", "s1", obj, "nothing", [], {}, {})
    assert (err[A("reason")], err[A("message")]) == (A("attribute_error"), "no such attribute")
    err = w.error("getattr", "s1", obj, "nothing", {})
    assert (err[A("reason")], err[A("message")]) == (A("attribute_error"), "no such attribute")
    still_serving(w)


@pytest.mark.parametrize(
    "arg",
    [
        lambda ref: (A("$snakeport_set"), [ref]),  # a set element
        lambda ref: {ref: 1},  # a map key
        lambda ref: [[{(1, ref): 2}]],  # deeper, in a tuple key
    ],
    ids=["set element", "map key", "tuple key"],
)
def test_a_ref_whose_hash_exits_on_the_reader_thread(w, arg) -> None:
    # The issue: a resolved ref used as a set element or a map key is hashed on the reader
    # thread while the arguments are built, outside any BaseException guard.
    ref = w.call("sp_hostile", "unhashable")
    err = w.error("call", "s1", "builtins", "len", [arg(ref)], {}, {})
    assert err[A("reason")] == A("bad_request") and err[A("type")] == "builtins.SystemExit"
    assert err[A("message")] == "invalid request: 7"
    err = w.error("method", "s1", w.keep, "same", [arg(ref)], {}, {})
    assert err[A("reason")] == A("bad_request") and err[A("type")] == "builtins.SystemExit"
    still_serving(w)


def test_huge_ref_ids_answer_ref_not_found(w) -> None:
    # Issue 13, item 8: a ref id above 4,300 decimal digits answered bad_request (CPython
    # refuses to convert it to a decimal string for the message) instead of ref_not_found.
    for ref_id in (10**4300, 10**5000, 2**100_000):
        err = w.error("method", "s1", (A("$snakeport_ref"), "s1", ref_id, "T"), "get", [], {}, {})
        assert err[A("reason")] == A("ref_not_found"), err
        assert err[A("details")] == {A("ref_id"): ref_id}
        assert "bit integer" in err[A("message")] and len(err[A("message")]) < 300
        err = w.error("method", "s1", (A("$snakeport_ref"), "other", ref_id, "T"), "get", [], {}, {})
        assert err[A("reason")] == A("session_mismatch"), err
        assert w.ok("release_ref", "s1", (A("$snakeport_ref"), "s1", ref_id, "T")) == {A("released"): False}
    still_serving(w)


def test_messages_about_huge_values_are_cut(w) -> None:
    # A value that a message names is cut (its repr would be 4 times a binary's size).
    big = b"\xff" * (8 << 20)
    for op, fields in [
        ("call", ("s1", "builtins", "len", big, {}, {})),
        ("session_info", (big,)),
        ("open_session", ("s1", {A("max_refs"): big})),
        ("open_session", ("s1", {A("max_refs"): -(10**5000)})),
        ("cancel", (big,)),
    ]:
        err = w.error(op, *fields)
        assert err[A("reason")] in (A("bad_request"), A("session_not_found")), err
        assert len(err[A("message")]) < 400, (op, len(err[A("message")]))
    assert w.ok("session_info", "s1")[A("max_refs")] == 10_000
    still_serving(w)


def test_atoms_are_still_shown_as_atoms(w) -> None:
    err = w.error("call", "s1", "builtins", "len", [], {}, {A("result"): A("nope")})
    assert err[A("message")] == "expected result to be auto, ref, value or arrow, got: Atom('nope')"
    assert type(err[A("message")]) is str and not isinstance(err[A("message")], Atom)
