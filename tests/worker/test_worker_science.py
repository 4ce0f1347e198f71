"""numpy, pandas, dates and the other converted values, both ways, through the real worker.

Every test talks to ``python -m snakeport`` over pipes (``sp_client.Worker``) with real numpy
and pandas (the ``science`` extra of setup.cfg): what the worker sends is checked against
what numpy says the bytes are, and what it receives is checked inside the worker
(``sp_science`` helpers). The forms are those of docs/PROTOCOL.md, *Values*.
"""

from __future__ import annotations

import datetime
import decimal
import os
import struct
import sys
import uuid
import zoneinfo

import numpy as np
import pytest
from sp_client import A, BlobBytes, Worker, worker_env

from snakeport import etf

ARRAY = A("$snakeport_array")
BLOB = A("$snakeport_blob")
REF = A("$snakeport_ref")
VALUE = {A("result"): A("value")}
BIG = 64 * 1024  # arrays of at least this many bytes travel as blobs (_blobs.BLOB_MIN_BYTES)


def reason(err: dict) -> str:
    return err[A("reason")]


def py(w: Worker, source: str, opts=None):
    """The reply value of ``eval(source)`` in the worker (numpy as np, pandas as pd)."""
    return w.call("sp_science", "eval_", [source], opts=opts)


def py_error(w: Worker, source: str, opts=None) -> dict:
    return w.error("call", "s1", "sp_science", "eval_", [source], {}, opts or {})


def raw(data) -> bytes:
    """An array's data as received (the client decodes a binary that is valid UTF-8 as str)."""
    return data.encode() if type(data) is str else bytes(data)


def norm(term):
    """A received term with every array's data as bytes (see :func:`raw`)."""
    if type(term) is tuple:
        if len(term) == 5 and term[0] == ARRAY:
            return term[:3] + (raw(term[3]),) + term[4:]
        return tuple(norm(x) for x in term)
    if type(term) is list:
        return [norm(x) for x in term]
    return term


def native(arr: np.ndarray) -> bytes:
    """The bytes an array travels with: C order, native byte order."""
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="))).tobytes()


def array_term(data: bytes, kind: str, bits: int, shape: tuple, dtype=None) -> tuple:
    return (ARRAY, (A(kind), bits), shape, data, dtype)


def send_with_blobs(w: Worker, op: str, *fields, blobs: list[bytes]) -> int:
    """Send ``{Op, Id, *fields}`` followed by the raw bytes of ``blobs``."""
    rid = w.new_id()
    w.send_frame(etf.encode((A(op), rid, *fields)) + b"".join(blobs))
    return rid


# ---------------------------------------------------------------- numpy -> the VM

DTYPES = [
    ("bool", "u", 8, "|b1"),
    ("int8", "s", 8, None),
    ("int16", "s", 16, None),
    ("int32", "s", 32, None),
    ("int64", "s", 64, None),
    ("uint8", "u", 8, None),
    ("uint16", "u", 16, None),
    ("uint32", "u", 32, None),
    ("uint64", "u", 64, None),
    ("float16", "f", 16, None),
    ("float32", "f", 32, None),
    ("float64", "f", 64, None),
    ("complex64", "c", 64, None),
    ("complex128", "c", 128, None),
    (">f8", "f", 64, ">f8"),
    (">i4", "s", 32, ">i4"),
    (">c16", "c", 128, ">c16"),
    ("datetime64[ns]", "s", 64, "<M8[ns]"),
    ("datetime64[D]", "s", 64, "<M8[D]"),
    ("timedelta64[s]", "s", 64, "<m8[s]"),
]

SHAPES = {
    "1-d": "np.arange(12)",
    "2-d": "np.arange(12).reshape(3, 4)",
    "empty": "np.arange(0)",
    "empty 2-d": "np.arange(0).reshape(2, 0)",
    "0-d": "np.array(7)",
    "non-contiguous": "np.arange(24).reshape(4, 6)[::2, 1::2]",
    "fortran": "np.asfortranarray(np.arange(12).reshape(3, 4))",
    "blob": "np.arange(20_000).reshape(100, 200)",
}


