"""numpy values both ways: arrays as ``$snakeport_array`` terms, scalars as plain values.

numpy is never imported here to send a value (an ndarray exists only once numpy is
loaded): the outgoing functions get the module from ``sys.modules``. Building an array from
a term imports numpy (:func:`numpy_module`), on the thread that runs the call.

The array term is ``{'$snakeport_array', Type, Shape, Data, Dtype}``:

- ``Type`` is ``{Kind, Bits}`` in Nx's notation: ``{s, 8..64}``, ``{u, 8..64}``,
  ``{f, 16 | 32 | 64}``, ``{c, 64 | 128}``;
- ``Shape`` a tuple of non-negative integers (``{}`` for a 0-d array);
- ``Data`` the elements in C order and the machine's native byte order, as a binary, or
  ``{'$snakeport_blob', Offset, Size}`` (:mod:`snakeport._blobs`) when large;
- ``Dtype`` ``nil``, or numpy's ``dtype.str`` when ``Type`` alone would not give the dtype
  back: ``"|b1"`` (bool, as ``{u, 8}``), a non-native byte order (``">f8"``: the data is
  still native), ``"<M8[ns]"``/``"<m8[s]"`` (datetime64/timedelta64, as ``{s, 64}``
  counts of their unit).

So ``Nx.from_binary(data, type) |> Nx.reshape(shape)`` reads any array, and an array sent
back gets its dtype again. Arrays of other dtypes (object, strings, bytes, structured) are
not arrays on the wire: they travel as nested lists of their items (``tolist()``), items
that are not data becoming refs; ``float128``/``complex256`` have no Nx type and travel as
refs.
"""

from __future__ import annotations

import sys

from snakeport._blobs import BLOB_MIN_BYTES, Blob, BlobRef
from snakeport._protocol import ARRAY_TAG, KIND_C, KIND_F, KIND_S, KIND_U, TIMEDELTA_TAG
from snakeport._stdlib import NotData, date_term, datetime_term
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["array_term", "scalar_term", "ArraySpec", "array_spec", "build_array", "numpy_module"]

#: numpy dtype kind -> the Nx kind atom of its arrays (bool travels as {u, 8}).
_NX_KIND = {"b": KIND_U, "i": KIND_S, "u": KIND_U, "f": KIND_F, "c": KIND_C}
#: The itemsizes each numeric kind can travel with.
_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
#: Nx kind -> (numpy kind letter, the bit sizes numpy has).
_FROM_NX = {
    "s": ("i", (8, 16, 32, 64)),
    "u": ("u", (8, 16, 32, 64)),
    "f": ("f", (16, 32, 64)),
    "c": ("c", (64, 128)),
}


def numpy_module() -> Any:
    """Import numpy (for an array that arrived).

    Returns:
        The module.

    Raises:
        ImportError: numpy is not installed in the worker's interpreter.
    """
    np = sys.modules.get("numpy")
    if np is None:
        import numpy as np  # noqa: PLC0415 - imported only when an array arrives
    return np


# ------------------------------------------------------------------- Python -> term


def array_term(arr: Any, walk: Any, depth: int) -> Any:
    """The term of an ``numpy.ndarray``: an array term, or nested lists for other dtypes.

    Args:
        arr: The array (exactly an ``ndarray``).
        walk: The marshalling walk (its ``convert`` turns the items of non-numeric arrays
            into terms, and it records that the term holds a :class:`~snakeport._blobs.Blob`).
        depth: The array's nesting depth in the result.

    Returns:
        The term.

    Raises:
        NotData: ``float128``/``complex256`` and other dtypes without an Nx type.
    """
    np = sys.modules["numpy"]
    dt = arr.dtype
    kind = dt.kind
    dtype_str = None
    if kind in _NX_KIND:
        if dt.itemsize not in _SIZES[kind] or dt.fields is not None or dt.subdtype is not None:
            raise NotData(f"numpy dtype {dt} has no Nx type")
        type_term = (_NX_KIND[kind], dt.itemsize * 8)
        if kind == "b":
            dtype_str = "|b1"
    elif kind in "mM":
        type_term = (KIND_S, 64)
        dtype_str = dt.str
    else:
        # Object, str, bytes and structured arrays: their items, as nested lists.
        return walk.convert(arr.tolist(), depth)
    if not dt.isnative:
        dtype_str = dt.str
        arr = arr.astype(dt.newbyteorder("="))
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    shape = tuple(arr.shape)
    if arr.nbytes >= BLOB_MIN_BYTES:
        data: Any = Blob(memoryview(arr.reshape(-1).view(np.uint8)))
        walk.blobs = True
    else:
        data = arr.tobytes()
    return (ARRAY_TAG, type_term, shape, data, dtype_str)


