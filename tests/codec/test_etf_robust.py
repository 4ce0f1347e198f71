"""Hostile and boundary input: arbitrary bytes raise only DecodeError; limits hold."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakeport import _etf_tags as T
from snakeport.errors import DecodeError, EncodeError
from snakeport.etf import DEFAULT_MAX_DEPTH, MAX_DECODE_DEPTH, Decoder, Encoder, decode, decode_head, encode
from snakeport.types import Atom, BitBinary, ErlMap, Export, ImproperList, LocalTerm

NODE = bytes((T.SMALL_ATOM_UTF8_EXT, 10)) + b"other@host"

# Our own encodings of one value of every kind, plus old tags the encoder never writes.
LOCAL_CORPUS: list[bytes] = [
    encode(value)
    for value in (
        0, 255, 256, -(2**31), 2**64, -(2**2100), 1.5, -0.0, True, None, Atom("ok"), Atom("é" * 200),
        "héllo", b"\xff", [], [1, [2]], (), (1, (2,)), {}, {"a": [1.5]}, ImproperList([1], Atom("t")),
        ErlMap([([1], 2), (1.0, 3)]), BitBinary(b"\xe0", 3), Export("m", "f", 1),
        (Atom("$snakeport_ref"), "s", 1, "builtins.object"),
    )
] + [
    bytes((131, T.SMALL_ATOM_EXT, 2)) + b"ok",
    bytes((131, T.ATOM_EXT, 0, 2)) + b"ok",
    bytes((131, T.STRING_EXT, 0, 3)) + b"abc",
    bytes((131, T.FLOAT_EXT)) + b"1.5e+00".ljust(31, b"\x00"),
    bytes((131, T.PID_EXT)) + NODE + struct.pack(">IIB", 9, 0, 1),
    bytes((131, T.NEW_PID_EXT)) + NODE + struct.pack(">III", 9, 0, 1),
    bytes((131, T.PORT_EXT)) + NODE + struct.pack(">IB", 3, 1),
    bytes((131, T.NEW_PORT_EXT)) + NODE + struct.pack(">II", 3, 1),
    bytes((131, T.V4_PORT_EXT)) + NODE + struct.pack(">QI", 2**40, 1),
    bytes((131, T.REFERENCE_EXT)) + NODE + struct.pack(">IB", 5, 1),
    bytes((131, T.NEW_REFERENCE_EXT, 0, 2)) + NODE + struct.pack(">B2I", 1, 1, 2),
    bytes((131, T.NEWER_REFERENCE_EXT, 0, 3)) + NODE + struct.pack(">I3I", 1, 1, 2, 3),
    encode(list(range(300)), compressed=9),
]

VM_EXPRESSIONS = [
    "self()", "make_ref()", "hd(erlang:ports())", "fun() -> ok end",
    "begin X = [a, 1.5], fun(Y) -> {X, Y} end end", "fun lists:map/2", "<<1:3>>", '"abc"',
    "#{a => [1, {b, <<\"c\">>}], [x] => #{}}", "erlang:make_tuple(300, 1)",
]


@pytest.fixture(scope="module")
def corpus(erl: Any) -> list[bytes]:
    vm = [erl.term(expression) for expression in VM_EXPRESSIONS]
    vm.append(erl.call("term_to_binary(lists:seq(1, 200), [compressed])."))
    return LOCAL_CORPUS + vm


def decodes_or_raises_decode_error(data: bytes, **options: Any) -> DecodeError | None:
    """Decode; only DecodeError may escape (anything else fails the test)."""
    try:
        decode(data, **options)
    except DecodeError as exc:
        assert exc.data is not None
        assert exc.offset is None or 0 <= exc.offset <= len(exc.data)
        return exc
    return None


def test_corpus_decodes_whole(corpus: list[bytes]) -> None:
    # Every decoded value round-trips, floats too: equal, and the same bytes again (which
    # also tells -0.0 from 0.0 and an Atom from a str, where == does not).
    for data in corpus:
        value = decode(data)
        again = encode(value)
        assert decode(again) == value, data
        assert encode(decode(again)) == again, data


def test_every_truncation_raises_decode_error(corpus: list[bytes]) -> None:
    for data in corpus:
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                decode(data[:cut])


def test_trailing_bytes_raise_decode_error(corpus: list[bytes]) -> None:
    for data in corpus:
        for extra in (b"\x00", b"j", data[1:]):
            with pytest.raises(DecodeError, match="trailing|compressed"):
                decode(data + extra)


def test_local_ext_takes_the_rest_of_the_input() -> None:
    data = bytes((131, T.LOCAL_EXT)) + b"anything at all"
    assert decode(data) == LocalTerm(data[1:])
    assert decode(data[:5]) == LocalTerm(data[1:5])
    with pytest.raises(DecodeError):  # inside a container nothing can follow it
        decode(bytes((131, T.SMALL_TUPLE_EXT, 2)) + data[1:])


def test_inputs_of_every_buffer_type() -> None:
    data = encode({"a": [1, 2.5, Atom("x")]})
    for buffer in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert decode(buffer) == {"a": [1, 2.5, Atom("x")]}
    with pytest.raises(TypeError):
        decode("not bytes")  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(blob=st.binary(max_size=64))
def test_random_bytes_raise_only_decode_error(blob: bytes) -> None:
    decodes_or_raises_decode_error(blob)
    decodes_or_raises_decode_error(b"\x83" + blob)
    decodes_or_raises_decode_error(b"\x83" + blob, tagged=lambda t: t)


@settings(max_examples=300, deadline=None)
@given(tag=st.sampled_from(sorted(T.TAG_NAMES)), blob=st.binary(max_size=40))
def test_random_bodies_after_every_tag_raise_only_decode_error(tag: int, blob: bytes) -> None:
    decodes_or_raises_decode_error(bytes((131, tag)) + blob)
    decodes_or_raises_decode_error(bytes((131, T.SMALL_TUPLE_EXT, 2, tag)) + blob)


def test_seeded_mutations_raise_only_decode_error(corpus: list[bytes]) -> None:
    rng = random.Random(0x5EED)
    for _ in range(30000):
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            op = rng.random()
            i = rng.randrange(len(data))
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                data[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"])
            elif op < 0.85:
                del data[i]
            else:
                data.insert(i, rng.randrange(256))
        decodes_or_raises_decode_error(bytes(data))
        decodes_or_raises_decode_error(bytes(data), max_depth=3)
        try:
            decode_head(bytes(data), 2)
        except DecodeError:
            pass


FORGED_LENGTHS = {
    "BINARY_EXT": bytes((131, T.BINARY_EXT)) + b"\xff\xff\xff\xff" + b"x" * 10,
    "LIST_EXT": bytes((131, T.LIST_EXT)) + b"\xff\xff\xff\xff" + b"a\x01" * 5,
    "LARGE_TUPLE_EXT": bytes((131, T.LARGE_TUPLE_EXT)) + b"\xff\xff\xff\xff" + b"a\x01" * 5,
    "MAP_EXT": bytes((131, T.MAP_EXT)) + b"\xff\xff\xff\xff" + b"a\x01" * 5,
    "LARGE_BIG_EXT": bytes((131, T.LARGE_BIG_EXT)) + b"\xff\xff\xff\xff\x00" + b"\x01" * 5,
    "BIT_BINARY_EXT": bytes((131, T.BIT_BINARY_EXT)) + b"\xff\xff\xff\xff\x03" + b"x" * 5,
    "STRING_EXT": bytes((131, T.STRING_EXT)) + b"\xff\xff" + b"x" * 5,
    "ATOM_UTF8_EXT": bytes((131, T.ATOM_UTF8_EXT)) + b"\xff\xff" + b"x" * 5,
    "NEW_FUN_EXT": bytes((131, T.NEW_FUN_EXT)) + b"\xff\xff\xff\xff" + b"\x00" * 60,
    "NEWER_REFERENCE_EXT": bytes((131, T.NEWER_REFERENCE_EXT)) + b"\xff\xff" + NODE + b"\x00" * 8,
    "COMPRESSED size": bytes((131, T.COMPRESSED)) + b"\xff\xff\xff\xff" + zlib.compress(b"a\x01"),
    "nested LIST_EXT": bytes((131, T.LIST_EXT, 0, 0, 0, 2, T.LIST_EXT)) + b"\xff\xff\xff\xf0" + b"j" * 8,
}


@pytest.mark.parametrize("name", list(FORGED_LENGTHS))
def test_forged_huge_lengths_fail_fast_without_allocating(name: str) -> None:
    data = FORGED_LENGTHS[name]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError):
            decode(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1_000_000


def test_decompression_bomb_is_cut_at_the_declared_size() -> None:
    bomb = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)  # 64 MiB of zeros, ~64 KiB packed
    data = bytes((131, T.COMPRESSED)) + struct.pack(">I", 100) + bomb
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="declared"):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    # A declared size above max_size is refused before inflating anything.
    honest = encode(b"\x00" * 100_000, compressed=9)
    with pytest.raises(DecodeError, match="max_size"):
        decode(honest, max_size=50_000)
    assert decode(honest, max_size=200_000) == "\x00" * 100_000
    # Broken zlib data, a lying (too large) declared size, and junk after the stream.
    with pytest.raises(DecodeError, match="zlib"):
        decode(honest[:6] + b"garbage" + honest[13:])
    with pytest.raises(DecodeError, match="declared"):
        decode(honest[:2] + struct.pack(">I", 100_006) + honest[6:])
    with pytest.raises(DecodeError, match="trailing"):
        decode(honest + b"\x00")


def test_max_size_bounds_the_input() -> None:
    data = encode("x" * 1000)
    assert decode(data, max_size=len(data)) == "x" * 1000
    for buffer in (data, bytearray(data), memoryview(data)):
        with pytest.raises(DecodeError, match="max_size"):
            decode(buffer, max_size=len(data) - 1)


def nested(kind: str, depth: int) -> bytes:
    if kind == "list":
        return b"\x83" + b"l\x00\x00\x00\x01" * depth + b"j" + b"j" * depth
    if kind == "tuple":
        return b"\x83" + b"h\x01" * depth + b"a\x00"
    if kind == "map":
        return b"\x83" + b"t\x00\x00\x00\x01a\x00" * depth + b"a\x00"
    # [0 | [0 | ...]]: lists nested through their tails (decoded flat, as the VM does)
    return b"\x83" + b"l\x00\x00\x00\x01a\x00" * depth + b"j"


@pytest.mark.parametrize("kind", ["list", "tuple", "map", "tail"])
def test_nesting_up_to_max_depth(kind: str) -> None:
    value = decode(nested(kind, DEFAULT_MAX_DEPTH))
    if kind == "tail":
        assert value == [0] * DEFAULT_MAX_DEPTH
    else:
        assert encode(value) == nested(kind, DEFAULT_MAX_DEPTH)
    with pytest.raises(DecodeError, match="max_depth"):
        decode(nested(kind, DEFAULT_MAX_DEPTH + 1))
    assert decode(nested(kind, 3), max_depth=3) is not None
    with pytest.raises(DecodeError, match="max_depth"):
        decode(nested(kind, 4), max_depth=3)


def test_very_deep_nesting_never_hits_the_recursion_limit() -> None:
    # Decoding goes as deep as MAX_DECODE_DEPTH (10 times the default recursion limit);
    # encoding has no upper bound (both are loops, not recursions).
    for kind in ("list", "tuple", "map"):
        data = nested(kind, MAX_DECODE_DEPTH)
        value = decode(data, max_depth=MAX_DECODE_DEPTH)
        assert encode(value, max_depth=MAX_DECODE_DEPTH) == data
        with pytest.raises(EncodeError, match="max_depth"):
            encode(value)
    depth = 200_000
    value: Any = 0
    for _ in range(depth):
        value = (value,)
    assert encode(value, max_depth=depth) == nested("tuple", depth)
    with pytest.raises(EncodeError, match="max_depth"):
        encode(value, max_depth=depth - 1)


def test_encoding_cycles_and_deep_values_raise_encode_error() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(EncodeError, match="cycle") as info:
        encode(cyclic)
    assert info.value.value is not None
    cyclic_map: dict[str, Any] = {}
    cyclic_map["self"] = cyclic_map
    with pytest.raises(EncodeError):
        encode(cyclic_map)
    value: Any = 0
    for _ in range(DEFAULT_MAX_DEPTH):
        value = (value,)
    assert decode(encode(value)) == value
    with pytest.raises(EncodeError):
        encode([value])
    deeper = Encoder(max_depth=DEFAULT_MAX_DEPTH + 1).encode([value])
    assert decode(deeper, max_depth=DEFAULT_MAX_DEPTH + 1) == [value]


def test_a_list_of_a_million_elements() -> None:
    big = list(range(10**6))
    data = encode(big)
    assert decode(data) == big
    floats = [i / 7 for i in range(10**6)]
    assert decode(encode(floats)) == floats


def test_boundary_integers() -> None:
    for value in (2**64 - 1, 2**64, -(2**64), 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 255, 256, -1, 0):
        data = encode(value)
        assert decode(data) == value and type(decode(data)) is int
    # A negative zero bignum and a big that fits in 32 bits still decode.
    assert decode(bytes((131, T.SMALL_BIG_EXT, 1, 1, 0))) == 0
    assert decode(bytes((131, T.SMALL_BIG_EXT, 1, 0, 5))) == 5
    with pytest.raises(DecodeError, match="sign"):
        decode(bytes((131, T.SMALL_BIG_EXT, 1, 2, 5)))


def test_atom_length_limits() -> None:
    assert decode(encode(Atom("a" * 255))) == "a" * 255
    assert decode(encode(Atom("😀" * 255)))[0] == "😀"
    for name in ("a" * 256, "😀" * 256):
        with pytest.raises(EncodeError, match="255") as info:
            encode(Atom(name))
        assert info.value.value == name
    with pytest.raises(DecodeError, match="255"):
        decode(bytes((131, T.ATOM_EXT, 1, 0)) + b"a" * 256)
    with pytest.raises(DecodeError, match="255"):
        decode(bytes((131, T.ATOM_UTF8_EXT, 0x04, 0x00)) + "😀".encode() * 256)
    with pytest.raises(DecodeError, match="UTF-8"):
        decode(bytes((131, T.SMALL_ATOM_UTF8_EXT, 1, 0xFF)))


def test_empty_values() -> None:
    empties = (("", b"\x83m\x00\x00\x00\x00"), ([], b"\x83j"), ((), b"\x83h\x00"), ({}, b"\x83t\x00\x00\x00\x00"))
    for value, data in empties:
        assert encode(value) == data
        assert decode(data) == value and type(decode(data)) is type(value)
    assert decode(b"\x83i\x00\x00\x00\x00") == ()
    assert decode(b"\x83k\x00\x00") == []


def test_invalid_values_inside_tags() -> None:
    bad = [
        bytes((131, T.NEW_FLOAT_EXT)) + struct.pack(">d", float("inf")),
        bytes((131, T.NEW_FLOAT_EXT)) + struct.pack(">d", float("nan")),
        bytes((131, T.FLOAT_EXT)) + b"inf".ljust(31, b"\x00"),
        bytes((131, T.FLOAT_EXT)) + b"1_0".ljust(31, b"\x00"),
        bytes((131, T.BIT_BINARY_EXT, 0, 0, 0, 1, 0, 0xFF)),
        bytes((131, T.BIT_BINARY_EXT, 0, 0, 0, 1, 9, 0xFF)),
        bytes((131, T.BIT_BINARY_EXT, 0, 0, 0, 0, 3)),
        bytes((131, T.NEWER_REFERENCE_EXT, 0, 6)) + NODE + b"\x00" * 28,
        bytes((131, T.NEWER_REFERENCE_EXT, 0, 0)) + NODE + b"\x00" * 4,
        bytes((131, T.NEW_PID_EXT, T.SMALL_INTEGER_EXT, 1)) + b"\x00" * 12,
        bytes((131, T.EXPORT_EXT)) + encode(Atom("m"))[1:] + encode(Atom("f"))[1:] + encode(300)[1:],
        bytes((131, T.LIST_EXT, 0, 0, 0, 0, T.SMALL_INTEGER_EXT, 1)),
        bytes((131, T.COMPRESSED, 0, 0, 0, 0)) + zlib.compress(b""),
        bytes((131, T.SMALL_TUPLE_EXT, 1, T.COMPRESSED, 0, 0, 0, 2)) + zlib.compress(b"a\x01"),
        bytes((131, 0)),
        bytes((131, T.VERSION)),
        b"",
        b"\x83",
        b"\x82a\x01",
    ]
    for data in bad:
        error = decodes_or_raises_decode_error(data)
        assert error is not None, data


def test_decode_errors_carry_data_and_offset() -> None:
    data = encode([1, 2, "three"]) + b"!"
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.data == data and info.value.offset == len(data) - 1
    assert isinstance(info.value, ValueError)
    with pytest.raises(DecodeError) as info:
        decode(b"\x83h\x02a\x01\xee")
    assert info.value.offset == 5 and "unknown tag 238" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, None])
def test_limits_are_validated(bad: Any) -> None:
    data = encode(1)
    for call in (
        lambda: Decoder(max_depth=bad),
        lambda: Decoder(max_size=bad),
        lambda: Encoder(max_depth=bad),
        lambda: decode(data, max_depth=bad),
        lambda: decode(data, max_size=bad),
        lambda: decode_head(data, 1, max_depth=bad),
        lambda: encode(1, max_depth=bad),
    ):
        with pytest.raises(ValueError, match="positive integer|an integer from 1 to"):
            call()
    with pytest.raises(ValueError, match="compressed"):
        encode(1, compressed=10)
    with pytest.raises(ValueError, match="callable"):
        Decoder(tagged=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="callable"):
        encode(1, default=42)  # type: ignore[arg-type]


def test_the_leaf_table_decodes_like_the_whole_decoder(corpus: list[bytes]) -> None:
    # The main loop decodes the most frequent tags inline; the table must agree with it.
    from snakeport.etf import _LEAF_DECODERS

    seen = set()
    extra = [encode(12345), encode(1.5), encode(Atom("x")), encode("bin"), encode(2**70), b"\x83j"]
    for data in corpus + extra:
        decoder = _LEAF_DECODERS[data[1]]
        if decoder is None:
            continue
        seen.add(data[1])
        value, end = decoder(data, 2)
        assert end == len(data) and (value == decode(data) or value != value)
    assert seen >= {tag for tag, fn in enumerate(_LEAF_DECODERS) if fn is not None} - {T.LOCAL_EXT}


def test_atom_caches_stay_bounded() -> None:
    from snakeport import etf

    atoms = [Atom(f"atom_{i}") for i in range(etf._ATOM_CACHE_MAX + 10)]
    assert decode(encode(atoms)) == atoms
    assert len(etf._ATOMS) <= etf._ATOM_CACHE_MAX and len(etf._ATOM_BYTES) <= etf._ATOM_CACHE_MAX
    assert decode(encode([Atom("ok"), True])) == [Atom("ok"), True]


def test_node_names_that_are_special_atoms_stay_atoms() -> None:
    data = bytes((131, T.NEW_PID_EXT, T.SMALL_ATOM_UTF8_EXT, 4)) + b"true" + struct.pack(">III", 1, 2, 3)
    pid = decode(data)
    assert pid.node == "true" and type(pid.node) is Atom and encode(pid) == data


def test_more_limits_and_conversions() -> None:
    with pytest.raises(DecodeError, match="max_depth"):
        decode(encode((tuple(range(300)),)), max_depth=1)
    with pytest.raises(DecodeError, match="not finite"):
        decode(bytes((131, T.FLOAT_EXT)) + b"1e999".ljust(31, b"\x00"))
    with pytest.raises(ValueError, match="callable"):
        decode(encode(1), tagged="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        decode_head(encode((1,)), 1, max_size=0)
    for deep in (ErlMap([(1, [[2]])]), ImproperList([[[1]]], 2), {"a": {"b": {"c": 1}}}):
        with pytest.raises(EncodeError, match="max_depth"):
            encode(deep, max_depth=2)
    # compressed=True means level 6; incompressible data stays uncompressed.
    assert decode(encode("a" * 1000, compressed=True)) == "a" * 1000
    assert encode(b"\x01", compressed=9) == encode(b"\x01")