@pytest.fixture(scope="module")
def sci() -> Worker:
    w = Worker()
    yield w
    w.kill()


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize(("dtype", "kind", "bits", "dtype_str"), DTYPES, ids=[d[0] for d in DTYPES])
def test_arrays_travel_as_array_terms_and_come_back_with_their_dtype(sci, dtype, kind, bits, dtype_str, shape_name):
    base = SHAPES[shape_name]
    source = f"np.asarray({base} % 2 == 1)" if dtype == "bool" else f"{base}.astype({dtype!r})"
    expected = eval(source, {"np": np})
    term = py(sci, source)
    assert term[0] == ARRAY
    assert term[1] == (A(kind), bits)
    assert term[2] == expected.shape
    assert term[4] == dtype_str
    assert raw(term[3]) == native(expected)
    # Large arrays left the worker as blobs (after the term), small ones inside it.
    assert (type(term[3]) is BlobBytes) == (expected.nbytes >= BIG)
    # Sent back, the term becomes an ndarray of the same dtype, shape and values.
    sent = term if type(term[3]) is not BlobBytes else term[:3] + (bytes(term[3]),) + term[4:]
    assert sci.call("sp_science", "same_array", [sent, source]) is True


def test_nan_and_infinities_stay_in_float_data(sci) -> None:
    term = py(sci, "np.array([np.nan, np.inf, -np.inf, -0.0])")
    assert np.array_equal(np.frombuffer(term[3], "=f8"), [np.nan, np.inf, -np.inf, -0.0], equal_nan=True)
    assert np.signbit(np.frombuffer(term[3], "=f8")[3])


def test_nat_stays_in_datetime_data(sci) -> None:
    term = py(sci, "np.array(['2024-01-02', 'NaT'], dtype='M8[s]')")
    assert term[4] == "<M8[s]"
    assert np.frombuffer(raw(term[3]), "=i8").tolist() == [
        1704153600,
        np.iinfo(np.int64).min,
    ]


def test_other_dtypes_come_back_as_nested_lists(sci) -> None:
    assert py(sci, "np.array([['a', 'bc'], ['d', 'e']])") == [["a", "bc"], ["d", "e"]]
    assert py(sci, "np.array([b'x', b'\\xff'])") == ["x", b"\xff"]
    assert py(sci, "np.array([(1, 2.5)], dtype=[('a', 'i4'), ('b', 'f8')])") == [(1, 2.5)]
    assert py(sci, "np.array([1, 'x', None], dtype=object)") == [1, "x", None]
    # An object array's items that are not data become refs (auto), or fail (value).
    items = py(sci, "np.array([1, zoneinfo.ZoneInfo('UTC')], dtype=object)")
    assert items[0] == 1 and items[1][0] == REF and items[1][3] == "zoneinfo.ZoneInfo"
    err = py_error(sci, "np.array([1, zoneinfo.ZoneInfo('UTC')], dtype=object)", VALUE)
    assert reason(err) == "not_encodable" and err[A("details")][A("type")] == "zoneinfo.ZoneInfo"


def test_arrays_without_an_nx_type_are_refs(sci) -> None:
    for source, dtype in [("np.zeros(2, dtype=np.longdouble)", "float128"), ("np.zeros(2, dtype=np.clongdouble)", "complex256")]:
        ref = py(sci, source)
        assert ref[0] == REF and ref[3] == "numpy.ndarray"
        err = py_error(sci, source, VALUE)
        assert reason(err) == "not_encodable" and dtype in err[A("message")]
        assert err[A("details")][A("type")] == "numpy.ndarray"


def test_ndarray_subclasses_are_refs(sci) -> None:
    assert py(sci, "np.ma.masked_array([1, 2], mask=[0, 1])")[3] == "numpy.ma.MaskedArray"
    assert py(sci, "np.asmatrix([[1, 2]])")[3] == "numpy.matrix"


def test_arrays_inside_containers_and_the_same_array_twice(sci) -> None:
    value = py(sci, "(lambda a: {'a': a, 'again': [a, np.arange(3)]})(np.zeros(BIG_N))".replace("BIG_N", "20000"))
    assert value["a"][0] == ARRAY and value["again"][0][3] == value["a"][3]
    assert type(value["a"][3]) is BlobBytes and type(value["again"][0][3]) is BlobBytes
    assert raw(value["again"][1][3]) == np.arange(3).tobytes()


# ---------------------------------------------------------------- numpy scalars

