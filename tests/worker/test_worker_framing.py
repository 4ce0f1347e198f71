"""Unit tests of the I/O-free {packet, 4} frame splitter."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakeport import _framing
from snakeport._clane import page_offset, uninitialized
from snakeport._framing import ALIAS_WINDOW, PAGE, FrameSplitter, Oversized, aliases, encode_header


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def drain(splitter: FrameSplitter) -> list:
    events = []
    while (event := splitter.next_event()) is not None:
        events.append(event)
    return events


def small_splitter(**kw) -> FrameSplitter:
    opts = dict(max_frame_bytes=40, head_bytes=6, buffer_size=32, large_threshold=16)
    opts.update(kw)
    return FrameSplitter(**opts)


PAYLOADS = [b"", b"a", b"hello", b"x" * 15, b"y" * 16, b"z" * 28, b"w" * 40, b"q" * 41, b"big" * 30, b"end"]


def expected(payloads: list[bytes], limit: int = 40, head: int = 6) -> list:
    out = []
    for p in payloads:
        out.append(p if len(p) <= limit else Oversized(len(p), limit, p[:head]))
    return out


def test_whole_stream_at_once() -> None:
    s = small_splitter()
    s.feed(b"".join(frame(p) for p in PAYLOADS))
    assert [bytes(e) if not isinstance(e, Oversized) else e for e in drain(s)] == expected(PAYLOADS)
    assert not s.has_partial_frame


def test_split_at_every_byte() -> None:
    data = b"".join(frame(p) for p in PAYLOADS)
    for cut in range(len(data) + 1):
        s = small_splitter()
        s.feed(data[:cut])
        events = drain(s)
        s.feed(data[cut:])
        events += drain(s)
        assert [bytes(e) if not isinstance(e, Oversized) else e for e in events] == expected(PAYLOADS), cut


def test_byte_by_byte() -> None:
    data = b"".join(frame(p) for p in PAYLOADS)
    s = small_splitter()
    events = []
    for i in range(len(data)):
        s.feed(data[i : i + 1])
        events += drain(s)
    assert [bytes(e) if not isinstance(e, Oversized) else e for e in events] == expected(PAYLOADS)


def test_trailing_partial_frame_is_kept() -> None:
    s = small_splitter()
    s.feed(frame(b"abc") + b"\x00\x00\x00\x05ab")
    assert drain(s) == [b"abc"]
    assert s.has_partial_frame
    s.feed(b"cde")
    assert drain(s) == [b"abcde"]
    assert not s.has_partial_frame


def test_zero_copy_buffer_api_large_frame_is_the_read_buffer() -> None:
    s = FrameSplitter(max_frame_bytes=1 << 20)
    payload = os.urandom(300_000)
    stream = memoryview(frame(payload) + frame(b"after"))
    events = []
    while stream:
        buf = s.get_buffer()
        n = min(len(buf), len(stream), 70_000)
        buf[:n] = stream[:n]
        s.buffer_updated(n)
        stream = stream[n:]
        events += drain(s)
    assert len(events) == 2
    assert isinstance(events[0], bytearray) and events[0] == payload
    assert events[1] == b"after"


@pytest.mark.parametrize(
    ("source", "destination", "slow"),
    [
        (0, 0, False),
        (0, 1, True),  # the source 1 byte behind
        (100, 100 + ALIAS_WINDOW, True),
        (100, 100 + ALIAS_WINDOW + 1, False),
        (1, 0, False),  # ahead
        (PAGE - 1, 0, True),  # 1 behind, across the page's end
        (PAGE - 9, 16, True),  # a reply's payload (25 bytes in) at 16 in its page
    ],
)
def test_aliases_is_a_source_just_behind_its_destination(source, destination, slow) -> None:
    assert aliases(source, destination) is slow


def _large_frame_through(s: FrameSplitter, payload: bytes, first: int) -> list:
    """Feed ``payload``'s frame: its header and ``first`` bytes, then the rest; the events."""
    stream = memoryview(frame(payload))
    events = []
    for part in (stream[: 4 + first], stream[4 + first :]):
        while part:
            target = s.get_buffer()
            n = min(len(target), len(part))
            target[:n] = part[:n]
            s.buffer_updated(n)
            part = part[n:]
            events += drain(s)
    return events


@pytest.mark.parametrize("bad_ones", [1, 3])
def test_a_large_payload_buffer_that_would_alias_with_the_pipe_is_set_aside(monkeypatch, bad_ones) -> None:
    # The frame's header comes with `have` bytes, so the reads fill the payload buffer from
    # `have` on with the stream's bytes from offset 4 + have (908 in a pipe page). Real
    # buffers the allocator placed in and out of the window are handed out in turn: the
    # splitter takes the first that is out of it, or the third whatever it is.
    size, have = 100_000, 5_000
    source = (4 + have) % PAGE
    bad, good, held = [], [], []
    while len(bad) < 3 or not good:
        candidate = uninitialized(size)
        (bad if aliases(source, page_offset(candidate) + have) else good).append(candidate)
        held.append(candidate)
    given = [*bad[:bad_ones], good[0], uninitialized(size)]
    handed = []

    def allocate(n: int) -> bytearray:
        assert n == size
        handed.append(given.pop(0))
        return handed[-1]

    s = FrameSplitter(max_frame_bytes=1 << 20)
    monkeypatch.setattr(_framing, "_payload_buffer", allocate)
    payload = os.urandom(size)
    events = _large_frame_through(s, payload, have)
    assert events == [payload]
    assert events[0] is handed[-1]
    if bad_ones == 1:
        assert handed == [bad[0], good[0]]  # the second, out of the window
    else:
        assert handed == bad[:3]  # the third, as it is


