"""Guards around what the worker reads from objects it did not make (I/O-free).

Building a reply reads users' objects: an exception's message and traceback, the name of a
result's type, the hash of a ref used as a set element or map key. Each read may run user
code (``__str__``, the ``__bool__`` of a ``str`` subclass that ``__str__`` returned, a
metaclass's ``__module__`` property, ``__hash__``, ``__eq__``), and user code may raise
anything, ``SystemExit`` and ``KeyboardInterrupt`` included: a ``BaseException`` that
escaped would end a loop thread, and with it the worker and every session. So the worker
reads users' objects only through this module, or inside ``try``/``except BaseException``
(the guard of :func:`guarded`) where a request's error reply is built from what was caught:

- :func:`guarded` runs a function that may run user code and returns a default instead of
  any exception;
- :func:`type_name` and :func:`safe_str` read a type's name and an exception's message
  without raising, and return exact ``str`` objects (never a user's ``str`` subclass, whose
  methods are user code too);
- :func:`short` writes a bounded ``repr`` of a decoded term for error messages, at a cost
  bounded by its length, however large the term (a 256 MiB binary, an integer of more than
  4,300 digits, which CPython refuses to convert), and never calls a user's ``__repr__``.

Invariant: no function here raises, and each returns an exact ``str``.
"""

from __future__ import annotations

from itertools import islice

from snakeport.types import Atom, BitBinary, ErlMap, Export, Fun, ImproperList, LocalTerm, Pid, Port, Reference

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")

__all__ = ["guarded", "type_name", "safe_str", "encodable_text", "exact_str", "short"]

# The C getters of type.__module__ and type.__qualname__: a metaclass cannot override them
# (a metaclass property named __module__ is user code; these getters are not).
_type_module = type.__dict__["__module__"].__get__
_type_qualname = type.__dict__["__qualname__"].__get__

#: Shown for a name that cannot be read.
_UNKNOWN = "?"


def guarded(fn: Callable[..., T], *args: Any, default: T) -> T:
    """Return ``fn(*args)``, or ``default`` when it raises anything (``BaseException``).

    For a read of a user's object whose failure only loses detail (a message, a name).

    Args:
        fn: A function that may run user code.
        *args: Its arguments.
        default: What to return instead of an exception.

    Returns:
        The function's result, or ``default``.
    """
    try:
        return fn(*args)
    except BaseException:  # noqa: BLE001 - user code may raise anything, SystemExit included
        return default


def exact_str(value: Any) -> str | None:
    """Return ``value`` as an exact ``str`` when it is a ``str`` (of any subclass), else ``None``.

    Runs no user code: a subclass's own methods are never called (``str.__str__`` copies its
    characters), and the type test looks at the real type, not at ``__class__``.

    Args:
        value: Anything.

    Returns:
        The exact ``str``, or ``None``.
    """
    t = type(value)
    if t is str:
        return value
    if issubclass(t, str):  # a type against the exact str: C's subtype test, no user code
        return str.__str__(value)
    return None


