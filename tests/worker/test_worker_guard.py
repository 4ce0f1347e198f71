"""Unit tests of snakeport._guard: reading users' objects never raises (issue 13, item 5)."""

from __future__ import annotations

import collections
import time

import pytest
from snakeport._guard import exact_str, guarded, safe_str, short, type_name
from snakeport._sessions import RefHandle
from snakeport.types import Atom, BitBinary, ErlMap, ImproperList, LocalTerm, Pid


class Exits(str):
    def __bool__(self):
        raise SystemExit(1)

    def encode(self, *args, **kwargs):
        raise SystemExit(2)

    def __add__(self, other):
        raise SystemExit(3)


class ModuleExits(type):
    @property
    def __module__(cls):
        raise SystemExit(4)

    def __repr__(cls):
        raise SystemExit(5)


class Opaque(metaclass=ModuleExits):
    def __repr__(self):
        raise KeyboardInterrupt


class Weird:
    def __format__(self, spec):
        raise SystemExit(6)


class WeirdModule:
    __module__ = Weird()  # type: ignore[assignment]


class StrModule:
    __module__ = Exits("mod")  # type: ignore[assignment]


def test_guarded_returns_the_default_for_any_exception() -> None:
    assert guarded(int, "7", default=None) == 7
    for exc in (ValueError, SystemExit, KeyboardInterrupt, GeneratorExit):

        def boom(exc=exc):
            raise exc

        assert guarded(boom, default="d") == "d"


def test_exact_str_copies_subclasses_without_their_methods() -> None:
    s = exact_str(Exits("abc"))
    assert type(s) is str and s == "abc"
    assert exact_str("x") == "x" and exact_str(Atom("ok")) == "ok" and type(exact_str(Atom("ok"))) is str
    assert exact_str(b"x") is None and exact_str(None) is None


def test_type_name_never_calls_the_metaclass() -> None:
    assert type_name(collections.Counter) == "collections.Counter"
    assert type_name(int) == "builtins.int"
    assert type_name(Opaque) == f"{__name__}.Opaque"
    assert type_name(WeirdModule) == "?.WeirdModule"
    name = type_name(StrModule)
    assert name == "mod.StrModule" and type(name) is str


def test_safe_str_of_hostile_exceptions() -> None:
    class StrSub(Exception):
        def __str__(self):
            return Exits("hello")

    class EmptySub(Exception):
        def __str__(self):
            return Exits("")

    class Raises(Exception):
        def __str__(self):
            raise SystemExit(7)

    class NotStr(Exception):
        def __str__(self):
            return 5  # type: ignore[return-value]

    assert safe_str(StrSub()) == "hello" and type(safe_str(StrSub())) is str
    # An empty or failed message: the type's qualified name within its module.
    assert safe_str(EmptySub()).endswith("<locals>.EmptySub")
    assert safe_str(Raises()).endswith("<locals>.Raises")
    assert safe_str(NotStr()).endswith("<locals>.NotStr")
    assert safe_str(ValueError("bad \udc80")) == "bad \\udc80"


def test_short_is_like_repr_for_small_terms() -> None:
    for value in [1, -5, 1.5, None, True, "x'y", b"\x00a", bytearray(b"z"), [], [1, [2]], (), (1,), (1, 2),
                  {1: "a"}, set(), {3}, frozenset({4}), Atom("ok"), ErlMap([([], 1)]), ImproperList([1], 2)]:
        assert short(value) == repr(value), value


def test_short_cuts_large_terms_at_a_bounded_cost() -> None:
    started = time.monotonic()
    for value in [b"\xff" * (64 << 20), "x" * (64 << 20), list(range(10**6)), {i: i for i in range(10**6)},
                  [[[[[[[[[[[1]]]]]]]]]]], 10**100_000, -(2**1_000_000)]:
        text = short(value, 100)
        assert type(text) is str and len(text) <= 103, (text[:120], len(text))
    assert time.monotonic() - started < 5  # (a repr of these would take seconds and GiBs)
    assert short(10**5000) == "<a 16610-bit integer>"
    assert short(b"a" * 1000, 10) == "b'aaaaaaaa..."


def test_short_never_calls_a_users_repr() -> None:
    assert short(Opaque()) == f"<{__name__}.Opaque>"
    assert short([Opaque(), Exits("s")]) == f"[<{__name__}.Opaque>, <{__name__}.Exits>]"
    bits = BitBinary(b"\xff" * 10**6, 3)
    assert short(bits) == f"BitBinary(<{len(bits.raw)} bytes>)"
    assert short(LocalTerm(b"y" * 10**6)) == "LocalTerm(<1000000 bytes>)"
    pid = Pid("n@h", 1, 2, 3)
    assert short(pid) == repr(pid)


def test_short_shows_a_ref_handle_as_its_ref_term() -> None:
    term = (Atom("$snakeport_ref"), b"\xff" * (1 << 20), 10**5000, "T")
    text = short(RefHandle(term[1], term[2], term[3], term), 80)
    assert text.startswith("(Atom('$snakeport_ref'), b'\\xff") and len(text) <= 83
    assert repr(RefHandle("s", 1, "T", ())) == "RefHandle('s', 1, 'T')"


@pytest.mark.parametrize("limit", [1, 5, 50])
def test_short_honours_tiny_limits(limit: int) -> None:
    assert len(short([1, 2, 3, "abcdef" * 10], limit)) <= limit + 3
