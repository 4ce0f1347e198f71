"""The worker's fast encoding of ``{reply, Id, ok, Value}`` matches the codec byte for byte."""

import pytest

from snakeport import etf
from snakeport._dispatch import OK, REPLY
from snakeport._server import encode_ok_reply

VALUES = [
    0, 1, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**70, -(2**70),
    "", "abc", "é☃", "x" * 70000, "\ud800",
    b"", b"\x00\xff", bytes(range(256)) * 300,
    None, True, False,
    1.5, [1, 2], (), {}, ("a", 1),
]
IDS = [0, 7, 255, 256, 2**31 - 1, 2**31, 2**64]


@pytest.mark.parametrize("rid", IDS)
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_fast_reply_encoding_matches_the_codec(rid, value):
    term = (REPLY, rid, OK, value)
    fast = encode_ok_reply(term)
    if fast is not None and type(fast) is not bytes:  # a large binary: separate buffers
        assert len(fast) == sum(len(part) for part in tuple(fast))
        fast = b"".join(tuple(fast))
    try:
        expected = etf.encode(term)
    except Exception:  # noqa: BLE001 - not encodable: the fast path must decline
        assert fast is None
        return
    assert fast is None or fast == expected
