"""The reserved tagged terms of the protocol, both ways (``docs/PROTOCOL.md``, *Values*).

I/O-free: plain terms in and out (no threads, no file descriptors). The only objects of the
user it touches are resolved refs: it moves them into the arguments, and hashes those that
the VM put in a set or a map key (``__hash__`` is the one user code that can run here).

Incoming, the server decodes each frame with a fresh :class:`TagContext` as the codec's
``tagged`` hook: ref terms become :class:`~snakeport._sessions.RefHandle` objects (the
session table checks and resolves them when the request's session is known, in
:meth:`~snakeport._sessions.SessionTable.checkout`); bytes, set, date, time, datetime,
timedelta, decimal, uuid and range terms become their Python values at once
(:mod:`snakeport._stdlib`); blob terms become :class:`~snakeport._blobs.BlobRef` objects
that :meth:`TagContext.bind` points at the bytes after the term. Arrays, pandas frames and
extension values need numpy, pandas or user code: they are checked here and become
:class:`Deferred` objects, which :func:`realize` builds on the thread that runs the call,
just before it (numpy and pandas are imported then, not while reading frames). Once refs
are resolved, :func:`substitute` puts the objects in place of the handles in the
arguments, and :meth:`TagContext.restore` puts the tagged terms back where a value is kept
as the VM sent it (session ``tags``). Outgoing, :func:`encode_default` is the codec's
``default`` hook: an echoed handle is its own ref term again, a set a ``$snakeport_set``
term.
"""

from __future__ import annotations

import sys

from snakeport._guard import type_name
from snakeport import _stdlib, etf, extensions
from snakeport._blobs import BlobRef, bind
from snakeport._jobs import Failure
from snakeport._protocol import (
    ARRAY_TAG,
    ARROW_TAG,
    BLOB_TAG,
    BYTES_TAG,
    DATAFRAME_TAG,
    DATE_TAG,
    DATETIME_TAG,
    DECIMAL_TAG,
    EXT_TAG,
    INDEX_TAG,
    RANGE_TAG,
    REF_TAG,
    SERIES_TAG,
    SET_TAG,
    TIME_TAG,
    TIMEDELTA_TAG,
    UUID_TAG,
)
from snakeport._sessions import RefHandle
from snakeport.errors import EncodeError
from snakeport.types import Atom, ErlMap, ImproperList

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["TagContext", "Deferred", "resolve_tagged", "substitute", "realize", "encode_default"]

# The handles TagContext makes are new objects of one size: the codec charges it to the
# frame's memory budget without looking for the handle among the term's elements.
etf._FRESH_SIZES[RefHandle] = sys.getsizeof(RefHandle("", 1, None, ()))

#: Tags whose terms become Python values at once (the builder gets the whole tuple).
_IMMEDIATE: dict[Atom, Callable[[tuple], Any]] = {
    DATE_TAG: _stdlib.date_from,
    TIME_TAG: _stdlib.time_from,
    DATETIME_TAG: _stdlib.datetime_from,
    TIMEDELTA_TAG: _stdlib.timedelta_from,
    DECIMAL_TAG: _stdlib.decimal_from,
    UUID_TAG: _stdlib.uuid_from,
    RANGE_TAG: _stdlib.range_from,
}


class Deferred:
    """A value the VM sent that is built on the call's thread: an array, a pandas frame or
    an extension value. :func:`realize` calls ``build(*args)`` once the deferred values
    inside ``args`` are built.

    Attributes:
        build: Makes the value.
        args: Its arguments (checked when the term was decoded).
        term: The term as received (for :meth:`TagContext.restore`).
    """

    __slots__ = ("build", "args", "term")

    def __init__(self, build: Callable[..., Any], args: tuple, term: tuple) -> None:
        self.build = build
        self.args = args
        self.term = term

    def __repr__(self) -> str:
        return f"Deferred({self.term[0]})"


