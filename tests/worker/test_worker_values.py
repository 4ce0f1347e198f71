"""Unit tests of the I/O-free value modules: _stdlib (dates, Decimal, UUID, range both
ways), _blobs, _arrays (the checks of incoming array terms), _convert and extensions
(which conversion applies to a type), and the writer's wait on borrowed buffers."""

from __future__ import annotations

import datetime
import decimal
import os
import threading
import uuid
import zoneinfo

import numpy as np
import pytest

from snakeport import _arrays, _blobs, _convert, _stdlib, extensions
from snakeport._protocol import BLOB_TAG, DATE_TAG, DATETIME_TAG, DECIMAL_TAG
from snakeport._writer import Borrowed, FrameWriter
from snakeport.types import Atom

A = Atom


# ---------------------------------------------------------------- _stdlib


@pytest.mark.parametrize(
    "value",
    [
        datetime.date(1, 1, 1),
        datetime.date(9999, 12, 31),
        datetime.time(0, 0),
        datetime.time(23, 59, 59, 999999),
        datetime.datetime(2024, 2, 29, 12, 0, 0, 1),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=45))),
        datetime.datetime(2024, 3, 31, 3, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        datetime.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=1),
        datetime.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=0),
        datetime.timedelta(0),
        datetime.timedelta(days=-999999999),
        datetime.timedelta(days=999999999, seconds=86399, microseconds=999999),
        decimal.Decimal("0.000"),
        decimal.Decimal("-0E+5"),
        decimal.Decimal("123456789012345678901234567890.5"),
        decimal.Decimal("Infinity"),
        decimal.Decimal("-NaN"),
        decimal.Decimal("sNaN"),
        uuid.UUID(int=0),
        uuid.uuid4(),
        range(0),
        range(-5, 5, 3),
        range(10, 0, -1),
    ],
    ids=repr,
)
def test_stdlib_values_round_trip_exactly(value) -> None:
    term_of = {
        datetime.date: _stdlib.date_term,
        datetime.time: _stdlib.time_term,
        datetime.datetime: _stdlib.datetime_term,
        datetime.timedelta: _stdlib.timedelta_term,
        decimal.Decimal: _stdlib.decimal_term,
        uuid.UUID: _stdlib.uuid_term,
        range: _stdlib.range_term,
    }[type(value)]
    from_term = {
        datetime.date: _stdlib.date_from,
        datetime.time: _stdlib.time_from,
        datetime.datetime: _stdlib.datetime_from,
        datetime.timedelta: _stdlib.timedelta_from,
        decimal.Decimal: _stdlib.decimal_from,
        uuid.UUID: _stdlib.uuid_from,
        range: _stdlib.range_from,
    }[type(value)]
    back = from_term(term_of(value))
    assert type(back) is type(value)
    if type(value) is decimal.Decimal:
        assert str(back) == str(value)
    else:
        assert back == value
    if type(value) is datetime.datetime and value.tzinfo is not None:
        assert back.utcoffset() == value.utcoffset() and back.tzname() == value.tzname()
        assert getattr(back.tzinfo, "key", None) == getattr(value.tzinfo, "key", None)


def test_datetime_zones_are_elixirs_fields() -> None:
    summer = datetime.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("America/New_York"))
    assert _stdlib.datetime_term(summer)[-1] == (-18000, 3600, "America/New_York", "EDT")
    utc = datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC"))
    assert _stdlib.datetime_term(utc)[-1] == (0, 0, "Etc/UTC", "UTC")
    london = datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/London"))
    assert _stdlib.datetime_term(london)[-1] == (0, 0, "Europe/London", "GMT")
    naive = datetime.datetime(2024, 1, 1)
    assert _stdlib.datetime_term(naive) == (DATETIME_TAG, 2024, 1, 1, 0, 0, 0, 0, None)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (datetime.time(1, tzinfo=datetime.timezone.utc), "no Elixir form"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(seconds=1.5))), "whole number"),
        (decimal.Decimal("NaN42"), "payload"),
    ],
)
def test_stdlib_values_without_an_exact_form(value, why) -> None:
    term_of = {
        datetime.time: _stdlib.time_term,
        datetime.datetime: _stdlib.datetime_term,
        decimal.Decimal: _stdlib.decimal_term,
    }[type(value)]
    with pytest.raises(_stdlib.NotData, match=why):
        term_of(value)