SCALARS = [
    ("np.float64(1.5)", 1.5),
    ("np.float32(0.25)", 0.25),
    ("np.float16(-2.0)", -2.0),
    ("np.int64(-(2**62))", -(2**62)),
    ("np.uint64(2**64 - 1)", 2**64 - 1),
    ("np.int8(-3)", -3),
    ("np.bool_(True)", True),
    ("np.bool_(False)", False),
    ("np.str_('héllo')", "héllo"),
    ("np.bytes_(b'\\xff\\x00')", b"\xff\x00"),
    ("np.datetime64('2024-01-02')", (A("$snakeport_date"), 2024, 1, 2)),
    ("np.datetime64('2024-03', 'M')", (A("$snakeport_date"), 2024, 3, 1)),
    ("np.datetime64('2024-01-02T03:04:05.123456')", (A("$snakeport_datetime"), 2024, 1, 2, 3, 4, 5, 123456, None)),
    ("np.datetime64('2024-01-02T03:04:05.123456000', 'ns')", (A("$snakeport_datetime"), 2024, 1, 2, 3, 4, 5, 123456, None)),
    ("np.datetime64('NaT')", None),
    ("np.timedelta64(1500, 'ms')", (A("$snakeport_timedelta"), 1_500_000)),
    ("np.timedelta64(-3, 'D')", (A("$snakeport_timedelta"), -3 * 86_400_000_000)),
    ("np.timedelta64('NaT')", None),
    ("[np.float64(1.0), {'k': np.int32(2)}]", [1.0, {"k": 2}]),
]


@pytest.mark.parametrize(("source", "expected"), SCALARS, ids=[s for s, _ in SCALARS])
def test_numpy_scalars_are_the_values_they_are(sci, source, expected) -> None:
    value = py(sci, source)
    assert value == expected and type(value) is type(expected)
    assert py(sci, source, VALUE) == expected


def test_non_finite_numpy_floats_travel_as_the_atoms(sci) -> None:
    inf, neg, nan = py(sci, "[np.float64('inf'), np.float32('-inf'), np.float64('nan')]")
    assert inf == float("inf") and neg == float("-inf") and nan != nan


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("np.complex128(1 + 2j)", "complex128"),
        ("np.longdouble(1)", "float128"),
        ("np.datetime64('2024-01-02T03:04:05.123456789', 'ns')", "finer than a microsecond"),
        ("np.timedelta64(5, 'ns')", "finer than a microsecond"),
        ("np.timedelta64(2, 'Y')", "years or months"),
    ],
)
def test_numpy_scalars_without_an_exact_form_are_refs(sci, source, why) -> None:
    assert py(sci, source)[0] == REF
    err = py_error(sci, source, VALUE)
    assert reason(err) == "not_encodable" and why in err[A("message")], err


# ---------------------------------------------------------------- the VM -> numpy


def test_array_terms_arrive_as_read_only_arrays_on_the_received_bytes(sci) -> None:
    data = np.arange(6, dtype="=f4").tobytes()
    got = sci.call("sp_science", "describe", [array_term(data, "f", 32, (2, 3))])
    assert got["dtype"] == "<f4" and got["shape"] == [2, 3] and got["tolist"] == [[0, 1, 2], [3, 4, 5]]
    assert got["writeable"] is False and got["owndata"] is False
    # 0-d and empty arrays.
    assert sci.call("sp_science", "describe", [array_term(struct.pack("=q", -5), "s", 64, ())])["tolist"] == -5
    empty = sci.call("sp_science", "describe", [array_term(b"", "u", 16, (0, 3))])
    assert empty["shape"] == [0, 3] and empty["tolist"] == []


def test_blob_arrays_arrive_on_the_frame_bytes(sci) -> None:
    big = np.arange(50_000, dtype="=i8")
    small = np.arange(3, dtype="=u1")
    blob = (BLOB, 0, big.nbytes)
    rid = send_with_blobs(sci, "call", "s1", "sp_science", "describe", [array_term(blob, "s", 64, (50_000,))], {}, {}, blobs=[big.tobytes()])
    got = sci.wait(rid)[3]
    assert got["tolist"] == big.tolist() and got["writeable"] is False and got["owndata"] is False
    # Two blobs; the term refers to them by offset, in any order.
    two = [array_term((BLOB, 8, 16), "f", 64, (2,)), array_term((BLOB, 0, 8), "f", 64, (1,)), array_term(small.tobytes(), "u", 8, (3,))]
    rid = send_with_blobs(
        sci, "call", "s1", "sp_science", "describe_all", two, {}, {}, blobs=[struct.pack("=3d", 1.0, 2.0, 3.0)]
    )
    assert [d["tolist"] for d in sci.wait(rid)[3]] == [[2.0, 3.0], [1.0], [0, 1, 2]]


