"""The worker's segmented encoding of large binary replies matches the codec byte for byte."""

import pytest

from snakeport import etf
from snakeport._protocol import OK, REPLY
from snakeport._writer import segmented_reply

IDS = [0, 7, 255, 256, 2**31 - 1, 2**31, 2**64]


@pytest.mark.parametrize("rid", IDS)
@pytest.mark.parametrize("size", [65536, 65537, 1 << 20])
def test_a_large_binary_reply_is_the_codec_bytes_in_separate_buffers(rid, size):
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    term = (REPLY, rid, OK, value)
    parts = tuple(segmented_reply(term))
    assert parts[-1] is value  # the binary itself, not a copy
    assert b"".join(parts) == etf.encode(term)
    assert len(segmented_reply(term)) == len(etf.encode(term))


@pytest.mark.parametrize(
    "value", [b"", b"x" * 65535, bytearray(70000), "x" * 70000, memoryview(b"x" * 70000), 1, None], ids=repr
)
def test_other_values_are_left_to_the_codec(value):
    assert segmented_reply((REPLY, 1, OK, value)) is None
