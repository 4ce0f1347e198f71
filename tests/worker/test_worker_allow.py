"""The allow-list (``--allow``) through the real worker (issue 13, item 7).

A refused name is answered ``not_allowed`` before anything is imported (the tests look at
``sys.modules`` inside the worker); dunder names are refused; attribute paths and refs
cannot reach a module that no entry names, nor a frame.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from snakeport._allow import AllowList, check_entry, parse_entries
from sp_client import A, Worker, worker_env

ALLOW = "math,json.loads,os.path,sp_testmod.imported,sp_testmod.gen,sp_testmod.a_module,sp_testmod.Box,sp_canary.allowed"


@pytest.fixture
def w():
    worker = Worker("--allow", ALLOW, "--allow", "collections.OrderedDict")
    yield worker
    worker.kill()


def not_allowed(w: Worker, op: str, *fields) -> str:
    err = w.error(op, *fields)
    assert err[A("reason")] == A("not_allowed"), err
    return err[A("message")]


def test_allowed_names_are_called(w) -> None:
    assert w.call("math", "sqrt", [16.0]) == 4.0
    assert w.call("json", "loads", ["[1]"]) == [1]
    assert w.call("os.path", "join", ["a", "b"]) == "a/b"
    assert w.call("os", "path.join", ["a", "b"]) == "a/b"  # os.path reached as os.path
    assert w.call("collections", "OrderedDict")[0] == A("$snakeport_ref")
    assert w.ok("getattr", "s1", (A("module"), "math"), "pi", {}) == pytest.approx(3.14159265)
    box = w.call("sp_testmod", "Box", [3])
    assert w.ok("method", "s1", box, "get", [], {}, {}) == 3
    assert w.ok("setattr", "s1", box, "value", 4, {}) is None
    assert w.ok("getattr", "s1", box, "value", {}) == 4
    assert w.call("sp_canary", "allowed") == "allowed"


def test_a_name_outside_the_list_is_refused_before_any_import(w) -> None:
    assert w.call("sp_testmod", "imported", ["sp_canary"]) is False
    # A module no entry names, and a name beside the one entry of its module.
    message = not_allowed(w, "call", "s1", "sp_canary", "other", [], {}, {})
    assert message == "sp_canary.other is not allowed: the worker's allow-list (--allow) does not name it"
    not_allowed(w, "getattr", "s1", (A("module"), "sp_canary"), "IMPORTED", {})
    assert w.call("sp_testmod", "imported", ["sp_canary"]) is False
    for module in ("subprocess", "sp_race", "ctypes"):
        was = w.call("sp_testmod", "imported", [module])
        not_allowed(w, "call", "s1", module, "run", [], {}, {})
        assert w.call("sp_testmod", "imported", [module]) is was
    assert w.call("sp_testmod", "imported", ["sp_race"]) is False
    not_allowed(w, "call", "s1", "os", "system", ["true"], {}, {})
    not_allowed(w, "call", "s1", "builtins", "eval", ["1"], {}, {})
    not_allowed(w, "call", "s1", "json", "dumps", [1], {}, {})
    not_allowed(w, "call", "s1", "mathx", "sqrt", [1], {}, {})  # (not a prefix match)


@pytest.mark.parametrize(
    "op,fields",
    [
        ("call", ("math", "sqrt.__self__", [], {}, {})),
        ("call", ("json", "loads.__globals__", [], {}, {})),
        ("call", ("math", "__loader__.load_module", [], {}, {})),
        ("call", ("_thread", "start_new_thread", [], {}, {})),
        ("getattr", ((A("module"), "math"), "__spec__", {})),
    ],
)
def test_private_and_dunder_names_are_refused(w, op: str, fields: tuple) -> None:
    message = not_allowed(w, op, "s1", *fields)
    assert "start with _" in message


def test_refs_may_not_reach_dunders_modules_or_frames(w) -> None:
    box = w.call("sp_testmod", "Box", [3])
    for op, fields in [
        ("method", (box, "__reduce_ex__", [2], {}, {})),
        ("getattr", (box, "__class__", {})),
        ("getattr", (box, "get.__globals__", {})),
        ("setattr", (box, "__class__", 1, {})),
        ("setattr", (box, "get.__doc__", "x", {})),
    ]:
        assert "start with _" in not_allowed(w, op, "s1", *fields)
    # A module object returned by an allowed call: not a target, whatever the name.
    module = w.call("sp_testmod", "a_module")
    assert module[3] == "builtins.module"
    for op, fields in [
        ("method", (module, "system", ["true"], {}, {})),
        ("getattr", (module, "environ", {})),
        ("setattr", (module, "x", 1, {})),
    ]:
        assert "the module os is not allowed" in not_allowed(w, op, "s1", *fields)
    # A generator's public gi_frame leads to f_globals: frames are refused.
    gen = w.call("sp_testmod", "gen")
    assert "a frame object is not allowed" in not_allowed(w, "getattr", "s1", gen, "gi_frame", {})
    assert "is not allowed" in not_allowed(w, "getattr", "s1", gen, "gi_frame.f_globals", {})
    assert "a code object is not allowed" in not_allowed(w, "getattr", "s1", gen, "gi_code", {})


def test_attribute_paths_may_not_step_into_another_module(w) -> None:
    # os.path (posixpath) imports os: os.path.os is the module os, which no entry names.
    message = not_allowed(w, "call", "s1", "os.path", "os.system", ["true"], {}, {})
    assert message.startswith("the module os (reached as os.path.os) is not allowed")
    message = not_allowed(w, "getattr", "s1", (A("module"), "os.path"), "os", {})
    assert "the module os" in message
    assert w.ok("ping") == A("pong")


def test_eval_is_refused_with_an_allow_list(w) -> None:
    message = not_allowed(w, "eval", "s1", "__import__('os').system('true')", {}, {})
    assert message.startswith("eval is not allowed")
    assert w.ok("ping") == A("pong")


def test_an_empty_allow_list_allows_no_name(make_worker) -> None:
    w = make_worker("--allow", "")
    not_allowed(w, "call", "s1", "math", "sqrt", [4.0], {}, {})
    assert w.ok("ping") == A("pong")
    assert w.ok("session_info", "s1")[A("refs")] == 0


def test_without_allow_every_name_is_called(worker) -> None:
    assert worker.call("os.path", "join", ["a", "b"]) == "a/b"
    assert worker.ok("getattr", "s1", (A("module"), "math"), "sqrt.__name__", {}) == "sqrt"


@pytest.mark.parametrize("value", ["os._exit", "_thread", "a..b", "1x", "os.path,", "a b", "os.__dict__"])
def test_invalid_entries_are_refused_at_startup(value: str) -> None:
    if value == "os.path,":  # a trailing comma is only an empty entry
        assert parse_entries(value) == ["os.path"]
        return
    done = subprocess.run(
        [sys.executable, "-m", "snakeport", "--allow", value],
        capture_output=True, text=True, env=worker_env(), timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --allow: expected an allow-list entry to be a dotted Python name" in done.stderr


def test_allow_list_rules() -> None:
    allow = AllowList(["math", "json.loads", "os.path.join"])
    assert allow.allows("math.sqrt") and allow.allows("math") and allow.allows("json.loads")
    assert not allow.allows("json.dumps") and not allow.allows("mathx.y") and not allow.allows("json")
    assert allow.names_path("os.path") and allow.names_path("os") and not allow.names_path("os.environ")
    assert parse_entries(" a, b.c ,") == ["a", "b.c"] and parse_entries("") == [] and parse_entries(" ") == []
    with pytest.raises(ValueError, match="got: 5"):
        check_entry(5)