@pytest.mark.parametrize(
    ("term", "message"),
    [
        (array_term(b"\x00" * 7, "f", 64, (1,)), "has 7 bytes"),
        (array_term(b"\x00" * 2, "bf", 16, (1,)), "no numpy dtype"),
        (array_term(b"\x00" * 2, "u", 4, (1,)), "no numpy dtype"),
        (array_term(b"", "f", 64, [0]), "Shape"),
        (array_term(b"", "f", 64, (-1,)), "Shape"),
        ((ARRAY, (A("f"), 64), (0,), b""), "expected"),
        (array_term((BLOB, 0, 100), "u", 8, (100,)), "does not fit"),
        (array_term(b"", "f", 64, (0,), 5), "Dtype"),
    ],
)
def test_malformed_array_terms_are_bad_requests(sci, term, message) -> None:
    err = sci.error("call", "s1", "sp_science", "describe", [term], {}, {})
    assert reason(err) == "bad_request" and message in err[A("message")], err


def test_a_dtype_that_does_not_fit_the_type_is_a_bad_request(sci) -> None:
    err = sci.error("call", "s1", "sp_science", "describe", [array_term(b"\x00" * 8, "f", 64, (1,), "<i4")], {}, {})
    assert reason(err) == "bad_request" and "does not fit" in err[A("message")]
    err = sci.error("call", "s1", "sp_science", "describe", [array_term(b"\x00" * 8, "f", 64, (1,), "nope")], {}, {})
    assert reason(err) == "bad_request"


def test_bytes_after_a_term_without_blobs_are_a_decode_error(sci) -> None:
    rid = sci.new_id()
    sci.send_frame(etf.encode((A("ping"), rid)) + b"junk")
    assert reason(sci.wait(rid)[3]) == "decode_error"
    assert sci.ok("ping") == "pong"


# ---------------------------------------------------------------- zero copy out


