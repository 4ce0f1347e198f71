"""Arrow IPC streams both ways through the real worker, with real pyarrow and pandas.

``result => arrow`` makes a call's table-like result one ``{'$snakeport_arrow', Data}`` term
(the IPC stream's bytes; a blob after the term when large), and such a term passed in arrives
as a pandas ``DataFrame`` (docs/PROTOCOL.md, *Values*). The bytes are checked with pyarrow
in this process, independently of the worker's code.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sp_client import A, BlobBytes, Worker, worker_env

from snakeport import etf

ARROW_TAG = A("$snakeport_arrow")
BLOB = A("$snakeport_blob")
ARROW = {A("result"): A("arrow")}
BIG = 64 * 1024  # streams of at least this many bytes travel as blobs


def stream_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read(term) -> pa.Table:
    assert type(term) is tuple and len(term) == 2 and term[0] == ARROW_TAG, term
    data = term[1]
    raw = data.encode() if type(data) is str else bytes(data)
    return pa.ipc.open_stream(pa.py_buffer(raw)).read_all()


@pytest.fixture(scope="module")
def w() -> Worker:
    worker = Worker()
    yield worker
    worker.kill()


def test_a_dataframe_comes_back_as_an_ipc_stream_with_its_index(w) -> None:
    source = "pd.DataFrame({'a': [1, 2, 3], 'b': [0.5, None, 2.5], 'c': ['x', 'y', None]}, index=[10, 20, 30])"
    term = w.call("sp_science", "eval_", [source], opts=ARROW)
    table = read(term)
    assert table.column_names[:3] == ["a", "b", "c"]
    back = table.to_pandas()
    expected = eval(source, {"pd": pd})
    pd.testing.assert_frame_equal(back, expected)


def test_tables_batches_series_and_dicts_are_tables_too(w) -> None:
    assert read(w.call("sp_science", "eval_", ["__import__('pyarrow').table({'x': [1, 2]})"], opts=ARROW)).to_pydict() == {"x": [1, 2]}
    batch = "__import__('pyarrow').RecordBatch.from_pydict({'x': [1.5]})"
    assert read(w.call("sp_science", "eval_", [batch], opts=ARROW)).to_pydict() == {"x": [1.5]}
    series = read(w.call("sp_science", "eval_", ["pd.Series([1, 2], name='s')"], opts=ARROW))
    assert series.to_pandas()["s"].tolist() == [1, 2]
    assert read(w.call("sp_science", "eval_", ["{'k': [True, False]}"], opts=ARROW)).to_pydict() == {"k": [True, False]}


def test_a_large_stream_leaves_as_a_blob_and_is_the_same_table(w) -> None:
    term = w.call("sp_science", "eval_", ["pd.DataFrame({'v': np.arange(100_000, dtype='float64')})"], opts=ARROW)
    assert type(term[1]) is BlobBytes and len(term[1]) >= BIG
    assert read(term).column("v").to_numpy().tolist() == np.arange(100_000, dtype="float64").tolist()


def test_what_is_not_a_table_is_not_encodable_and_the_worker_goes_on(w) -> None:
    err = w.error("call", "s1", "sp_science", "eval_", ["object()"], {}, ARROW)
    assert err[A("reason")] == "not_encodable"
    assert "builtins.object" in err[A("message")] and err[A("details")][A("type")] == "builtins.object"
    # A scalar is no table either (under result => arrow, data does not pass as it is).
    assert w.error("call", "s1", "operator", "add", [1, 2], {}, ARROW)[A("reason")] == "not_encodable"
    assert w.call("operator", "add", [1, 2]) == 3


def test_an_ipc_stream_passed_in_arrives_as_a_dataframe(w) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["u", "v"]})
    term = (ARROW_TAG, stream_bytes(pa.Table.from_pandas(frame)))
    described = w.call("sp_science", "describe", [term])
    assert described["type"] == "pandas.DataFrame"
    # Round trip: in as a stream, back as a stream of the same table.
    back = w.call("sp_testmod", "identity", [term], opts=ARROW)
    pd.testing.assert_frame_equal(read(back).to_pandas(), frame)


def test_a_large_stream_passed_in_as_a_blob(w) -> None:
    frame = pd.DataFrame({"v": np.arange(50_000, dtype="int64")})
    data = stream_bytes(pa.Table.from_pandas(frame))
    rid = w.new_id()
    w.send_frame(
        etf.encode((A("call"), rid, "s1", "sp_testmod", "identity", [(ARROW_TAG, (BLOB, 0, len(data)))], {}, ARROW)) + data
    )
    reply = w.wait(rid)
    assert reply[2] == A("ok"), reply
    pd.testing.assert_frame_equal(read(reply[3]).to_pandas(), frame)


@pytest.mark.parametrize("data", [b"not arrow", b"", 5])
def test_a_malformed_stream_is_a_bad_request(w, data) -> None:
    err = w.error("call", "s1", "sp_science", "describe", [(ARROW_TAG, data)], {}, {})
    assert err[A("reason")] == "bad_request", err
    assert w.call("operator", "add", [1, 2]) == 3


def test_without_pyarrow_arrow_values_are_an_import_error(tmp_path) -> None:
    (tmp_path / "pyarrow").mkdir()
    (tmp_path / "pyarrow" / "__init__.py").write_text("raise ImportError('No module named pyarrow (test)')\n")
    env = worker_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    worker = Worker(env=env)
    try:
        err = worker.error("call", "s1", "operator", "add", [1, 2], {}, ARROW)
        assert err[A("reason")] == "import_error" and "pyarrow" in err[A("message")], err
        err = worker.error("call", "s1", "sp_testmod", "identity", [(ARROW_TAG, b"x")], {}, {})
        assert err[A("reason")] == "import_error" and "pyarrow" in err[A("message")], err
        assert worker.call("operator", "add", [1, 2]) == 3
    finally:
        worker.kill()


def test_a_stream_of_tables_gives_one_ipc_stream_per_item(w) -> None:
    source = "(pd.DataFrame({'chunk': [i, i]}) for i in range(3))"
    opts = {A("batch_size"): 2, A("result"): A("arrow")}
    first = w.call("sp_science", "eval_", [source], opts=opts)
    assert [read(t).to_pydict() for t in first[A("items")]] == [{"chunk": [0, 0]}, {"chunk": [1, 1]}]
    assert first[A("done")] is False
    rest = w.ok("iter_next", "s1", first[A("ref")], opts)
    assert [read(t).to_pydict() for t in rest[A("items")]] == [{"chunk": [2, 2]}] and rest[A("done")] is True
