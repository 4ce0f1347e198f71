"""Result marshalling: a call's result becomes the value of its reply (``docs/PROTOCOL.md``,
*Results*).

I/O-free: no threads, no file descriptors. It walks only built-in containers, by exact type,
and reads type names with :func:`~snakeport._guard.type_name` (no user code); the one user
code it can run is a metaclass's ``__hash__`` or ``__eq__`` when it looks a result's type up
in :data:`DATA` (hashing each type by identity instead would double the cost of the walk),
and whatever that raises propagates to the caller, which answers the request with an
error. Plain data travels as data; any other object, and a
container nested deeper than ``max_depth`` or cyclic, becomes a ref term
``{'$snakeport_ref', Session, RefId, Type}`` (``result => auto``), or fails with
``not_encodable`` (``result => value``); ``result => ref`` makes the whole result one ref.
Finding the refs a session already holds and storing the new ones is one atomic step of the
session table (:meth:`~snakeport._sessions.SessionTable.store_result`), which the walk runs
inside: a ref the reply returns cannot be evicted, pruned or released before the reply is
built.
"""

from __future__ import annotations

from typing import Any, Callable

from snakeport._guard import type_name
from snakeport._protocol import REF_TAG, SET_TAG
from snakeport._requests import AUTO, REF
from snakeport._sessions import RefIdOf, Session, SessionTable, StoredResult
from snakeport.errors import RequestError
from snakeport.types import (
    Atom,
    BitBinary,
    ErlMap,
    Export,
    Fun,
    ImproperList,
    LocalTerm,
    Pid,
    Port,
    Reference,
)

__all__ = ["DATA", "marshal", "marshal_batch"]

#: Types that travel as data, exactly (subclasses such as ``Counter`` become refs).
DATA: frozenset[type] = frozenset(
    {
        int,
        float,
        str,
        bytes,
        bytearray,
        bool,
        type(None),
        Atom,
        Pid,
        Port,
        Reference,
        Fun,
        Export,
        BitBinary,
        LocalTerm,
    }
)
_issuperset = DATA.issuperset


def marshal(table: SessionTable, session: Session, result: Any, mode: int, max_depth: int) -> StoredResult:
    """Turn a result into its reply value, storing the refs it needs in the session.

    Args:
        table: The session table.
        session: The call's session.
        result: What the call returned.
        mode: :data:`~snakeport._requests.AUTO`, ``REF`` or ``VALUE``.
        max_depth: Deepest container nesting marshalled as data.

    Returns:
        The table's :class:`~snakeport._sessions.StoredResult`: the value, the new ref ids,
        the evicted ones and the fill warning.

    Raises:
        RequestError: ``not_encodable`` (``result => value`` and an object that cannot
            travel as data), or the errors of ``store_result`` (``max_refs_exceeded``,
            ``session_not_found``).
    """
    if mode == REF:
        sid = session.session_id

        def build(ref_id_of: RefIdOf) -> Any:
            return (REF_TAG, sid, ref_id_of(result), type_name(type(result)))

        return table.store_result(session, build)
    walk = _Walk(session.session_id, mode == AUTO, max_depth)
    if mode != AUTO or type(result) in _CONTAINERS:
        # ``result => value`` never needs the table, and most container results are data
        # all through: walk without the table, and start again inside it at the first
        # object that needs a ref.
        try:
            return StoredResult(walk.convert(result, 0), [], [], None)
        except _NeedsRefs:
            walk = _Walk(session.session_id, True, max_depth)
    return table.store_result(session, lambda ref_id_of: walk.walk(result, ref_id_of))


def marshal_batch(
    table: SessionTable, session: Session, items: list, keep: Any, mode: int, max_depth: int
) -> StoredResult:
    """Turn a stream batch into its reply parts, storing the refs it needs in the session.

    The items are marshalled like a result in ``mode``, except that ``result => ref`` makes
    each item a ref (not the list); ``keep`` (the stream's iterator, when it goes on) is
    stored as a ref in the same atomic step.

    Args:
        table: The session table.
        session: The stream's session.
        items: The items pulled.
        keep: The iterator to keep as a ref, or ``None``.
        mode: :data:`~snakeport._requests.AUTO`, ``REF`` or ``VALUE``.
        max_depth: Deepest container nesting marshalled as data.

    Returns:
        The :class:`~snakeport._sessions.StoredResult` whose value is ``(items, ref_term)``
        (``ref_term`` is ``None`` without ``keep``).

    Raises:
        RequestError: As :func:`marshal`.
    """
    sid = session.session_id
    if mode == REF:

        def build_refs(ref_id_of: RefIdOf) -> Any:
            out = [(REF_TAG, sid, ref_id_of(x), type_name(type(x))) for x in items]
            return out, _ref_term(sid, keep, ref_id_of)

        return table.store_result(session, build_refs)
    walk = _Walk(sid, mode == AUTO, max_depth)
    if keep is None:
        try:
            return StoredResult((walk.convert(items, 0), None), [], [], None)
        except _NeedsRefs:
            walk = _Walk(sid, True, max_depth)

    def build(ref_id_of: RefIdOf) -> Any:
        return walk.walk(items, ref_id_of), _ref_term(sid, keep, ref_id_of)

    return table.store_result(session, build)


