"""Helpers of the science tests, called inside the worker (numpy and pandas imported lazily,
so that a worker that never calls them never loads them)."""

from __future__ import annotations

import sys


def loaded(*names):
    """Which of ``names`` are in ``sys.modules``."""
    return [n for n in names if n in sys.modules]


def eval_(source):
    """Evaluate an expression with numpy as ``np``, pandas as ``pd`` and the stdlib types."""
    import datetime
    import decimal
    import uuid
    import zoneinfo

    import numpy as np
    import pandas as pd

    from snakeport import Extension

    env = {
        "np": np,
        "pd": pd,
        "dt": datetime,
        "decimal": decimal,
        "uuid": uuid,
        "zoneinfo": zoneinfo,
        "Extension": Extension,
    }
    return eval(source, env)  # noqa: S307 - test helper


def describe(x):
    """What arrived: for an ndarray, its dtype, shape, flags and values; else type and repr."""
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


def describe_all(*xs):
    return [describe(x) for x in xs]


def same_array(x, source):
    """Whether ``x`` is an ndarray equal to ``eval_(source)``, dtype and shape included."""
    import numpy as np

    expected = eval_(source)
    return (
        type(x) is np.ndarray
        and x.dtype == expected.dtype
        and x.dtype.str == expected.dtype.str
        and x.shape == expected.shape
        and np.array_equal(x, expected, equal_nan=x.dtype.kind in "fc")
    )


def same_value(x, source):
    """Whether ``x`` equals ``eval_(source)`` and has its type (pandas objects: ``equals``)."""
    expected = eval_(source)
    if type(x) is not type(expected):
        return [f"{type(x).__module__}.{type(x).__qualname__}", repr(x)]
    pd = sys.modules["pandas"]
    if isinstance(x, (pd.DataFrame, pd.Series)):
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, expected)
        else:
            pd.testing.assert_series_equal(x, expected)
        return True
    if isinstance(x, pd.Index):
        pd.testing.assert_index_equal(x, expected, exact=True)
        return True
    if type(x).__name__ == "Decimal":
        return str(x) == str(expected) or [str(x), str(expected)]
    if x == expected or (x != x and expected != expected):
        if hasattr(x, "tzinfo") and x.tzinfo is not None:
            return [x.utcoffset() == expected.utcoffset(), str(x.tzinfo), x.fold]
        return True
    return [repr(x), repr(expected)]


class Point:
    """A user type with an encoder and a decoder registered (see ``register``)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


def register():
    """Register Point's encoder and decoder (as a user module would at import)."""
    import snakeport

    snakeport.register_encoder(Point, lambda p: snakeport.Extension("test.Point", [p.x, p.y]))
    snakeport.register_decoder("test.Point", lambda payload: Point(*payload))
    return True


def point(x, y):
    return Point(x, y)


def is_point(p, x, y):
    return p == Point(x, y)


def failing_encoder():
    import snakeport

    class Broken:
        pass

    def encode(obj):
        raise SystemExit("the encoder gave up")

    snakeport.register_encoder(Broken, encode)
    return [1, Broken()]


class Buffer:
    """Keeps an array and changes it in place (for the zero-copy reply race)."""

    def __init__(self, n):
        import numpy as np

        self.arr = np.zeros(n)

    def get(self):
        return self.arr

    def fill(self, value):
        self.arr[:] = value
        return float(self.arr[0])


def every_value():
    """One of every value the worker converts (for the atoms test)."""
    import datetime
    import decimal
    import uuid

    import numpy as np
    import pandas as pd

    from snakeport import Extension

    df = pd.DataFrame({"a": [1, 2], "s": ["x", None]})
    return {
        "arrays": [
            np.arange(3, dtype=np.int8),
            np.arange(3, dtype=np.uint16),
            np.linspace(0, 1, 3),
            np.array([1 + 2j]),
            np.array([True, False]),
            np.zeros(20_000),  # a blob
            np.array(["2024-01-01"], dtype="M8[D]"),
        ],
        "dates": [
            datetime.date(2024, 1, 2),
            datetime.time(3, 4, 5, 6),
            datetime.datetime(2024, 1, 2, 3, 4, 5),
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            datetime.timedelta(seconds=1),
        ],
        "decimals": [decimal.Decimal("1.5"), decimal.Decimal("NaN"), decimal.Decimal("sNaN"), decimal.Decimal("-Inf")],
        "uuid": uuid.UUID(int=1),
        "range": range(3),
        "ext": Extension("x", 1),
        "frame": df,
        "series": df["a"],
        "index": pd.Index([1, 2]),
    }


def call_tool(name, **kwargs):
    """Call the Elixir tool ``name`` with ``kwargs`` and describe its answer."""
    import snakeport

    return describe(snakeport.context().call_elixir_tool(name, **kwargs))
