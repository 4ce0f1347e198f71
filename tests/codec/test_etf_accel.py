"""The C accelerator (snakeport._cetf) and the pure-Python codec agree on every input.

Each check runs the same call on both paths and compares the outcome exactly: the value
(types included: ``Atom`` vs ``str``, ``-0.0``, ``dict`` order, ``ErlMap``, ...), the bytes,
or the exception (type, message, ``offset``/``value``), and how often the hooks were called.
"""

from __future__ import annotations

import collections
import enum
import importlib.util
import math
import os
import random
import re
import struct
import subprocess
import sys
import tracemalloc
import types
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakeport import _etf_tags as T
from snakeport import etf
from snakeport.errors import DecodeError, EncodeError
from snakeport.types import Atom, BitBinary, ErlMap, Export, ImproperList, LocalTerm, term_key

# These tests switch between the two paths themselves.
BOTH_CODEC_PATHS = False

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

PURE_PYTHON = os.environ.get("SNAKEPORT_PURE_PYTHON", "") not in ("", "0")
# Without the extension there is nothing to compare: the comparisons skip, and the first test
# below fails unless SNAKEPORT_PURE_PYTHON was set on purpose (a missing build is never hidden).
needs_c = pytest.mark.skipif(
    etf._cetf is None, reason="no C accelerator to compare with (see test_the_c_accelerator_is_built...)"
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_c_accelerator_is_built_unless_disabled_on_purpose() -> None:
    if PURE_PYTHON:
        assert etf._cetf is None and etf._decode_term is etf._py_decode_term and etf._c_encode is None
        return
    import snakeport._cetf  # fails when the extension was not built: that is a defect

    assert etf._cetf is snakeport._cetf
    assert etf._decode_term is snakeport._cetf.decode_term and etf._c_encode is snakeport._cetf.encode


@pytest.mark.parametrize("value, accelerated", [("1", False), ("", True), ("0", True)])
def test_the_environment_variable_selects_the_path(value: str, accelerated: bool) -> None:
    if accelerated and importlib.util.find_spec("snakeport._cetf") is None:
        pytest.skip("the C accelerator is not built here (see the test above)")
    env = {**os.environ, "SNAKEPORT_PURE_PYTHON": value}
    code = "from snakeport import etf; print(etf._c_encode is not None, etf._decode_term is not etf._py_decode_term)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(accelerated)] * 2


def test_the_c_tag_defines_equal_etf_tags() -> None:
    # _cetf.c names its tag bytes with #defines; they must be the values of _etf_tags.
    source = (Path(__file__).resolve().parents[2] / "worker" / "snakeport" / "_cetf.c").read_text()
    defines = dict(re.findall(r"^#define ([A-Z0-9_]+_EXT) (\d+)\b", source, re.M))
    assert len(defines) >= 10, "no tag #defines found in _cetf.c"
    assert {name: int(value) for name, value in defines.items()} == {name: getattr(T, name) for name in defines}


@needs_c
def test_the_c_accelerator_looks_its_helpers_up_by_name() -> None:
    # _setup(etf) reads each helper from the module by name and checks its kind, so a
    # rename in etf.py fails at import with the helper's name (here: on a copy of etf).
    import snakeport._cetf as cetf

    names = ["Atom", "_LEAF_DECODERS", "_atom_at", "_finish_improper", "ErlMap", "_HookFailure", "_fail",
             "_truncated", "_bad_tag", "_ATOM_BYTES", "_encode_atom", "_encode_part", "_too_deep", "TAGGED_PREFIX", "BYTES_TAG",
             "_over_budget", "_tagged_cost", "_changed", "_COSTS"]
    complete = {name: getattr(etf, name) for name in names}
    assert cetf._setup(types.SimpleNamespace(**complete)) is None  # already set up: a no-op
    for missing in names:
        module = types.SimpleNamespace(**{k: v for k, v in complete.items() if k != missing})
        with pytest.raises(AttributeError, match=f"snakeport.etf has no {missing}"):
            cetf._setup(module)
    for name, wrong in [("_ATOM_BYTES", []), ("_LEAF_DECODERS", [None] * 255), ("_fail", 1), ("Atom", str()),
                        ("TAGGED_PREFIX", b"$snakeport_"), ("_COSTS", (1,) * 9), ("_COSTS", (1,) * 9 + (-1,))]:
        with pytest.raises(TypeError, match=f"snakeport.etf.{name} is not"):
            cetf._setup(types.SimpleNamespace(**{**complete, name: wrong}))
    with pytest.raises(AttributeError, match="ErlMap._from_flat"):
        cetf._setup(types.SimpleNamespace(**{**complete, "ErlMap": object()}))
    assert etf.decode(etf.encode([Atom("ok"), 2**70, ErlMap([([1], 2)])])) == [Atom("ok"), 2**70, ErlMap([([1], 2)])]


# ---------------------------------------------------------------------------------------
# Comparing outcomes
# ---------------------------------------------------------------------------------------


def strict(a: Any, b: Any) -> bool:
    """Identical Python values: same types all the way down, same order, -0.0 != 0.0."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (a != a and b != b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(strict, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            strict(ka, kb) and strict(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, ErlMap):
        return strict(list(a.pairs), list(b.pairs))
    if isinstance(a, ImproperList):
        return strict(a.elements, b.elements) and strict(a.tail, b.tail)
    return a == b


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except (DecodeError, EncodeError) as exc:
        extra = (exc.offset, exc.data) if isinstance(exc, DecodeError) else (exc.value,)
        return ("error", type(exc), str(exc), *extra)
    except Exception as exc:  # hooks' own exceptions
        return ("error", type(exc), str(exc))


def on_both(fn: Callable[[], Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Run ``fn`` with the C path, then the pure-Python path; return both outcomes."""
    previous = etf._set_accelerated(True)
    try:
        c = outcome(fn)
        etf._set_accelerated(False)
        py = outcome(fn)
    finally:
        etf._set_accelerated(previous)
    return c, py


def assert_same(c: tuple[Any, ...], py: tuple[Any, ...]) -> None:
    assert c[0] == py[0], (c, py)
    if c[0] == "ok":
        assert strict(c[1], py[1]), (c[1], py[1])
    else:
        assert c[1:3] == py[1:3] and strict(c[3:], py[3:]), (c, py)


def check_decode(data: bytes, **options: Any) -> None:
    calls: dict[bool, list[Any]] = {True: [], False: []}
    if options.pop("hook", False):

        def tagged(t: tuple) -> Any:
            calls[etf._c_encode is not None].append(t)
            if t[0] == "$snakeport_raise":
                raise KeyError("from the hook")
            return ("seen", t)

        options["tagged"] = tagged
    assert_same(*on_both(lambda: etf.decode(data, **options)))
    # A bytearray: the C path reads it in place, the Python path decodes a bytes copy.
    assert_same(*on_both(lambda: etf.decode(bytearray(data), **options)))
    assert strict(calls[True], calls[False])
    assert_same(*on_both(lambda: etf.decode_head(data, 2)))


def check_encode(term: Any, **options: Any) -> None:
    assert_same(*on_both(lambda: etf.encode(term, **options)))


# ---------------------------------------------------------------------------------------
# Random terms
# ---------------------------------------------------------------------------------------

TEXT = st.text(max_size=20)  # lone surrogates included: they must fail alike
integers = st.one_of(
    st.integers(-300, 300),
    st.integers(-(2**31) - 2, 2**31 + 1),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(2**64), 2**100]),
    st.integers(-(2**70), 2**70),
)
atoms = st.one_of(
    st.sampled_from(["ok", "true", "nil", "$snakeport_x", "$snakeport_raise", "", "é"]),
    st.text(max_size=8),
    st.text(min_size=250, max_size=260),
).map(Atom)
opaque = st.sampled_from(
    [BitBinary(b"\xe0", 3), Export("m", "f", 1), LocalTerm(b"\x79\x01"), collections.OrderedDict(a=1)]
)


