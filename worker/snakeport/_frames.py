"""pandas values both ways: ``DataFrame``, ``Series`` and ``Index`` as column-wise terms.

The rule: numpy is data, pandas is a working object unless you ask for its value. Under
``result => auto`` a DataFrame, Series or Index stays in the worker as a ref (people keep
working on it there); with ``result => value`` it travels as data:

- ``{'$snakeport_dataframe', Columns, Index, Data}``: ``Columns`` the column labels in order
  (duplicates kept), ``Index`` an index term, ``Data`` one column per label;
- ``{'$snakeport_series', Name, Index, Column}``;
- ``{'$snakeport_index', Names, Values}``: ``Names`` one name per level; ``Values`` a
  ``$snakeport_range`` term for a ``RangeIndex``, a column for a flat index, the list of
  label tuples for a ``MultiIndex``.

A column is an array term (:mod:`snakeport._arrays`) when its dtype is a numeric, bool,
datetime64 or timedelta64 numpy dtype (NaN and NaT stay in the data), else the list of its
values (object, string, categorical, nullable and time-zone aware columns), in which every
missing value (``None``, ``NaN``, ``NaT``, ``NA``) is ``nil``. Values that are not data fail
the result with ``not_encodable`` naming their type.

pandas is never imported here to send a value (the outgoing functions get it from
``sys.modules``); building one from a term imports it on the thread that runs the call.
"""

from __future__ import annotations

import sys

from snakeport._arrays import array_term
from snakeport._protocol import DATAFRAME_TAG, INDEX_TAG, RANGE_TAG, SERIES_TAG
from snakeport._stdlib import NotData

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["frame_term", "pandas_module", "build_index", "build_series", "build_dataframe"]

_ARRAY_KINDS = frozenset("biufcmM")


def pandas_module() -> Any:
    """Import pandas (for a frame that arrived).

    Returns:
        The module.

    Raises:
        ImportError: pandas is not installed.
    """
    pd = sys.modules.get("pandas")
    if pd is None:
        import pandas as pd  # noqa: PLC0415 - imported only when a frame arrives
    return pd


# ------------------------------------------------------------------- Python -> term


def frame_term(obj: Any, walk: Any, depth: int) -> Any:
    """The term of a DataFrame, Series or Index (``result => value`` only).

    Args:
        obj: An instance of ``pandas.DataFrame``, ``pandas.Series`` or ``pandas.Index`` (or
            of a subclass, such as ``RangeIndex``).
        walk: The marshalling walk.
        depth: The object's nesting depth in the result.

    Returns:
        The term.

    Raises:
        NotData: Under ``result => auto`` (the object stays a ref), or too deep.
    """
    if walk.auto:
        raise NotData()
    if depth >= walk.max_depth:
        raise NotData("the result is nested too deeply")
    pd = sys.modules["pandas"]
    depth += 1
    if isinstance(obj, pd.DataFrame):
        columns = [walk.convert(label, depth) for label in obj.columns.tolist()]
        data = [_column(obj.iloc[:, i], walk, depth) for i in range(obj.shape[1])]
        return (DATAFRAME_TAG, columns, _index(obj.index, walk, depth, pd), data)
    if isinstance(obj, pd.Series):
        return (SERIES_TAG, walk.convert(obj.name, depth), _index(obj.index, walk, depth, pd), _column(obj, walk, depth))
    return _index(obj, walk, depth, pd)


def _column(values: Any, walk: Any, depth: int) -> Any:
    """A Series or a flat Index as an array term or a list."""
    dtype = values.dtype
    np = sys.modules["numpy"]
    if isinstance(dtype, np.dtype) and dtype.kind in _ARRAY_KINDS:
        return array_term(values.to_numpy(), walk, depth)
    items = values.tolist()
    missing = values.isna()
    missing = missing.to_numpy() if hasattr(missing, "to_numpy") else np.asarray(missing)
    if missing.any():
        items = [None if m else v for v, m in zip(items, missing.tolist())]
    return walk.convert(items, depth)


def _index(index: Any, walk: Any, depth: int, pd: Any) -> tuple:
    names = [walk.convert(name, depth) for name in index.names]
    if type(index) is pd.RangeIndex:
        values: Any = (RANGE_TAG, index.start, index.stop, index.step)
    elif isinstance(index, pd.MultiIndex):
        values = walk.convert(index.tolist(), depth)
    else:
        values = _column(index, walk, depth)
    return (INDEX_TAG, names, values)


# ------------------------------------------------------------------- term -> Python


def build_index(names: Any, values: Any) -> Any:
    """The ``pandas.Index`` of ``{'$snakeport_index', Names, Values}`` (values built).

    Raises:
        ImportError: pandas is not installed. ValueError, TypeError: pandas refuses.
    """
    pd = pandas_module()
    if type(names) is not list or not names:
        raise ValueError("expected the index's Names to be a non-empty list")
    if len(names) > 1:
        return pd.MultiIndex.from_tuples(list(values), names=names)
    if type(values) is range:
        return pd.RangeIndex(values.start, values.stop, values.step, name=names[0])
    return pd.Index(values, name=names[0])


def build_series(name: Any, index: Any, values: Any) -> Any:
    """The ``pandas.Series`` of ``{'$snakeport_series', Name, Index, Column}``.

    Raises:
        ImportError: pandas is not installed. ValueError, TypeError: pandas refuses.
    """
    pd = pandas_module()
    return pd.Series(values, index=index, name=name)


def build_dataframe(columns: Any, index: Any, data: Any) -> Any:
    """The ``pandas.DataFrame`` of ``{'$snakeport_dataframe', Columns, Index, Data}``.

    Raises:
        ImportError: pandas is not installed. ValueError, TypeError: pandas refuses (e.g. the
            columns are not as long as the index).
    """
    pd = pandas_module()
    if type(columns) is not list or type(data) is not list or len(columns) != len(data):
        raise ValueError("expected as many columns as column labels")
    frame = pd.DataFrame(dict(enumerate(data)), index=index)
    frame.columns = pd.Index(columns) if columns else pd.RangeIndex(0)
    return frame