@pytest.mark.parametrize(
    ("builder", "term"),
    [
        (_stdlib.date_from, (DATE_TAG, 2024, 2, 30)),
        (_stdlib.date_from, (DATE_TAG, 2024, 2, True)),
        (_stdlib.date_from, (DATE_TAG, 2024, 2, 1.0)),
        (_stdlib.datetime_from, (DATETIME_TAG, 2024, 1, 1, 0, 0, 0, 0, (0, 0, 5, "x"))),
        (_stdlib.datetime_from, (DATETIME_TAG, 2024, 1, 1, 0, 0, 0, 0, (86400, 0, "x", "x"))),
        (_stdlib.decimal_from, (DECIMAL_TAG, 1, -1, 0)),
        (_stdlib.decimal_from, (DECIMAL_TAG, True, 1, 0)),
        (_stdlib.decimal_from, (DECIMAL_TAG, 1, A("NAN"), 0)),
        (_stdlib.uuid_from, (A("$snakeport_uuid"), 5)),
        (_stdlib.range_from, (A("$snakeport_range"), 0, 1)),
    ],
)
def test_malformed_terms_raise_value_errors(builder, term) -> None:
    with pytest.raises((ValueError, OverflowError)):
        builder(term)


def test_a_zone_name_that_is_not_a_plain_key_is_never_looked_up() -> None:
    for name in ["../../etc/passwd", "/etc/localtime", "a" * 100]:
        dt = _stdlib.datetime_from((DATETIME_TAG, 2024, 1, 1, 0, 0, 0, 0, (3600, 0, name, "X")))
        assert type(dt.tzinfo) is datetime.timezone and dt.utcoffset() == datetime.timedelta(hours=1)


# ---------------------------------------------------------------- _arrays (incoming checks)


def test_array_terms_are_checked_without_numpy() -> None:
    ref = _blobs.BlobRef(0, 16, (BLOB_TAG, 0, 16))
    spec = _arrays.array_spec((A("$snakeport_array"), (A("f"), 64), (2,), ref, None))
    assert (spec.kind, spec.bits, spec.shape, spec.data) == ("f", 64, (2,), ref)
    # A binary that was valid UTF-8 (decoded as str) is its bytes again.
    spec = _arrays.array_spec((A("$snakeport_array"), (A("u"), 8), (2,), "ab", "|b1"))
    assert spec.data == b"ab" and spec.dtype == "|b1"
    for term, message in [
        ((A("$snakeport_array"), (A("f"), 64), (2,), b"x" * 15, None), "has 15 bytes"),
        ((A("$snakeport_array"), (A("f"), 8), (1,), b"x", None), "no numpy dtype"),
        ((A("$snakeport_array"), ("f", 64), (1,), b"x" * 8, None), "Type"),
        ((A("$snakeport_array"), (A("f"), 64), (True,), b"x" * 8, None), "Shape"),
        ((A("$snakeport_array"), (A("f"), 64), (1,), 5, None), "Data"),
        ((A("$snakeport_array"), (A("f"), 64), (1,), b"x" * 8, b"<f8"), "Dtype"),
    ]:
        with pytest.raises(ValueError, match=message):
            _arrays.array_spec(term)


def test_built_arrays_are_read_only_views_of_their_bytes() -> None:
    frame = bytearray(b"head" + np.arange(3, dtype="=i4").tobytes())
    ref = _blobs.BlobRef(0, 12, ())
    assert _blobs.bind([ref], frame, 4) is None
    arr = _arrays.build_array(_arrays.array_spec((A("$snakeport_array"), (A("s"), 32), (3,), ref, None)))
    assert arr.tolist() == [0, 1, 2] and not arr.flags.writeable and not arr.flags.owndata
    frame[4] = 9  # the same memory
    assert arr[0] == 9
    big = _arrays.build_array(_arrays.array_spec((A("$snakeport_array"), (A("s"), 32), (1,), b"\x01\0\0\0", ">i4")))
    assert big.dtype.str == ">i4" and big.tolist() == [1]