class Color(enum.IntEnum):
    RED = 1


class Unknown:
    pass


leaves = st.one_of(
    integers, st.floats(), atoms, TEXT, st.binary(max_size=12), st.booleans(), st.none(),
    st.sampled_from([bytearray(b"ab"), memoryview(b"cd"), Color.RED, Unknown(), {1, 2}, -0.0]), opaque,
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.tuples(atoms, children),
        st.dictionaries(st.one_of(integers, atoms, TEXT), children, max_size=4),
        st.lists(st.tuples(children, children), max_size=3).map(ErlMap),
        st.builds(
            ImproperList,
            st.lists(children, min_size=1, max_size=3),
            children.filter(lambda tail: not isinstance(tail, list)),
        ),
    )


terms = st.recursive(leaves, _containers, max_leaves=30)


def default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return (Atom("$snakeport_set"), sorted(obj))
    if isinstance(obj, Unknown):
        return "unknown"
    raise ValueError("no default for this")


@needs_c
@SETTINGS
@given(term=terms, max_depth=st.one_of(st.just(etf.DEFAULT_MAX_DEPTH), st.integers(1, 5)))
def test_random_terms_encode_alike(term: Any, max_depth: int) -> None:
    check_encode(term, max_depth=max_depth)
    check_encode(term, default=default, max_depth=max_depth)
    check_encode(term, default=default, compressed=9)