def scalar_term(x: Any, walk: Any, depth: int) -> Any:
    """The value of a numpy scalar (``np.float64(1.5)`` is ``1.5``).

    Booleans, integers, floats (float16 to float64; NaN and infinities as the codec sends
    them), ``str_`` and ``bytes_`` become the Python values; ``datetime64`` a date or a
    naive datetime (``NaT``: ``None``); ``timedelta64`` a duration; structured (``void``)
    scalars the tuple of their fields.

    Args:
        x: A ``numpy.generic`` instance.
        walk: The marshalling walk.
        depth: Its nesting depth.

    Returns:
        The term.

    Raises:
        NotData: Complex and extended-precision numbers, ``datetime64`` values finer than
            a microsecond or outside years 1-9999, ``timedelta64`` in years or months.
    """
    kind = x.dtype.kind
    if kind == "b":
        return bool(x)
    if kind in "iu":
        return int(x)
    if kind == "f":
        if x.dtype.itemsize > 8:
            raise NotData(f"numpy {x.dtype} has no exact Elixir number")
        return float(x)
    if kind == "U":
        return str(x)
    if kind == "S":
        return bytes(x)
    if kind == "M":
        return _datetime64_term(x)
    if kind == "m":
        return _timedelta64_term(x)
    if kind == "V" and x.dtype.fields is not None:
        return walk.convert(x.item(), depth)
    raise NotData(f"numpy {x.dtype} has no Elixir form")


def _datetime64_term(x: Any) -> Any:
    np = sys.modules["numpy"]
    if np.isnat(x):
        return None
    unit, _ = np.datetime_data(x.dtype)
    if unit in ("Y", "M", "W", "D"):
        value = x.astype("datetime64[D]").item()
        if type(value) is int:
            raise NotData(f"{x} is outside the years 1 to 9999")
        return date_term(value)
    us = x.astype("datetime64[us]")
    if us.astype(x.dtype) != x:
        raise NotData(f"{x} is finer than a microsecond (Elixir's NaiveDateTime holds microseconds)")
    value = us.item()
    if type(value) is int:
        raise NotData(f"{x} is outside the years 1 to 9999")
    return datetime_term(value)


def _timedelta64_term(x: Any) -> Any:
    np = sys.modules["numpy"]
    if np.isnat(x):
        return None
    unit, _ = np.datetime_data(x.dtype)
    if unit in ("Y", "M"):
        raise NotData(f"{x} is in years or months, which have no fixed length")
    us = x.astype("timedelta64[us]")
    if us.astype(x.dtype) != x:
        raise NotData(f"{x} is finer than a microsecond")
    return (TIMEDELTA_TAG, int(us.astype(np.int64)))


# ------------------------------------------------------------------- term -> Python


class ArraySpec:
    """A checked ``$snakeport_array`` term from the VM; :func:`build_array` makes the array.

    Attributes:
        kind: numpy's kind letter (``i``, ``u``, ``f``, ``c``).
        bits: Bits per element.
        shape: The shape.
        data: ``bytes``, or a :class:`~snakeport._blobs.BlobRef` (bound before the build).
        dtype: numpy's ``dtype.str`` to give the array, or ``None``.
        term: The term as received.
    """

    __slots__ = ("kind", "bits", "shape", "data", "dtype", "term")

    def __init__(self, kind: str, bits: int, shape: tuple, data: Any, dtype: str | None, term: tuple) -> None:
        self.kind = kind
        self.bits = bits
        self.shape = shape
        self.data = data
        self.dtype = dtype
        self.term = term