def test_bind_refuses_blobs_beyond_the_frame() -> None:
    refs = [_blobs.BlobRef(0, 4, ()), _blobs.BlobRef(4, 5, ())]
    assert "does not fit" in _blobs.bind(refs, b"term" + b"12345678", 4)
    assert refs[0].view is None  # nothing bound


def test_encode_with_blobs_puts_the_buffers_after_the_term() -> None:
    from snakeport import etf

    a, b = np.arange(4, dtype=np.uint8), np.arange(3, dtype=np.uint8)
    term = [_blobs.Blob(memoryview(a)), {"k": _blobs.Blob(memoryview(b))}]
    pieces = _blobs.encode_with_blobs(term, etf.encode, lambda obj: 1 / 0)
    assert etf.decode(pieces[0]) == [(BLOB_TAG, 0, 4), {"k": (BLOB_TAG, 4, 3)}]
    assert [bytes(p) for p in pieces[1:]] == [a.tobytes(), b.tobytes()]


# ---------------------------------------------------------------- _convert and extensions


def test_converters_are_found_by_type_from_loaded_modules_only() -> None:
    assert _convert.converter_for(Atom) is None and _convert.converter_for(object) is None
    assert _convert.converter_for(datetime.date) is not None
    assert _convert.converter_for(np.ndarray) is _arrays.array_term
    assert _convert.converter_for(np.float64) is _arrays.scalar_term

    class MyArray(np.ndarray):
        pass

    assert _convert.converter_for(MyArray) is None  # subclasses of ndarray stay refs


def test_registered_encoders_win_and_apply_to_subclasses() -> None:
    class Base:
        pass

    class Child(Base):
        pass

    assert _convert.converter_for(Child) is None
    extensions.register_encoder(Base, lambda obj: "base")
    extensions.register_encoder(datetime.date, lambda d: d.isoformat())
    try:
        assert extensions.encoder_for(Child) is not None
        assert _convert.converter_for(Child) is not None
        walk = type("W", (), {"max_depth": 5, "convert": lambda self, v, d: v})()
        assert _convert.converter_for(datetime.date)(datetime.date(2024, 1, 2), walk, 0) == "2024-01-02"
    finally:
        extensions.register_encoder(Base, None)
        extensions.register_encoder(datetime.date, None)
    assert _convert.converter_for(Child) is None
    assert _convert.converter_for(datetime.date)(datetime.date(2024, 1, 2), None, 0) == (DATE_TAG, 2024, 1, 2)
    with pytest.raises(TypeError):
        extensions.register_encoder("not a type", str)
    with pytest.raises(TypeError):
        extensions.register_decoder(5, str)
    with pytest.raises(TypeError):
        extensions.register_decoder("x", 5)


# ---------------------------------------------------------------- the writer


def test_send_of_borrowed_buffers_returns_once_they_are_written() -> None:
    # Another thread holds the write lock (a long write); a borrowed frame queued meanwhile
    # must not return before it is written, a plain frame may.
    r, w = os.pipe()
    try:
        writer = FrameWriter(w)
        writer._write_lock.acquire()
        returned = threading.Event()
        payload = Borrowed((b"x" * 10,))

        def send() -> None:
            writer.send([payload])
            returned.set()

        thread = threading.Thread(target=send)
        thread.start()
        assert not returned.wait(0.2)  # waiting for the writer, not returned
        writer.send([b"plain"])  # queued: returns at once
        assert not returned.is_set()
        writer._write_lock.release()
        writer.flush()
        assert returned.wait(5)
        thread.join(5)
        data = os.read(r, 100)
        assert data == b"\x00\x00\x00\x0a" + b"x" * 10 + b"\x00\x00\x00\x05plain"
    finally:
        os.close(r)
        os.close(w)
