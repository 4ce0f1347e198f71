"""Hostile terms cost bounded memory (issue 13): the decoding memory budget (item 1), the
bound of ``max_depth`` (item 2) and ``decode_head``'s bounded inflation (item 3).

Memory is measured with ``tracemalloc`` (every allocation of the Python allocators, the C
accelerator's included) on both codec paths; the module runs once per path (conftest).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from snakeport import etf
from snakeport.errors import DecodeError
from snakeport.etf import MAX_DECODE_DEPTH, Decoder, Encoder, decode, decode_head, encode
from snakeport.types import Atom, BitBinary, ErlMap, ImproperList

MiB = 1 << 20


def compressed(term: Any, declared: int | None = None) -> bytes:
    """``term_to_binary(Term, [compressed])`` (optionally lying about the inflated size)."""
    body = encode(term)[1:]
    size = len(body) if declared is None else declared
    return b"\x83P" + size.to_bytes(4, "big") + zlib.compress(body, 9)


def traced(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``(result or DecodeError, peak bytes allocated while fn ran)``."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except DecodeError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def nil_list(n: int) -> bytes:
    """``[[], [], ...]`` of ``n`` empty lists: 1 byte each, 64 bytes of Python list each."""
    return b"\x83l" + n.to_bytes(4, "big") + b"j" * n + b"j"


# ---------------------------------------------------------------------------------------
# Item 1: memory amplification
# ---------------------------------------------------------------------------------------


def test_a_compressed_list_of_empty_lists_is_refused_before_it_is_inflated() -> None:
    # 2 million [] (160 MiB of Python lists) in a 2 KiB frame: before the fix the decoder
    # inflated 2 MiB and built them all (the issue: 31 KiB -> 2.6 GiB of RSS).
    data = compressed([[]] * (2 * MiB))
    assert len(data) < 4096
    result, peak = traced(lambda: decode(data))
    assert isinstance(result, DecodeError) and "memory budget" in str(result)
    assert result.offset == 2  # the declared size, checked before inflating
    assert peak < MiB


def test_a_quarter_megabyte_of_empty_lists_is_refused_within_its_budget() -> None:
    data = nil_list(MiB // 4)  # 20 MiB of Python objects without the budget, 9 MiB budget
    budget = etf.DEFAULT_MAX_EXPANSION * len(data) + etf._BUDGET_FLOOR
    result, peak = traced(lambda: decode(data))
    assert isinstance(result, DecodeError) and "memory budget" in str(result), result
    assert peak <= budget


NAMES = [Atom(f"a{i:04d}") for i in range(5000)]
HOSTILE = {
    "empty lists": [[]] * 10_000,
    "empty maps": [{}] * 10_000,
    "1-tuples": [(1,)] * 10_000,
    "1-pair maps": [{1: 2}] * 10_000,
    "6-pair maps": [{i: i for i in range(6)}] * 1_000,
    "unhashable keys": [ErlMap([([], [])])] * 10_000,
    "colliding keys": [ErlMap([(1, 1), (1.0, 2)] * 3)] * 1_000,
    "5000 atoms cycling": [NAMES[i % 5000] for i in range(10_000)],
    "improper lists": [ImproperList([1], 2)] * 10_000,
    "wide text": ["a" * 50 + "\U0001f600"] * 1_000,
    "two-byte text": ["\u0101" * 5] * 10_000,
    "big integers": [2**100] * 10_000,
    "floats": [1.5] * 10_000,
    "tagged sets": [(Atom("$snakeport_set"), list(range(i % 20, i % 20 + 40))) for i in range(500)],
}


def set_hook(term: tuple) -> Any:
    return set(term[1]) if term[0] == "$snakeport_set" else term


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("max_memory", [MiB // 4, 2 * MiB])
def test_peak_memory_stays_within_the_budget(name: str, max_memory: int) -> None:
    # Whatever the shape, decoding (accepted or refused) never allocates more than the
    # budget: the charges are upper bounds of what CPython allocates.
    data = encode(HOSTILE[name])
    result, peak = traced(lambda: decode(data, max_memory=max_memory, tagged=set_hook))
    assert peak <= max_memory, (name, result)


def test_legit_data_decodes_with_the_default_limits() -> None:
    # The harness never compresses; big binaries and lists of a million numbers decode.
    for term in (
        [i / 7 for i in range(10**6)],
        list(range(100_000, 1_100_000)),
        [i % 256 for i in range(10**6)],
        b"\xff" * (16 * MiB),
        "\u0101" * (4 * MiB) + "\U0001f600",
        [{Atom("id"): i} for i in range(50_000)],
        [(Atom("ok"), i) for i in range(50_000)],
        [[Atom("k"), "v", 1.5]] * 50_000,
        [(i,) for i in range(50_000)],
        [Atom("ok")] * 200_000,
    ):
        assert decode(encode(term)) == term
    big_set = (Atom("$snakeport_set"), list(range(100_000, 200_000)))
    assert decode(encode([big_set]), tagged=set_hook) == [set(range(100_000, 200_000))]


def test_the_budget_rule_and_the_costs_are_exact() -> None:
    # [] costs 64 bytes, plus the 16-byte slot of each element in the list (64 + 16 n);
    # budget = min(max_memory, max_expansion * input bytes + 1 MiB).
    n = 1000
    data = nil_list(n)
    need = 64 + 16 * n + 64 * n
    assert decode(data, max_memory=need) == [[]] * n
    with pytest.raises(DecodeError, match=f"memory budget of {need - 1} bytes") as info:
        decode(data, max_memory=need - 1)
    assert info.value.offset == len(data) - 2  # the last []
    n = 40_000
    data = nil_list(n)
    need = 64 + 80 * n - etf._BUDGET_FLOOR
    expansion = -(-need // len(data))
    assert len(decode(data, max_expansion=expansion)) == n
    with pytest.raises(DecodeError, match="memory budget"):
        decode(data, max_expansion=expansion - 1)


def test_repeated_atoms_are_one_object_and_charged_once() -> None:
    # More distinct atoms than the global caches hold, repeated: one object per atom per
    # term (before the fix each occurrence could be a new object: ~110 bytes per 7).
    term = [NAMES[i % 5000] for i in range(100_000)]
    value = decode(encode(term))
    assert value == term and len({id(atom) for atom in value}) == 5000
    # The first occurrence costs 256 + 4 per byte of text, later ones only their slot.
    data = encode([Atom("abc")] * 10)
    need = 64 + 16 * 10 + 256 + 4 * 3
    assert decode(data, max_memory=need) == [Atom("abc")] * 10
    with pytest.raises(DecodeError, match="memory budget"):
        decode(data, max_memory=need - 1)


def pairs_map(pairs: list[bytes]) -> bytes:
    """A MAP_EXT of the given encoded key-value pairs."""
    return b"\x83t" + len(pairs).to_bytes(4, "big") + b"".join(pairs)


#: The costliest terms per input byte (see etf._SAFE_COST_PER_BYTE).
COSTLIEST = {
    # 2 x (64 + 16) + 112 + 72 = 344 per pair of 1-byte keys and values.
    "ErlMap of [] => []": pairs_map([b"jj"] * 1000),
    # The 4 encodings of '' (272 each the first time) and a LOCAL_EXT of 1 byte (274).
    "ErlMap with empty atoms and LOCAL_EXT": pairs_map([b"jj"] * 10 + [b"w\x00s\x00", b"d\x00\x00v\x00\x00", b"jy"]),
    "list of []": nil_list(1000),
    "improper list of []": b"\x83l" + (1000).to_bytes(4, "big") + b"j" * 1000 + b"a\x01",
    "distinct atoms": encode([Atom(chr(i)) for i in range(1, 1000)]),
    "empty containers and binaries": encode([b"", "", {}, (), ("",), {1: []}, BitBinary(b"\x80", 1)] * 100),
}


@pytest.mark.parametrize("name", list(COSTLIEST))
def test_no_term_costs_more_than_the_safe_bound(name: str) -> None:
    # The pure-Python loop skips the charges when the budget is at least this bound of the
    # input (no charge could fail). One byte below it, every charge is made on both paths:
    # the costliest shapes must still fit (the ErlMap costs 171 per byte).
    data = COSTLIEST[name]
    bound = etf._SAFE_COST_PER_BYTE * len(data) + etf._SAFE_COST_BASE
    assert decode(data, max_expansion=1 << 30, max_memory=bound - 1) == decode(data)


def test_text_is_charged_at_its_width_before_it_is_made() -> None:
    # One 4-byte character makes a str of 4 bytes per character: refused before the 4 MiB
    # str exists when the budget only covers 1 byte per character.
    text = "a" * MiB + "\U0001f600"
    data = encode(text)
    result, peak = traced(lambda: decode(data, max_memory=2 * MiB))
    assert isinstance(result, DecodeError) and result.offset == 1
    assert peak < MiB // 2
    assert decode(data, max_memory=5 * MiB) == text
    ascii_only = encode("a" * MiB)
    assert len(decode(ascii_only, max_memory=MiB + 100)) == MiB


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_budget_options_are_validated(bad: Any) -> None:
    data = encode(1)
    for call in (
        lambda: Decoder(max_expansion=bad),
        lambda: Decoder(max_memory=bad),
        lambda: decode(data, max_expansion=bad),
        lambda: decode(data, max_memory=bad),
        lambda: decode_head(data, 0, max_memory=bad),
    ):
        with pytest.raises(ValueError, match="positive integer"):
            call()


def test_decoder_resolves_its_budget_options() -> None:
    decoder = Decoder(max_size=MiB)
    assert (decoder.max_expansion, decoder.max_memory) == (32, 2 * MiB + 64 * MiB)
    decoder = Decoder(max_expansion=2, max_memory=300)
    with pytest.raises(DecodeError, match="memory budget of 300 bytes"):
        decoder.decode(nil_list(10))
    assert decoder.decode_head(encode((Atom("ping"), 1)), 2) == (Atom("ping"), 1)


# ---------------------------------------------------------------------------------------
# Item 2: the depth limit
# ---------------------------------------------------------------------------------------


def deep_key_map(depth: int) -> bytes:
    """``#{DeepTuple => 2}`` whose key is a tuple nested ``depth`` levels (the map is one)."""
    return b"\x83t\x00\x00\x00\x01" + b"h\x01" * depth + b"a\x01" + b"a\x02"


