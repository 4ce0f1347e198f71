"""Term types, the worker's hooks (default, tagged), decode_head and encoder conveniences."""

from __future__ import annotations

import copy
import math
import enum
import pickle
from collections import OrderedDict, namedtuple
from typing import Any

import pytest
from snakeport import _etf_tags as T
from snakeport.errors import DecodeError, EncodeError
from snakeport.etf import Decoder, Encoder, decode, decode_head, decode_prefix, encode
from snakeport.types import (
    Atom,
    BitBinary,
    ErlMap,
    Export,
    ImproperList,
    LocalTerm,
    Pid,
    Port,
    Reference,
    term_key,
)

# -- Atom ---------------------------------------------------------------------------------


def test_atoms_compare_like_their_names_but_keep_their_type() -> None:
    ok = decode(encode(Atom("ok")))
    assert type(ok) is Atom and ok == "ok" and hash(ok) == hash("ok")
    assert {"ok": 1}[ok] == 1 and repr(ok) == "Atom('ok')"
    # ... which never confuses the codec: the type decides the encoding.
    assert encode(Atom("ok")) != encode("ok")
    assert type(decode(encode("ok"))) is str
    assert decode(encode(Atom("undefined"))) == Atom("undefined")
    assert decode(encode([Atom("true"), Atom("false"), Atom("nil")])) == [True, False, None]


def test_a_map_with_an_atom_and_a_binary_of_the_same_name(erl: Any) -> None:
    data = erl.term('#{a => atom, <<"a">> => binary}')
    value = decode(data)
    assert isinstance(value, ErlMap) and len(value) == 2
    assert value[Atom("a")] == "atom" and value["a"] == "binary" and value[b"a"] == "binary"
    assert erl.equal(encode(value), data)


# -- ErlMap -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs",
    [
        [(1, "int"), (1.0, "float")],
        [(1, "int"), (True, "atom")],
        [(0.0, "plus"), (-0.0, "minus")],  # distinct keys since OTP 27
        [([1, 2], "list"), ({Atom("k"): 1}, "map"), ((1, [2]), "tuple with a list")],
        [(ErlMap([(1, 2), (1.0, 3)]), "an ErlMap key is hashable"), ((1,), "so this is a dict")],
    ],
)
def test_maps_python_cannot_hold_decode_to_erlmap_and_encode_back(pairs: list[tuple[Any, Any]]) -> None:
    erl_map = ErlMap(pairs)
    data = encode(erl_map)
    value = decode(data)
    assert value == erl_map
    assert type(value) is (dict if pairs[0][1].startswith("an ErlMap key") else ErlMap)
    assert encode(value) == data
    for key, expected in pairs:
        assert value[key] == expected and key in value and value.get(key) == expected


def test_erlmap_is_a_read_only_ordered_mapping() -> None:
    m = ErlMap([(1, "a"), (1.0, "b"), ([2], "c")])
    assert list(m) == [1, 1.0, [2]] and len(m) == 3
    assert list(m.items()) == [(1, "a"), (1.0, "b"), ([2], "c")]
    assert list(m.values()) == ["a", "b", "c"]
    assert m[1] == "a" and m[1.0] == "b" and m[[2]] == "c"
    assert 2 not in m and m.get(2) is None and True not in m
    with pytest.raises(KeyError):
        m[3]
    with pytest.raises(AttributeError):
        m.pairs = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        m[5] = 1  # type: ignore[index]
    # Equality ignores order and compares keys and values as Erlang terms.
    assert m == ErlMap([([2], "c"), (1.0, "b"), (1, b"a")])
    assert m != ErlMap([(1, "a"), (1.0, "b")])
    assert ErlMap([(1, "a")]) == {1: "a"} and ErlMap([(1, "a")]) != {1.0: "a"}
    assert hash(m) == hash(ErlMap(reversed(m.pairs)))
    assert {m: 1}[ErlMap(m.pairs)] == 1
    assert pickle.loads(pickle.dumps(m)) == m and copy.deepcopy(m) == m
    assert repr(ErlMap([(1, 2)])) == "ErlMap([(1, 2)])"
    with pytest.raises(ValueError):
        ErlMap([(1, 2, 3)])  # type: ignore[list-item]