def test_a_large_array_reply_is_written_before_the_next_call_changes_it() -> None:
    # The reply of `get` borrows the array's memory (no copy); `fill` changes that memory in
    # place. Both requests arrive in one read: the first reply must carry the zeros.
    w = Worker()
    try:
        buf = w.call("sp_science", "Buffer", [100_000])
        first, second = w.new_id(), w.new_id()
        frames = [
            etf.encode((A("method"), first, "s1", buf, "get", [], {}, {})),
            etf.encode((A("method"), second, "s1", buf, "fill", [1.0], {}, {})),
        ]
        w.send_raw(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
        got = w.wait(first)[3]
        assert type(got[3]) is BlobBytes and not any(got[3])
        assert w.wait(second)[3] == 1.0
        again = w.ok("method", "s1", buf, "get", [], {}, {})
        assert np.frombuffer(again[3], "=f8").tolist() == [1.0] * 100_000
    finally:
        w.kill()


# ---------------------------------------------------------------- pandas


def test_pandas_objects_are_refs_unless_their_value_is_asked_for(sci) -> None:
    for source, name in [
        ("pd.DataFrame([1, 2, 3])", "pandas.DataFrame"),
        ("pd.DataFrame([1, 2, 3]).mean()", "pandas.Series"),
        ("pd.Index([1, 2])", "pandas.Index"),
        ("pd.RangeIndex(3)", "pandas.RangeIndex"),
    ]:
        ref = py(sci, source)
        assert ref[0] == REF and ref[3] == name


def test_the_seed_dataframe_mean_as_a_value(sci) -> None:
    df = sci.call("pandas", "DataFrame", [[1, 2, 3]])
    assert df[0] == REF
    mean = sci.ok("method", "s1", df, "mean", [], {}, VALUE)
    series, name, index, data = mean
    assert series == A("$snakeport_series") and name is None
    assert index == (A("$snakeport_index"), [None], (A("$snakeport_range"), 0, 1, 1))
    assert norm(data) == array_term(struct.pack("=d", 2.0), "f", 64, (1,))


def test_dataframes_travel_column_wise(sci) -> None:
    source = (
        "pd.DataFrame({'i': [1, 2, 3], 'f': [0.5, float('nan'), 2.0], 'b': [True, False, True],"
        " 's': ['x', None, 'z'], 'n': pd.array([1, None, 3], dtype='Int64'),"
        " 't': pd.to_datetime(['2024-01-01', None, '2024-01-03']).as_unit('s'),"
        " 'z': pd.to_datetime(['2024-01-01', None, '2024-07-01']).tz_localize('Europe/Paris'),"
        " 'c': pd.Categorical(['a', 'b', 'a'])}, index=pd.Index([10, 20, 30], name='key'))"
    )
    tag, columns, index, data = norm(py(sci, source, VALUE))
    assert tag == A("$snakeport_dataframe") and columns == ["i", "f", "b", "s", "n", "t", "z", "c"]
    assert index == (A("$snakeport_index"), ["key"], array_term(np.array([10, 20, 30]).tobytes(), "s", 64, (3,)))
    i, f, b, s, n, t, z, c = data
    assert i == array_term(np.array([1, 2, 3]).tobytes(), "s", 64, (3,))
    assert np.array_equal(np.frombuffer(f[3], "=f8"), [0.5, np.nan, 2.0], equal_nan=True)
    assert b == array_term(b"\x01\x00\x01", "u", 8, (3,), "|b1")
    assert s == ["x", None, "z"] and n == [1, None, 3] and c == ["a", "b", "a"]
    assert t[1:3] == ((A("s"), 64), (3,)) and t[4] == "<M8[s]"
    assert np.frombuffer(t[3], "=i8")[1] == np.iinfo(np.int64).min  # NaT
    paris = (A("$snakeport_datetime"), 2024, 1, 1, 0, 0, 0, 0, (3600, 0, "Europe/Paris", "CET"))
    summer = (A("$snakeport_datetime"), 2024, 7, 1, 0, 0, 0, 0, (3600, 3600, "Europe/Paris", "CEST"))
    assert z == [paris, None, summer]


FRAMES = [
    "pd.DataFrame({'a': [1, 2], 'b': [0.5, 1.5]})",
    "pd.DataFrame({'s': ['x', 'y'], 't': pd.to_datetime(['2024-01-01', '2024-01-02'])}, index=pd.Index(['p', 'q'], name='k'))",
    "pd.DataFrame([[1, 2], [3, 4]], columns=['a', 'a'])",
    "pd.DataFrame({'a': [1.0]}, index=pd.MultiIndex.from_tuples([('x', 1)], names=['l', 'n']))",
    "pd.DataFrame({'a': [1, 2, 3]}, index=pd.RangeIndex(10, 16, 2))",
    "pd.DataFrame({'a': np.zeros(20_000), 'b': np.arange(20_000)})",
    "pd.DataFrame(index=pd.RangeIndex(0))",
    "pd.Series([1.5, 2.5], index=['a', 'b'], name='v')",
    "pd.Series(pd.to_datetime(['2024-01-01']).tz_localize('UTC'), name=('multi', 'name'))",
    "pd.Index([1, 2, 3], name='i')",
    "pd.Index(['a', 'b'])",
    "pd.RangeIndex(1, 7, 3, name='r')",
    "pd.MultiIndex.from_tuples([('a', 1), ('b', 2)], names=['x', 'y'])",
]


@pytest.mark.parametrize("source", FRAMES)
def test_pandas_values_round_trip(sci, source) -> None:
    value = py(sci, source, VALUE)
    assert value[0] in (A("$snakeport_dataframe"), A("$snakeport_series"), A("$snakeport_index"))
    value = _unblob(value)
    assert sci.call("sp_science", "same_value", [value, source]) is True


def _unblob(term):
    """A received term as it would be sent back (blob bytes inside the term)."""
    if type(term) is BlobBytes:
        return bytes(term)
    if type(term) is tuple:
        return tuple(_unblob(x) for x in term)
    if type(term) is list:
        return [_unblob(x) for x in term]
    return term


def test_a_value_that_cannot_travel_names_its_type(sci) -> None:
    err = sci.error(
        "call", "s1", "sp_science", "eval_", ["pd.DataFrame({'a': [zoneinfo.ZoneInfo('UTC')]})"], {}, VALUE
    )
    assert reason(err) == "not_encodable" and err[A("details")][A("type")] == "zoneinfo.ZoneInfo"
    err = py_error(sci, "pd.Series([pd.Period('2024-01', 'M')])", VALUE)
    assert err[A("details")][A("type")] == "pandas.Period"


def test_result_value_converts_nested_containers_of_everything(sci) -> None:
    value = py(
        sci,
        "{'frame': pd.DataFrame({'a': [1]}), 'arr': np.arange(2), 'when': dt.date(2024, 1, 2),"
        " 'n': np.int64(3), 'more': [pd.Index([1]), (decimal.Decimal('1.5'),)]}",
        VALUE,
    )
    assert value["frame"][0] == A("$snakeport_dataframe") and value["arr"][0] == ARRAY
    assert value["when"] == (A("$snakeport_date"), 2024, 1, 2) and value["n"] == 3
    assert norm(value["arr"]) == array_term(np.arange(2).tobytes(), "s", 64, (2,))
    assert value["more"][0][0] == A("$snakeport_index")
    assert value["more"][1] == ((A("$snakeport_decimal"), 1, 15, -1),)


# ---------------------------------------------------------------- dates and the stdlib

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
STDLIB = [
    ("dt.date(2024, 2, 29)", (A("$snakeport_date"), 2024, 2, 29)),
    ("dt.date(1, 1, 1)", (A("$snakeport_date"), 1, 1, 1)),
    ("dt.time(23, 59, 59, 999999)", (A("$snakeport_time"), 23, 59, 59, 999999)),
    ("dt.datetime(2024, 1, 2, 3, 4, 5, 6)", (A("$snakeport_datetime"), 2024, 1, 2, 3, 4, 5, 6, None)),
    (
        "dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)",
        (A("$snakeport_datetime"), 2024, 1, 2, 3, 4, 5, 6, (0, 0, "Etc/UTC", "UTC")),
    ),
    (
        "dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30)))",
        (A("$snakeport_datetime"), 2024, 1, 2, 0, 0, 0, 0, (-19800, 0, "UTC-05:30", "UTC-05:30")),
    ),
    (
        "dt.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))",
        (A("$snakeport_datetime"), 2024, 7, 1, 12, 0, 0, 0, (3600, 3600, "Europe/Paris", "CEST")),
    ),
    (
        # The second 02:30 of the autumn change (fold=1): standard time again.
        "dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'), fold=1)",
        (A("$snakeport_datetime"), 2024, 10, 27, 2, 30, 0, 0, (3600, 0, "Europe/Paris", "CET")),
    ),
    ("dt.timedelta(days=-1, microseconds=1)", (A("$snakeport_timedelta"), -86_399_999_999)),
    ("dt.timedelta(days=999999999)", (A("$snakeport_timedelta"), 999999999 * 86_400_000_000)),
    ("decimal.Decimal('1.10')", (A("$snakeport_decimal"), 1, 110, -2)),
    ("decimal.Decimal('-0')", (A("$snakeport_decimal"), -1, 0, 0)),
    ("decimal.Decimal('1E+3')", (A("$snakeport_decimal"), 1, 1, 3)),
    ("decimal.Decimal('-Infinity')", (A("$snakeport_decimal"), -1, A("inf"), 0)),
    ("decimal.Decimal('NaN')", (A("$snakeport_decimal"), 1, A("NaN"), 0)),
    ("decimal.Decimal('-sNaN')", (A("$snakeport_decimal"), -1, A("sNaN"), 0)),
    ("decimal.Decimal('1' + '0' * 39 + '1')", (A("$snakeport_decimal"), 1, 10**40 + 1, 0)),
    ("uuid.UUID(int=2**128 - 1)", (A("$snakeport_uuid"), "ffffffff-ffff-ffff-ffff-ffffffffffff")),
    ("range(5)", (A("$snakeport_range"), 0, 5, 1)),
    ("range(10, -3, -4)", (A("$snakeport_range"), 10, -3, -4)),
    ("pd.Timestamp('2024-01-02 03:04:05.000006')", (A("$snakeport_datetime"), 2024, 1, 2, 3, 4, 5, 6, None)),
    ("pd.Timestamp('2024-01-02', tz='UTC')", (A("$snakeport_datetime"), 2024, 1, 2, 0, 0, 0, 0, (0, 0, "Etc/UTC", "UTC"))),
    ("pd.Timedelta('1s')", (A("$snakeport_timedelta"), 1_000_000)),
    ("[pd.NaT, pd.NA]", [None, None]),
]


@pytest.mark.parametrize(("source", "expected"), STDLIB, ids=[s for s, _ in STDLIB])
def test_stdlib_values_both_ways(sci, source, expected) -> None:
    assert py(sci, source) == expected
    if source.startswith(("pd.", "[pd.")):
        return  # pandas scalars come back as their stdlib types
    assert sci.call("sp_science", "same_value", [expected, source]) in (True, [True, "Europe/Paris", 1], [True, "Europe/Paris", 0], [True, "UTC", 0], [True, "UTC-05:30", 0])


def test_aware_datetimes_keep_their_zone_and_fold(sci) -> None:
    fold = (A("$snakeport_datetime"), 2024, 10, 27, 2, 30, 0, 0, (3600, 0, "Europe/Paris", "CET"))
    assert sci.call("sp_science", "same_value", [fold, "dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'), fold=1)"]) == [True, "Europe/Paris", 1]
    # A zone the tz database does not know, or whose offset does not match: a fixed offset.
    odd = (A("$snakeport_datetime"), 2024, 1, 1, 0, 0, 0, 0, (7200, 0, "Mars/Olympus", "MOT"))
    got = sci.call("sp_science", "describe", [odd])
    assert got["repr"] == repr(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "MOT")))
    wrong = (A("$snakeport_datetime"), 2024, 1, 1, 0, 0, 0, 0, (7200, 0, "Europe/Paris", "XX"))
    assert "tzinfo=datetime.timezone(datetime.timedelta(seconds=7200), 'XX')" in sci.call("sp_science", "describe", [wrong])["repr"]


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("dt.time(1, tzinfo=dt.timezone.utc)", "has no Elixir form"),
        ("dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=5)))", "whole number of seconds"),
        ("decimal.Decimal('NaN123')", "diagnostic payload"),
        ("pd.Timestamp('2024-01-01 00:00:00.000000001')", "finer than a microsecond"),
    ],
)
def test_stdlib_values_without_an_exact_form_are_refs(sci, source, why) -> None:
    assert py(sci, source)[0] == REF
    err = py_error(sci, source, VALUE)
    assert reason(err) == "not_encodable" and why in err[A("message")], err


