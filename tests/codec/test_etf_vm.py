"""The codec against the real VM: exact bytes, and every tag the VM emits or accepts."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from snakeport import _etf_tags as T
from snakeport.etf import decode, encode
from snakeport.types import (
    Atom,
    BitBinary,
    ErlMap,
    Export,
    Fun,
    ImproperList,
    LocalTerm,
    Pid,
    Port,
    Reference,
    term_key,
)

# (Python value, Erlang expression for the same term). Maps have at most one key so that
# pair order is fixed, which makes the bytes comparable.
EXACT_CASES: list[tuple[Any, str]] = [
    (0, "0"),
    (255, "255"),
    (256, "256"),
    (-1, "-1"),
    (2**31 - 1, "2147483647"),
    (-(2**31), "-2147483648"),
    (2**31, "2147483648"),
    (-(2**31) - 1, "-2147483649"),
    (2**64 - 1, "18446744073709551615"),
    (2**64, "18446744073709551616"),
    (-(2**64), "-18446744073709551616"),
    (2**2040 - 1, "(1 bsl 2040) - 1"),  # 255 digit bytes: the largest SMALL_BIG_EXT
    (2**2040, "1 bsl 2040"),  # 256 digit bytes: LARGE_BIG_EXT
    (-(2**5000), "-(1 bsl 5000)"),
    (1.5, "1.5"),
    (-0.0, "-0.0"),
    (1e300, "1.0e300"),
    (5e-324, "5.0e-324"),
    (True, "true"),
    (False, "false"),
    (None, "nil"),
    (Atom("ok"), "ok"),
    (Atom("undefined"), "undefined"),
    (Atom(""), "''"),
    (Atom("héllo wörld"), "'héllo wörld'"),
    (Atom("日本語"), "'日本語'"),
    (Atom("a" * 255), "list_to_atom(lists:duplicate(255, $a))"),
    (Atom("😀" * 255), "list_to_atom(lists:duplicate(255, 16#1F600))"),
    ("", "<<>>"),
    ("hello", '<<"hello">>'),
    ("héllo", '<<"héllo"/utf8>>'),
    (b"\xff\x00", "<<255, 0>>"),
    ([], "[]"),
    ([1000, 2, 3], "[1000, 2, 3]"),
    ([Atom("a"), [Atom("b"), [-1]]], "[a, [b, [-1]]]"),
    (ImproperList([1, 2], Atom("x")), "[1, 2 | x]"),
    (ImproperList(["a"], "b"), '[<<"a">> | <<"b">>]'),
    ((), "{}"),
    ((1, Atom("a"), "b"), '{1, a, <<"b">>}'),
    (tuple(range(256)), "list_to_tuple(lists:seq(0, 255))"),
    ({}, "#{}"),
    ({"k": [1.5, (Atom("ok"),)]}, '#{<<"k">> => [1.5, {ok}]}'),
    ({Atom("a"): {Atom("b"): None}}, "#{a => #{b => nil}}"),
    (ErlMap([([Atom("a")], 2)]), "#{[a] => 2}"),
    (BitBinary(b"\x20", 3), "<<1:3>>"),
    (BitBinary(b"\xff\x80", 1), "<<255, 1:1>>"),
    (Export("lists", "map", 2), "fun lists:map/2"),
]


def vm_bytes(erl: Any, expression: str) -> bytes:
    """The VM's encoding with UTF-8 atoms (minor version 2), as the codec writes atoms."""
    return erl.call(f"term_to_binary({expression}, [{{minor_version, 2}}]).")


@pytest.mark.parametrize("value, expression", EXACT_CASES, ids=[c[1][:40] for c in EXACT_CASES])
def test_encode_is_byte_identical_to_the_vm(erl: Any, value: Any, expression: str) -> None:
    assert encode(value) == vm_bytes(erl, expression)


@pytest.mark.parametrize("value, expression", EXACT_CASES, ids=[c[1][:40] for c in EXACT_CASES])
def test_vm_bytes_decode_to_the_value(erl: Any, value: Any, expression: str) -> None:
    for data in (erl.term(expression), vm_bytes(erl, expression)):
        decoded = decode(data)
        assert term_key(decoded) == term_key(value)
        assert type(decoded) is type(value) or isinstance(value, (bytes, str))


# Values whose encoding the VM orders differently (maps) or that have no Erlang literal.
EQUAL_CASES: list[tuple[Any, str]] = [
    ({Atom("a"): 1, Atom("b"): 2, "c": [3]}, '#{a => 1, b => 2, <<"c">> => [3]}'),
    ({i: i * i for i in range(40)}, "maps:from_list([{I, I * I} || I <- lists:seq(0, 39)])"),
    (ErlMap([(1, "int"), (1.0, "float")]), '#{1 => <<"int">>, 1.0 => <<"float">>}'),
    (ErlMap([(1, "int"), (True, "atom")]), '#{1 => <<"int">>, true => <<"atom">>}'),
    (ErlMap([(Atom("a"), 1), ("a", 2)]), '#{a => 1, <<"a">> => 2}'),
    (ErlMap([({1: 2}, "map key"), ([3], "list key")]), '#{#{1 => 2} => <<"map key">>, [3] => <<"list key">>}'),
    (float("inf"), "infinity"),
    (float("-inf"), "neg_infinity"),
    (float("nan"), "nan"),
    ([1, [2, [3]]], "[1, [2, [3]]]"),
    ([0, 1, 255], "[0, 1, 255]"),  # a charlist: the VM writes STRING_EXT, we write LIST_EXT
    (bytearray(b"ab"), '<<"ab">>'),
    (memoryview(b"ab"), '<<"ab">>'),
    (list(range(70000)), "lists:seq(0, 69999)"),
]