def test_term_key_tells_erlang_terms_apart() -> None:
    assert term_key(1) != term_key(1.0) != term_key(True)
    assert term_key(0.0) != term_key(-0.0)
    assert term_key("a") == term_key(b"a") == term_key(bytearray(b"a")) != term_key(Atom("a"))
    assert term_key(True) == term_key(Atom("true")) and term_key(None) == term_key(Atom("nil"))
    assert term_key(float("inf")) == term_key(Atom("infinity"))
    assert term_key({1: 2, 3: 4}) == term_key(ErlMap([(3, 4), (1, 2)]))
    assert term_key([1]) != term_key((1,))


# -- ImproperList -------------------------------------------------------------------------


def test_improper_lists(erl: Any) -> None:
    value = decode(erl.term("[1, 2 | three]"))
    assert value == ImproperList([1, 2], Atom("three"))
    assert value.elements == (1, 2) and value.tail == "three"
    assert hash(value) == hash(ImproperList((1, 2), Atom("three")))
    assert repr(value) == "ImproperList([1, 2], Atom('three'))"
    assert ImproperList([1], ImproperList([2], 3)) == ImproperList([1, 2], 3)
    for bad_tail in ([], [1]):
        with pytest.raises(ValueError):
            ImproperList([1], bad_tail)
    with pytest.raises(ValueError):
        ImproperList([], 1)
    with pytest.raises(AttributeError):
        value.tail = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(value)) == value
    # A list whose tail is itself a list (forged bytes) is the proper list the VM sees.
    data = bytes((131, T.LIST_EXT, 0, 0, 0, 1, T.SMALL_INTEGER_EXT, 1, T.STRING_EXT, 0, 1, 2))
    assert decode(data) == [1, 2] and erl.equal_expr(data, "[1, 2]")


# -- opaque terms -------------------------------------------------------------------------


def test_opaque_terms_are_immutable_hashable_values(erl: Any) -> None:
    values = [decode(erl.term(e)) for e in ("self()", "make_ref()", "hd(erlang:ports())", "fun() -> ok end")]
    values += [BitBinary(b"\x80", 1), Export("m", "f", 0), LocalTerm(b"y\x00")]
    for value in values:
        with pytest.raises(AttributeError):
            value.node = "x"
        assert value == copy.copy(value) == pickle.loads(pickle.dumps(value))
        assert len({value, copy.deepcopy(value)}) == 1
        assert repr(value).startswith(type(value).__name__)
    assert len(set(values)) == len(values)


def test_opaque_constructors_make_terms_the_vm_accepts(erl: Any) -> None:
    cases = [
        (Pid("nonode@nohost", 9, 0, 0), 'list_to_pid("<0.9.0>")'),
        (Export("lists", "map", 2), "fun lists:map/2"),
        (BitBinary(b"\x20", 3), "<<1:3>>"),
    ]
    for value, expression in cases:
        assert erl.equal_expr(encode(value), expression), value
    for value in (Port("other@host", 3, 1), Port("other@host", 2**40, 1), Reference("other@host", 1, [1, 2, 3])):
        assert erl.accepts(encode(value)), value
        assert decode(erl.roundtrip(encode(value))) == value
    with pytest.raises(ValueError):
        Pid("n", -1, 0, 0)
    with pytest.raises(ValueError):
        Reference("n", 0, [])
    with pytest.raises(ValueError):
        BitBinary(b"\x00", 0)
    with pytest.raises(TypeError):
        LocalTerm("text")  # type: ignore[arg-type]


# -- encoder conveniences -----------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Ratio(float):
    pass


def test_subclasses_encode_as_their_base_types(erl: Any) -> None:
    Point = namedtuple("Point", "x y")
    value = [Point(1, 2), Color.RED, Name("n"), Ratio(0.5), OrderedDict(a=1), bytearray(b"b")]
    data = encode(value)
    assert erl.equal_expr(data, '[{1, 2}, 1, <<"n">>, 0.5, #{<<"a">> => 1}, <<"b">>]')
    assert decode(data) == [(1, 2), 1, "n", 0.5, {"a": 1}, "b"]


def test_special_floats_become_atoms_and_back(erl: Any) -> None:
    data = encode([float("inf"), float("-inf"), float("nan")])
    assert erl.equal_expr(data, "[infinity, neg_infinity, nan]")
    inf, neg_inf, nan = decode(data)
    assert (type(inf), type(neg_inf), type(nan)) == (float, float, float)
    assert inf == math.inf and neg_inf == -math.inf and nan != nan
    # The VM's own atoms decode the same way; other atoms stay atoms.
    vm = decode(erl.term("[infinity, neg_infinity, nan, nanny]"))
    assert vm[:2] == [math.inf, -math.inf] and vm[2] != vm[2] and vm[3] == Atom("nanny")