@needs_c
@SETTINGS
@given(term=terms, max_depth=st.integers(1, 6), max_memory=st.integers(1, 6000))
def test_random_terms_decode_alike(term: Any, max_depth: int, max_memory: int) -> None:
    try:
        data = etf.encode(term, default=lambda obj: "stand-in")
    except EncodeError:
        return
    check_decode(data)
    check_decode(data, hook=True)
    check_decode(data, max_depth=max_depth, hook=True)
    check_decode(etf.encode(term, default=lambda obj: "stand-in", compressed=1), hook=True)
    # The memory budget: the same charges in the same order (the same byte, message).
    check_decode(data, max_memory=max_memory, hook=True)


# ---------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------

NODE = bytes((T.SMALL_ATOM_UTF8_EXT, 4)) + b"n@h1"
CORPUS = [
    etf.encode(value)
    for value in (
        (Atom("call"), 12345, "session-1", "math", "sqrt", [2.0], {}, {Atom("result"): Atom("auto")}),
        [1, -1, 300, -(2**31), 2**40, -(2**64), 2**600, 1.5, -0.0, True, False, None, Atom("é"), b"\xff", "ü"],
        {"a": [1, (2, 3)], Atom("a"): {}, 1: ErlMap([([1], 2), (1.0, 3), (True, 4)])},
        ImproperList([1, [2]], Atom("tail")),
        (Atom("$snakeport_ref"), "s", 1, (Atom("$snakeport_raise"), 2)),
        [BitBinary(b"\xe0", 3), Export("m", "f", 1), (), [], {}, tuple(range(300))],
    )
] + [
    bytes((131, T.SMALL_ATOM_EXT, 2)) + b"ok",
    bytes((131, T.ATOM_EXT, 0, 2)) + b"ok",
    bytes((131, T.ATOM_UTF8_EXT, 0, 4)) + b"true",
    bytes((131, T.LIST_EXT, 0, 0, 0, 2, T.STRING_EXT, 0, 3)) + b"abc" + bytes((T.NIL_EXT, T.SMALL_INTEGER_EXT, 7)),
    bytes((131, T.LIST_EXT, 0, 0, 0, 0, T.STRING_EXT, 0, 1, 9)),
    bytes((131, T.LIST_EXT, 0, 0, 0, 0, T.SMALL_INTEGER_EXT, 9)),
    bytes((131, T.FLOAT_EXT)) + b"1.5e+00".ljust(31, b"\x00"),
    bytes((131, T.NEW_PID_EXT)) + NODE + struct.pack(">III", 9, 0, 1),
    bytes((131, T.NEWER_REFERENCE_EXT, 0, 3)) + NODE + struct.pack(">I3I", 1, 1, 2, 3),
    bytes((131, T.V4_PORT_EXT)) + NODE + struct.pack(">QI", 2**40, 1),
    bytes((131, T.SMALL_BIG_EXT, 9, 1)) + b"\x01" * 9,
    bytes((131, T.LARGE_BIG_EXT, 0, 0, 0, 2, 0, 1, 2)),
    bytes((131, T.MAP_EXT, 0, 0, 0, 2, T.NIL_EXT, T.NIL_EXT, T.NIL_EXT, T.NIL_EXT)),  # unhashable key
    bytes((131, T.MAP_EXT, 0, 0, 0, 2, 97, 1, 97, 2, 97, 1, 97, 3)),  # the same key twice
    bytes((131, T.BINARY_EXT, 0, 0, 0, 3, 0xED, 0xA0, 0x80)),  # a UTF-8 surrogate: bytes
    etf.encode(list(range(300)), compressed=9),
]