@pytest.mark.parametrize("value, expression", EQUAL_CASES, ids=[c[1][:40] for c in EQUAL_CASES])
def test_encode_is_exactly_equal_in_the_vm(erl: Any, value: Any, expression: str) -> None:
    assert erl.equal_expr(encode(value), expression)


# Every tag: an Erlang expression whose term_to_binary output contains it.
VM_TAGS: list[tuple[int, str]] = [
    (T.SMALL_INTEGER_EXT, "42"),
    (T.INTEGER_EXT, "-100000"),
    (T.SMALL_BIG_EXT, "1 bsl 64"),
    (T.LARGE_BIG_EXT, "-(1 bsl 2100)"),
    (T.NEW_FLOAT_EXT, "3.14"),
    (T.ATOM_EXT, "'latin1 é'"),
    (T.ATOM_UTF8_EXT, "list_to_atom(lists:duplicate(100, 16#65E5))"),
    (T.SMALL_TUPLE_EXT, "{a, 1}"),
    (T.LARGE_TUPLE_EXT, "erlang:make_tuple(300, x)"),
    (T.NIL_EXT, "[]"),
    (T.STRING_EXT, '"abc"'),
    (T.LIST_EXT, "[1000, 2000 | tail]"),
    (T.BINARY_EXT, "<<1, 2, 3>>"),
    (T.BIT_BINARY_EXT, "<<5:7>>"),
    (T.MAP_EXT, "#{a => [], [x] => {}}"),
    (T.NEW_PID_EXT, "self()"),
    (T.NEW_PORT_EXT, "hd(erlang:ports())"),
    (T.NEWER_REFERENCE_EXT, "make_ref()"),
    (T.NEWER_REFERENCE_EXT, "erlang:monitor(process, self())"),
    (T.EXPORT_EXT, "fun erlang:'+'/2"),
    (T.NEW_FUN_EXT, "fun() -> ok end"),
    (T.NEW_FUN_EXT, "begin X = {1, <<2>>}, Y = self(), fun(Z) -> {X, Y, Z} end end"),
]


@pytest.mark.parametrize("tag, expression", VM_TAGS, ids=[f"{T.TAG_NAMES[t]}:{e[:30]}" for t, e in VM_TAGS])
def test_every_vm_tag_round_trips(erl: Any, tag: int, expression: str) -> None:
    data = erl.term(expression)
    assert data[1] == tag, "the expression does not produce the tag"
    value = decode(data)
    again = encode(value)
    assert again == data or erl.equal(again, data)
    # Inside a container too, next to other values.
    wrapped = erl.term(f"{{[{expression}], #{{k => {expression}}}, {expression}}}")
    assert erl.equal(encode(decode(wrapped)), wrapped)


OPAQUE_EXPRESSIONS = {
    Pid: "self()",
    Port: "hd(erlang:ports())",
    Reference: "make_ref()",
    Fun: "begin A = 1, fun(B) -> A + B end end",
    Export: "fun lists:map/2",
    BitBinary: "<<1:3>>",
}


@pytest.mark.parametrize("cls", list(OPAQUE_EXPRESSIONS), ids=lambda c: c.__name__)
def test_opaque_terms_encode_back_byte_identically(erl: Any, cls: type, ) -> None:
    data = erl.term(OPAQUE_EXPRESSIONS[cls])
    value = decode(data)
    assert type(value) is cls
    assert encode(value) == data
    assert value == decode(data) and hash(value) == hash(decode(data))
    # Byte-identical inside containers as well.
    data = vm_bytes(erl, f"[{{{OPAQUE_EXPRESSIONS[cls]}, x}}]")
    assert encode(decode(data)) == data


def test_opaque_fields_are_parsed(erl: Any) -> None:
    pid = decode(erl.term("self()"))
    assert pid.node == "nonode@nohost" and isinstance(pid.node, Atom)
    assert (pid.id, pid.serial) == tuple(
        decode(erl.term("begin [_, I, S] = string:lexemes(pid_to_list(self()), \"<.>\"), "
                        "{list_to_integer(I), list_to_integer(S)} end"))
    )
    ref = decode(erl.term("make_ref()"))
    assert ref.node == "nonode@nohost" and len(ref.ids) == 3
    fun = decode(erl.term("fun(A, B) -> A + B end"))
    assert fun.module == "erl_eval" and fun.num_free >= 0 and len(fun.uniq) == 16
    export = decode(erl.term("fun lists:map/2"))
    assert (export.module, export.function, export.arity) == ("lists", "map", 2)
    port = decode(erl.term("hd(erlang:ports())"))
    assert port.node == "nonode@nohost"
    bits = decode(erl.term("<<1:3>>"))
    assert (bits.data, bits.bits) == (b"\x20", 3)


