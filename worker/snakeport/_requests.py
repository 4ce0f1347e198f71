"""Request validation: the checks of each request field, failing with ``bad_request``.

I/O-free: decoded terms in, validated Python values out (no threads, no file descriptors,
no user code: the values checked here are decoded terms, never the user's objects). Each
checker returns the field as the op handlers use it, or raises
:class:`~snakeport.errors.RequestError` ``bad_request`` with a message in the form
"expected X to be ..., got: ...". The field layouts are those of ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import keyword

from snakeport._guard import short
from snakeport._protocol import (
    A_ARROW,
    A_AUTO,
    A_BATCH_BYTES,
    A_BATCH_SIZE,
    A_MAX_REFS,
    A_OVERFLOW,
    A_REF,
    A_RESULT,
    A_TAGS,
    A_TTL_SECONDS,
    A_VALUE,
    OVERFLOW_POLICIES,
)
from snakeport.errors import RequestError
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "AUTO",
    "REF",
    "VALUE",
    "ARROW",
    "bad",
    "short",
    "arity",
    "session_id",
    "name",
    "args",
    "kwargs",
    "mode",
    "batch",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "session_options",
    "code",
    "bindings",
    "idle_ms",
]

#: Result modes (the ``result`` option of the Python operations).
AUTO, REF, VALUE, ARROW = 0, 1, 2, 3
_MODES = {A_AUTO: AUTO, A_REF: REF, A_VALUE: VALUE, A_ARROW: ARROW}


def bad(message: str) -> RequestError:
    """Return the ``bad_request`` error with ``message`` (for the caller to raise).

    Args:
        message: What was wrong.

    Returns:
        The error.
    """
    return RequestError("bad_request", message)


def arity(term: tuple, n: int) -> None:
    """Check that a request tuple has ``n`` elements.

    Raises:
        RequestError: ``bad_request``.
    """
    if len(term) != n:
        raise bad(f"expected {term[0]} to be a tuple of {n} elements, got {len(term)}")


def session_id(value: Any) -> str | bytes:
    """Check a session id: a binary (``str``, or ``bytes`` when not UTF-8).

    Raises:
        RequestError: ``bad_request``.
    """
    t = type(value)
    if t is str or t is bytes:
        return value
    raise bad(f"expected the session id to be a binary, got: {short(value)}")


def name(value: Any, what: str) -> str:
    """Check a module, function or attribute name: a binary or an atom.

    Args:
        value: The field.
        what: Its name in the message (``Module``, ``Name``, ...).

    Returns:
        The name as ``str``.

    Raises:
        RequestError: ``bad_request``.
    """
    t = type(value)
    if t is str:
        return value
    if t is Atom:
        return str.__str__(value)
    raise bad(f"expected {what} to be a binary or an atom, got: {short(value)}")


def args(value: Any) -> list:
    """Check positional arguments: a list.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(value) is list:
        return value
    raise bad(f"expected Args to be a list, got: {short(value)}")


def kwargs(value: Any) -> dict:
    """Check keyword arguments: a map with binary or atom keys.

    Returns:
        A dict with ``str`` keys.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(value) is not dict:
        raise bad(f"expected Kwargs to be a map, got: {short(value)}")
    if not value:
        return value
    out = {}
    for key, item in value.items():
        t = type(key)
        if t is str:
            out[key] = item
        elif t is Atom:
            out[str.__str__(key)] = item
        else:
            raise bad(f"expected Kwargs keys to be binaries or atoms, got: {short(key)}")
    return out


def mode(opts: Any) -> int:
    """Check the ``Opts`` map of a Python operation and return its result mode.

    Returns:
        :data:`AUTO` (the default), :data:`REF`, :data:`VALUE` or :data:`ARROW`.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(opts) is not dict:
        raise bad(f"expected Opts to be a map, got: {short(opts)}")
    if not opts:
        return AUTO
    found = opts.get(A_RESULT, A_AUTO)
    if type(found) is Atom:
        value = _MODES.get(found)
        if value is not None:
            return value
    raise bad(f"expected result to be auto, ref, value or arrow, got: {short(found)}")


