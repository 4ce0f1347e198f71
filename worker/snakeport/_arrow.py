"""Arrow IPC streams both ways: ``result => arrow`` and ``{'$snakeport_arrow', Data}``.

A table travels as the bytes of one Arrow IPC *stream* (what Explorer's
``load_ipc_stream``/``dump_ipc_stream`` read and write, and what ``pyarrow.ipc.open_stream``
reads) inside the term ``{'$snakeport_arrow', Data}``; ``Data`` is a binary, or a blob term
after the frame's term when it is at least :data:`~snakeport._blobs.BLOB_MIN_BYTES` long
(the stream's buffer is then written as it is, not copied into a ``bytes``).

- Python -> VM (:func:`result_term`, the ``result => arrow`` mode of a call): a
  ``pyarrow.Table`` or ``RecordBatch``, a pandas ``DataFrame`` or ``Series`` (its index kept
  in the schema's pandas metadata), or any object ``pyarrow.table()`` accepts (a polars
  ``DataFrame``, an object with ``__arrow_c_stream__``, a dict of columns).
- VM -> Python (:func:`build_frame`, the deferred build of the tagged term): a pandas
  ``DataFrame`` (``read_pandas``: the index comes back from the metadata when the stream
  was written from pandas).

pyarrow is imported only here, only when such a value is asked for or arrives: the worker
runs without it (``import_error`` then, naming the fix). Not I/O-free only in the sense that
it runs pyarrow (C code on the call's thread); it reads no file descriptor.
"""

from __future__ import annotations


from snakeport._blobs import BLOB_MIN_BYTES, Blob
from snakeport._guard import safe_str, type_name
from snakeport._protocol import ARROW_TAG
from snakeport.errors import RequestError

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["result_term", "build_frame", "pyarrow_module"]


def pyarrow_module() -> Any:
    """Import pyarrow.

    Returns:
        The ``pyarrow`` module.

    Raises:
        ImportError: pyarrow is not installed (the message names the fix).
    """
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401 - the submodule is not always loaded by the package
    except ImportError as exc:
        raise ImportError(
            f"Arrow values need pyarrow in the worker's environment ({exc}); add \"pyarrow\" "
            "to :python_deps (or pip install pyarrow)"
        ) from exc
    return pyarrow


def result_term(obj: Any) -> tuple:
    """The ``{'$snakeport_arrow', Data}`` term of a table-like result.

    Args:
        obj: What a call returned under ``result => arrow``.

    Returns:
        ``(ARROW_TAG, data)``: ``data`` the IPC stream's bytes, or a
        :class:`~snakeport._blobs.Blob` on its buffer when it is large.

    Raises:
        RequestError: ``import_error`` (no pyarrow), or ``not_encodable`` (the object is
            not a table pyarrow can make; the message says why, ``details.type`` names the
            type).
    """
    try:
        pa = pyarrow_module()
    except ImportError as exc:
        raise RequestError("import_error", str(exc)) from None
    try:
        table = _table(pa, obj)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        buffer = sink.getvalue()
    except BaseException as exc:  # noqa: BLE001 - user objects and pyarrow may raise anything
        name = type_name(type(obj))
        raise RequestError(
            "not_encodable",
            f"result => arrow: a {name} cannot be written as an Arrow IPC stream "
            f"({type_name(type(exc))}: {safe_str(exc)})",
            details={"type": name},
        ) from None
    view = memoryview(buffer)
    if view.nbytes >= BLOB_MIN_BYTES:
        return (ARROW_TAG, Blob(view.cast("B")))  # the buffer lives as long as the view
    return (ARROW_TAG, view.tobytes())


def build_frame(data: Any) -> Any:
    """The pandas ``DataFrame`` of an Arrow IPC stream that arrived from the VM.

    Args:
        data: The stream: ``bytes`` (or ``str``, a binary that happened to be UTF-8), or a
            :class:`~snakeport._blobs.BlobRef` of the frame's bytes.

    Returns:
        The ``DataFrame`` (pandas needed; ``read_pandas`` copies what it must, so the frame's
        buffer is not kept).

    Raises:
        ImportError: pyarrow (or pandas) is missing.
        ValueError: ``data`` is not an Arrow IPC stream.
    """
    pa = pyarrow_module()
    t = type(data)
    if t is str:
        data = data.encode("utf-8")
    elif t is not bytes:
        data = data.view  # a BlobRef bound to the frame
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        table = reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from None
    return table.to_pandas()


def _table(pa: Any, obj: Any) -> Any:
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    to_frame = getattr(type(obj), "to_frame", None)
    if to_frame is not None and type(obj).__module__.startswith("pandas"):
        obj = obj.to_frame()  # a Series: one column, named after it
    return pa.table(obj)