def test_old_float_ext(erl: Any) -> None:
    data = erl.call("term_to_binary(-1.25e-7, [{minor_version, 0}]).")
    assert data[1] == T.FLOAT_EXT
    assert decode(data) == -1.25e-7
    assert erl.equal(encode(decode(data)), data)


def test_compressed_terms(erl: Any) -> None:
    data = erl.call("term_to_binary({lists:seq(1, 1000), <<0:8000>>, make_ref()}, [compressed]).")
    assert data[1] == T.COMPRESSED
    value = decode(data)
    assert value[0] == list(range(1, 1001)) and value[1] == "\x00" * 1000  # valid UTF-8
    assert erl.equal(encode(value), data)
    # Our compressed output is accepted by the VM.
    ours = encode(value, compressed=9)
    assert ours[1] == T.COMPRESSED and len(ours) < len(encode(value))
    assert erl.equal(ours, data)
    assert decode(ours) == value


def test_unicode_atoms_survive_a_vm_round_trip(erl: Any) -> None:
    atoms = [Atom("ünïcödé"), Atom("日本"), Atom("emoji 😀"), Atom("Ω" * 255)]
    back = decode(erl.roundtrip(encode(atoms)))
    assert back == atoms and all(type(a) is Atom for a in back)


def test_negative_zero_keeps_its_sign(erl: Any) -> None:
    back = decode(erl.roundtrip(encode(-0.0)))
    assert struct.pack(">d", back) == struct.pack(">d", -0.0)


# Tags the OTP 25 VM decodes but does not emit (or emits only in distribution): forged
# bytes, checked against the VM's decoder. Opaque ones are re-encoded byte-identically.
NODE = bytes((T.SMALL_ATOM_UTF8_EXT, 10)) + b"other@host"
FORGED = {
    "SMALL_ATOM_EXT": (bytes((131, T.SMALL_ATOM_EXT, 2)) + b"ok", "ok"),
    "ATOM_EXT latin1": (bytes((131, T.ATOM_EXT, 0, 2)) + "é!".encode("latin-1"), "'é!'"),
    "FLOAT_EXT": (bytes((131, T.FLOAT_EXT)) + b"1.5e+00".ljust(31, b"\x00"), "1.5"),
    "STRING_EXT empty": (bytes((131, T.STRING_EXT, 0, 0)), "[]"),
    "PID_EXT": (bytes((131, T.PID_EXT)) + NODE + struct.pack(">IIB", 9, 0, 1), None),
    "PORT_EXT": (bytes((131, T.PORT_EXT)) + NODE + struct.pack(">IB", 3, 1), None),
    "V4_PORT_EXT": (bytes((131, T.V4_PORT_EXT)) + NODE + struct.pack(">QI", 2**40 + 7, 1), None),
    "REFERENCE_EXT": (bytes((131, T.REFERENCE_EXT)) + NODE + struct.pack(">IB", 5, 1), None),
    "NEW_REFERENCE_EXT": (bytes((131, T.NEW_REFERENCE_EXT, 0, 3)) + NODE + struct.pack(">B3I", 1, 1, 2, 3), None),
    "NEWER_REFERENCE_EXT 5 words": (
        bytes((131, T.NEWER_REFERENCE_EXT, 0, 5)) + NODE + struct.pack(">I5I", 1, 1, 2, 3, 4, 5),
        None,
    ),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_tags_decode_like_the_vm(erl: Any, name: str) -> None:
    data, expression = FORGED[name]
    value = decode(data)
    again = encode(value)
    if expression is not None:
        assert erl.equal_expr(data, expression)
        assert erl.equal_expr(again, expression)
        return
    assert erl.accepts(data), f"the VM rejects the forged {name}"
    assert again == data
    # The VM rewrites old tags to new ones; both decode to equal values.
    newer = erl.roundtrip(data)
    assert decode(newer) == value and hash(decode(newer)) == hash(value)
    assert erl.equal(encode(decode(newer)), data)


def test_local_ext_is_kept_opaque(erl: Any) -> None:
    # OTP 26+ writes term_to_binary(T, [local]) as 131, 121, Hash, ...; OTP 25 cannot decode
    # it, so this checks only our side: kept whole, to the end of the input.
    data = bytes((131, T.LOCAL_EXT)) + b"\x01\x02\x03\x04" + bytes((T.SMALL_INTEGER_EXT, 7))
    value = decode(data)
    assert isinstance(value, LocalTerm) and value.raw == data[1:]
    assert encode(value) == data
    assert encode([value]) == bytes((131, T.LIST_EXT, 0, 0, 0, 1)) + data[1:] + bytes((T.NIL_EXT,))