BUDGET_TERMS = [
    [[]] * 40, [{}] * 20, [(1,)] * 30, [{Atom("id"): i} for i in range(12)], [Atom(f"a{i % 7}") for i in range(40)],
    ["\xe9" * 10, "\u0101" * 10, "\U0001f600" * 5, "abc" * 10, b"\xff" * 9, ""], [ErlMap([([], 1)])] * 5,
    ErlMap([(1, 1), (1.0, 2)] * 3), ImproperList([1, 2], Atom("t")), 
    [BitBinary(b"\xe0", 3), Export("m", "f", 1)] * 3, {i: str(i) for i in range(12)},
    [2**70, -(2**100), 1.5, 100000, 2**64] * 5, [(Atom("$snakeport_x"), 1), (Atom("$snakeport_raise"),)] * 2,
    [[1, [2, [3]]]] * 5, "\u0101" * 300 + "\U0001f600",
]


@needs_c
@pytest.mark.parametrize("index", range(len(BUDGET_TERMS) + len(CORPUS)))
def test_every_budget_fails_alike(index: int) -> None:
    # Every budget from nothing to enough: both paths accept, or refuse at the same byte.
    if index < len(BUDGET_TERMS):
        data = etf.encode(BUDGET_TERMS[index])
    else:
        data = CORPUS[index - len(BUDGET_TERMS)]
    refused = 0
    for max_memory in range(1, 6000, 3):
        c, py = on_both(lambda: etf.decode(data, max_memory=max_memory, tagged=lambda t: {len(t)}))
        assert_same(c, py)
        refused += c[0] == "error"
        assert_same(*on_both(lambda: etf.decode(bytearray(data), max_memory=max_memory)))
    assert refused
    assert_same(*on_both(lambda: etf.decode(data)))


@needs_c
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_truncations_and_extensions_decode_alike(index: int) -> None:
    data = CORPUS[index]
    for cut in range(len(data) + 1):
        check_decode(data[:cut], hook=True)
    check_decode(data + b"\x00", hook=True)
    check_decode(data, max_depth=1)


@needs_c
def test_seeded_mutations_decode_alike() -> None:
    rng = random.Random(0xCE7F)
    for _ in range(6000):
        data = bytearray(rng.choice(CORPUS))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(1, len(data))
            choice = rng.random()
            if choice < 0.6:
                data[pos] = rng.randrange(256)
            elif choice < 0.8:
                data[pos] = rng.choice(sorted(T.TAG_NAMES))
            else:
                del data[pos:pos + rng.randint(1, 4)]
                if len(data) < 2:
                    break
        check_decode(bytes(data), hook=rng.random() < 0.5)


@needs_c
@SETTINGS
@given(tag=st.sampled_from(sorted(set(range(256)))), blob=st.binary(max_size=40))
def test_random_bodies_after_every_tag_decode_alike(tag: int, blob: bytes) -> None:
    check_decode(bytes((131, tag)) + blob)
    check_decode(bytes((131, T.SMALL_TUPLE_EXT, 2, tag)) + blob, hook=True)
    check_decode(bytes((131, T.LIST_EXT, 0, 0, 0, 1, tag)) + blob)