def array_spec(term: tuple) -> ArraySpec:
    """Check a ``{'$snakeport_array', Type, Shape, Data, Dtype}`` term (numpy not needed).

    Args:
        term: The decoded tuple (blob terms already :class:`~snakeport._blobs.BlobRef`).

    Returns:
        The spec.

    Raises:
        ValueError: The term is malformed, its type has no numpy dtype, or the data's length
            is not the shape's element count times the element size.
    """
    if len(term) != 5:
        raise ValueError("expected {'$snakeport_array', Type, Shape, Data, Dtype}")
    _, type_term, shape, data, dtype = term
    if (
        type(type_term) is not tuple
        or len(type_term) != 2
        or type(type_term[0]) is not Atom
        or type(type_term[1]) is not int
    ):
        raise ValueError(f"expected the array's Type to be {{Kind, Bits}}, got: {type_term!r}")
    nx_kind, bits = str.__str__(type_term[0]), type_term[1]
    found = _FROM_NX.get(nx_kind)
    if found is None or bits not in found[1]:
        raise ValueError(f"the array type {{{nx_kind}, {bits}}} has no numpy dtype")
    if type(shape) is not tuple or any(type(n) is not int or n < 0 for n in shape):
        raise ValueError(f"expected the array's Shape to be a tuple of non-negative integers, got: {shape!r}")
    count = 1
    for n in shape:
        count *= n
    expected = count * (bits // 8)
    t = type(data)
    if t is str:
        data = data.encode("utf-8")  # a binary that happened to be valid UTF-8: its bytes again
    elif t is not bytes and t is not BlobRef:
        raise ValueError("expected the array's Data to be a binary or a blob")
    size = data.size if t is BlobRef else len(data)
    if size != expected:
        raise ValueError(f"the array's data has {size} bytes, its shape {shape} and type need {expected}")
    if dtype is not None and type(dtype) is not str:
        raise ValueError(f"expected the array's Dtype to be nil or a binary, got: {dtype!r}")
    return ArraySpec(found[0], bits, shape, data, dtype, term)


def build_array(spec: ArraySpec) -> Any:
    """Make the read-only ndarray of a spec, on its bytes (copied only to change byte order).

    Args:
        spec: A checked spec whose blob is bound.

    Returns:
        The array (``flags.writeable`` is False; ``arr.copy()`` gives a writable one).

    Raises:
        ImportError: numpy is not installed.
        ValueError: ``Dtype`` is not a numpy dtype of the array's type.
    """
    np = numpy_module()
    base = np.dtype(f"{spec.kind}{spec.bits // 8}")
    data = spec.data
    buf = data.view if data.__class__ is BlobRef else data
    arr = np.frombuffer(buf, dtype=base).reshape(spec.shape)
    if spec.dtype is not None:
        try:
            target = np.dtype(spec.dtype)
        except TypeError as exc:
            raise ValueError(f"{spec.dtype!r} is not a numpy dtype: {exc}") from None
        if target.kind == "b" and base.kind == "u" and base.itemsize == 1:
            arr = arr.view(np.bool_)
        elif target.kind in "mM" and base.kind == "i" and base.itemsize == 8 and target.itemsize == 8:
            arr = arr.view(target.newbyteorder("="))
            if not target.isnative:
                arr = arr.astype(target)
        elif target.kind == base.kind and target.itemsize == base.itemsize and target.fields is None:
            if target != base:
                arr = arr.astype(target)
        else:
            raise ValueError(f"the dtype {spec.dtype!r} does not fit the array type {{{_nx(spec)}}}")
    if arr.flags.writeable:
        arr.flags.writeable = False
    return arr


def _nx(spec: ArraySpec) -> str:
    names = {"i": "s", "u": "u", "f": "f", "c": "c"}
    return f"{names[spec.kind]}, {spec.bits}"