#: ``batch_bytes`` of a stream that does not state it: a batch stops growing once its items
#: are estimated at this many bytes (see :mod:`snakeport._streams`).
DEFAULT_BATCH_BYTES = 1 << 20
#: ``batch_size`` of an ``iter_next`` that does not state it.
DEFAULT_BATCH_SIZE = 1000


def batch(opts: dict) -> tuple[int, int] | None:
    """The stream options of a checked ``Opts`` map (see :func:`mode`): ``batch_size`` and
    ``batch_bytes``.

    Returns:
        ``(batch_size, batch_bytes)`` when ``batch_size`` is given (the call starts a
        stream), else ``None``.

    Raises:
        RequestError: ``bad_request`` (not positive integers).
    """
    if not opts or A_BATCH_SIZE not in opts:
        return None
    count = opts[A_BATCH_SIZE]
    size = opts.get(A_BATCH_BYTES, DEFAULT_BATCH_BYTES)
    for key, value in ((A_BATCH_SIZE, count), (A_BATCH_BYTES, size)):
        if type(value) is not int or value < 1:
            raise bad(f"expected {key} to be a positive integer, got: {short(value)}")
    return count, size


def session_options(opts: Any, restore: Callable[[Any], Any]) -> dict[str, Any]:
    """Check the ``SessionOpts`` map of ``open_session``; return the session table's keywords.

    Only the form is checked here; the values of ``max_refs`` and ``ttl_seconds`` are checked
    by the session table (the rules of :mod:`snakeport._limits`). Unknown keys are ignored.

    Args:
        opts: The map.
        restore: Puts converted tagged terms back in ``tags`` (``TagContext.restore``).

    Returns:
        ``max_refs``, ``ttl_seconds``, ``tags`` and ``overflow`` as far as they were given.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(opts) is not dict:
        raise bad(f"expected SessionOpts to be a map, got: {short(opts)}")
    kw: dict[str, Any] = {}
    for key, value in opts.items():
        if key == A_MAX_REFS:
            kw["max_refs"] = value
        elif key == A_TTL_SECONDS:
            kw["ttl_seconds"] = value
        elif key == A_TAGS:
            kw["tags"] = restore(value)
        elif key == A_OVERFLOW:
            policy = OVERFLOW_POLICIES.get(value) if type(value) is Atom else None
            if policy is None:
                raise bad(f"expected overflow to be error or evict_lru, got: {short(value)}")
            kw["overflow"] = policy
    return kw


def code(value: Any) -> str:
    """Check the Python source of ``eval``: a UTF-8 binary.

    Returns:
        The source.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(value) is str:
        return value
    raise bad(f"expected Code to be a UTF-8 binary, got: {short(value)}")


def bindings(value: Any) -> dict[str, Any]:
    """Check the ``Bindings`` of ``eval``: a map from variable names to values.

    Returns:
        A dict with ``str`` keys, each a Python identifier that is not a keyword.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(value) is not dict:
        raise bad(f"expected Bindings to be a map, got: {short(value)}")
    if not value:
        return value
    out = {}
    for key, item in value.items():
        t = type(key)
        name_ = key if t is str else str.__str__(key) if t is Atom else None
        if name_ is None or not name_.isidentifier() or keyword.iskeyword(name_):
            raise bad(f"expected Bindings keys to be Python variable names, got: {short(key)}")
        out[name_] = item
    return out


def idle_ms(value: Any) -> int:
    """Check the ``IdleMs`` of ``expire_session``: a non-negative integer.

    Raises:
        RequestError: ``bad_request``.
    """
    if type(value) is int and value >= 0:
        return value
    raise bad(f"expected IdleMs to be a non-negative integer, got: {short(value)}")
