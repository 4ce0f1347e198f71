"""Result marshalling: a call's result becomes the value of its reply (``docs/PROTOCOL.md``,
*Results*).

I/O-free: no threads, no file descriptors. Plain data travels as data; objects of known
types (dates, ``Decimal``, numpy arrays and scalars, pandas objects under ``result =>
value``, types with a registered encoder: :mod:`snakeport._convert`) are converted to their
terms; any other object, and a container nested deeper than ``max_depth`` or cyclic,
becomes a ref term ``{'$snakeport_ref', Session, RefId, Type}`` (``result => auto``), or
fails with ``not_encodable`` (``result => value``); ``result => ref`` makes the whole result
one ref.

The conversion reads user objects (numpy and pandas attributes, iteration, encoders): it
runs outside the session table's lock, and any exception it raises (``BaseException``
included) fails the result with ``not_encodable``. Finding the refs a session already holds
and storing the new ones is one atomic step of the session table
(:meth:`~snakeport._sessions.SessionTable.store_result`), which only puts the ref terms in
place: a ref the reply returns cannot be evicted, pruned or released before the reply is
built.
"""

from __future__ import annotations

from snakeport._blobs import Blob
from snakeport._convert import NotData, converter_for
from snakeport._guard import safe_str, type_name
from snakeport._protocol import REF_TAG, SET_TAG
from snakeport._requests import ARROW, AUTO, REF
from snakeport._sessions import Session, SessionTable, StoredResult
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

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from snakeport._sessions import RefIdOf

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

    The walk runs outside the table's lock (it may read numpy and pandas objects, and run
    registered encoders); each object that needs a ref gets a :class:`_Slot`, and only the
    slots are given their refs inside :meth:`~snakeport._sessions.SessionTable.store_result`
    (the one atomic step), where the containers holding them are rebuilt.

    Args:
        table: The session table.
        session: The call's session.
        result: What the call returned.
        mode: :data:`~snakeport._requests.AUTO`, ``REF``, ``VALUE`` or ``ARROW`` (the
            result as an Arrow IPC stream, see :mod:`snakeport._arrow`).
        max_depth: Deepest container nesting marshalled as data.

    Returns:
        The table's :class:`~snakeport._sessions.StoredResult`: the value, the new ref ids,
        the evicted ones and the fill warning (``blobs`` is True when the value holds
        :class:`~snakeport._blobs.Blob` objects).

    Raises:
        RequestError: ``not_encodable`` (``result => value`` and an object that cannot
            travel as data, or a conversion that raised: the message says what and
            ``details.type`` names the type), or the errors of ``store_result``
            (``max_refs_exceeded``, ``session_not_found``).
    """
    if mode == ARROW:
        from snakeport._arrow import result_term  # (pyarrow's results only: imported then)

        term = result_term(result)
        return StoredResult(term, [], [], None, type(term[1]) is Blob)
    if mode == REF:
        sid = session.session_id

        def build(ref_id_of: RefIdOf) -> Any:
            return (REF_TAG, sid, ref_id_of(result), type_name(type(result)))

        return table.store_result(session, build)
    walk = _Walk(session.session_id, mode == AUTO, max_depth)
    if mode == AUTO:
        # The most common result that is not data, one object that gets a ref (what a
        # constructor returns): its ref term, as the walk would make it, without the walk.
        name = _convert(walk, result, _lone_object)
        if name is not None:
            sid = session.session_id

            def build_ref(ref_id_of: RefIdOf) -> Any:
                return (REF_TAG, sid, ref_id_of(result), name)

            return table.store_result(session, build_ref)
    value = _convert(walk, result)
    if not walk.slots:
        return StoredResult(value, [], [], None, walk.blobs)
    slots = walk.slots
    sid = session.session_id

    def build_refs(ref_id_of: RefIdOf) -> Any:
        for slot in slots:
            slot.ref = (REF_TAG, sid, ref_id_of(slot.obj), slot.type_name)
        return walk.fill(value)

    stored = table.store_result(session, build_refs)
    return stored._replace(blobs=True) if walk.blobs else stored


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
        mode: :data:`~snakeport._requests.AUTO`, ``REF``, ``VALUE`` or ``ARROW`` (each item
            a table).
        max_depth: Deepest container nesting marshalled as data.

    Returns:
        The :class:`~snakeport._sessions.StoredResult` whose value is ``(items, ref_term)``
        (``ref_term`` is ``None`` without ``keep``).

    Raises:
        RequestError: As :func:`marshal`.
    """
    sid = session.session_id
    if mode == REF:

        names: dict[int, str] = {}

        def build_refs(ref_id_of: RefIdOf) -> Any:
            out = [(REF_TAG, sid, ref_id_of(x), _type_name(names, type(x))) for x in items]
            return out, _ref_term(sid, keep, ref_id_of)

        return table.store_result(session, build_refs)
    if mode == ARROW:  # each item a table
        from snakeport._arrow import result_term

        terms = [result_term(x) for x in items]
        blobs = any(type(t[1]) is Blob for t in terms)
        if keep is None:
            return StoredResult((terms, None), [], [], None, blobs)
        stored = table.store_result(session, lambda ref_id_of: (terms, _ref_term(sid, keep, ref_id_of)))
        return stored._replace(blobs=blobs)
    walk = _Walk(sid, mode == AUTO, max_depth)
    value = _convert(walk, items)
    if not walk.slots and keep is None:
        return StoredResult((value, None), [], [], None, walk.blobs)
    slots = walk.slots

    def build(ref_id_of: RefIdOf) -> Any:
        for slot in slots:
            slot.ref = (REF_TAG, sid, ref_id_of(slot.obj), slot.type_name)
        return walk.fill(value), _ref_term(sid, keep, ref_id_of)

    return table.store_result(session, build)._replace(blobs=walk.blobs)


