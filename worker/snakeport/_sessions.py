"""Session and ref tables of the worker (I/O-free, thread-safe).

One :class:`SessionTable` holds every session of the worker. A session keeps its refs in
least-recently-used order (an ``OrderedDict`` whose front is the LRU ref), so that both the
TTL sweep and ``evict_lru`` overflow only look at the front. Ref ids are unique within the
worker; a worker-wide index maps a live ref id to its session, and a bounded tombstone table
remembers why recently dropped refs are gone (``released``, ``evicted``, ``ttl``,
``session_released``) so that late uses fail with ``ref_released`` instead of
``ref_not_found`` (:mod:`snakeport._tombstones`: 17 bytes per dropped ref and 8 per released
session, no Python object per entry).

Sessions exist only between ``open_session`` and ``release_session`` (or an
``expire_session`` that found them idle): nothing here creates a session implicitly. A
request naming any other session fails with ``session_not_found`` (with
``cause => session_released`` for the last ``max_tombstones`` released sessions).

A session with a job in flight is in use: :meth:`SessionTable.checkout` counts the job
(``Session.running``) and :meth:`SessionTable.checkin` ends it, refreshing the refs the job
used and the session's activity clock (``Session.active_at``). The sweep never prunes the
refs of a session in use, and :meth:`SessionTable.expire_session` never releases one: the
TTL clock of a session restarts when its last job ends.

All public methods take one lock (:attr:`SessionTable.lock`), so the frame-reading thread,
the call threads and the sweep thread may call them concurrently; no other lock is taken
while it is held. A reply's refs are found and stored in one step under it
(:meth:`SessionTable.store_result`), so a ref that a reply returns is live when the reply
is built. Objects dropped from the table are released after the lock is let go, so that a
slow ``__del__`` never holds it; a dropped generator (a stream's iterator, say) is closed
then (:func:`~snakeport._streams.close_iterator`: its ``finally`` blocks run), also when
something else still holds it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, namedtuple
from types import GeneratorType

from snakeport import _limits as limits
from snakeport._guard import short
from snakeport._limits import Limit
from snakeport._tombstones import RefTombstones, SessionTombstones, session_key
from snakeport._streams import close_iterator
from snakeport.errors import RequestError
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

__all__ = [
    "SessionTable",
    "Session",
    "SessionInfo",
    "RefHandle",
    "StoredResult",
    "OVERFLOW_POLICIES",
    "WARN_FILL",
    "CAUSE_RELEASED",
    "CAUSE_EVICTED",
    "CAUSE_TTL",
    "CAUSE_SESSION_RELEASED",
]

#: Fill ratio of ``max_refs`` at which a session's ``warning`` event is given.
WARN_FILL = 0.8

#: The overflow policies of ``open_session``.
OVERFLOW_POLICIES = limits.OVERFLOW_POLICIES

#: Tombstone causes (``details.cause`` of ``ref_released``).
CAUSE_RELEASED = Atom("released")
CAUSE_EVICTED = Atom("evicted")
CAUSE_TTL = Atom("ttl")
CAUSE_SESSION_RELEASED = Atom("session_released")

#: The causes by their code in the tombstone table, and the codes by cause.
_CAUSES = (CAUSE_RELEASED, CAUSE_EVICTED, CAUSE_TTL, CAUSE_SESSION_RELEASED)
_CAUSE_CODES = {cause: code for code, cause in enumerate(_CAUSES)}
_RELEASED = _CAUSE_CODES[CAUSE_RELEASED]

_UNSET: Any = object()

if TYPE_CHECKING:
    #: ``ref_id_of(obj) -> ref_id``, given to the ``build`` function of
    #: :meth:`SessionTable.store_result`.
    RefIdOf = Callable[[Any], int]


class StoredResult(namedtuple("StoredResult", "value new_ref_ids evicted fill blobs", defaults=(False,))):
    """What :meth:`SessionTable.store_result` returns (a named tuple).

    Attributes:
        value (Any): What ``build`` returned.
        new_ref_ids (list[int]): The ids of the refs stored for it (empty when none).
        evicted (list[int]): The ids of the refs evicted to make room, oldest first.
        fill (tuple[int, int] | None): ``(refs, max_refs)`` when the session just reached
            its fill threshold.
        blobs (bool): Whether the value holds blobs (large array buffers,
            :mod:`snakeport._blobs`); set by the marshalling (default ``False``).
    """

    __slots__ = ()


class RefHandle:
    """A ``{'$snakeport_ref', Session, RefId, Type}`` term received from the VM.

    The decoder turns each ref term into a handle (``_tagged.TagContext``); the session
    table checks and resolves the handles of a request to their objects with
    :meth:`SessionTable.checkout` once the request's session is known.

    Attributes:
        session: The session id written in the term.
        ref_id: The ref id written in the term.
        type_name: The type name written in the term.
        term: The original tuple (sent back unchanged if the handle is echoed).
        obj: The resolved object (set by :meth:`SessionTable.resolve`).
    """

    __slots__ = ("session", "ref_id", "type_name", "term", "obj")

    def __init__(self, session: str | bytes, ref_id: int, type_name: Any, term: tuple) -> None:
        self.session = session
        self.ref_id = ref_id
        self.type_name = type_name
        self.term = term
        self.obj: Any = None

    def __repr__(self) -> str:
        return f"RefHandle({short(self.session)}, {short(self.ref_id)}, {short(self.type_name)})"


class _Entry:
    """One live ref: the object, its type name and its last access (monotonic seconds)."""

    __slots__ = ("obj", "last_access")

    def __init__(self, obj: Any, last_access: float) -> None:
        self.obj = obj
        self.last_access = last_access


class SessionInfo(
    namedtuple("SessionInfo", "session refs max_refs ttl_seconds tags overflow created_at last_access")
):
    """A snapshot of one session (what ``session_info`` reports; a named tuple).

    Attributes:
        session (str | bytes): Session id.
        refs (int): Number of live refs.
        max_refs (int): Ref limit.
        ttl_seconds (int | float): Idle time after which a ref is pruned.
        tags (Any): The session's tags (any term).
        overflow (str): ``"error"`` or ``"evict_lru"``.
        created_at (int): Creation time, Unix milliseconds.
        last_access (int): Last use, Unix milliseconds.
    """

    __slots__ = ()


class Session:
    """One session: its refs in LRU order plus its limits and tags.

    Attributes:
        session_id: The id (a ``str``, or ``bytes`` when it is not valid UTF-8).
        refs: ``ref_id -> _Entry``, least recently used first.
        max_refs: Most refs the session may hold.
        ttl_seconds: Refs idle for longer are pruned by the sweep.
        tags: Any term, kept and returned as is.
        overflow: ``"error"`` or ``"evict_lru"``.
        created_at: Creation time (Unix seconds).
        last_access: Last use (Unix seconds).
        released: Set when the session is released; results of calls still running for
            it are then dropped instead of stored.
        by_object: ``id(obj) -> ref_id`` of the live refs, so that an object the session
            already holds is returned as its existing ref. Invariant: its values are
            exactly the keys of ``refs`` (every removal from ``refs`` removes the entry
            here), so an id found here is a live ref whose object is alive, and no other
            object can have that id.
        warned: Whether the fill warning was given since the session last went below
            :data:`WARN_FILL`.
        running: Jobs checked out and not checked in yet (queued or running calls).
        active_at: When a job of the session last started or ended, or it was opened
            (monotonic seconds): its idle time for :meth:`SessionTable.expire_session`.
        key: :func:`~snakeport._tombstones.session_key` of its id (for the tombstones of
            its refs).
    """

    __slots__ = (
        "session_id",
        "refs",
        "max_refs",
        "ttl_seconds",
        "tags",
        "overflow",
        "created_at",
        "last_access",
        "released",
        "by_object",
        "warned",
        "running",
        "active_at",
        "key",
    )

    def __init__(
        self, session_id: str | bytes, max_refs: int, ttl_seconds: float, now: float, active_at: float = 0.0
    ) -> None:
        self.session_id = session_id
        self.refs: OrderedDict[int, _Entry] = OrderedDict()
        self.max_refs = max_refs
        self.ttl_seconds = ttl_seconds
        self.tags: Any = None
        self.overflow = "error"
        self.created_at = now
        self.last_access = now
        self.released = False
        # id(obj) -> ref id of every live ref (the object is alive, so its id is unique).
        self.by_object: dict[int, int] = {}
        self.warned = False
        self.running = 0
        self.active_at = active_at
        self.key = session_key(session_id)

    def info(self) -> SessionInfo:
        """Return a :class:`SessionInfo` snapshot (call with the table's lock held)."""
        return SessionInfo(
            self.session_id,
            len(self.refs),
            self.max_refs,
            self.ttl_seconds,
            self.tags,
            self.overflow,
            int(self.created_at * 1000),
            int(self.last_access * 1000),
        )


def _session_option(limit: Limit, value: Any) -> Any:
    """Check an ``open_session`` option with its rule in :mod:`snakeport._limits`.

    Raises:
        RequestError: ``bad_request`` with the rule's message.
    """
    try:
        return limit.check(value)
    except ValueError as exc:
        raise RequestError("bad_request", str(exc)) from None


class SessionTable:
    """Every session and ref of the worker, behind one lock.

    Args:
        default_max_refs: ``max_refs`` of sessions that do not state one.
        default_ttl_seconds: ``ttl_seconds`` of sessions that do not state one.
        default_overflow: ``overflow`` of sessions that do not state one (``"error"`` or
            ``"evict_lru"``).
        max_tombstones: How many dropped ref ids to remember for ``ref_released`` errors,
            and (separately) how many released session ids for ``session_not_found`` errors
            with ``cause => session_released`` (0 disables tombstones).
        monotonic: Clock for TTLs (seconds); injectable for tests.
        wall: Clock for ``created_at``/``last_access`` (Unix seconds); injectable for tests.

    Raises:
        ValueError: A limit is out of range.
    """

    def __init__(
        self,
        *,
        default_max_refs: int = limits.MAX_REFS.default,
        default_ttl_seconds: float = limits.TTL_SECONDS.default,
        default_overflow: str = limits.DEFAULT_OVERFLOW,
        max_tombstones: int = limits.MAX_TOMBSTONES.default,
        monotonic: Any = time.monotonic,
        wall: Any = time.time,
    ) -> None:
        self.default_max_refs = limits.MAX_REFS.check(default_max_refs, "default_max_refs")
        self.default_ttl_seconds = limits.TTL_SECONDS.check(default_ttl_seconds, "default_ttl_seconds")
        if default_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"expected default_overflow to be error or evict_lru, got: {default_overflow!r}")
        self.default_overflow = default_overflow
        self.max_tombstones = limits.MAX_TOMBSTONES.check(max_tombstones)
        self._monotonic = monotonic
        self._wall = wall
        #: The one lock around every table below.
        self.lock = threading.Lock()
        self._sessions: dict[str | bytes, Session] = {}
        # ref id -> session holding it (live refs only); ids are unique within the worker.
        self._owner: dict[int, Session] = {}
        # The last max_tombstones dropped refs (session key, cause code by ref id).
        self._tombstones = RefTombstones(self.max_tombstones)
        # The keys of the last max_tombstones released sessions.
        self._released_sessions = SessionTombstones(self.max_tombstones)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------- sessions

    def open_session(
        self,
        session_id: str | bytes,
        *,
        max_refs: Any = _UNSET,
        ttl_seconds: Any = _UNSET,
        tags: Any = _UNSET,
        overflow: Any = _UNSET,
    ) -> tuple[SessionInfo, list[int]]:
        """Create a session, or update the limits/tags of an existing one.

        Lowering ``max_refs`` below the current ref count of an ``evict_lru`` session evicts
        its least recently used refs; under ``error`` existing refs are kept.

        Args:
            session_id: The session id.
            max_refs: Positive integer (optional).
            ttl_seconds: Positive number (optional).
            tags: Any term (optional).
            overflow: ``"error"`` or ``"evict_lru"`` (optional).

        Returns:
            The session's info and the ids of refs evicted by a lowered ``max_refs``.

        Raises:
            RequestError: ``bad_request`` for an invalid option.
        """
        if max_refs is not _UNSET:
            _session_option(limits.MAX_REFS, max_refs)
        if ttl_seconds is not _UNSET:
            _session_option(limits.TTL_SECONDS, ttl_seconds)
        if overflow is not _UNSET and overflow not in OVERFLOW_POLICIES:
            raise RequestError(
                "bad_request", f"expected overflow to be error or evict_lru, got: {short(overflow)}"
            )
        dropped: list[_Entry] = []
        with self.lock:
            session = self._sessions.get(session_id)
            now = self._wall()
            if session is None:
                session = Session(
                    session_id, self.default_max_refs, self.default_ttl_seconds, now, self._monotonic()
                )
                session.overflow = self.default_overflow
                self._sessions[session_id] = session
            else:
                session.last_access = now
                session.active_at = self._monotonic()
            if max_refs is not _UNSET:
                session.max_refs = max_refs
            if ttl_seconds is not _UNSET:
                session.ttl_seconds = ttl_seconds
            if tags is not _UNSET:
                session.tags = tags
            if overflow is not _UNSET:
                session.overflow = str(overflow)
            evicted: list[int] = []
            if session.overflow == "evict_lru":
                excess = len(session.refs) - session.max_refs
                if excess > 0:
                    evicted = self._drop_lru(session, excess, CAUSE_EVICTED, dropped)
            info = session.info()
        _let_go(dropped)
        del dropped
        return info, evicted

    def checkout(self, session_id: str | bytes, handles: Iterable[RefHandle] = ()) -> Session:
        """Return an open session and resolve the request's ref terms in it, atomically,
        counting one job of the session in flight.

        Nothing is created: the session must have been opened with :meth:`open_session`.
        See :meth:`resolve` for the handles. Every successful checkout must be followed by
        exactly one :meth:`checkin` of the session (when the job ends, or is dropped).

        Args:
            session_id: The session of the request.
            handles: The ref terms found in the request.

        Returns:
            The session (its last access refreshed, ``running`` incremented).

        Raises:
            RequestError: ``session_not_found`` (never opened, or released), or the errors
                of :meth:`resolve` (nothing is counted then).
        """
        with self.lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise self._not_found_locked(session_id)
            now = self._monotonic()
            if handles:
                self._resolve_locked(session_id, handles, now)
            session.last_access = self._wall()
            session.running += 1
            session.active_at = now
            return session

    def checkin(self, session: Session, ref_ids: Iterable[int] = ()) -> None:
        """End a job counted by :meth:`checkout`: the session is idle from now on if it was
        its last job, and the refs the job used count as accessed now.

        Args:
            session: The session returned by :meth:`checkout`.
            ref_ids: The refs the job used (its target and arguments); those that are gone
                are skipped.
        """
        with self.lock:
            session.running -= 1
            now = self._monotonic()
            session.active_at = now
            if ref_ids:
                refs = session.refs
                for ref_id in ref_ids:
                    entry = refs.get(ref_id)
                    if entry is not None:
                        refs.move_to_end(ref_id)
                        entry.last_access = now

    def session_info(self, session_id: str | bytes) -> SessionInfo:
        """Describe one session.

        Args:
            session_id: The session id.

        Returns:
            The session's info.

        Raises:
            RequestError: ``session_not_found``.
        """
        with self.lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise self._not_found_locked(session_id)
            return session.info()

    def release_session(self, session_id: str | bytes) -> int:
        """Release every ref of the session and forget it (idempotent).

        Args:
            session_id: The session id.

        Returns:
            How many refs were released (0 for an unknown session).
        """
        with self.lock:
            session = self._sessions.get(session_id)
            if session is None:
                return 0
            refs = self._release_locked(session)
        count = len(refs)
        _let_go(refs.values())
        del refs  # objects freed here, outside the lock
        return count

    def expire_session(self, session_id: str | bytes, idle_seconds: float) -> tuple[bool, float]:
        """Release the session if it has been idle for ``idle_seconds``, in one step.

        Idle means: no job of the session in flight, and none started or ended (and no
        ``open_session`` of it) for ``idle_seconds``. A session in use is never released
        here, so a TTL expiry cannot remove a session under a running call.

        Args:
            session_id: The session id.
            idle_seconds: The idle time required (the session's TTL on the VM side).

        Returns:
            ``(True, refs_released)`` when it was released (``(True, 0)`` for an unknown
            session: idempotent), else ``(False, idle)`` with its idle time in seconds so
            far (``0.0`` while a job is in flight).
        """
        with self.lock:
            session = self._sessions.get(session_id)
            if session is None:
                return True, 0
            if session.running:
                return False, 0.0
            idle = self._monotonic() - session.active_at
            if idle < idle_seconds:
                return False, max(idle, 0.0)
            refs = self._release_locked(session)
        count = len(refs)
        _let_go(refs.values())
        del refs  # objects freed here, outside the lock
        return True, count

    def _release_locked(self, session: Session) -> OrderedDict:
        """Forget a session (lock held); return its refs, to be freed outside the lock."""
        session_id = session.session_id
        del self._sessions[session_id]
        session.released = True
        self._released_sessions.add(session.key)
        refs = session.refs
        session.refs = OrderedDict()
        session.by_object = {}
        owner = self._owner
        for ref_id in refs:
            del owner[ref_id]
        self._tombstone_many(list(refs), session.key, CAUSE_SESSION_RELEASED)
        return refs

    def counts(self) -> tuple[int, int]:
        """Return ``(sessions, refs)`` of the whole worker."""
        with self.lock:
            return len(self._sessions), len(self._owner)

    # ----------------------------------------------------------------- refs

    def resolve(self, session_id: str | bytes, handles: Iterable[RefHandle]) -> None:
        """Check that every handle is a live ref of the session and set ``handle.obj``.

        Nothing is touched unless every handle passes, so a rejected request serves nothing.
        On success each ref's last access (and the session's) is refreshed.

        Args:
            session_id: The session of the request.
            handles: The ref terms found in the request.

        Raises:
            RequestError: ``session_mismatch`` (the term names another session, or the id
                belongs to another session), ``ref_released`` (with ``details.cause``) or
                ``ref_not_found``.
        """
        with self.lock:
            session = self._resolve_locked(session_id, handles, self._monotonic())
            if session is not None:
                session.last_access = self._wall()

    def _resolve_locked(self, session_id: str | bytes, handles: Iterable[RefHandle], now: float) -> Session | None:
        """:meth:`resolve` (lock held), the refs' last access set to ``now``: the session
        holding the handles (``None`` when there are none); its last access is the
        caller's to refresh."""
        if not handles:
            return None
        owner = self._owner
        for handle in handles:
            ref_id = handle.ref_id
            if handle.session != session_id:
                raise _mismatch(ref_id)
            session = owner.get(ref_id)
            if session is not None:
                if session.session_id != session_id:
                    raise _mismatch(ref_id)
                continue
            tomb = self._tombstones.get(ref_id)
            if tomb is not None:
                if tomb[0] != session_key(session_id):
                    raise _mismatch(ref_id)
                cause = _CAUSES[tomb[1]]
                raise RequestError(
                    "ref_released",
                    f"ref {short(ref_id)} was released ({cause})",
                    details={"ref_id": ref_id, "cause": cause},
                )
            raise RequestError(
                "ref_not_found",
                f"no ref {short(ref_id)} was issued to this session",
                details={"ref_id": ref_id},
            )
        # Every handle is a live ref of one session (checked above): refresh them.
        refs = session.refs  # type: ignore[union-attr]
        for handle in handles:
            ref_id = handle.ref_id
            entry = refs[ref_id]
            refs.move_to_end(ref_id)
            entry.last_access = now
            handle.obj = entry.obj
        return session

    def store_result(self, session: Session, build: Callable[[RefIdOf], Any]) -> StoredResult:
        """Give the objects of one reply their refs, in one atomic step of the table.

        ``build`` makes the reply's value; for each object that must travel as a ref it
        calls ``ref_id_of(obj)`` once per object, which returns the session's existing ref
        to that very object (refreshed, and *pinned*: this step never evicts it), or a new
        id. When
        ``build`` returns, the new objects are stored, evicting least recently used refs
        that are not pinned when the session's policy is ``evict_lru``, or nothing is
        stored at all. The table's lock is held from the first lookup to the last store,
        so neither the sweep nor a release can drop a ref that the reply returns in
        between: every ref in the value is live when this returns.

        ``build`` runs under the lock: it must not call the table, and it must not run
        user code (the marshalling only puts ref terms in a value it converted before).

        Args:
            session: The session (as returned by :meth:`checkout`).
            build: Makes the value, given ``ref_id_of``.

        Returns:
            The value, the new ref ids, the evicted ref ids (oldest first) and the fill
            warning ``(refs, max_refs)`` when this store brought the session to
            :data:`WARN_FILL` of its ``max_refs`` (once per crossing), else ``None``.

        Raises:
            RequestError: ``max_refs_exceeded`` (nothing stored, nothing evicted): the new
                refs do not fit under ``error``, or, under ``evict_lru``, the new refs and
                the pinned ones together exceed ``max_refs``; ``session_not_found`` when
                the session was released meanwhile and the value holds a ref. Errors of
                ``build`` propagate (nothing stored).
        """
        dropped: list[_Entry] = []
        with self.lock:
            refs = session.refs
            by_object = session.by_object
            ids = self._ids
            pinned: set[int] = set()
            # The new refs as two lists, not a list of pairs: no tuple per ref at the peak.
            new: list[int] = []
            new_objs: list[Any] = []
            now = self._monotonic()

            def ref_id_of(obj: Any) -> int:
                ref_id = by_object.get(id(obj))
                if ref_id is None:
                    ref_id = next(ids)
                    new.append(ref_id)
                    new_objs.append(obj)
                    return ref_id
                refs.move_to_end(ref_id)  # pinned refs sit at the MRU end
                refs[ref_id].last_access = now
                pinned.add(ref_id)
                return ref_id

            value = build(ref_id_of)
            if not new:
                if pinned:
                    session.last_access = self._wall()
                return StoredResult(value, [], [], None)
            if session.released:
                raise RequestError(
                    "session_not_found",
                    f"session {short(session.session_id)} was released while the request ran",
                    details={"session": session.session_id, "cause": CAUSE_SESSION_RELEASED},
                )
            held = len(refs)
            limit = session.max_refs
            excess = held + len(new) - limit
            evicted: list[int] = []
            if excess > 0:
                if session.overflow != "evict_lru" or len(new) + len(pinned) > limit:
                    also = f" and the result returns {len(pinned)} of those" if pinned else ""
                    raise RequestError(
                        "max_refs_exceeded",
                        f"session {short(session.session_id)} holds {held} of {limit} refs{also};"
                        f" {len(new)} more do not fit",
                        details={"limit": limit, "refs": held},
                    )
                # The pinned refs are the last len(pinned) in LRU order (each was moved to
                # the end when found) and excess <= held - len(pinned) (checked above), so
                # the front `excess` refs dropped here are never pinned.
                evicted = self._drop_lru(session, excess, CAUSE_EVICTED, dropped)
            owner = self._owner
            for ref_id, obj in zip(new, new_objs):
                refs[ref_id] = _Entry(obj, now)
                owner[ref_id] = session
                by_object[id(obj)] = ref_id
            session.last_access = self._wall()
            fill = self._fill_warning_locked(session)
        _let_go(dropped)
        del dropped
        return StoredResult(value, new, evicted, fill)

    def _fill_warning_locked(self, session: Session) -> tuple[int, int] | None:
        """``(refs, max_refs)`` the first time the session is seen at or above
        :data:`WARN_FILL` of its ``max_refs``; re-armed when seen below it again."""
        refs = len(session.refs)
        if refs < WARN_FILL * session.max_refs:
            session.warned = False
            return None
        if session.warned:
            return None
        session.warned = True
        return refs, session.max_refs

    def discard(self, session: Session, ref_ids: Iterable[int]) -> int:
        """Release refs by id (e.g. the new refs of a reply that could not be sent).

        Args:
            session: The session holding them.
            ref_ids: Ref ids; ids that are not live refs of the session are skipped.

        Returns:
            How many refs were released.
        """
        dropped: list[_Entry] = []
        with self.lock:
            for ref_id in ref_ids:
                entry = session.refs.pop(ref_id, None)
                if entry is None:
                    continue
                dropped.append(entry)
                session.by_object.pop(id(entry.obj), None)
                del self._owner[ref_id]
                self._tombstones.add(ref_id, session.key, _RELEASED)
        count = len(dropped)
        _let_go(dropped)
        del dropped
        return count

    def release_ref(self, session_id: str | bytes, handle: RefHandle) -> bool:
        """Release one ref (idempotent); a generator's ``finally`` blocks run (closed).

        Args:
            session_id: The session of the request.
            handle: The ref term.

        Returns:
            ``True`` when the ref was live and is now released, ``False`` when it was gone.

        Raises:
            RequestError: ``session_not_found`` (unknown session) or ``session_mismatch``.
        """
        with self.lock:
            entry = self._take_locked(session_id, handle)
        if entry is None:
            return False
        if type(entry.obj) is GeneratorType:
            close_iterator(entry.obj)
        return True

    def take_ref(self, session_id: str | bytes, handle: RefHandle) -> tuple[bool, Any]:
        """Release one ref and hand its object to the caller (e.g. to close it), idempotent.

        Args:
            session_id: The session of the request.
            handle: The ref term.

        Returns:
            ``(True, obj)`` when the ref was live and is now released, ``(False, None)`` when
            it was gone.

        Raises:
            RequestError: ``session_not_found`` (unknown session) or ``session_mismatch``.
        """
        with self.lock:
            entry = self._take_locked(session_id, handle)
        return (False, None) if entry is None else (True, entry.obj)

    def _take_locked(self, session_id: str | bytes, handle: RefHandle) -> _Entry | None:
        """Drop one ref (lock held): its entry, or ``None`` when it was gone (see
        :meth:`take_ref`)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise self._not_found_locked(session_id)
        ref_id = handle.ref_id
        if handle.session != session_id:
            raise _mismatch(ref_id)
        holder = self._owner.get(ref_id)
        if holder is None:
            tomb = self._tombstones.get(ref_id)
            if tomb is not None and tomb[0] != session.key:
                raise _mismatch(ref_id)
            return None
        if holder is not session:
            raise _mismatch(ref_id)
        entry = session.refs.pop(ref_id)
        del self._owner[ref_id]
        session.by_object.pop(id(entry.obj), None)
        self._tombstones.add(ref_id, session.key, _RELEASED)
        session.last_access = self._wall()
        return entry

    def sweep(self) -> list[tuple[str | bytes, list[int]]]:
        """Release refs not accessed within their session's TTL.

        The refs of a session with a job in flight are kept (the session is in use; the
        refs that job uses count as accessed when it ends, see :meth:`checkin`).

        Returns:
            ``(session_id, ref_ids)`` for each session that lost refs.
        """
        pruned: list[tuple[str | bytes, list[int]]] = []
        dropped: list[_Entry] = []
        with self.lock:
            now = self._monotonic()
            for session in self._sessions.values():
                refs = session.refs
                if not refs or session.running:
                    continue
                cutoff = now - session.ttl_seconds
                ids: list[int] = []
                # LRU order is last-access order: stop at the first fresh ref.
                for ref_id, entry in refs.items():
                    if entry.last_access > cutoff:
                        break
                    ids.append(ref_id)
                if ids:
                    for ref_id in ids:
                        entry = refs.pop(ref_id)
                        dropped.append(entry)
                        session.by_object.pop(id(entry.obj), None)
                        del self._owner[ref_id]
                    self._tombstone_many(ids, session.key, CAUSE_TTL)
                    pruned.append((session.session_id, ids))
        _let_go(dropped)
        del dropped
        return pruned

    # ------------------------------------------------------------- internal

    def _not_found_locked(self, session_id: str | bytes) -> RequestError:
        if session_key(session_id) in self._released_sessions:
            return RequestError(
                "session_not_found",
                f"session {short(session_id)} was released",
                details={"session": session_id, "cause": CAUSE_SESSION_RELEASED},
            )
        return RequestError(
            "session_not_found",
            f"no session {short(session_id)} (sessions must be opened with open_session)",
            details={"session": session_id},
        )

    def _drop_lru(self, session: Session, count: int, cause: Atom, dropped: list[_Entry]) -> list[int]:
        ids: list[int] = []
        refs = session.refs
        owner = self._owner
        for _ in range(min(count, len(refs))):
            ref_id, entry = refs.popitem(last=False)
            dropped.append(entry)
            session.by_object.pop(id(entry.obj), None)
            del owner[ref_id]
            ids.append(ref_id)
        self._tombstone_many(ids, session.key, cause)
        return ids

    def _tombstone_many(self, ref_ids: list[int], key: int, cause: Atom) -> None:
        """Tombstones for ``ref_ids`` of the session whose :attr:`Session.key` is ``key``."""
        if self.max_tombstones:
            self._tombstones.add_many(ref_ids, key, _CAUSE_CODES[cause])


def _let_go(entries: Iterable[_Entry]) -> None:
    """Close the generators among dropped entries (called with the table's lock let go)."""
    for entry in entries:
        if type(entry.obj) is GeneratorType:
            close_iterator(entry.obj)


def _mismatch(ref_id: int) -> RequestError:
    return RequestError(
        "session_mismatch",
        f"ref {short(ref_id)} belongs to another session; refs are only served in their own session",
        details={"ref_id": ref_id},
    )