@pytest.mark.parametrize(
    "term",
    [
        (A("$snakeport_date"), 2024, 13, 1),
        (A("$snakeport_date"), 0, 1, 1),
        (A("$snakeport_date"), 2024, 1),
        (A("$snakeport_time"), 23, 59, 60, 0),
        (A("$snakeport_datetime"), 2024, 1, 1, 0, 0, 0, 0, (1, 2)),
        (A("$snakeport_datetime"), 2024, 1, 1, 0, 0, 0, 0, (86400 * 2, 0, "X", "X")),
        (A("$snakeport_timedelta"), 10**30),
        (A("$snakeport_decimal"), 0, 1, 0),
        (A("$snakeport_decimal"), 1, A("nan"), 0),
        (A("$snakeport_uuid"), "not-a-uuid"),
        (A("$snakeport_range"), 0, 5, 0),
    ],
)
def test_malformed_stdlib_terms_are_bad_requests(sci, term) -> None:
    err = sci.error("call", "s1", "sp_science", "describe", [term], {}, {})
    assert reason(err) == "bad_request", err


def test_the_non_finite_float_atoms_arrive_as_floats(sci) -> None:
    got = sci.call("sp_science", "describe", [[A("nan"), A("infinity"), A("neg_infinity")]])
    assert got["repr"] == "[nan, inf, -inf]"
    assert sci.call("math", "isinf", [A("neg_infinity")]) is True