def test_strings_that_are_not_utf8_encodable() -> None:
    for value in ("\ud800", ["ok", "x\udfff"], Atom("\ud800")):
        with pytest.raises(EncodeError) as info:
            encode(value)
        assert "\ud800" in info.value.value or "x\udfff" in info.value.value


# -- the default hook ---------------------------------------------------------------------


class Opaque:
    pass


def test_unknown_objects_raise_encode_error_without_default() -> None:
    obj = Opaque()
    with pytest.raises(EncodeError) as info:
        encode({"k": [obj]})
    assert info.value.value is obj
    for value in ({1, 2}, frozenset(), object(), 1j):
        with pytest.raises(EncodeError):
            encode(value)


def test_default_replaces_unknown_objects(erl: Any) -> None:
    seen: list[Any] = []

    def default(obj: Any) -> Any:
        seen.append(obj)
        if isinstance(obj, (set, frozenset)):
            return (Atom("$snakeport_set"), sorted(obj))
        return (Atom("$snakeport_ref"), "s1", len(seen), f"{type(obj).__module__}.{type(obj).__qualname__}")

    obj = Opaque()
    data = encode({"a": {3, 1, 2}, "b": [obj, Opaque()]}, default=default)
    assert erl.equal_expr(
        data,
        "#{<<\"a\">> => {'$snakeport_set', [1, 2, 3]}, <<\"b\">> => ["
        "{'$snakeport_ref', <<\"s1\">>, 2, <<\"test_etf_types.Opaque\">>}, "
        "{'$snakeport_ref', <<\"s1\">>, 3, <<\"test_etf_types.Opaque\">>}]}",
    )
    assert seen[1] is obj
    assert Encoder(default=default).encode({1}) == encode((Atom("$snakeport_set"), [1]))


def test_default_chains_are_bounded_and_errors_propagate() -> None:
    calls = []

    def stubborn(obj: Any) -> Any:
        calls.append(obj)
        return Opaque()

    with pytest.raises(EncodeError, match="default"):
        encode(Opaque(), default=stubborn)
    assert 1 < len(calls) <= 32
    replies = iter([Opaque(), Opaque(), 7])  # default is asked again until it gives data
    assert encode(Opaque(), default=lambda obj: next(replies)) == encode(7)

    def broken(obj: Any) -> Any:
        raise KeyError("from the hook")

    with pytest.raises(KeyError, match="from the hook"):
        encode([Opaque()], default=broken)


# -- the tagged hook ----------------------------------------------------------------------


def test_tagged_tuples_are_replaced(erl: Any) -> None:
    seen: list[tuple[Any, ...]] = []

    def tagged(t: tuple[Any, ...]) -> Any:
        seen.append(t)
        if t[0] == "$snakeport_bytes":
            return t[1].encode() if isinstance(t[1], str) else t[1]
        if t[0] == "$snakeport_set":
            return frozenset(t[1])
        return ("resolved", t[2])

    data = erl.term(
        "{call, 1, [{'$snakeport_bytes', <<\"abc\">>}, {'$snakeport_set', [1, 2]}],"
        " #{{'$snakeport_ref', <<\"s\">>, 7, <<\"t\">>} => {'$snakeport_ref', <<\"s\">>, 8, <<\"t\">>}},"
        " {<<\"$snakeport_not_an_atom\">>}, {'$snakeport_bytes', {'$snakeport_set', []}}}"
    )
    value = decode(data, tagged=tagged)
    assert value[2] == [b"abc", frozenset({1, 2})]
    assert value[3] == {("resolved", 7): ("resolved", 8)}
    assert value[4] == ("$snakeport_not_an_atom",)
    assert value[5] == frozenset()  # inner tuples first, then the outer one
    assert len(seen) == 6
    assert Decoder(tagged=tagged).decode(data) == value
    # Without the hook, the tuples stay as they are.
    assert decode(data)[2][0] == (Atom("$snakeport_bytes"), "abc")