class TagContext:
    """The codec's ``tagged`` hook for one frame: collects refs, converts the other terms.

    Call it with each decoded ``('$snakeport_...', ...)`` tuple; it returns the replacement.
    It never raises: a malformed tagged term is remembered in :attr:`error` and the request
    is then rejected with ``bad_request``. It checks the form of ref terms only; whether a
    ref exists and belongs to the request's session is the session table's to say.

    Attributes:
        handles: The :class:`RefHandle` of every ref term in the frame, in order.
        deferred: Whether the frame holds :class:`Deferred` values (arrays, frames, Arrow
            streams, extension values): the call must :func:`realize` its arguments.
        blobs: The :class:`~snakeport._blobs.BlobRef` of every blob term, in order.
        error: Message of the first malformed tagged term, or ``None``.
        originals: ``id(replacement) -> (replacement, tagged tuple)`` of each converted
            term other than refs (``None`` until one is), for :meth:`restore`.
    """

    __slots__ = ("handles", "deferred", "blobs", "error", "originals")

    def __init__(self) -> None:
        self.handles: list[RefHandle] = []
        self.deferred = False
        self.blobs: list[BlobRef] = []
        self.error: str | None = None
        self.originals: dict[int, tuple] | None = None

    def __call__(self, term: tuple) -> Any:
        """Return the replacement for one tagged tuple.

        Args:
            term: A tuple whose first element is an atom starting with ``$snakeport_``.

        Returns:
            A :class:`RefHandle`, ``bytes``, a ``set``, a date or other standard value, a
            :class:`Deferred`, a :class:`~snakeport._blobs.BlobRef`, or the tuple
            unchanged (a tag this protocol does not define).
        """
        tag = term[0]
        n = len(term)
        if tag == REF_TAG:
            if n == 4:
                session, ref_id = term[1], term[2]
                if type(session) in (str, bytes) and type(ref_id) is int and ref_id > 0:
                    handle = RefHandle(session, ref_id, term[3], term)
                    self.handles.append(handle)
                    return handle
            self._fail("expected {'$snakeport_ref', Session, RefId, Type} with a binary session and a positive id")
        elif tag == BYTES_TAG:
            if n == 2:
                value = term[1]
                t = type(value)
                if t is bytes:
                    return self._converted(value, term)
                if t is str:
                    return self._converted(value.encode("utf-8"), term)
            self._fail("expected {'$snakeport_bytes', Binary}")
        elif tag == SET_TAG:
            if n == 2 and type(term[1]) is list:
                try:
                    return self._converted(set(term[1]), term)
                except TypeError as exc:
                    self._fail(f"a $snakeport_set element is not hashable: {exc}")
            else:
                self._fail("expected {'$snakeport_set', List}")
        else:
            build = _IMMEDIATE.get(tag)
            try:
                if build is not None:
                    return self._converted(build(term), term)
                if tag == BLOB_TAG:
                    return self._blob(term)
                deferred = self._deferred(tag, term)
                if deferred is not None:
                    self.deferred = True
                    return self._converted(deferred, term)
            except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
                self._fail(f"invalid {str.__str__(tag)} term: {exc}")
        return term

    def _blob(self, term: tuple) -> BlobRef:
        if len(term) != 3 or any(type(x) is not int or x < 0 for x in term[1:]):
            raise ValueError("expected {'$snakeport_blob', Offset, Size} with non-negative integers")
        ref = BlobRef(term[1], term[2], term)
        self.blobs.append(ref)
        return ref

    @staticmethod
    def _deferred(tag: Atom, term: tuple) -> Deferred | None:
        if tag == ARRAY_TAG:
            from snakeport._arrays import array_spec, build_array

            return Deferred(build_array, (array_spec(term),), term)
        if tag == DATAFRAME_TAG or tag == SERIES_TAG or tag == INDEX_TAG:
            from snakeport import _frames

            size = 3 if tag == INDEX_TAG else 4
            if len(term) != size:
                raise ValueError(f"expected a tuple of {size} elements")
            if tag == DATAFRAME_TAG:
                return Deferred(_frames.build_dataframe, term[1:], term)
            if tag == SERIES_TAG:
                return Deferred(_frames.build_series, term[1:], term)
            return Deferred(_frames.build_index, term[1:], term)
        if tag == ARROW_TAG:
            if len(term) != 2 or type(term[1]) not in (bytes, str, BlobRef):
                raise ValueError("expected {'$snakeport_arrow', Data} with a binary (an Arrow IPC stream)")
            from snakeport._arrow import build_frame

            return Deferred(build_frame, (term[1],), term)
        if tag == EXT_TAG:
            if len(term) != 3 or type(term[1]) is not str:
                raise ValueError("expected {'$snakeport_ext', Name, Payload} with a binary name")
            return Deferred(_decode_extension, term[1:], term)
        return None

    def bind(self, frame: bytes | bytearray, end: int) -> None:
        """Point the frame's blob refs at the bytes after its term (sets :attr:`error`).

        Args:
            frame: The frame.
            end: Where its term ends.
        """
        if self.error is None:
            self.error = bind(self.blobs, frame, end)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def _converted(self, value: Any, term: tuple) -> Any:
        originals = self.originals
        if originals is None:
            originals = self.originals = {}
        originals[id(value)] = (value, term)
        return value

    def restore(self, term: Any) -> Any:
        """Return ``term`` with converted values put back as their tagged tuples.

        For values kept "as is" (session ``tags``); ref handles need nothing (they encode
        as their own term, see :func:`encode_default`). A blob's bytes are put back in its
        array's term.

        Args:
            term: A part of the term decoded with this context.

        Returns:
            The term as the VM sent it.
        """
        originals = self.originals
        if not originals:
            return term
        if term.__class__ is BlobRef:
            return bytes(term.view) if term.view is not None else term.term
        found = originals.get(id(term))
        if found is not None and found[0] is term:
            original = found[1]
            # Tagged terms may hold converted terms (a set's list, an array's blob); a
            # bytes term may hold its own value.
            return tuple([x if x is term else self.restore(x) for x in original])
        t = type(term)
        if t is list:
            return [self.restore(x) for x in term]
        if t is tuple:
            return tuple([self.restore(x) for x in term])
        if t is dict:
            try:
                return {self.restore(k): self.restore(v) for k, v in term.items()}
            except TypeError:  # a restored key is unhashable
                return ErlMap((self.restore(k), self.restore(v)) for k, v in term.items())
        if t is ErlMap:
            return ErlMap((self.restore(k), self.restore(v)) for k, v in term.items())
        if t is ImproperList:
            return ImproperList([self.restore(x) for x in term.elements], self.restore(term.tail))
        return term


