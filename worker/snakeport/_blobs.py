"""Blobs: large array buffers that travel after a frame's term instead of inside it.

I/O-free. A frame may carry, after its term, the raw bytes of *blobs*, which the term refers
to with ``{'$snakeport_blob', Offset, Size}`` (``Offset`` counted from the end of the term;
``docs/PROTOCOL.md``, *Blobs*). Only the data of an array travels that way. Nothing is
copied on either side: the worker writes a large array from its own memory (its buffer is
one ``writev`` buffer, after the encoded term) and the harness takes sub-binaries of the
reply frame; an array the VM sends arrives as a read-only ndarray on the frame's bytes.

Outgoing: the marshalling puts a :class:`Blob` where an array's data goes; the reply term
becomes a :class:`BlobReply`, which :func:`encode_with_blobs` encodes into the term's bytes
followed by the blobs' buffers (one ``writev`` each, never joined).

Incoming: the decoder turns each blob term into a :class:`BlobRef` (``_tagged.TagContext``),
and :func:`bind` points every ref at its bytes once the end of the term is known.
"""

from __future__ import annotations


from snakeport._protocol import BLOB_TAG

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["Blob", "BlobRef", "BlobReply", "BLOB_MIN_BYTES", "encode_with_blobs", "bind"]

#: Arrays whose data is at least this long leave the worker as blobs (smaller ones are
#: copied into the term, which costs less than a buffer of their own).
BLOB_MIN_BYTES = 64 * 1024


class Blob:
    """The data of an outgoing array: a flat byte view of its C-ordered buffer (not copied).

    Attributes:
        view: A 1-D ``memoryview`` of format ``B`` on the array's memory; it keeps the array
            alive until the frame is written.
    """

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return self.view.nbytes

    def __repr__(self) -> str:
        return f"Blob({self.view.nbytes} bytes)"


class BlobReply(tuple):
    """A term whose value holds :class:`Blob` objects: a reply ``(reply, Id, ok, Value)``
    or a ``tool_call`` whose arguments hold large arrays.

    Its frame borrows the buffers of the user's arrays: it is written before the thread
    that built it runs anything else (``_server.Server._execute``, and the writer's
    ``send``, which returns only once such a frame is written).
    """

    __slots__ = ()


def encode_with_blobs(term: Any, encode: Callable[..., bytes], default: Callable[[Any], Any]) -> list:
    """Encode a term that holds :class:`Blob` objects: its bytes, then each blob's buffer.

    Args:
        term: The term.
        encode: ``etf.encode`` (called with ``default=`` a hook that writes the blob terms).
        default: The server's ``default`` hook for every other unknown object.

    Returns:
        The payload's buffers in order: the encoded term, then the blobs' views.
    """
    views: list[memoryview] = []
    offset = 0

    def hook(obj: Any) -> Any:
        nonlocal offset
        if obj.__class__ is Blob:
            view = obj.view
            size = view.nbytes
            views.append(view)
            ref = (BLOB_TAG, offset, size)
            offset += size
            return ref
        return default(obj)

    return [encode(term, default=hook), *views]


class BlobRef:
    """A ``{'$snakeport_blob', Offset, Size}`` term of an incoming frame.

    Attributes:
        offset: Where its bytes start, counted from the end of the term.
        size: How many bytes.
        view: Its bytes (a ``memoryview`` of the frame) once :func:`bind` ran, else ``None``.
        term: The term as received.
    """

    __slots__ = ("offset", "size", "view", "term")

    def __init__(self, offset: int, size: int, term: tuple) -> None:
        self.offset = offset
        self.size = size
        self.view: memoryview | None = None
        self.term = term

    def __repr__(self) -> str:
        return f"BlobRef(offset={self.offset}, size={self.size})"


def bind(refs: list[BlobRef], frame: bytes | bytearray, end: int) -> str | None:
    """Point each blob ref at its bytes: ``frame[end + offset : end + offset + size]``.

    Args:
        refs: The blob refs of the frame's term.
        frame: The whole frame.
        end: Where the term ends in ``frame``.

    Returns:
        ``None``, or the message of the first ref that does not fit in the bytes after the
        term (nothing is bound then).
    """
    tail = len(frame) - end
    for ref in refs:
        if ref.offset + ref.size > tail:
            return (
                f"the blob at offset {ref.offset} of {ref.size} bytes does not fit in the "
                f"{tail} bytes after the term"
            )
    view = memoryview(frame)
    for ref in refs:
        start = end + ref.offset
        ref.view = view[start : start + ref.size]
    return None