def test_oversized_frame_is_skipped_and_reported_once_with_its_head() -> None:
    s = FrameSplitter(max_frame_bytes=100, head_bytes=8)
    big = bytes(range(256)) * 4
    s.feed(frame(big)[:50])
    assert drain(s) == [Oversized(1024, 100, big[:8])]
    s.feed(frame(big)[50:] + frame(b"next"))
    assert drain(s) == [b"next"]


def test_oversized_head_shorter_than_head_bytes_is_impossible_but_small_limit_works() -> None:
    s = FrameSplitter(max_frame_bytes=1, head_bytes=256)
    s.feed(frame(b"ab") + frame(b"c"))
    assert drain(s) == [Oversized(2, 1, b"ab"), b"c"]


def test_get_buffer_refuses_while_fed_bytes_wait() -> None:
    s = small_splitter()
    s.feed(frame(b"x" * 30) * 3)
    with pytest.raises(RuntimeError):
        s.get_buffer()
    assert len(drain(s)) == 3
    assert len(s.get_buffer()) > 0


def write(splitter: FrameSplitter, data: bytes) -> None:
    """A read of ``data`` into the splitter (the zero-copy pair)."""
    buf = splitter.get_buffer()
    buf[: len(data)] = data
    del buf
    splitter.buffer_updated(len(data))


def test_buffered_frames_are_taken_in_place_with_consume() -> None:
    s = small_splitter(buffer_size=64)
    write(s, frame(b"ab") + frame(b"cde") + frame(b"fg")[:3])
    buf, r, w = s.buffered()
    assert (r, w) == (0, 6 + 7 + 3) and bytes(buf[r + 4 : r + 6]) == b"ab"
    s.consume(r, r + 6)
    assert s.buffered()[1:] == (6, 16)
    s.consume(6, 13)
    assert drain(s) == [] and s.buffered()[1:] == (13, 16)
    with pytest.raises(ValueError):
        s.consume(13, 17)  # beyond what was read
    with pytest.raises(ValueError):
        s.consume(13, 12)
    write(s, frame(b"fg")[3:])
    assert drain(s) == [b"fg"]


def test_consume_refuses_a_stale_view() -> None:
    # A view of the buffer whose start is no longer the splitter's read offset: the bytes
    # were taken meanwhile (or moved to the front): consume refuses it rather than let the
    # reader take them again, or take bytes that moved. (The worker's C lane holds such a
    # view across a call; only the reading thread may change the splitter, see _lane.py.)
    s = small_splitter(buffer_size=64)
    write(s, frame(b"ab") + frame(b"cde"))
    buf, r, w = s.buffered()
    assert s.next_event() == b"ab"  # another reader took the first frame
    with pytest.raises(RuntimeError, match="stale"):
        s.consume(r, r + 6)
    assert s.next_event() == b"cde"
    # Compaction: a partial frame near the end of the buffer moves to the front.
    s = small_splitter(buffer_size=32, large_threshold=12)
    write(s, frame(b"x" * 18) + frame(b"y" * 10)[:6])
    s.consume(0, 22)
    _, r, _ = s.buffered()
    write(s, frame(b"y" * 10)[6:])  # get_buffer() moved the partial frame to offset 0
    assert s.buffered()[1] == 0 != r
    with pytest.raises(RuntimeError, match="stale"):
        s.consume(r, r + 14)
    assert drain(s) == [b"y" * 10]


@pytest.mark.parametrize(
    "kw",
    [
        {"max_frame_bytes": 0},
        {"max_frame_bytes": 10, "head_bytes": 0},
        {"max_frame_bytes": 10, "buffer_size": 16, "large_threshold": 13},
        {"max_frame_bytes": True},
    ],
)
def test_limits_are_validated(kw) -> None:
    with pytest.raises(ValueError):
        FrameSplitter(**kw)


def test_encode_header() -> None:
    assert encode_header(258) == b"\x00\x00\x01\x02"
    with pytest.raises(ValueError):
        encode_header(1 << 32)


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=60), max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
)
def test_any_chunking_gives_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frame(p) for p in payloads)
    s = small_splitter()
    events, pos = [], 0
    for cut in cuts:
        s.feed(data[pos : pos + cut])
        pos += cut
        events += drain(s)
    s.feed(data[pos:])
    events += drain(s)
    assert [bytes(e) if not isinstance(e, Oversized) else e for e in events] == expected(payloads)