# ---------------------------------------------------------------- extension points


def test_registered_encoders_and_decoders() -> None:
    w = Worker()
    try:
        # Before the registration, a Point is a ref.
        assert w.call("sp_science", "point", [1, 2])[0] == REF
        assert w.call("sp_science", "register") is True
        ext = w.call("sp_science", "point", [1, 2])
        assert ext == (A("$snakeport_ext"), "test.Point", [1, 2])
        assert w.call("sp_science", "is_point", [ext, 1, 2]) is True
        # Extension values are data anywhere, also under result => value.
        assert w.call("sp_science", "point", [3, 4], opts=VALUE) == (A("$snakeport_ext"), "test.Point", [3, 4])
        err = w.error("call", "s1", "sp_science", "is_point", [(A("$snakeport_ext"), "unknown", 1), 1, 2], {}, {})
        assert reason(err) == "bad_request" and "no decoder is registered for the extension 'unknown'" in err[A("message")]
        err = w.error("call", "s1", "sp_science", "is_point", [(A("$snakeport_ext"), 5, 1), 1, 2], {}, {})
        assert reason(err) == "bad_request"
    finally:
        w.kill()


def test_a_failing_conversion_answers_not_encodable_and_the_worker_goes_on(sci) -> None:
    # An encoder raising SystemExit, a tzinfo raising KeyboardInterrupt: user code run while
    # converting a result, guarded against BaseException.
    err = sci.error("call", "s1", "sp_science", "failing_encoder", [], {}, {})
    assert reason(err) == "not_encodable" and "SystemExit: the encoder gave up" in err[A("message")]
    assert err[A("details")][A("type")].endswith("Broken")
    err = py_error(sci, "dt.datetime(2024, 1, 1, tzinfo=type('Bad', (dt.tzinfo,), {'utcoffset': lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt('no'))})())")
    assert reason(err) == "not_encodable" and "KeyboardInterrupt" in err[A("message")]
    assert sci.call("operator", "add", [1, 2]) == 3


# ---------------------------------------------------------------- the worker stays light


