"""Placed frames: a large call frame's binary read straight into its own ``bytes``
(``FrameSplitter(place_binaries=True)``, ``_clane.placeable`` and ``_clane.BytesFiller``)."""

from __future__ import annotations

import os
import random
import struct

import pytest

from snakeport import etf
from snakeport._clane import BytesFiller, page_offset, placeable
from snakeport._framing import FrameSplitter, Placed
from snakeport.types import Atom

A = Atom
BIN = os.urandom(300_000)
TAG = A("$snakeport_bytes")


def call(args: list, kwargs: dict | None = None, op: str = "call") -> bytes:
    return etf.encode((A(op), 7, "s1", "builtins", "len", args, kwargs or {}, {}))


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def split(stream: bytes, sizes: list[int], **options) -> list:
    """The events of ``stream`` read in pieces of ``sizes`` (cycled) through get_buffer."""
    s = FrameSplitter(place_binaries=True, **options)
    events, view, i, k = [], memoryview(stream), 0, 0
    while i < len(stream):
        target = s.get_buffer()
        n = min(len(target), len(stream) - i, sizes[k % len(sizes)])
        k += 1
        target[:n] = view[i : i + n]
        del target
        s.buffer_updated(n)
        i += n
        while (event := s.next_event()) is not None:
            events.append(event)
    assert not s.has_partial_frame
    return events


def where(payload: bytes, binary: bytes) -> int:
    """The offset of ``binary``'s bytes in ``payload`` (after its BINARY_EXT header)."""
    start = payload.index(b"\x6d" + struct.pack(">I", len(binary)) + binary[:16]) + 5
    assert payload[start : start + len(binary)] == binary
    return start


@pytest.mark.parametrize("sizes", [[1 << 20], [65_536], [7, 100_001], [300_004, 1], [4, 2, 99_999]])
def test_a_call_frames_binary_is_read_into_its_own_bytes(sizes) -> None:
    payload = call([(TAG, BIN), 5], {"k": "v"})
    after = call([1, 2])
    events = split(frame(payload) + frame(after), sizes)
    assert len(events) == 2 and events[1] == after
    placed = events[0]
    assert type(placed) is Placed and type(placed.value) is bytes and placed.value == BIN
    assert placed.start == where(payload, BIN)
    assert placed.buffer == payload[: placed.start] + payload[placed.start + len(BIN) :]
    assert placed.joined() == payload and type(placed.joined()) is bytearray


@pytest.mark.parametrize(
    "payload",
    [
        call([(TAG, BIN)], op="method"),  # not a call: the lane would not take it
        call([(A("$snakeport_ref"), "s1", 1, "T"), (TAG, BIN)]),  # another tagged term before it
        call([BIN[:60_000], BIN[:60_000]]),  # no binary of 64 KiB or more
        call([(TAG, BIN * 4)]),  # a frame larger than the first allocation (large_chunk)
    ],
)
def test_other_large_frames_are_assembled_whole(payload: bytes) -> None:
    events = split(frame(payload), [100_000])
    assert len(events) == 1 and type(events[0]) is bytearray and events[0] == payload


def test_a_frame_that_ends_with_its_binary_is_placed_whole() -> None:
    # (Not a valid call: kwargs and options follow the arguments. The lane's decode fails
    # and the general path gets the joined frame.)
    payload = call([(TAG, BIN)])
    payload = payload[: where(payload, BIN) + len(BIN)]
    events = split(frame(payload) + frame(b"next"), [70_000, 3])
    assert type(events[0]) is Placed and events[0].start == len(events[0].buffer)
    assert events[0].joined() == payload and events[1:] == [b"next"]


def test_a_binary_longer_than_its_frame_is_not_placed() -> None:
    payload = bytearray(call([(TAG, BIN)]))
    start = where(payload, BIN)
    payload[start - 4 : start] = struct.pack(">I", len(BIN) + 1000)  # (malformed: the decoder says so)
    assert split(frame(bytes(payload)), [70_000]) == [payload]


def test_a_binary_already_read_whole_is_not_placed() -> None:
    # The frame's first read holds the binary: copying it into a bytes costs what copying
    # the frame does.
    payload = call([(TAG, BIN[:70_000])], {"pad": "x" * 200_000})
    events = split(frame(payload), [200_000])
    assert type(events[0]) is bytearray and events[0] == payload


def test_without_place_binaries_large_frames_are_bytearrays() -> None:
    payload = call([(TAG, BIN)])
    s = FrameSplitter()
    s.feed(frame(payload))
    assert s.next_event() == payload


