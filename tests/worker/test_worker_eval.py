"""Unit tests of ``eval`` (snakeport._eval) and its op in the dispatcher."""

from __future__ import annotations

import pytest
from test_worker_dispatch import REF, Harness

from snakeport import _eval
from snakeport import _limits as limits
from snakeport.types import Atom


def test_value_of_the_last_expression() -> None:
    assert _eval.evaluate("x * y", {"x": 6, "y": 7}) == 42
    assert _eval.evaluate("import math\nz = math.sqrt(n)\nz + 1", {"n": 4}) == 3.0
    assert _eval.evaluate("[i * k for i in range(3)]", {"k": 2}) == [0, 2, 4]  # comprehension scope
    assert _eval.evaluate("y = 1", {}) is None
    assert _eval.evaluate("", {}) is None


def test_each_run_has_a_fresh_namespace() -> None:
    _eval.evaluate("leaked = 1", {})
    with pytest.raises(NameError):
        _eval.evaluate("leaked", {})


def test_future_flags_of_the_module_do_not_leak() -> None:
    # _eval has ``from __future__ import annotations``; eval'd code must not inherit it.
    code = "def f(x: int) -> int: return x\nf.__annotations__['x']"
    assert _eval.evaluate(code, {}) is int


def test_each_distinct_source_is_compiled_once() -> None:
    source = "a + 1  # unique 7f3c"
    before = _eval.cache_info()
    for a in range(5):
        assert _eval.evaluate(source, {"a": a}) == a + 1
    after = _eval.cache_info()
    assert after.misses - before.misses == 1 and after.hits - before.hits == 4
    assert after.maxsize == limits.EVAL_CACHE_SIZE


def test_long_sources_are_not_cached() -> None:
    source = "1" + " " * limits.EVAL_CACHE_MAX_SOURCE
    before = _eval.cache_info()
    assert _eval.evaluate(source, {}) == 1
    assert _eval.cache_info().currsize == before.currsize


def test_syntax_errors_raise() -> None:
    with pytest.raises(SyntaxError):
        _eval.compile_source("1 +")


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_eval_op_resolves_refs_and_marshals_the_result(h) -> None:
    box = h.call("Box", [5])
    assert h.ok("eval", "s", "b.get() * k", {"b": box, Atom("k"): 3}, {}) == 15
    added = h.ok("eval", "s", "type(b)(b.get() + 1)", {"b": box}, {})
    assert added[0] == REF and added[1] == "s"
    assert h.ok("eval", "s", "[1, 2]", {}, {Atom("result"): Atom("ref")})[0] == REF
    assert h.d.table.session_info("s").refs == 3


def test_eval_op_errors(h) -> None:
    err = h.err("eval", "s", "1 +", {}, {})
    assert err["reason"] == "python_error" and err["type"] == "builtins.SyntaxError"
    err = h.err("eval", "s", "1 / 0", {}, {})
    assert err["type"] == "builtins.ZeroDivisionError"
    assert any("<snakeport eval>" in line for line in err["traceback"])
    for bindings in ({"not a name": 1}, {"class": 1}, {1: 2}, [1]):
        assert h.err("eval", "s", "1", bindings, {})["reason"] == "bad_request"
    assert h.err("eval", "s", b"\xff", {}, {})["reason"] == "bad_request"
    assert h.err("eval", "nope", "1", {}, {})["reason"] == "session_not_found"