def _decode_extension(name: str, payload: Any) -> Any:
    decoder = extensions.decoder_for(name)
    if decoder is None:
        error = LookupError(f"no decoder is registered for the extension {name!r} (snakeport.register_decoder)")
        raise Failure("bad_request", error)
    return decoder(payload)  # user code: what it raises is the call's python_error


def realize(term: Any) -> Any:
    """Build the :class:`Deferred` values of a decoded argument, innermost first.

    Runs on the thread of the call (numpy and pandas are imported here on first use, and
    extension decoders run here).

    Args:
        term: An argument decoded with a :class:`TagContext` whose ``deferred`` is set.

    Returns:
        The argument with each deferred value built.

    Raises:
        snakeport._jobs.Failure: ``import_error`` (numpy or pandas is missing) or
            ``bad_request`` (the value does not fit: a dtype that is not the array's type,
            columns of unequal lengths); whatever an extension decoder raises propagates.
    """
    t = type(term)
    if t is Deferred:
        args = [realize(x) for x in term.args]
        if term.build is _decode_extension:
            return term.build(*args)
        try:
            return term.build(*args)
        except ImportError as exc:
            raise Failure("import_error", exc) from None
        except (ValueError, TypeError, LookupError) as exc:
            raise Failure("bad_request", exc) from None
    if t is list:
        return [realize(x) for x in term]
    if t is tuple:
        return tuple([realize(x) for x in term])
    if t is dict:
        return {realize(k): realize(v) for k, v in term.items()}
    if t is set:
        return {realize(x) for x in term}
    if t is ErlMap:
        return ErlMap((realize(k), realize(v)) for k, v in term.items())
    if t is ImproperList:
        return ImproperList([realize(x) for x in term.elements], realize(term.tail))
    return term


def resolve_tagged(term: Any, hook: Callable[[tuple], Any]) -> Any:
    """Apply a ``tagged`` hook to a plain term, bottom-up, like the decoder does.

    For terms built in Python (tests, or a decoder called without the hook).

    Args:
        term: A term (tuples, lists, dicts and scalars).
        hook: Called for each tuple whose first element is an atom starting with
            ``$snakeport_``; its result replaces the tuple.

    Returns:
        The term with every tagged tuple replaced.
    """
    t = type(term)
    if t is tuple:
        items = tuple(resolve_tagged(x, hook) for x in term)
        if items and type(items[0]) is Atom and items[0].startswith("$snakeport_"):
            return hook(items)
        return items
    if t is list:
        return [resolve_tagged(x, hook) for x in term]
    if t is dict:
        return {resolve_tagged(k, hook): resolve_tagged(v, hook) for k, v in term.items()}
    if t is ErlMap:
        return ErlMap((resolve_tagged(k, hook), resolve_tagged(v, hook)) for k, v in term.items())
    if t is ImproperList:
        return ImproperList([resolve_tagged(x, hook) for x in term.elements], resolve_tagged(term.tail, hook))
    return term


def substitute(term: Any) -> Any:
    """Replace resolved :class:`RefHandle` objects by their objects, in containers too.

    A handle inside a set or used as a dict key makes the object hashed: user code (its
    ``__hash__`` and ``__eq__``) that may raise anything, ``SystemExit`` included, or
    ``TypeError`` for an unhashable object; it propagates, and the dispatcher answers the
    request with ``bad_request``.

    Args:
        term: A decoded argument whose handles the session table resolved.

    Returns:
        The argument with each handle replaced by its object.
    """
    # The container walk is written out here, in realize() and in TagContext.restore()
    # rather than shared: a shared walker doubles the Python frames per nesting level, and
    # arguments nested to the decoder's max_depth must still resolve.
    t = type(term)
    if t is RefHandle:
        return term.obj
    if t is list:
        return [substitute(x) for x in term]
    if t is tuple:
        return tuple([substitute(x) for x in term])
    if t is dict:
        return {substitute(k): substitute(v) for k, v in term.items()}
    if t is set:
        return {substitute(x) for x in term}
    if t is ErlMap:
        return ErlMap((substitute(k), substitute(v)) for k, v in term.items())
    if t is ImproperList:
        return ImproperList([substitute(x) for x in term.elements], substitute(term.tail))
    return term


def encode_default(obj: Any) -> Any:
    """The codec's ``default`` hook for outgoing terms.

    Args:
        obj: An object the codec cannot encode.

    Returns:
        The ref term of a :class:`RefHandle` echoed back (e.g. inside ``tags``), or a
        ``$snakeport_set`` term for a set.

    Raises:
        EncodeError: Anything else.
    """
    t = type(obj)
    if t is RefHandle:
        return obj.term
    if t is set or t is frozenset:
        return (SET_TAG, list(obj))
    raise EncodeError(f"cannot encode an object of type {type_name(t)}", value=obj)