def test_tagged_is_not_called_without_the_prefix() -> None:
    def tagged(t: tuple[Any, ...]) -> Any:
        raise AssertionError("called")

    assert decode(encode((Atom("snakeport_x"), (Atom("call"), 1))), tagged=tagged) == ("snakeport_x", ("call", 1))
    compressed = encode([(Atom("$snakeport_set"), [])] * 50, compressed=9)
    assert compressed[1] == T.COMPRESSED
    with pytest.raises(AssertionError, match="called"):
        decode(compressed, tagged=tagged)


@pytest.mark.parametrize("pad", [1, 64 * 1024 - 200, 64 * 1024, 1 << 20])
def test_tagged_is_called_in_inputs_of_any_size(pad: int) -> None:
    # Inputs above 64 KiB are not scanned for the prefix: the hook must still see every
    # tagged tuple, before and after a large binary, bytes/bytearray/memoryview alike.
    seen = []

    def tagged(t: tuple[Any, ...]) -> Any:
        seen.append(t[0])
        return ("hooked", t[0])

    ref = (Atom("$snakeport_ref"), "s", 1, "t")
    term = [ref, b"\xff" * pad, (Atom("$snakeport_bytes"), "x"), [(Atom("$snakeport_set"), [ref])]]
    data = encode(term)
    for buf in (data, bytearray(data), memoryview(data)):
        seen.clear()
        value = decode(buf, tagged=tagged)
        assert value[0] == ("hooked", "$snakeport_ref") and value[1] == b"\xff" * pad
        assert value[2] == ("hooked", "$snakeport_bytes")
        assert value[3] == [("hooked", "$snakeport_set")]
        assert seen == ["$snakeport_ref", "$snakeport_bytes", "$snakeport_ref", "$snakeport_set"]


def test_tagged_errors_propagate_unchanged() -> None:
    def tagged(t: tuple[Any, ...]) -> Any:
        raise IndexError("hook bug")

    with pytest.raises(IndexError, match="hook bug"):
        decode(encode((Atom("$snakeport_ref"), "s", 1, "t")), tagged=tagged)


# -- decode_head --------------------------------------------------------------------------