@needs_c
@pytest.mark.parametrize(
    "data",
    [
        bytes((131, T.BINARY_EXT, 0xFF, 0xFF, 0xFF, 0xFF)) + b"x",
        bytes((131, T.LIST_EXT, 0xFF, 0xFF, 0xFF, 0xFF, T.NIL_EXT)),
        bytes((131, T.MAP_EXT, 0xFF, 0xFF, 0xFF, 0xFF, T.NIL_EXT)),
        bytes((131, T.LARGE_TUPLE_EXT, 0xFF, 0xFF, 0xFF, 0xFF, T.NIL_EXT)),
        bytes((131, T.STRING_EXT, 0xFF, 0xFF, 1)),
        bytes((131, T.ATOM_UTF8_EXT, 0xFF, 0xFF)) + b"a",
        bytes((131, T.SMALL_ATOM_UTF8_EXT, 2, 0xC3, 0x28)),  # not UTF-8
        bytes((131, T.ATOM_UTF8_EXT, 1, 0)) + "é".encode() * 128,  # 256 characters
        bytes((131, T.NEW_FLOAT_EXT)) + struct.pack(">d", math.inf),
        bytes((131, T.SMALL_BIG_EXT, 1, 2, 1)),
        bytes((131, T.SMALL_TUPLE_EXT, 1, T.COMPRESSED)),  # a tag that is not a term here
        bytes((131, 255)),
        bytes((131, T.LIST_EXT, 0, 0, 0, 0, T.NIL_EXT)),
        bytes((131, T.LIST_EXT, 0, 0, 0, 1, 97, 1, 97)),
        bytes((131, T.LIST_EXT, 0, 0, 0, 1, 97, 1)),
        bytes((131,)) + bytes((T.SMALL_TUPLE_EXT, 1)) * 600 + bytes((T.NIL_EXT,)),
        bytes((131,)) + bytes((T.LIST_EXT, 0, 0, 0, 1)) * 600 + bytes((T.NIL_EXT,)) * 601,
    ],
)
def test_hostile_headers_fail_alike(data: bytes) -> None:
    check_decode(data, hook=True)
    check_decode(data, max_depth=3)


@needs_c
def test_hook_calls_and_errors_are_the_same() -> None:
    inner = (Atom("$snakeport_a"), 1)
    data = etf.encode([inner, (Atom("$snakeport_b"), inner), {(Atom("$snakeport_c"),): inner}])
    for result in (None, [1], KeyError("k"), KeyboardInterrupt()):
        seen: list[list[Any]] = []

        def tagged(t: tuple, result: Any = result) -> Any:
            seen[-1].append(t)
            if isinstance(result, BaseException):
                raise result
            return result

        outcomes = []
        for accelerated in (True, False):
            previous = etf._set_accelerated(accelerated)
            seen.append([])
            try:
                outcomes.append(("ok", etf.decode(data, tagged=tagged)))
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must pass unchanged
                assert exc is result
                outcomes.append(("error", exc))
            finally:
                etf._set_accelerated(previous)
        assert outcomes[0][0] == outcomes[1][0] and strict(seen[0], seen[1])
        if outcomes[0][0] == "ok":
            assert strict(outcomes[0][1], outcomes[1][1])
        else:
            assert outcomes[0][1] is outcomes[1][1] is result


# ---------------------------------------------------------------------------------------
# Encoding edge cases
# ---------------------------------------------------------------------------------------


@needs_c
def test_a_bytearray_is_decoded_in_place() -> None:
    blob = bytes(range(256)) * (32 * 1024) + b"\xff"  # 8 MiB, not UTF-8: stays bytes
    frame = bytearray(etf.encode((Atom("call"), 1, blob)))

    def peak_of_decode() -> int:
        tracemalloc.start()
        try:
            assert etf.decode(frame) == (Atom("call"), 1, blob)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    c, py = on_both(peak_of_decode)
    # The pure-Python path copies the 8 MiB frame to bytes first; the C path does not.
    assert c[0] == py[0] == "ok"
    assert py[1] - c[1] > len(frame) - (1 << 20), (c, py)


@needs_c
def test_a_hook_cannot_resize_the_bytearray_being_decoded() -> None:
    frame = bytearray(etf.encode([(Atom("$snakeport_x"), 1), "after"]))
    before = bytes(frame)

    def hook(term: tuple) -> Any:
        frame.clear()  # the C decoder holds a buffer export: BufferError
        return term

    with pytest.raises(BufferError):
        etf.decode(frame, tagged=hook)
    assert frame == before
    assert etf.decode(frame) == [(Atom("$snakeport_x"), 1), "after"]


