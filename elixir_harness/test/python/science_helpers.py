"""Helpers of the harness's science tests (numpy and pandas are imported on first use)."""

from __future__ import annotations

import sys


def loaded(names):
    """Which of ``names`` are in ``sys.modules``."""
    return [n for n in names if n in sys.modules]


def eval_(source):
    """``eval(source)`` with numpy as ``np``, pandas as ``pd`` and the stdlib types."""
    import datetime
    import decimal
    import uuid
    import zoneinfo

    import numpy as np
    import pandas as pd

    from snakeport import Extension

    env = {"np": np, "pd": pd, "dt": datetime, "decimal": decimal, "uuid": uuid, "zoneinfo": zoneinfo, "Extension": Extension}
    return eval(source, env)  # noqa: S307 - test helper


def native_bytes(source):
    """The bytes of ``eval_(source)`` (an ndarray) in C order and native byte order."""
    import numpy as np

    arr = eval_(source)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="))).tobytes()


def same(x, source):
    """``True`` when ``x`` equals ``eval_(source)`` with its type (arrays: dtype, shape and
    values; pandas objects: pandas' equality); else what differs."""
    import numpy as np
    import pandas as pd

    expected = eval_(source)
    if type(x) is not type(expected):
        return ["type", f"{type(x).__module__}.{type(x).__qualname__}", repr(x)]
    if isinstance(x, np.ndarray):
        ok = x.dtype.str == expected.dtype.str and x.shape == expected.shape
        ok = ok and np.array_equal(x, expected, equal_nan=x.dtype.kind in "fcmM")
        return ok or ["array", x.dtype.str, list(x.shape), repr(x)]
    if isinstance(x, pd.DataFrame):
        pd.testing.assert_frame_equal(x, expected)
        return True
    if isinstance(x, pd.Series):
        pd.testing.assert_series_equal(x, expected)
        return True
    if isinstance(x, pd.Index):
        pd.testing.assert_index_equal(x, expected, exact=True)
        return True
    if type(x).__name__ == "Decimal":
        return str(x) == str(expected) or ["decimal", str(x)]
    if x == expected or (x != x and expected != expected):
        if getattr(x, "tzinfo", None) is not None:
            same_zone = x.utcoffset() == expected.utcoffset() and x.tzname() == expected.tzname()
            return same_zone or ["zone", str(x.tzinfo), x.tzname()]
        return True
    return ["value", repr(x), repr(expected)]


def describe(x):
    """What arrived: an ndarray's dtype, shape, flags and values; else type and repr."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return {
            "type": "ndarray",
            "dtype": x.dtype.str,
            "shape": list(x.shape),
            "writeable": bool(x.flags.writeable),
            "owndata": bool(x.flags.owndata),
            "tolist": x.tolist() if x.dtype.kind not in "mM" else x.astype("int64").tolist(),
        }
    return {"type": f"{type(x).__module__}.{type(x).__qualname__}", "repr": repr(x)}


def identity(x):
    return x


def mean_of(arr):
    """The mean of an ndarray (a numpy float64: comes back as a float)."""
    return arr.mean()


class Point:
    """A user type with an encoder and a decoder (registered by ``register``)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def register():
    import snakeport

    snakeport.register_encoder(Point, lambda p: snakeport.Extension("test.Point", {"x": p.x, "y": p.y}))
    snakeport.register_decoder("test.Point", lambda payload: Point(payload["x"], payload["y"]))
    return True


def point(x, y):
    return Point(x, y)


def is_point(p, x, y):
    return p == Point(x, y)


class ModelHolder:
    """Fits a scikit-learn LinearRegression (y = 2x + 1)."""

    def __init__(self):
        from sklearn.linear_model import LinearRegression

        self.model = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])


def call_tool(name, **kwargs):
    """Call the Elixir tool ``name`` with ``kwargs`` and describe its answer."""
    import snakeport

    return describe(snakeport.context().call_elixir_tool(name, **kwargs))


def call_tool_raw(name, n):
    """Call the Elixir tool ``name`` with ``data=`` a float64 array of ``n`` zeros."""
    import numpy as np
    import snakeport

    return snakeport.context().call_elixir_tool(name, data=np.zeros(n))