def encodable_text(text: str) -> str:
    """Return ``text`` with lone surrogates escaped (``\\udc80``), so that it travels as UTF-8.

    Args:
        text: An exact ``str``.

    Returns:
        ``text`` itself when it encodes as UTF-8, else its escaped copy.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _qualname(tp: type) -> str:
    try:
        name = _type_qualname(tp)
    except BaseException:  # noqa: BLE001 - a class dict's keys may compare with user code
        return _UNKNOWN
    name = exact_str(name)
    return _UNKNOWN if name is None else name


def type_name(tp: type) -> str:
    """Return ``"module.QualName"`` of a type (the ``Type`` of ref terms and error maps).

    Reads the type's own ``__module__`` and ``__qualname__`` with ``type``'s C getters, so
    a metaclass's ``__module__`` property is not called; a name that is not a ``str`` or
    cannot be read is shown as ``?``. Never raises.

    Args:
        tp: A type.

    Returns:
        The qualified name, e.g. ``"collections.Counter"``.
    """
    try:
        module = _type_module(tp)
    except BaseException:  # noqa: BLE001 - no __module__, or a key's __eq__ raised
        module = None
    if type(module) is not str:
        module = exact_str(module) or _UNKNOWN
    return module + "." + _qualname(tp)


def safe_str(exc: BaseException) -> str:
    """Return an exception's message for an error map; never raises.

    Args:
        exc: The exception (its ``__str__`` may be anyone's code, may fail, and may return a
            ``str`` subclass whose methods fail).

    Returns:
        ``str(exc)`` as an exact, encodable ``str``, or the type's name when that is empty
        or fails.
    """
    try:
        text = exact_str(str(exc))
        if text is not None:
            text = encodable_text(text)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not break the reply
        text = None
    return text or _qualname(type(exc))


# ----------------------------------------------------------------- bounded repr

#: Containers deeper than this are shown as ``...`` by :func:`short`.
_SHORT_DEPTH = 6


class _Full(Exception):
    """The text reached its limit."""


class _Short:
    """Writes pieces of a ``repr`` until ``left`` characters are spent."""

    __slots__ = ("parts", "left")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.left = limit

    def put(self, piece: str) -> None:
        self.parts.append(piece)
        self.left -= len(piece)
        if self.left < 0:
            raise _Full

    def items(self, values: Any, depth: int, sep: str = ", ") -> None:
        first = True
        # Never more items than characters left: the walk ends within the limit.
        for value in islice(values, self.left + 1):
            if not first:
                self.put(sep)
            first = False
            self.term(value, depth)

    def pairs(self, pairs: Any, depth: int, tuples: bool = False) -> None:
        first = True
        for key, value in islice(pairs, self.left + 1):
            if not first:
                self.put(", ")
            first = False
            if tuples:
                self.put("(")
            self.term(key, depth)
            self.put(", " if tuples else ": ")
            self.term(value, depth)
            if tuples:
                self.put(")")

    def term(self, value: Any, depth: int) -> None:
        # Types are compared by identity only: hashing a type (``t in some_set``) would call
        # its metaclass's __hash__, user code.
        t = type(value)
        if t is str or t is bytes or t is bytearray:
            cut = len(value) > self.left
            self.put(repr(value[: self.left + 1] if cut else value) + ("..." if cut else ""))
        elif t is int:
            # A decimal of more than 4,300 digits raises ValueError; any long one is useless.
            if value.bit_length() > 3 * self.left + 64:
                self.put(f"<a {value.bit_length()}-bit integer>")
            else:
                self.put(repr(value))
        elif t is float or t is bool or value is None or t is Atom:
            self.put(repr(value))
        elif t is list or t is tuple or t is set or t is frozenset:
            opening, closing = _BRACKETS[t.__name__]
            if t is tuple and len(value) == 1:
                closing = ",)"
            elif t is set and not value:
                opening, closing = "set(", ")"
            self.put(opening)
            if depth < _SHORT_DEPTH:
                self.items(value, depth + 1)
            elif value:
                self.put("...")
            self.put(closing)
        elif t is dict or t is ErlMap:
            self.put("{" if t is dict else "ErlMap([")
            if depth < _SHORT_DEPTH:
                self.pairs(value.items(), depth + 1, t is ErlMap)
            elif value:
                self.put("...")
            self.put("}" if t is dict else "])")
        elif t is ImproperList:
            self.put("ImproperList([")
            if depth < _SHORT_DEPTH:
                self.items(value.elements, depth + 1)
                self.put("], ")
                self.term(value.tail, depth + 1)
            else:
                self.put("...], ...")
            self.put(")")
        elif t is BitBinary or t is LocalTerm:
            self.put(f"{t.__name__}(<{len(value.raw)} bytes>)")
        elif t is Pid or t is Port or t is Reference or t is Fun or t is Export:
            self.put(guarded(repr, value, default=f"<{t.__name__}>"))  # bounded: atoms, small ints
        else:
            from snakeport._sessions import RefHandle  # (here: _sessions imports this module)

            if t is RefHandle:
                self.term(value.term, depth)  # the ref term the VM sent
            else:  # not a term: never the object's own __repr__ (user code)
                self.put(f"<{type_name(t)}>")


_BRACKETS = {"list": ("[", "]"), "tuple": ("(", ")"), "set": ("{", "}"), "frozenset": ("frozenset({", "})")}


def short(value: Any, limit: int = 200) -> str:
    """Return a ``repr`` of a decoded term cut to about ``limit`` characters, for messages.

    Like ``repr`` for terms (strings, binaries, numbers, atoms, containers, ``ErlMap``,
    ``ImproperList``, opaque terms, ref handles as their ref term); any other object is
    shown as ``<module.Type>``. The cost is bounded by ``limit``, not by the term's size.

    Args:
        value: A decoded term (or anything).
        limit: Longest text returned (plus ``...``).

    Returns:
        The text.
    """
    out = _Short(limit)
    try:
        out.term(value, 0)
    except _Full:
        pass
    except BaseException:  # noqa: BLE001 - never: a defect here must not break a reply
        out.parts.append(f"<{type_name(type(value))}>")
    text = "".join(out.parts)
    return text if len(text) <= limit else text[:limit] + "..."