def test_plain_calls_never_load_numpy_pandas_or_pyarrow() -> None:
    w = Worker()
    try:
        assert w.call("operator", "add", [1, 2]) == 3
        assert w.call("sp_testmod", "identity", [[1, 2.5, "x", A("nan"), {"k": [1]}]])[:3] == [1, 2.5, "x"]
        # Dates, decimals, uuids and ranges travel without numpy too.
        for term in [
            (A("$snakeport_date"), 2024, 1, 2),
            (A("$snakeport_decimal"), 1, 15, -1),
            (A("$snakeport_uuid"), str(uuid.UUID(int=7))),
            (A("$snakeport_range"), 0, 3, 1),
        ]:
            assert w.call("sp_testmod", "identity", [term]) == term
        assert w.call("sp_testmod", "Box", [1])[0] == REF
        assert w.call("sp_science", "loaded", ["numpy", "pandas", "pyarrow"]) == []
        # The first array that arrives loads numpy (and nothing more).
        w.call("sp_science", "describe", [array_term(b"\x01", "u", 8, (1,))])
        assert w.call("sp_science", "loaded", ["numpy", "pandas", "pyarrow"]) == ["numpy"]
    finally:
        w.kill()


def test_the_worker_runs_without_numpy(tmp_path) -> None:
    # A numpy that cannot be imported (as on an interpreter without it).
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("raise ImportError('No module named numpy (test)')\n")
    env = worker_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    w = Worker(env=env)
    try:
        assert w.call("operator", "add", [1, 2]) == 3
        assert w.call("sp_testmod", "identity", [(A("$snakeport_date"), 2024, 1, 2)]) == (A("$snakeport_date"), 2024, 1, 2)
        err = w.error("call", "s1", "sp_testmod", "identity", [array_term(b"\x01", "u", 8, (1,))], {}, {})
        assert reason(err) == "import_error" and "numpy" in err[A("message")]
        assert w.call("operator", "add", [1, 2]) == 3
    finally:
        w.kill()


def test_preload_imports_modules_before_the_ready_frame(make_worker) -> None:
    w = make_worker("--preload", "sp_preload", "--preload", "json")
    assert w.call("sp_science", "loaded", ["sp_preload", "json"]) == ["sp_preload", "json"]


def test_a_failing_preload_ends_the_worker_before_ready() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "snakeport", "--preload", "sp_no_such_module"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=worker_env(),
        timeout=60,
    )
    assert proc.returncode == 3 and proc.stdout == b""
    assert b"--preload sp_no_such_module failed" in proc.stderr and b"ModuleNotFoundError" in proc.stderr


# ---------------------------------------------------------------- one of each, on the wire


def test_decimal_and_uuid_round_trip(sci) -> None:
    for value in [decimal.Decimal("3.14159"), decimal.Decimal("-1E-30"), uuid.UUID("12345678-1234-5678-1234-567812345678")]:
        source = f"{type(value).__module__}.{type(value).__name__}({str(value)!r})"
        term = py(sci, source)
        assert sci.call("sp_science", "same_value", [term, source]) is True


# ---------------------------------------------------------------- eval and tool calls


def test_arrays_in_eval_bindings_and_results(sci) -> None:
    data = np.arange(4, dtype="=f8")
    value = sci.ok("eval", "s1", "x * 2", {"x": array_term(data.tobytes(), "f", 64, (4,))}, {})
    assert norm(value) == array_term((data * 2).tobytes(), "f", 64, (4,))


def test_arrays_in_tool_calls_and_tool_replies(worker) -> None:
    # A tool called with a large array gets it as a blob of the tool_call frame; an array in
    # the tool's answer arrives in Python as an ndarray.
    big = np.arange(20_000, dtype="=f8")
    rid = worker.request(
        "call", "s1", "sp_science", "call_tool", ["crunch"], {"data": array_term(big.tobytes(), "f", 64, (20_000,))}, {}
    )
    tag, call_id, request_id, session, name, kwargs = worker.wait_request()
    assert (tag, name) == ("tool_call", "crunch")
    assert kwargs["data"][:3] == (ARRAY, (A("f"), 64), (20_000,)) and type(kwargs["data"][3]) is BlobBytes
    assert bytes(kwargs["data"][3]) == big.tobytes()
    worker.tool_reply(call_id, "ok", array_term(struct.pack("=2q", 7, 8), "s", 64, (2,)))
    assert worker.wait(rid)[3] == {"type": "ndarray", "dtype": "<i8", "shape": [2], "writeable": False, "owndata": False, "tolist": [7, 8]}