def test_placed_frames_survive_random_splits() -> None:
    rng = random.Random(5)
    payloads = [call([(TAG, BIN)]), call([1]), call(["x", BIN[: rng.randrange(65_536, 300_000)]]), call([(TAG, BIN[:100])])]
    stream = b"".join(frame(p) for p in payloads)
    for _ in range(20):
        sizes = [rng.choice([1, 3, 4, 5, 4096, 65_536, 70_001, 1 << 20]) for _ in range(5)]
        events = split(stream, sizes)
        assert [e.joined() if type(e) is Placed else e for e in events] == payloads


# Terms the walk steps over, as the VM or the worker's encoder writes them: integers small,
# 32-bit and big (SMALL_BIG_EXT, LARGE_BIG_EXT), a float, atoms (SMALL_ATOM_UTF8_EXT,
# ATOM_UTF8_EXT, ATOM_EXT, SMALL_ATOM_EXT), STRING_EXT, a binary, tuples small and large,
# lists proper and improper, NIL_EXT and a map.
WALKED = [
    bytes([97, 1]), bytes([98]) + struct.pack(">i", -(2**31)), etf.encode(2**300)[1:],
    etf.encode(2**2100)[1:], etf.encode(1.5)[1:], etf.encode(A("é"))[1:],
    bytes([118, 0, 2]) + b"ab", bytes([100, 0, 2]) + b"ab", bytes([115, 2]) + b"ab",
    bytes([107, 0, 3, 1, 2, 3]), etf.encode("text")[1:], etf.encode((1, 2))[1:],
    etf.encode(tuple(range(300)))[1:], etf.encode([1, [2]])[1:], bytes([108, 0, 0, 0, 1, 97, 1, 97, 2]),
    bytes([106]), etf.encode({"k": [1]})[1:],
]  # fmt: skip


def with_args(raw_args: list[bytes], binary: bytes) -> bytearray:
    """A call frame whose argument list holds the raw terms, then {'$snakeport_bytes', binary}."""
    head = etf.encode((A("call"), 7, "s1", "builtins", "len"))
    tagged = etf.encode((TAG, binary))[1:]
    args = bytes([108]) + struct.pack(">I", len(raw_args) + 1) + b"".join(raw_args) + tagged + bytes([106])
    rest = etf.encode({})[1:] * 2
    return bytearray(bytes([131, 104, 8]) + head[3:] + args + rest)


def test_placeable_walks_every_kind_of_term_a_request_head_holds() -> None:
    payload = with_args(WALKED, BIN)
    term = etf.decode(bytes(payload))
    assert term[5][-1] == (TAG, BIN) and len(term[5]) == len(WALKED) + 1
    start = where(payload, BIN)
    assert placeable(payload, 0, len(payload), 65_536) == (start, len(BIN))
    # Found from the bytes read so far (up to the binary's header), and from any offset.
    shifted = bytearray(b"ab") + payload
    assert placeable(shifted, 2, 2 + start, 65_536) == (start, len(BIN))
    assert placeable(payload, 0, start - 1, 65_536) is None  # its header cut
    assert placeable(payload, 0, len(payload), len(BIN) + 1) is None  # none that long


@pytest.mark.parametrize(
    "raw",
    [
        etf.encode((A("$snakeport_set"), [1]))[1:],  # another tagged term
        bytes([88]) + etf.encode(A("nonode@nohost"))[1:] + bytes(12),  # NEW_PID_EXT: not walked
        bytes([77, 0, 0, 0, 1, 3, 255]),  # BIT_BINARY_EXT: not walked
    ],
)
def test_placeable_gives_up_at_a_term_it_does_not_walk(raw: bytes) -> None:
    payload = with_args([raw], BIN)
    assert placeable(payload, 0, len(payload), 65_536) is None


def test_placeable_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="bytearray"):
        placeable(b"x", 0, 1, 1)
    with pytest.raises(ValueError, match="out of range"):
        placeable(bytearray(4), 2, 5, 1)


def test_a_bytes_filler_is_filled_then_taken_once() -> None:
    filler = BytesFiller(10)
    assert len(filler) == 10 and 0 <= page_offset(filler) < 4096
    with memoryview(filler) as view:
        assert not view.readonly
        view[:] = b"0123456789"
        with pytest.raises(BufferError, match="still held"):
            filler.take()
    value = filler.take()
    assert type(value) is bytes and value == b"0123456789" and len(filler) == 0
    with pytest.raises(BufferError, match="taken"):
        filler.take()
    with pytest.raises(BufferError, match="taken"):
        memoryview(filler)
    with pytest.raises(ValueError, match="expected size to be >= 1, got: 0"):
        BytesFiller(0)
