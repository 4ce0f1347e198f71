"""encode's fast path for small flat tuples gives the general encoder's bytes."""

import math

import pytest

from snakeport import etf
from snakeport.types import Atom

SCALARS = [
    0, 1, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**80,
    0.0, -0.0, 1.5, -2.25e300, float("inf"), float("-inf"), float("nan"),
    "", "abc", "é☃", "\ud800", b"", b"\x00\xff", None, True, False,
    Atom("ok"), Atom("reply"), Atom("never_encoded_before_xyz"), Atom("é"),
    [], (), {}, [1], (1,), {1: 2},
]


def general(term):
    out = [b"\x83"]
    etf._encode_into(term, out, None, etf.DEFAULT_MAX_DEPTH)
    return b"".join(out)


def decoded(value):
    """What ``decode(encode(value))`` must give (the mapping of the etf module docstring).

    Non-finite floats travel as the atoms ``infinity``, ``neg_infinity`` and ``nan``, which
    decode to those floats again.
    """
    if type(value) is bytes:
        try:
            return value.decode("utf-8")  # a binary that is valid UTF-8 decodes to str
        except UnicodeDecodeError:
            return value
    if type(value) is tuple:
        return tuple(decoded(x) for x in value)
    if type(value) is list:
        return [decoded(x) for x in value]
    return value


def same(a, b) -> bool:
    """Equal with the same types all the way down (-0.0 is not 0.0, an Atom not a str)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return repr(a) == repr(b)
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return list(a.items()) == list(b.items())
    return a == b


@pytest.mark.parametrize("value", SCALARS, ids=repr)
@pytest.mark.parametrize("shape", ["alone", "reply", "wide"])
def test_flat_tuple_matches_general_encoder(shape, value):
    if shape == "alone":
        term = (value,)
    elif shape == "reply":
        term = (Atom("reply"), 12345, Atom("ok"), value)
    else:
        term = tuple([value] * 255)
    fast = etf._encode_flat_tuple(term)
    try:
        expected = general(term)
    except etf.EncodeError:
        assert fast is None
        return
    assert fast is None or fast == expected
    assert etf.encode(term) == expected
    assert same(etf.decode(expected), decoded(term))


def test_too_wide_or_empty_tuples_take_the_general_path():
    assert etf._encode_flat_tuple(()) is None
    assert etf._encode_flat_tuple(tuple(range(256))) is None
    assert etf.encode(tuple(range(256))) == general(tuple(range(256)))