def _convert(walk: "_Walk", value: Any, step: Any = None) -> Any:
    """``walk.convert(value, 0)`` (or ``step(value)``), a conversion that raised
    (``BaseException`` included: numpy and pandas reads, encoders, a metaclass's ``__hash__``)
    failing the result with ``not_encodable``."""
    try:
        return walk.convert(value, 0) if step is None else step(value)
    except RequestError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a numpy/pandas read or an encoder failed
        name = type_name(type(walk.current)) if walk.current is not _NOTHING else type_name(type(value))
        raise RequestError(
            "not_encodable",
            f"converting a {name} of the result failed: {type_name(type(exc))}: {safe_str(exc)}",
            details={"type": name},
        ) from None

def _lone_object(value: Any) -> str | None:
    """The type name of ``value`` when, under ``result => auto``, the whole result is one
    ref (not data, not a container, no conversion: what :meth:`_Walk.convert` makes a leaf
    of at depth 0), else ``None``. Hashes the type, as the walk does."""
    t = type(value)
    if t in DATA or t in _CONTAINERS or converter_for(t) is not None:
        return None
    return type_name(t)


def _ref_term(sid: str | bytes, obj: Any, ref_id_of: RefIdOf) -> tuple | None:
    if obj is None:
        return None
    return (REF_TAG, sid, ref_id_of(obj), type_name(type(obj)))


#: Types :class:`_Walk` descends into.
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset, ErlMap, ImproperList})

_NOTHING = object()


def _type_name(names: dict[int, str], tp: type) -> str:
    """``type_name(tp)``, made once per type of a result (``names``: ``id(tp)`` -> name): the
    ref terms of a result with 10,000 objects of one type share one name string. (Keyed by
    ``id``, which runs no user code; the result holds its objects, hence their types, for
    as long as ``names`` is used.)"""
    name = names.get(id(tp))
    if name is None:
        name = names[id(tp)] = type_name(tp)
    return name


class _Slot:
    """Where a ref goes in a converted value: the object, and its ref term once stored."""

    __slots__ = ("obj", "type_name", "ref")

    def __init__(self, obj: Any, name: str) -> None:
        self.obj = obj
        self.type_name = name
        self.ref: tuple | None = None