@needs_c
def test_encode_edge_cases_alike() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    cyclic_dict: dict[str, Any] = {}
    cyclic_dict["self"] = cyclic_dict
    for term in (
        cyclic, cyclic_dict, "\ud800", Atom("x" * 256), Atom("\udc00"), [Unknown()], {Unknown(): 1},
        float("nan"), [float("inf"), float("-inf")], 2**64, -(2**64) - 1, True, Color.RED, [Color.RED],
        tuple(range(70000)), list(range(1000)), {i: str(i) for i in range(300)}, bytearray(b"x"),
        collections.OrderedDict(a=[1]), collections.namedtuple("P", "x y")(1, 2),
    ):
        for max_depth in (1, 2, 3, etf.DEFAULT_MAX_DEPTH):
            check_encode(term, max_depth=max_depth)
            check_encode(term, max_depth=max_depth, default=default)
    deep: Any = 1
    for _ in range(etf.DEFAULT_MAX_DEPTH + 1):
        deep = [deep]
    check_encode(deep)
    check_encode(ErlMap([(1, deep)]))
    check_encode({"a": ImproperList([deep], 1)})


@needs_c
def test_default_hook_is_called_alike() -> None:
    for term in ([{1, 2}, Unknown(), (frozenset(),)], {"k": [Unknown()] * 3}):
        seen: dict[bool, list[Any]] = {True: [], False: []}

        def hook(obj: Any) -> Any:
            seen[etf._c_encode is not None].append(obj)
            return default(obj)

        check_encode(term, default=hook)
        assert [id(x) for x in seen[True]] == [id(x) for x in seen[False]]


@needs_c
@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_containers_changed_by_the_default_hook_are_encoded_as_they_were_alike(change: str) -> None:
    # Each list and dict is encoded as it was when the encoder reached it (issue 13): a hook
    # (or another thread) changing them meanwhile never makes the header disagree with the
    # elements. Before the fix the list gave a frame with a wrong count (the VM then reads
    # an improper list from the trailing bytes) and the dict a RuntimeError.
    items: list[Any] = []
    mapping: dict[Any, Any] = {}

    def hook(obj: Any) -> Any:
        if change == "grow":
            items.extend([7, 8])
            mapping[len(mapping) + 100] = 1
        else:
            items.clear()
            mapping.clear()
        return 0

    for accelerated in (True, False):
        previous = etf._set_accelerated(accelerated)
        try:
            items[:] = [1, Unknown(), 2, 3]
            assert etf.encode((items, 5), default=hook) == etf.encode(([1, 0, 2, 3], 5))
            mapping.clear()
            mapping.update({1: Unknown(), 2: [3], 4: 5})
            assert etf.encode([mapping, 6], default=hook) == etf.encode([{1: 0, 2: [3], 4: 5}, 6])
        finally:
            etf._set_accelerated(previous)


@needs_c
def test_huge_max_depth_values_are_accepted() -> None:
    data = etf.encode([[1]], max_depth=10**30)
    assert data == etf.encode([[1]])
    check_decode(data, max_depth=10**30)
    assert_same(*on_both(lambda: etf.decode_head(etf.encode(([1], 2)), 2, max_depth=1)))
    assert_same(*on_both(lambda: etf.decode_head(etf.encode(([1], 2)), 2, max_depth=10**30)))


@needs_c
def test_compressed_input_alike() -> None:
    body = etf.encode([Atom("$snakeport_a"), "x" * 100])[1:]
    packed = zlib.compress(body)
    good = b"\x83P" + len(body).to_bytes(4, "big") + packed
    check_decode(good, hook=True)
    check_decode(good[:-1])
    check_decode(b"\x83P" + (len(body) + 1).to_bytes(4, "big") + packed)
    check_decode(good, max_size=len(body) - 1)
    check_encode(term_key, default=lambda obj: "fn")


@needs_c
@SETTINGS
@given(term=terms, max_depth=st.integers(1, 6), compressed=st.sampled_from([0, 6]))
def test_an_encoder_gives_the_bytes_of_encode_with_its_options(term: Any, max_depth: int, compressed: int) -> None:
    # Encoder.encode calls the C encoder directly (options validated once); same outcome as
    # encode() with the same options, on both paths.
    encoder = etf.Encoder(max_depth=max_depth, default=default, compressed=compressed)
    c, py = on_both(lambda: encoder.encode(term))
    assert_same(c, py)
    assert_same(c, outcome(lambda: etf.encode(term, default=default, max_depth=max_depth, compressed=compressed)))