def test_max_depth_has_an_upper_bound() -> None:
    data = encode(1)
    too_deep = MAX_DECODE_DEPTH + 1
    for call in (
        lambda: Decoder(max_depth=too_deep),
        lambda: decode(data, max_depth=too_deep),
        lambda: decode_head(data, 0, max_depth=too_deep),
    ):
        with pytest.raises(ValueError, match=f"an integer from 1 to {MAX_DECODE_DEPTH}"):
            call()
    assert Encoder(max_depth=10**6).encode([1]) == encode([1])  # the encoder has no such bound


def test_a_map_key_nested_to_the_bound_is_hashed_safely_on_a_thread() -> None:
    # The worker decodes frames on threads: CPython hashes the key recursively in C there.
    data = deep_key_map(MAX_DECODE_DEPTH - 1)
    outcome: list[Any] = []

    def run() -> None:
        value = decode(data, max_depth=MAX_DECODE_DEPTH)
        (key,) = value
        outcome.append((hash(key), value[key]))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(outcome) == 1 and outcome[0][1] == 2
    with pytest.raises(DecodeError, match="max_depth"):
        decode(deep_key_map(MAX_DECODE_DEPTH), max_depth=MAX_DECODE_DEPTH)


def test_a_deeper_limit_is_refused_instead_of_crashing_on_a_deep_key() -> None:
    # Before the bound, max_depth=10**7 let a 150,000-deep key overflow the C stack of the
    # thread that hashed it (SIGSEGV). In a subprocess: a crash must not take pytest down.
    code = textwrap.dedent(
        f"""
        import threading
        from snakeport import etf
        etf._set_accelerated({etf._c_encode is not None})
        data = b"\\x83t\\x00\\x00\\x00\\x01" + b"h\\x01" * 150_000 + b"a\\x01a\\x02"
        def run():
            try:
                etf.decode(data, max_depth=10**7)
                print("decoded")
            except ValueError as exc:
                print("refused:", exc)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("refused: expected max_depth to be an integer from 1 to 10000")


# ---------------------------------------------------------------------------------------
# Item 3: decode_head (the error path) inflates once, only as far as it needs
# ---------------------------------------------------------------------------------------


def zeros_frame(mib: int, declared: int | None = None) -> bytes:
    """``{ping, 8, <<0:Mib MiB>>}`` compressed (64 KiB of zlib per 64 MiB)."""
    return compressed((Atom("ping"), 8, bytes(mib * MiB)), declared)


def test_decode_head_inflates_only_the_head() -> None:
    data = zeros_frame(64)
    head, peak = traced(lambda: decode_head(data, 2))
    assert head == (Atom("ping"), 8)
    assert peak < MiB  # before the fix: the whole 64 MiB
    # Beyond max_size or the budget, the head is still read (the frame is refused anyway).
    assert decode_head(data, 2, max_size=1000) == (Atom("ping"), 8)
    assert decode_head(zeros_frame(1, declared=2**32 - 1), 2) == (Atom("ping"), 8)


def test_decode_head_inflates_more_when_the_head_needs_it() -> None:
    op = "x" * 300_000  # a head element larger than the first steps (4, 16, 64, 256 KiB)
    data = compressed((op, 7, bytes(8 * MiB)))
    assert decode_head(data, 2) == (op, 7)
    with pytest.raises(DecodeError):  # not within max_size
        decode_head(data, 2, max_size=200_000)
    with pytest.raises(DecodeError):  # not within the budget of a 20-byte-per-byte frame
        decode_head(data, 2, max_expansion=1, max_memory=250_000)


def test_decode_head_of_broken_compressed_frames() -> None:
    data = zeros_frame(1)
    assert decode_head(data[: len(data) // 2], 2) == (Atom("ping"), 8)  # truncated stream
    broken = data[:20] + b"\x00" * 16 + data[36:]
    with pytest.raises(DecodeError):
        decode_head(broken, 2)
    with pytest.raises(DecodeError, match="declared uncompressed size is 0"):
        decode_head(b"\x83P\x00\x00\x00\x00" + data[6:], 2)
    with pytest.raises(DecodeError):
        decode_head(b"\x83P\x00\x00", 2)


# ---------------------------------------------------------------------------------------
# Binaries that decode to bytes are charged as bytes (issue 12, side defect)
# ---------------------------------------------------------------------------------------


def _bytes_hook(term: tuple) -> Any:
    """The worker's rule for ``{'$snakeport_bytes', Binary}`` (``_tagged``): bytes."""
    if term[0] == etf.BYTES_TAG and len(term) == 2:
        value = term[1]
        return value if type(value) is bytes else value.encode()
    return term


def test_a_binary_that_is_not_utf8_is_charged_one_byte_per_byte() -> None:
    # Random bytes hold lead bytes of 4-byte characters but are not UTF-8: they decode to
    # bytes (1 byte per byte). Before the fix the pre-check charged them 4 per byte, so a
    # non-UTF-8 binary above about 144 MiB was refused at the default limits (this is the
    # same rule with a budget of 2 MiB for 1 MiB).
    raw = bytes(range(256)) * (MiB // 256)
    data = encode(raw)
    result, peak = traced(lambda: decode(data, max_memory=MiB + 1000))
    assert result == raw
    assert peak < 2 * MiB + 4096
    with pytest.raises(DecodeError, match="memory budget"):
        decode(data, max_memory=MiB + 79)  # 80 + n: the binary's exact charge


def test_valid_utf8_is_still_charged_at_its_width() -> None:
    # The exact check: one 4-byte character in 1 MiB of ASCII is a str of 4 bytes each,
    # refused before it is made; invalid UTF-8 after it makes the same bytes a bytes.
    text = "a" * MiB + "\U0001f600"
    assert isinstance(traced(lambda: decode(encode(text), max_memory=2 * MiB))[0], DecodeError)
    broken = text.encode() + b"\xff"
    assert decode(encode(broken), max_memory=2 * MiB) == broken
    # 2-byte characters (kind 2) fit in 2 per byte.
    wide = "\u0100" * (MiB // 2)
    assert decode(encode(wide), max_memory=2 * MiB + 200) == wide


def test_a_bytes_term_decodes_to_bytes_without_a_str() -> None:
    # {'$snakeport_bytes', Binary} with a hook: the binary is bytes at once (no str made
    # and encoded again), charged 80 + n once (the hook returns that same object).
    text = "a" * MiB + "\U0001f600"
    term = (Atom(etf.BYTES_TAG), text)
    data = encode(term)
    n = len(text.encode())
    need = 64 + 2 * 16 + 256 + 4 * len(etf.BYTES_TAG) + 80 + n
    result, peak = traced(lambda: decode(data, tagged=_bytes_hook, max_memory=need))
    assert result == text.encode()
    assert peak < n + MiB // 2  # one copy of the payload (no str of 4 MiB)
    with pytest.raises(DecodeError, match="memory budget"):
        decode(data, tagged=_bytes_hook, max_memory=need - 1)
    # Without a hook the term is data like any other: its binary is a str when valid.
    assert decode(data) == term
    # Only the second element of a 2-tuple tagged so: other shapes decode as usual.
    assert decode(encode((Atom(etf.BYTES_TAG), "x", "y")), tagged=_bytes_hook) == (Atom(etf.BYTES_TAG), "x", "y")
    assert decode(encode((Atom("$snakeport_other"), "x")), tagged=_bytes_hook) == (Atom("$snakeport_other"), "x")


def test_the_codec_bytes_tag_is_the_protocol_one() -> None:
    from snakeport import _protocol

    assert etf.BYTES_TAG == _protocol.BYTES_TAG


@pytest.mark.parametrize("content", ["random", "utf8"])
def test_bytes_payloads_decode_up_to_the_frame_limit_at_default_limits(content: str) -> None:
    # The reported case: a bytes payload above about 144 MiB was refused ("needs more than
    # the memory budget of 603979776"). A payload filling a default-size frame decodes,
    # valid UTF-8 with 4-byte characters included (it is bytes at once).
    size = etf.DEFAULT_MAX_SIZE - 64
    if content == "random":
        payload = bytes(range(256)) * (size // 256)
    else:
        payload = ("a" * (size // 2 - 8) + "\U0001f600" * (size // 8)).encode()[:size]
        payload = payload[: len(payload.decode("utf-8", "ignore").encode())]
    data = encode((Atom(etf.BYTES_TAG), payload))
    assert len(data) <= etf.DEFAULT_MAX_SIZE
    assert decode(data, tagged=_bytes_hook) == payload
    del data
    if content == "random":
        # A plain binary that is not UTF-8 is bytes too, charged as such.
        data = encode(payload)
        assert decode(data) == payload