def test_decode_head_reads_the_first_elements_of_a_damaged_frame() -> None:
    frame = encode((Atom("call"), 42, "session", "mod", "fun", list(range(1000)), {}, {}))
    assert decode_head(frame, 2) == (Atom("call"), 42)
    assert decode_head(frame, 0) == ()
    assert decode_head(frame, 8) == decode(frame)
    assert Decoder().decode_head(frame, 3) == (Atom("call"), 42, "session")
    truncated = frame[:60]
    with pytest.raises(DecodeError):
        decode(truncated)
    assert decode_head(truncated, 4) == (Atom("call"), 42, "session", "mod")
    with pytest.raises(DecodeError):
        decode_head(truncated, 6)  # the sixth element is cut off
    garbage = frame[:30] + b"\xee" * 10
    assert decode_head(garbage, 2) == (Atom("call"), 42)
    big = encode((Atom("call"), 7, "x" * 100_000), compressed=1)
    assert big[1] == T.COMPRESSED and decode_head(big[:40], 2) == (Atom("call"), 7)
    large_tuple = encode(tuple(range(300)))
    assert decode_head(large_tuple[:20], 3) == (0, 1, 2)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x83", b"\x83a\x01", encode([1, 2]), encode((1,)), b"\x84h\x02a\x01a\x02", b"\x83h\x02\xee"],
)
def test_decode_head_raises_decode_error_when_it_cannot(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_head(data, 2)


def test_decode_head_count_is_validated() -> None:
    with pytest.raises(ValueError):
        decode_head(encode((1,)), -1)


def test_more_subclasses_encode_as_their_base_types() -> None:
    class MyAtom(Atom):
        pass

    class MyList(list):  # type: ignore[type-arg]
        pass

    class MyMap(ErlMap):
        pass

    value = [MyAtom("a"), MyList([1]), MyMap([(1, 2), (1.0, 3)]), memoryview(b"ab")[::-1]]
    assert decode(encode(value)) == [Atom("a"), [1], ErlMap([(1, 2), (1.0, 3)]), "ba"]
    assert encode(MyAtom("a")) == encode(Atom("a"))


def test_comparisons_with_other_types() -> None:
    assert ErlMap([(1, 2)]) != [(1, 2)] and ImproperList([1], 2) != (1, 2)
    assert Pid("n", 1, 2, 3) != "n" and Pid("n", 1, 2, 3) != Port("n", 1, 3)
    with pytest.raises(ValueError):
        BitBinary(b"", 1)
    with pytest.raises(TypeError):
        ErlMap(5)  # type: ignore[arg-type]

    def failing_pairs() -> Any:
        yield (1, 2)
        raise ValueError("from the generator")

    with pytest.raises(ValueError, match="from the generator"):
        ErlMap(failing_pairs())


def test_decoder_decode_prefix_is_decode_prefix_with_its_limits() -> None:
    # The worker decodes every request so: the common input (bytes, not compressed) takes a
    # shorter path; every input must give what decode_prefix gives with the same limits.
    limits = {"max_depth": 3, "max_size": 200, "max_expansion": 4, "max_memory": 100_000}
    decoder = Decoder(**limits)
    data = encode((Atom("x"), [1, 2], "three"))
    packed = encode(list(range(100)), compressed=6)
    inputs = [
        data, data + b"tail", bytearray(data + b"tail"), memoryview(data + b"tail"), packed,
        packed + b"tail", data[:-2], b"", b"\x83", b"\x84" + data[1:], data + bytes(200),
        encode([[[[1]]]]), encode([0.5] * 40), encode(list(range(30))),
    ]  # fmt: skip
    for buf in inputs:
        try:
            expected: Any = decode_prefix(buf, **limits)
        except DecodeError as exc:
            expected = (DecodeError, str(exc))
        try:
            got: Any = decoder.decode_prefix(buf)
        except DecodeError as exc:
            got = (DecodeError, str(exc))
        assert got == expected, bytes(buf)
    nil_list = b"\x83l" + (10).to_bytes(4, "big") + b"j" * 11  # [[], [], ...]: 64 bytes each
    with pytest.raises(DecodeError, match="memory budget of 300 bytes"):
        Decoder(max_expansion=2, max_memory=300).decode_prefix(nil_list + b"tail")


def test_decoder_decode_prefix_takes_a_hook_per_input() -> None:
    frame = encode((Atom("call"), (Atom("$snakeport_x"), 1), (Atom("$snakeport_x"), 2))) + b"blob"
    end = len(frame) - 4
    own = Decoder(tagged=lambda t: ("own", t[1]))
    assert own.decode_prefix(frame) == ((Atom("call"), ("own", 1), ("own", 2)), end)
    seen: list[tuple] = []

    def hook(t: tuple) -> Any:
        seen.append(t)
        return t[1]

    assert own.decode_prefix(frame, hook) == ((Atom("call"), 1, 2), end)
    assert len(seen) == 2
    assert own.decode_prefix(frame, None)[0][1] == (Atom("$snakeport_x"), 1)
    # The scan for the prefix: a hook is never called for an input without it; without the
    # scan, the value is the same.
    assert Decoder().decode_prefix(encode((1, 2)), lambda t: 1 / 0) == ((1, 2), len(encode((1, 2))))
    assert Decoder().decode_prefix(encode((1, 2)), lambda t: 1 / 0, scan=False) == ((1, 2), len(encode((1, 2))))
    assert own.decode_prefix(frame, hook, scan=False) == own.decode_prefix(frame, hook)

    def failing(t: tuple) -> Any:
        raise KeyError("from the hook")

    with pytest.raises(KeyError, match="from the hook"):
        Decoder().decode_prefix(frame, failing)
    with pytest.raises(ValueError, match="callable"):
        Decoder().decode_prefix(frame, 42)


def test_decode_prefix_stops_at_the_end_of_the_term() -> None:
    data = encode((Atom("x"), [1, 2], "three"))
    for buf in (data + b"tail", bytearray(data + b"tail"), memoryview(data + b"tail")):
        assert decode_prefix(buf) == ((Atom("x"), [1, 2], "three"), len(data))
    assert decode_prefix(data) == ((Atom("x"), [1, 2], "three"), len(data))
    with pytest.raises(DecodeError, match="trailing"):
        decode(data + b"tail")
    # A compressed term is the whole input: it says nothing about bytes after it.
    packed = encode(list(range(100)), compressed=6)
    assert decode_prefix(packed) == (list(range(100)), len(packed))
    with pytest.raises(DecodeError):
        decode_prefix(packed + b"tail")
    with pytest.raises(DecodeError):
        decode_prefix(data[:-2])