@needs_c
def test_the_c_fast_path_of_decode_is_taken_only_with_the_default_limits() -> None:
    # etf.decode hands bytes with the default limits and no hook to _cetf.decode, which does
    # the steps of etf._decode_prefix in C; any other call gets NotImplemented (the Python path).
    import snakeport._cetf as cetf

    data = CORPUS[0]
    defaults = (etf.DEFAULT_MAX_DEPTH, etf.DEFAULT_MAX_SIZE, etf.DEFAULT_MAX_EXPANSION, None)
    assert strict(cetf.decode(data, None, *defaults), etf.decode(data))
    for other in [
        (bytearray(data), None, *defaults),
        (data, lambda t: t, *defaults),
        (data, None, 5, *defaults[1:]),
        (data, None, defaults[0], 2**20, *defaults[2:]),
        (data, None, *defaults[:2], 8, None),
        (data, None, *defaults[:3], 2**30),
        (etf.encode(list(range(300)), compressed=9), None, *defaults),
        (b"\x83", None, *defaults),
        (b"\x84j", None, *defaults),
    ]:
        assert cetf.decode(*other) is NotImplemented
    for bad in [(0, 1, 1, 1, 1), (1, 1, 1, 2**40, 1), (1, True, 1, 1, 1), (1, 1, 1, 1)]:
        with pytest.raises((ValueError, TypeError)):
            cetf._decode_defaults(*bad)


@needs_c
@pytest.mark.parametrize("count", [1, 21000, 40000])
def test_the_c_fast_path_charges_the_default_budget_alike(count: int) -> None:
    # A list of `count` [] (1 byte each, 80 bytes of memory each) with the default limits: the
    # budget (32 per input byte + 1 MiB) is exceeded from about 22,000; both paths refuse it
    # at the same byte, with the same message, or accept it; trailing bytes fail alike too.
    data = b"\x83l" + count.to_bytes(4, "big") + b"j" * (count + 1)
    c, py = on_both(lambda: etf.decode(data))
    assert_same(c, py)
    assert c[0] == ("error" if count == 40000 else "ok")
    assert_same(*on_both(lambda: etf.decode(data + b"\x00\x01")))


@needs_c
def test_short_ascii_strings_decoded_again_are_the_str_decoded_before() -> None:
    # The C decoder keeps the str of a short ASCII binary (_cetf.c, the short-string cache):
    # the same bytes give the same object (its hash already computed), any other bytes
    # their own str, as the pure-Python decoder gives them.
    previous = etf._set_accelerated(True)
    try:
        first = etf.decode(etf.encode(("auto-1234", "operator", "add")))
        again = etf.decode(etf.encode(("auto-1234", "operator", "add")))
        assert all(a is b for a, b in zip(first, again))
        # Many other short strings (collisions in the 64 slots) then the first again: each
        # decodes to its own value, whether its slot held it or another one.
        others = [f"s{k}" for k in range(500)]
        assert etf.decode(etf.encode(others)) == others
        assert etf.decode(etf.encode(others)) == others
        assert etf.decode(etf.encode("auto-1234")) == "auto-1234"
        # Not kept: non-ASCII text, longer binaries, bytes that are not UTF-8.
        for value in ("é" * 3, "x" * 33, b"\xff\xfe"):
            a, b = etf.decode(etf.encode((value, value)))  # (two binaries, two decodes)
            assert a == b == value and a is not b
        assert etf.decode(etf.encode("")) == ""
    finally:
        etf._set_accelerated(previous)


@needs_c
def test_atoms_encode_alike_whether_the_encoder_remembers_them_or_not() -> None:
    # The C encoder remembers the bytes of the atoms it encoded last, by identity (_cetf.c,
    # atom_memo): the same object again, equal atoms that are other objects, and more atoms
    # than it keeps (their entries replaced) all encode as the Python encoder encodes them.
    atoms = [Atom(f"a{k}") for k in range(100)]
    twins = [Atom(f"a{k}") for k in range(100)]
    for term in ((A_REPLY, 1, A_OK, 3), (A_REPLY, 2, A_OK, 4), atoms, twins, atoms, [atoms[0], twins[0]] * 3):
        assert_same(*on_both(lambda: etf.encode(term)))


A_REPLY, A_OK = Atom("reply"), Atom("ok")