def _ref_term(sid: str | bytes, obj: Any, ref_id_of: RefIdOf) -> tuple | None:
    if obj is None:
        return None
    return (REF_TAG, sid, ref_id_of(obj), type_name(type(obj)))


#: Types :class:`_Walk` descends into.
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset, ErlMap, ImproperList})


class _NeedsRefs(Exception):
    """Raised by a walk without the table at the first object that needs a ref."""


class _Walk:
    """One walk over a result: data stays data, other objects become ref terms.

    Without ``ref_id_of`` (outside the table), the first object that needs a ref raises
    :class:`_NeedsRefs`; with it (inside :meth:`SessionTable.store_result`), each object gets
    its ref, once per object however often the result holds it.
    """

    __slots__ = ("sid", "auto", "max_depth", "seen", "path", "ref_id_of")

    def __init__(self, sid: str | bytes, auto: bool, max_depth: int) -> None:
        self.sid = sid
        self.auto = auto
        self.max_depth = max_depth
        self.seen: dict[int, tuple] = {}  # id(obj) -> its ref term (one object, one ref)
        self.path: set[int] = set()  # ids of the containers being walked (cycles)
        self.ref_id_of: Callable[[Any], int] | None = None

    def walk(self, result: Any, ref_id_of: RefIdOf) -> Any:
        """Convert ``result``, giving objects refs with ``ref_id_of`` (the ``build`` of
        :meth:`~snakeport._sessions.SessionTable.store_result`)."""
        self.ref_id_of = ref_id_of
        return self.convert(result, 0)

    def leaf(self, obj: Any, why: str = "") -> tuple:
        """Return the ref term for ``obj``: its existing ref in the session, or a new one."""
        if not self.auto:
            name = type_name(type(obj))
            raise RequestError(
                "not_encodable",
                why or f"the result holds a {name}, which cannot travel as data (result => value)",
                details={"type": name},
            )
        ref_id_of = self.ref_id_of
        if ref_id_of is None:
            raise _NeedsRefs
        key = id(obj)
        ref = self.seen.get(key)
        if ref is None:
            ref = (REF_TAG, self.sid, ref_id_of(obj), type_name(type(obj)))
            self.seen[key] = ref
        return ref

    def convert(self, value: Any, depth: int) -> Any:
        """Return the term for ``value`` at nesting ``depth``."""
        t = type(value)
        if t in DATA:
            return value
        if t is list or t is tuple:
            if depth < self.max_depth and _issuperset(map(type, value)):
                return value
            key = id(value)
            if depth >= self.max_depth or key in self.path:
                return self.leaf(value, "the result is nested too deeply or is cyclic")
            self.path.add(key)
            out = []
            append = out.append
            depth += 1
            for item in value:
                append(self.convert(item, depth))
            self.path.discard(key)
            return out if t is list else tuple(out)
        if t is dict:
            if depth < self.max_depth and _issuperset(map(type, value)) and _issuperset(map(type, value.values())):
                return value
            key = id(value)
            if depth >= self.max_depth or key in self.path:
                return self.leaf(value, "the result is nested too deeply or is cyclic")
            self.path.add(key)
            depth += 1
            pairs = []
            for k, v in value.items():
                pairs.append((self.convert(k, depth), self.convert(v, depth)))
            self.path.discard(key)
            try:
                return dict(pairs)
            except TypeError:  # a converted key is unhashable (e.g. a frozenset key)
                return ErlMap(pairs)
        if t is ErlMap or t is ImproperList:
            if depth >= self.max_depth:
                return self.leaf(value, "the result is nested too deeply")
            depth += 1
            if t is ErlMap:
                return ErlMap([(self.convert(k, depth), self.convert(v, depth)) for k, v in value.items()])
            elements = [self.convert(x, depth) for x in value.elements]
            return ImproperList(elements, self.convert(value.tail, depth))
        if t is set or t is frozenset:
            if depth >= self.max_depth:
                return self.leaf(value, "the result is nested too deeply")
            depth += 1
            out = []
            for item in value:
                out.append(self.convert(item, depth))
            return (SET_TAG, out)
        return self.leaf(value)