class _Walk:
    """One walk over a result: data stays data, known types are converted, other objects
    get a :class:`_Slot` (``result => auto``) or fail (``result => value``).

    Attributes:
        auto: ``result => auto`` (objects become refs; pandas objects too).
        max_depth: Deepest nesting converted as data.
        slots: One slot per object that needs a ref, in order of first appearance.
        blobs: Whether the value holds a :class:`~snakeport._blobs.Blob`.
        current: The object being converted by a converter (for error messages).
    """

    __slots__ = ("auto", "max_depth", "seen", "path", "slots", "uses", "dirty", "blobs", "current", "names")

    def __init__(self, sid: str | bytes, auto: bool, max_depth: int) -> None:
        self.auto = auto
        self.max_depth = max_depth
        self.seen: dict[int, _Slot] = {}  # id(obj) -> its slot (one object, one ref)
        self.path: set[int] = set()  # ids of the containers being walked (cycles)
        self.slots: list[_Slot] = []
        self.uses = 0  # slots placed so far (a slot placed twice counts twice)
        self.dirty: set[int] = set()  # ids of the converted containers that hold slots
        self.blobs = False
        self.current: Any = _NOTHING
        self.names: dict[int, str] = {}  # id(type) -> its name (see _type_name)

    def leaf(self, obj: Any, why: str = "") -> Any:
        """Return the slot of ``obj`` (``result => value``: fail with ``not_encodable``)."""
        if not self.auto:
            name = type_name(type(obj))
            raise RequestError(
                "not_encodable",
                why or f"the result holds a {name}, which cannot travel as data (result => value)",
                details={"type": name},
            )
        key = id(obj)
        slot = self.seen.get(key)
        if slot is None:
            slot = _Slot(obj, _type_name(self.names, type(obj)))
            self.seen[key] = slot
            self.slots.append(slot)
        self.uses += 1
        return slot

    def convert(self, value: Any, depth: int) -> Any:
        """Return the term for ``value`` at nesting ``depth`` (slots where refs go)."""
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
            uses = self.uses
            out = []
            append = out.append
            depth += 1
            for item in value:
                append(self.convert(item, depth))
            self.path.discard(key)
            converted = out if t is list else tuple(out)
            if self.uses != uses:
                self.dirty.add(id(converted))
            return converted
        if t is dict:
            if depth < self.max_depth and _issuperset(map(type, value)) and _issuperset(map(type, value.values())):
                return value
            key = id(value)
            if depth >= self.max_depth or key in self.path:
                return self.leaf(value, "the result is nested too deeply or is cyclic")
            self.path.add(key)
            uses = self.uses
            depth += 1
            pairs = []
            for k, v in value.items():
                pairs.append((self.convert(k, depth), self.convert(v, depth)))
            self.path.discard(key)
            converted = _map(pairs)
            if self.uses != uses:
                self.dirty.add(id(converted))
            return converted
        if t is ErlMap or t is ImproperList:
            if depth >= self.max_depth:
                return self.leaf(value, "the result is nested too deeply")
            uses = self.uses
            depth += 1
            if t is ErlMap:
                converted = ErlMap([(self.convert(k, depth), self.convert(v, depth)) for k, v in value.items()])
            else:
                elements = [self.convert(x, depth) for x in value.elements]
                converted = ImproperList(elements, self.convert(value.tail, depth))
            if self.uses != uses:
                self.dirty.add(id(converted))
            return converted
        if t is set or t is frozenset:
            if depth >= self.max_depth:
                return self.leaf(value, "the result is nested too deeply")
            uses = self.uses
            depth += 1
            out = []
            for item in value:
                out.append(self.convert(item, depth))
            converted = (SET_TAG, out)
            if self.uses != uses:
                self.dirty.add(id(out))
                self.dirty.add(id(converted))
            return converted
        converter = converter_for(t)
        if converter is None:
            return self.leaf(value)
        uses = self.uses
        outer = self.current
        self.current = value
        try:
            term = converter(value, self, depth)
        except NotData as exc:
            self.current = outer
            return self.leaf(value, exc.why and f"the result holds a {type_name(t)} that cannot travel as data: {exc.why}")
        self.current = outer
        if self.uses != uses and type(term) in _CONTAINERS:
            self.dirty.add(id(term))
        return term

    def fill(self, term: Any) -> Any:
        """Return ``term`` with each slot replaced by its ref term (containers rebuilt)."""
        t = type(term)
        if t is _Slot:
            return term.ref
        if id(term) not in self.dirty:
            return term
        # Plain loops, no comprehensions: one Python frame per level (results nest down
        # to --max-depth, and a set is two levels).
        fill = self.fill
        out: list = []
        append = out.append
        if t is list or t is tuple:
            for x in term:
                append(fill(x))
            return out if t is list else tuple(out)
        if t is dict or t is ErlMap:
            for k, v in term.items():
                append((fill(k), fill(v)))
            return _map(out) if t is dict else ErlMap(out)
        if t is ImproperList:
            for x in term.elements:
                append(fill(x))
            return ImproperList(out, fill(term.tail))
        return term


def _map(pairs: list) -> Any:
    """A dict of converted pairs, or an ErlMap when a converted key is unhashable."""
    try:
        return dict(pairs)
    except TypeError:  # a converted key is unhashable (e.g. a frozenset key)
        return ErlMap(pairs)
