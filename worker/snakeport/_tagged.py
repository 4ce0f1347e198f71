"""The reserved tagged terms of the protocol, both ways: ``$snakeport_ref``, ``_bytes``, ``_set``.

I/O-free: plain terms in and out (no threads, no file descriptors). The only objects of the
user it touches are resolved refs: it moves them into the arguments, and hashes those that
the VM put in a set or a map key (``__hash__`` is the one user code that can run here).

Incoming, the server decodes each frame with a fresh :class:`TagContext` as the codec's
``tagged`` hook: ref terms become :class:`~snakeport._sessions.RefHandle` objects (the
session table checks and resolves them when the request's session is known, in
:meth:`~snakeport._sessions.SessionTable.checkout`), bytes and set terms become ``bytes`` and
``set``. Once resolved, :func:`substitute` puts the objects in place of the handles in the
arguments, and :meth:`TagContext.restore` puts the tagged terms back where a value is kept
as the VM sent it (session ``tags``). Outgoing, :func:`encode_default` is the codec's
``default`` hook: an echoed handle is its own ref term again, a set a ``$snakeport_set`` term.
"""

from __future__ import annotations

from typing import Any, Callable

from snakeport._guard import type_name
from snakeport._protocol import BYTES_TAG, REF_TAG, SET_TAG
from snakeport._sessions import RefHandle
from snakeport.errors import EncodeError
from snakeport.types import Atom, ErlMap, ImproperList

__all__ = ["TagContext", "resolve_tagged", "substitute", "encode_default"]


class TagContext:
    """The codec's ``tagged`` hook for one frame: collects refs, converts bytes and sets.

    Call it with each decoded ``('$snakeport_...', ...)`` tuple; it returns the replacement.
    It never raises: a malformed tagged term is remembered in :attr:`error` and the request
    is then rejected with ``bad_request``. It checks the form of ref terms only; whether a
    ref exists and belongs to the request's session is the session table's to say.

    Attributes:
        handles: The :class:`RefHandle` of every ref term in the frame, in order.
        error: Message of the first malformed tagged term, or ``None``.
        originals: ``id(replacement) -> (replacement, tagged tuple)`` of each converted
            ``$snakeport_bytes`` and ``$snakeport_set`` term (``None`` until one is), for
            :meth:`restore`.
    """

    __slots__ = ("handles", "error", "originals")

    def __init__(self) -> None:
        self.handles: list[RefHandle] = []
        self.error: str | None = None
        self.originals: dict[int, tuple] | None = None

    def __call__(self, term: tuple) -> Any:
        """Return the replacement for one tagged tuple.

        Args:
            term: A tuple whose first element is an atom starting with ``$snakeport_``.

        Returns:
            A :class:`RefHandle`, ``bytes``, a ``set``, or the tuple unchanged.
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
        return term

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
        """Return ``term`` with converted bytes and sets put back as their tagged tuples.

        For values kept "as is" (session ``tags``); ref handles need nothing (they encode
        as their own term, see :func:`encode_default`).

        Args:
            term: A part of the term decoded with this context.

        Returns:
            The term as the VM sent it.
        """
        originals = self.originals
        if not originals:
            return term
        found = originals.get(id(term))
        if found is not None and found[0] is term:
            tag, inner = found[1]
            # A set's list may hold converted terms; a binary is a leaf.
            return (tag, self.restore(inner)) if tag == SET_TAG else (tag, inner)
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
