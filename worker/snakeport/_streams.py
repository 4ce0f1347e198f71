"""Batches of an iterator, for Elixir streams (``docs/PROTOCOL.md``, *Streams*).

A stream's iterator lives in a session as a ref; the VM pulls it one batch at a time
(``call``/``method`` with the ``batch_size`` option start it, ``iter_next`` continues it,
``iter_close`` ends it early). This module pulls one batch: at most ``count`` items, and
stops early once the items' estimated size reaches ``max_bytes``, so that one batch is one
frame of reasonable size whatever the items are.

No threads, no file descriptors; but pulling runs the iterator's code (a generator's body),
so it runs in a job like any call (:mod:`snakeport._jobs`: cancellable, bounded by the
VM's timeout). The size estimate reads only built-in types (exact types, never user code):
a ``str``/``bytes`` counts its length, a scalar 9 bytes, a container its elements (down to
:data:`ESTIMATE_DEPTH` levels), any other object the size of its ref term.
"""

from __future__ import annotations

from collections import namedtuple
from itertools import islice
from types import GeneratorType

from snakeport.errors import Cancelled
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Iterator

__all__ = ["Batch", "first_batch", "next_batch", "estimate", "close_iterator", "ESTIMATE_DEPTH"]

#: Container levels the size estimate descends into (deeper ones count 9 bytes an element).
ESTIMATE_DEPTH = 3

#: Estimated encoded size of a ref term (``{'$snakeport_ref', Session, Id, Type}``).
_REF_BYTES = 60
#: Estimated encoded size of a scalar (an integer, a float, an atom).
_SCALAR_BYTES = 9
_SCALARS = frozenset({int, float, bool, type(None), Atom})
_TEXTS = frozenset({str, bytes, bytearray})
_CONTAINERS = frozenset({list, tuple, set, frozenset})

#: Items pulled before their size is first looked at (then chunks follow the average size).
_FIRST_CHUNK = 1


class Batch(namedtuple("Batch", "iterator items done error first", defaults=(False,))):
    """One batch pulled from an iterator (what a stream job's code returns; a named tuple).

    Attributes:
        iterator (Any): The iterator, to be kept as the stream's ref when the batch is the
            first one and more may follow; ``None`` otherwise.
        items (list): The items pulled (raw Python objects, marshalled like a result later).
        done (bool): Whether the iterator is exhausted, or failed (``error``).
        error (BaseException | None): The exception the iterator raised after ``items``, or
            ``None``.
        first (bool): Whether it is the stream's first batch (from :func:`first_batch`;
            default ``False``).
    """

    __slots__ = ()


def estimate(obj: Any, depth: int = 0) -> int:
    """Estimate the encoded size of one item, in bytes (never runs user code).

    Args:
        obj: The item.
        depth: How deep it is nested already.

    Returns:
        The estimate.
    """
    t = type(obj)
    if t in _SCALARS:
        return _SCALAR_BYTES
    if t in _TEXTS:
        return len(obj) + 5
    if t in _CONTAINERS or t is dict:
        if depth >= ESTIMATE_DEPTH:
            return 5 + _SCALAR_BYTES * len(obj) * (2 if t is dict else 1)
        depth += 1
        if t is dict:
            return 5 + sum(estimate(k, depth) + estimate(v, depth) for k, v in obj.items())
        return 5 + sum(estimate(x, depth) for x in obj)
    return _REF_BYTES


def _chunk_size(chunk: list) -> int:
    """The estimated size of a chunk of items (fast paths for all-scalar and all-text)."""
    types = set(map(type, chunk))
    if types <= _SCALARS:
        return _SCALAR_BYTES * len(chunk)
    if types <= _TEXTS:
        return sum(map(len, chunk)) + 5 * len(chunk)
    return sum(map(estimate, chunk))


def next_batch(iterator: Iterator, count: int, max_bytes: int) -> Batch:
    """Pull up to ``count`` items, stopping once they are estimated at ``max_bytes``.

    Items are pulled in chunks whose length follows the average item size seen so far, so
    that the batch overshoots ``max_bytes`` by about one item at most. An exception of the
    iterator ends the batch (and the stream): the items before it are kept.

    Args:
        iterator: The iterator (``next`` is called on it).
        count: Most items (positive).
        max_bytes: Byte budget (positive); at least one item is pulled.

    Returns:
        The :class:`Batch` (``iterator`` is ``None``).

    Raises:
        Cancelled: The job was cancelled while the iterator ran (propagates).
    """
    items: list = []
    used = 0
    chunk = min(count, _FIRST_CHUNK)
    try:
        while True:
            start = len(items)
            # list.extend keeps the items pulled before an exception of the iterator.
            items.extend(islice(iterator, chunk))
            if len(items) - start < chunk:
                return Batch(None, items, True, None)
            left = count - len(items)
            if left <= 0:
                return Batch(None, items, False, None)
            used += _chunk_size(items[start:])
            if used >= max_bytes:
                return Batch(None, items, False, None)
            # Pull as many more as the average item size says still fit.
            average = max(used // len(items), 1)
            chunk = max(1, min(left, (max_bytes - used) // average))
    except Exception as exc:  # noqa: BLE001 - the iterator's failure ends the stream
        return Batch(None, items, True, exc)


def first_batch(iterable: Any, count: int, max_bytes: int) -> Batch:
    """``iter(iterable)`` and its first batch (see :func:`next_batch`).

    Args:
        iterable: What a stream's call returned.
        count: Most items.
        max_bytes: Byte budget.

    Returns:
        The batch, with ``iterator`` set when more items may follow.

    Raises:
        TypeError: ``iterable`` is not iterable (the call fails with it).
    """
    iterator = iter(iterable)
    batch = next_batch(iterator, count, max_bytes)
    return batch._replace(first=True) if batch.done else batch._replace(iterator=iterator, first=True)


def close_iterator(obj: Any) -> bool:
    """Close a generator (its ``finally`` blocks run); other objects are left alone.

    Never raises, except ``Cancelled`` (the worker's own, raised on purpose): whatever the
    generator's cleanup raises is dropped, as Python drops it when a generator is garbage
    collected.

    Args:
        obj: An object a session dropped, or a stream's iterator.

    Returns:
        Whether ``obj`` is a generator (and was closed).
    """
    if type(obj) is not GeneratorType:
        return False
    try:
        obj.close()
    except BaseException as exc:  # noqa: BLE001 - "generator already executing", its finally raised
        if isinstance(exc, Cancelled):
            raise
    return True
