"""I/O-free request handling: request terms in, reply and event terms out.

The server decodes each frame with a fresh :class:`TagContext` as the codec's ``tagged``
hook, then hands the term to :meth:`Dispatcher.receive`. Control operations (``ping``,
``stats``, ``session_info``, ``open_session``, ``release_ref``, ``release_session``,
``cancel``, ``shutdown``) are answered at once with a list of terms to send. The Python
operations (``call``, ``method``, ``getattr``, ``setattr``) come back as a :class:`Job`,
which the server runs on its executor with :meth:`Dispatcher.run_job`; that returns the
terms to send (the reply, preceded by any ``refs_evicted`` event).

Results are marshalled here (see *Results* in ``docs/PROTOCOL.md``): plain data travels as
data, other objects are stored in the session and replaced by ref terms. Nothing here reads
or writes a file descriptor, so every piece is testable with plain Python terms.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import sys
import threading
import time
import traceback
from typing import Any, Callable, Union


from snakeport import PROTOCOL_VERSION, __version__
from snakeport import _limits as limits
from snakeport._sessions import RefHandle, Session, SessionInfo, SessionTable
from snakeport.errors import Cancelled, EncodeError, RequestError
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

__all__ = [
    "Dispatcher",
    "Job",
    "TagContext",
    "resolve_tagged",
    "type_name",
    "error_reply",
    "protocol_error_event",
    "warning_event",
    "async_raise",
    "REF_TAG",
    "SET_TAG",
    "BYTES_TAG",
    "EMITTED_ATOMS",
]

# --------------------------------------------------------------------------- atoms

#: Every atom the worker puts in its output on its own: ready frame, replies, errors, events,
#: reasons, causes, detail and context keys, session info and stats keys, policy names and
#: the atoms the codec uses for Python values. The VM decodes worker output with
#: ``binary_to_term(_, [safe])``, so each one must already exist there; the same list is in
#: ``docs/PROTOCOL.md`` (*Atoms the worker emits*) and in the harness, and tests keep the three
#: equal. Atoms that travel as user data (sent by the VM, or ``Atom`` values that a call
#: returns) are not part of it. The builders below refuse any other atom (an ``assert``: a
#: development-time check).
EMITTED_ATOMS: frozenset[str] = frozenset(
    {
        # envelopes and plain replies
        "snakeport_ready", "reply", "event", "ok", "error", "pong",
        # ready frame Info keys
        "pid", "python", "snakeport", "max_frame_bytes", "threads", "default_max_refs",
        "default_ttl_seconds",
        # error map keys
        "reason", "message", "type", "traceback", "details",
        # error reasons
        "python_error", "ref_not_found", "ref_released", "session_mismatch", "session_not_found",
        "max_refs_exceeded", "bad_request", "frame_too_large", "decode_error", "not_encodable",
        "cancelled", "import_error", "attribute_error", "shutting_down",
        # error detail keys
        "ref_id", "cause", "limit", "refs", "session",
        # causes (details.cause)
        "released", "evicted", "ttl", "session_released",
        # event names
        "refs_pruned", "refs_evicted", "warning", "protocol_error",
        # event measurement and metadata keys, warning context keys (plus some above)
        "count", "ref_ids", "max_refs", "running",
        # event reasons (plus ttl and some reasons above)
        "overflow",
        # session info keys (plus some above) and overflow policies (error, evict_lru); the
        # reply keys of release_ref, release_session and cancel are released and cancelled
        "ttl_seconds", "tags", "created_at", "last_access", "evict_lru",
        # stats keys
        "sessions", "rss_bytes", "uptime_ms", "in_flight", "requests",
        # values: booleans, None, non-finite floats, reserved tags
        "true", "false", "nil", "infinity", "neg_infinity", "nan", "$snakeport_ref",
        "$snakeport_set",
    }
)


def _emit(name: str) -> Atom:
    """The atom ``name``, which the worker may emit (it must be in :data:`EMITTED_ATOMS`)."""
    assert name in EMITTED_ATOMS, (
        f"the worker must not emit the atom {name!r}: the VM decodes with [safe] and may not "
        "know it; add it to EMITTED_ATOMS, docs/PROTOCOL.md and the harness first"
    )
    return Atom(name)


REPLY = _emit("reply")
OK = _emit("ok")
ERROR = _emit("error")
EVENT = _emit("event")
PONG = _emit("pong")
READY = _emit("snakeport_ready")
REF_TAG = _emit("$snakeport_ref")
SET_TAG = _emit("$snakeport_set")
BYTES_TAG = Atom("$snakeport_bytes")  # VM -> worker only
MODULE = Atom("module")  # request only

_A_REASON = _emit("reason")
_A_MESSAGE = _emit("message")
_A_TYPE = _emit("type")
_A_TRACEBACK = _emit("traceback")
_A_DETAILS = _emit("details")
_A_RESULT = Atom("result")  # request options only
_A_AUTO = Atom("auto")
_A_REF = Atom("ref")
_A_VALUE = Atom("value")
_A_COUNT = _emit("count")
_A_SESSION = _emit("session")
_A_REF_IDS = _emit("ref_ids")
_A_RELEASED = _emit("released")
_A_CANCELLED = _emit("cancelled")
_A_REFS_PRUNED = _emit("refs_pruned")
_A_REFS_EVICTED = _emit("refs_evicted")
_A_TTL = _emit("ttl")
_A_OVERFLOW = _emit("overflow")
_A_PROTOCOL_ERROR = _emit("protocol_error")
_A_WARNING = _emit("warning")
_A_MAX_REFS = _emit("max_refs")
_A_TTL_SECONDS = _emit("ttl_seconds")
_A_TAGS = _emit("tags")
_OVERFLOW_VALUES = {_emit("error"): "error", _emit("evict_lru"): "evict_lru"}
_OVERFLOW_ATOMS = {name: atom for atom, name in _OVERFLOW_VALUES.items()}

_INFO_KEYS = tuple(_emit(k) for k in SessionInfo._fields)

# Result modes.
_AUTO, _REF, _VALUE = 0, 1, 2
_MODES = {_A_AUTO: _AUTO, _A_REF: _REF, _A_VALUE: _VALUE}

#: Types that travel as data, exactly (subclasses such as ``Counter`` become refs).
_DATA: frozenset[type] = frozenset(
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
_issuperset = _DATA.issuperset

_THIS_FILE = __file__
_modules = sys.modules

# Job states.
_QUEUED, _RUNNING, _DONE, _CANCELLED = 0, 1, 2, 3

Term = Any
Outcome = Union[list, "Job"]


def type_name(tp: type) -> str:
    """Return ``"module.QualName"`` of a type (the ``Type`` of ref terms and error maps).

    Args:
        tp: A type.

    Returns:
        The qualified name, e.g. ``"collections.Counter"``.
    """
    return f"{tp.__module__}.{tp.__qualname__}"


def async_raise(thread_ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in another Python thread at its next bytecode (``None`` clears it).

    Args:
        thread_ident: ``threading.get_ident()`` of the target thread.
        exc: Exception class to raise, or ``None`` to clear a pending one.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_ident), ctypes.py_object(exc) if exc is not None else None
    )


#: Code that must not be interrupted by an asynchronous exception: importlib keeps its
#: module locks in Python code, and ``Cancelled`` raised inside it can leave a module lock
#: held forever, deadlocking every later import of that module.
_UNINTERRUPTIBLE_FILES = frozenset(
    {"<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"}
)


def in_import_machinery(thread_ident: int) -> bool:
    """Tell whether a thread is executing importlib's own code (unsafe to interrupt now).

    Only the innermost Python frame counts: a module body that runs under an import is
    ordinary code, and an exception raised there unwinds through importlib's cleanup
    normally. What must not be hit is importlib's lock bookkeeping itself.

    Args:
        thread_ident: ``threading.get_ident()`` of the thread.

    Returns:
        True when the thread's innermost frame belongs to importlib's bootstrap code.
    """
    frame = sys._current_frames().get(thread_ident)
    return frame is not None and frame.f_code.co_filename in _UNINTERRUPTIBLE_FILES


# ----------------------------------------------------------------- error terms


def _details_term(details: dict) -> dict:
    """Details/context with atom keys; keys and atom values must be in :data:`EMITTED_ATOMS`."""
    out = {}
    for key, value in details.items():
        t = type(key)
        if t is str:
            key = _emit(key)
        elif t is Atom:
            _emit(str.__str__(key))
        if type(value) is Atom:
            _emit(str.__str__(value))
        out[key] = value
    return out


def error_reply(
    request_id: int,
    reason: str,
    message: str,
    *,
    type_: str | None = None,
    traceback_lines: list[str] | None = None,
    details: dict | None = None,
) -> tuple:
    """Build ``{reply, Id, error, ErrorMap}``.

    Args:
        request_id: The request id.
        reason: The reason atom's text.
        message: Human readable message.
        type_: Qualified Python exception type, or ``None``.
        traceback_lines: Formatted traceback lines (``[]`` when none).
        details: Extra data (keys become atoms).

    Returns:
        The reply term.

    Raises:
        AssertionError: ``reason``, a detail key or an atom detail value is not in
            :data:`EMITTED_ATOMS`.
    """
    return (
        REPLY,
        request_id,
        ERROR,
        {
            _A_REASON: _emit(reason),
            _A_MESSAGE: message,
            _A_TYPE: type_,
            _A_TRACEBACK: traceback_lines or [],
            _A_DETAILS: _details_term(details) if details else {},
        },
    )


def _request_error_reply(request_id: int, err: RequestError) -> tuple:
    cause = getattr(err, "cause", None)
    if cause is not None:
        return error_reply(
            request_id,
            err.reason,
            err.message,
            type_=type_name(type(cause)),
            traceback_lines=_format_traceback(cause),
            details=err.details,
        )
    return error_reply(request_id, err.reason, err.message, details=err.details)


def protocol_error_event(reason: str, message: str) -> tuple:
    """Build ``{event, protocol_error, #{}, #{reason, message}}``.

    Args:
        reason: The reason atom's text (``decode_error``, ``frame_too_large``, ...).
        message: Human readable message.

    Returns:
        The event term.
    """
    return (EVENT, _A_PROTOCOL_ERROR, {}, {_A_REASON: _emit(reason), _A_MESSAGE: message})


def warning_event(message: str, **context: Any) -> tuple:
    """Build ``{event, warning, #{}, #{message => Message, ...context}}``.

    Args:
        message: Human readable message.
        **context: Extra metadata (keys become atoms).

    Returns:
        The event term.

    Raises:
        AssertionError: A context key or an atom value is not in :data:`EMITTED_ATOMS`.
    """
    meta = {_A_MESSAGE: message}
    meta.update(_details_term(context))
    return (EVENT, _A_WARNING, {}, meta)


def _encodable_text(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\udc80``), so that it can travel as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _safe_str(exc: BaseException) -> str:
    try:
        text = _encodable_text(str(exc))
    except BaseException:  # noqa: BLE001 - a broken __str__ must not break the reply
        text = ""
    return text or type(exc).__qualname__


def _format_traceback(exc: BaseException) -> list[str]:
    """Format ``exc`` with its traceback, leaving out this module's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _THIS_FILE:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # noqa: BLE001
        return [f"{type_name(type(exc))}: <traceback could not be formatted>"]
    return _encodable_text(text).splitlines()


class _Failure(RequestError):
    """A request error caused by a Python exception (import or attribute lookup)."""

    def __init__(self, reason: str, cause: BaseException) -> None:
        super().__init__(reason, _safe_str(cause))
        self.cause = cause


def _bad(message: str) -> RequestError:
    return RequestError("bad_request", message)


# ------------------------------------------------------------------ tagged terms


class TagContext:
    """The codec's ``tagged`` hook for one frame: collects refs, converts bytes and sets.

    Call it with each decoded ``('$snakeport_...', ...)`` tuple; it returns the replacement.
    It never raises: a malformed tagged term is remembered in :attr:`error` and the request
    is then rejected with ``bad_request``.

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
        as their own term).

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


def _substitute(term: Any) -> Any:
    """Replace resolved :class:`RefHandle` objects by their objects, in containers too."""
    t = type(term)
    if t is RefHandle:
        return term.obj
    if t is list:
        return [_substitute(x) for x in term]
    if t is tuple:
        return tuple([_substitute(x) for x in term])
    if t is dict:
        return {_substitute(k): _substitute(v) for k, v in term.items()}
    if t is set:
        return {_substitute(x) for x in term}
    if t is ErlMap:
        return ErlMap((_substitute(k), _substitute(v)) for k, v in term.items())
    if t is ImproperList:
        return ImproperList([_substitute(x) for x in term.elements], _substitute(term.tail))
    return term


# ------------------------------------------------------------------ validation


def _session_id(value: Any) -> str | bytes:
    t = type(value)
    if t is str or t is bytes:
        return value
    raise _bad(f"expected the session id to be a binary, got: {value!r}")


def _name(value: Any, what: str) -> str:
    t = type(value)
    if t is str:
        return value
    if t is Atom:
        return str.__str__(value)
    raise _bad(f"expected {what} to be a binary or an atom, got: {value!r}")


def _args(value: Any) -> list:
    if type(value) is list:
        return value
    raise _bad(f"expected Args to be a list, got: {value!r}")


def _kwargs(value: Any) -> dict:
    if type(value) is not dict:
        raise _bad(f"expected Kwargs to be a map, got: {value!r}")
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
            raise _bad(f"expected Kwargs keys to be binaries or atoms, got: {key!r}")
    return out


def _mode(opts: Any) -> int:
    if type(opts) is not dict:
        raise _bad(f"expected Opts to be a map, got: {opts!r}")
    if not opts:
        return _AUTO
    mode = opts.get(_A_RESULT, _A_AUTO)
    if type(mode) is Atom:
        found = _MODES.get(mode)
        if found is not None:
            return found
    raise _bad(f"expected result to be auto, ref or value, got: {mode!r}")


def _arity(term: tuple, n: int) -> None:
    if len(term) != n:
        raise _bad(f"expected {term[0]} to be a tuple of {n} elements, got {len(term)}")


def _import(module: str) -> Any:
    found = _modules.get(module)
    if found is not None and not getattr(getattr(found, "__spec__", None), "_initializing", False):
        return found  # fast path: imported already and fully initialised
    try:
        return importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001 - any failure of the import is import_error
        if isinstance(exc, Cancelled):
            raise
        raise _Failure("import_error", exc) from None


def _lookup(obj: Any, path: str) -> Any:
    try:
        if "." not in path:  # the common case: one attribute
            return getattr(obj, path)
        for part in path.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise _Failure("attribute_error", exc) from None
    return obj


# ------------------------------------------------------------------------- jobs


class Job:
    """A Python operation waiting for (or running on) an executor thread.

    Attributes:
        request_id: The request's id.
        session: The request's session.
        fn: Runs the operation and returns its raw result (dropped when it starts, so that
            the job keeps no argument alive past its request).
        mode: How to marshal the result (auto, ref or value).
        state: Queued, running, done or cancelled.
        thread: ``threading.get_ident()`` of the thread running it.
        cancel_sent: Whether ``Cancelled`` was raised (or is pending) in that thread.
        cancel_deferred: Whether a cancel waits for the thread to leave an import.
        new_refs: Ids of the refs its result added to the session.
    """

    __slots__ = (
        "request_id",
        "session",
        "fn",
        "mode",
        "state",
        "thread",
        "cancel_sent",
        "cancel_deferred",
        "new_refs",
    )

    def __init__(self, request_id: int, session: Session, fn: Callable[[], Any], mode: int) -> None:
        self.request_id = request_id
        self.session = session
        self.fn: Callable[[], Any] | None = fn
        self.mode = mode
        self.state = _QUEUED
        self.thread = 0
        self.cancel_sent = False
        self.cancel_deferred = False
        self.new_refs: list[int] = []

    def __repr__(self) -> str:
        return f"Job(id={self.request_id}, state={self.state})"


# ------------------------------------------------------------------- dispatcher


class Dispatcher:
    """Handles decoded requests; keeps the session table and the in-flight jobs.

    Args:
        table: The worker's sessions and refs.
        max_depth: Deepest container nesting marshalled as data; deeper parts become refs
            (``result => auto``) or fail with ``not_encodable`` (``result => value``).
        max_frame_bytes: Stated in the ready frame.
        threads: How many calls run at once, stated in the ready frame and in ``stats``.
        interrupt: ``interrupt(thread_ident, exc_or_None)`` raises or clears an asynchronous
            exception in a thread (default :func:`async_raise`).

    Raises:
        ValueError: A limit is out of range (the rules of :mod:`snakeport._limits`).
    """

    def __init__(
        self,
        table: SessionTable,
        *,
        max_depth: int = limits.MAX_DEPTH.default,
        max_frame_bytes: int = limits.MAX_FRAME_BYTES.default,
        threads: int = limits.THREADS.default,
        interrupt: Callable[[int, type[BaseException] | None], None] = async_raise,
        uninterruptible: Callable[[int], bool] = in_import_machinery,
        defer_interval: float = limits.CANCEL_RETRY_INTERVAL,
    ) -> None:
        self.table = table
        self.max_depth = limits.MAX_DEPTH.check(max_depth)
        self.max_frame_bytes = limits.MAX_FRAME_BYTES.check(max_frame_bytes)
        self.threads = limits.THREADS.check(threads)
        self._interrupt = interrupt
        self._uninterruptible = uninterruptible
        self._defer_interval = defer_interval
        #: Requests received so far (``stats``).
        self.requests = 0
        #: Set by ``shutdown``; later Python operations fail with ``shutting_down``.
        self.shutting_down = False
        self._started = time.monotonic()
        self._process: psutil.Process | None = None
        # Lock for job states and the in-flight table.
        self._jlock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        # Held while a result's refs are found and stored (only with several call threads).
        self._marshal_lock = threading.Lock() if threads > 1 else None
        self._handlers: dict[Atom, Callable[[tuple, int, TagContext | None], Outcome]] = {
            Atom("call"): self._op_call,
            Atom("method"): self._op_method,
            Atom("getattr"): self._op_getattr,
            Atom("setattr"): self._op_setattr,
            Atom("open_session"): self._op_open_session,
            Atom("release_ref"): self._op_release_ref,
            Atom("release_session"): self._op_release_session,
            Atom("session_info"): self._op_session_info,
            Atom("stats"): self._op_stats,
            Atom("ping"): self._op_ping,
            Atom("cancel"): self._op_cancel,
            Atom("shutdown"): self._op_shutdown,
        }

    # ------------------------------------------------------------ entry points

    def ready_term(self) -> tuple:
        """Return the ready frame's term, ``{snakeport_ready, 1, Info}``."""
        return (
            READY,
            PROTOCOL_VERSION,
            {
                _emit("pid"): os.getpid(),
                _emit("python"): platform.python_version(),
                _emit("snakeport"): __version__,
                _emit("max_frame_bytes"): self.max_frame_bytes,
                _emit("threads"): self.threads,
                _emit("default_max_refs"): self.table.default_max_refs,
                _emit("default_ttl_seconds"): self.table.default_ttl_seconds,
            },
        )

    def receive(self, term: Term, ctx: TagContext | None = None) -> Outcome:
        """Handle one decoded request.

        Args:
            term: The decoded frame.
            ctx: The :class:`TagContext` the frame was decoded with (``None`` when the term
                holds no tagged tuples, or they were left as tuples).

        Returns:
            Either a list of terms to send now, or a :class:`Job` to run with
            :meth:`run_job` (the caller must run every job it gets exactly once).
        """
        self.requests += 1
        if type(term) is not tuple or len(term) < 2:
            return [protocol_error_event("bad_request", f"expected a request tuple {{Op, Id, ...}}, got: {_short(term)}")]
        op, request_id = term[0], term[1]
        if type(request_id) is not int or request_id < 0:
            return [protocol_error_event("bad_request", f"expected the request id to be a non-negative integer, got: {_short(request_id)}")]
        handler = self._handlers.get(op) if type(op) is Atom else None
        if handler is None:
            return [error_reply(request_id, "bad_request", f"unknown operation: {_short(op)}")]
        if ctx is not None and ctx.error is not None:
            return [error_reply(request_id, "bad_request", ctx.error)]
        try:
            return handler(term, request_id, ctx)
        except RequestError as err:
            return [_request_error_reply(request_id, err)]
        except Exception as exc:  # noqa: BLE001 - e.g. a resolved ref that is not hashable
            return [error_reply(request_id, "bad_request", f"invalid request: {_safe_str(exc)}", type_=type_name(type(exc)))]

    def run_job(self, job: Job) -> list:
        """Run a job on the current thread and return the terms to send.

        Cancellation may strike at any bytecode of the user code; this method disarms it
        before marshalling, so that exactly one reply is produced.

        Args:
            job: A job returned by :meth:`receive`.

        Returns:
            The terms to send (possibly a ``refs_evicted`` event, then the reply), or ``[]``
            when the job was cancelled while queued (its reply was already produced).
        """
        result: Any = None
        failure: BaseException | None = None
        cancelled = False
        started = False
        # A Cancelled may strike at any call boundary from the moment the job is RUNNING
        # until _finish() marks it DONE; every such point is inside this loop's try.
        while True:
            try:
                try:
                    if not started:
                        started = True
                        with self._jlock:
                            if job.state != _QUEUED:  # cancelled while queued: already answered
                                return []
                            job.state = _RUNNING
                            job.thread = threading.get_ident()
                        fn = job.fn
                        job.fn = None  # the job keeps no argument alive past its request
                        result = fn()
                        del fn
                except Cancelled:
                    cancelled = True
                except BaseException as exc:  # noqa: BLE001 - user code may raise anything
                    failure = exc
                self._finish(job)
                break
            except Cancelled:
                cancelled = True
        request_id = job.request_id
        # A cancel answered ``cancelled => true`` makes the reply ``cancelled``, also when it
        # was still held back (the thread never left importlib) when the call ended.
        if cancelled or job.cancel_sent or job.cancel_deferred:
            return [_cancelled_reply(request_id)]
        if failure is not None:
            reply = self._failure_reply(request_id, failure)
            del failure  # drop the traceback's frames now
            return [reply]
        try:
            return self._marshal_result(job, result)
        except RequestError as err:
            return [_request_error_reply(request_id, err)]

    def unsent(self, job: Job) -> int:
        """Release the new refs of a job whose reply could not be sent (e.g. not encodable).

        Args:
            job: The job.

        Returns:
            How many refs were released.
        """
        ids, job.new_refs = job.new_refs, []
        return self.table.discard(job.session, ids) if ids else 0

    def cancel_all(self) -> list:
        """Cancel every queued and running job (for ``shutdown``).

        Returns:
            The ``cancelled`` replies of the queued jobs (running ones reply when they end).
        """
        out = []
        with self._jlock:
            for job in list(self._jobs.values()):
                if self._cancel_locked(job):
                    out.append(_cancelled_reply(job.request_id))
        return out

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        return len(self._jobs)

    def sweep(self) -> list:
        """Prune refs idle past their session's TTL.

        Returns:
            One ``refs_pruned`` event per session that lost refs.
        """
        return [
            (
                EVENT,
                _A_REFS_PRUNED,
                {_A_COUNT: len(ids)},
                {_A_SESSION: sid, _A_REASON: _A_TTL, _A_REF_IDS: ids},
            )
            for sid, ids in self.table.sweep()
        ]

    def encode_default(self, obj: Any) -> Any:
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

    # ------------------------------------------------------------- Python ops

    def _op_call(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        if len(term) == 8:
            _, _, sid, module, function, args, kwargs, opts = term
        else:
            sid = module = function = args = kwargs = opts = None
        st = sid.__class__
        if (
            (st is str or st is bytes)
            and module.__class__ is str
            and function.__class__ is str
            and args.__class__ is list
            and kwargs.__class__ is dict
            and not kwargs
            and opts.__class__ is dict
            and not opts
        ):
            mode = _AUTO  # the common request, valid as is: what the checks below would give
        else:
            _arity(term, 8)
            sid = _session_id(term[2])
            module = _name(term[3], "Module")
            function = _name(term[4], "Function")
            args = _args(term[5])
            kwargs = _kwargs(term[6])
            mode = _mode(term[7])
        handles = ctx.handles if ctx is not None else ()
        session = self._checkout(sid, handles)
        if handles:
            args = _substitute(args)
            kwargs = _substitute(kwargs)

        def fn() -> Any:
            return _lookup(_import(module), function)(*args, **kwargs)

        return self._job(rid, session, fn, mode)

    def _op_method(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 8)
        sid = _session_id(term[2])
        target = term[3]
        if type(target) is not RefHandle:
            raise _bad(f"expected Ref to be a ref term, got: {_short(target)}")
        name = _name(term[4], "Name")
        args = _args(term[5])
        kwargs = _kwargs(term[6])
        mode = _mode(term[7])
        handles = ctx.handles if ctx is not None else [target]
        session = self._checkout(sid, handles)
        obj = target.obj
        if len(handles) > 1:
            args = _substitute(args)
            kwargs = _substitute(kwargs)

        def fn() -> Any:
            return _lookup(obj, name)(*args, **kwargs)

        return self._job(rid, session, fn, mode)

    def _op_getattr(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 6)
        sid = _session_id(term[2])
        target = term[3]
        name = _name(term[4], "Name")
        mode = _mode(term[5])
        if type(target) is RefHandle:
            session = self._checkout(sid, (target,))
            obj = target.obj

            def fn() -> Any:
                return _lookup(obj, name)

        elif type(target) is tuple and len(target) == 2 and target[0] == MODULE and type(target[0]) is Atom:
            module = _name(target[1], "ModuleName")
            session = self._checkout(sid, ())

            def fn() -> Any:
                return _lookup(_import(module), name)

        else:
            raise _bad(f"expected Target to be a ref term or {{module, Name}}, got: {_short(target)}")
        return self._job(rid, session, fn, mode)

    def _op_setattr(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 7)
        sid = _session_id(term[2])
        target = term[3]
        if type(target) is not RefHandle:
            raise _bad(f"expected Ref to be a ref term, got: {_short(target)}")
        name = _name(term[4], "Name")
        value = term[5]
        _mode(term[6])
        handles = ctx.handles if ctx is not None else [target]
        session = self._checkout(sid, handles)
        obj = target.obj
        if len(handles) > 1:
            value = _substitute(value)
        head, _, last = name.rpartition(".")

        def fn() -> Any:
            owner = _lookup(obj, head) if head else obj
            try:
                setattr(owner, last, value)
            except AttributeError as exc:
                raise _Failure("attribute_error", exc) from None
            return None

        return self._job(rid, session, fn, _VALUE)

    def _checkout(self, sid: str | bytes, handles: Any) -> Session:
        """The open session of a Python operation, with its ref terms resolved.

        Raises:
            RequestError: ``shutting_down``, ``session_not_found`` (never opened or
                released: nothing is created), or a ref error.
        """
        if self.shutting_down:
            raise RequestError("shutting_down", "the worker is shutting down")
        return self.table.checkout(sid, handles)

    def _job(self, rid: int, session: Session, fn: Callable[[], Any], mode: int) -> Job:
        job = Job(rid, session, fn, mode)
        with self._jlock:
            self._jobs[rid] = job
        return job

    # ------------------------------------------------------------ control ops

    def _op_open_session(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 4)
        sid = _session_id(term[2])
        opts = term[3]
        if type(opts) is not dict:
            raise _bad(f"expected SessionOpts to be a map, got: {_short(opts)}")
        kw: dict[str, Any] = {}
        for key, value in opts.items():
            if key == _A_MAX_REFS:
                kw["max_refs"] = value
            elif key == _A_TTL_SECONDS:
                kw["ttl_seconds"] = value
            elif key == _A_TAGS:
                kw["tags"] = ctx.restore(value) if ctx is not None else value
            elif key == _A_OVERFLOW:
                policy = _OVERFLOW_VALUES.get(value) if type(value) is Atom else None
                if policy is None:
                    raise _bad(f"expected overflow to be error or evict_lru, got: {_short(value)}")
                kw["overflow"] = policy
        info, evicted = self.table.open_session(sid, **kw)
        out = []
        if evicted:
            out.append(_evicted_event(sid, evicted))
        out.append((REPLY, rid, OK, _info_term(info)))
        return out

    def _op_release_ref(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 4)
        sid = _session_id(term[2])
        handle = term[3]
        if type(handle) is not RefHandle:
            raise _bad(f"expected Ref to be a ref term, got: {_short(handle)}")
        released = self.table.release_ref(sid, handle)
        return [(REPLY, rid, OK, {_A_RELEASED: released})]

    def _op_release_session(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 3)
        count = self.table.release_session(_session_id(term[2]))
        return [(REPLY, rid, OK, {_A_RELEASED: count})]

    def _op_session_info(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 3)
        info = self.table.session_info(_session_id(term[2]))
        return [(REPLY, rid, OK, _info_term(info))]

    def _op_stats(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 2)
        sessions, refs = self.table.counts()
        import psutil  # imported on the first stats request only: ~20 ms of start-up otherwise

        if self._process is None:
            self._process = psutil.Process()
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:  # pragma: no cover - /proc unreadable
            rss = 0
        return [
            (
                REPLY,
                rid,
                OK,
                {
                    _emit("sessions"): sessions,
                    _emit("refs"): refs,
                    _emit("rss_bytes"): rss,
                    _emit("uptime_ms"): int((time.monotonic() - self._started) * 1000),
                    _emit("pid"): os.getpid(),
                    _emit("threads"): self.threads,
                    _emit("in_flight"): len(self._jobs),
                    _emit("requests"): self.requests,
                },
            )
        ]

    def _op_ping(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 2)
        return [(REPLY, rid, OK, PONG)]

    def _op_cancel(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 3)
        target = term[2]
        if type(target) is not int or target < 0:
            raise _bad(f"expected TargetId to be a non-negative integer, got: {_short(target)}")
        out = []
        with self._jlock:
            job = self._jobs.get(target)
            cancelled = job is not None
            if job is not None and self._cancel_locked(job):
                out.append(_cancelled_reply(target))
        out.append((REPLY, rid, OK, {_A_CANCELLED: cancelled}))
        return out

    def _op_shutdown(self, term: tuple, rid: int, ctx: TagContext | None) -> Outcome:
        _arity(term, 2)
        self.shutting_down = True
        return [(REPLY, rid, OK, OK)]

    # -------------------------------------------------------------- internal

    def _cancel_locked(self, job: Job) -> bool:
        """Cancel one job (``_jlock`` held); return True when it was still queued."""
        if job.state == _QUEUED:
            job.state = _CANCELLED
            self._jobs.pop(job.request_id, None)
            return True
        if job.state == _RUNNING and not job.cancel_sent and not job.cancel_deferred:
            if self._uninterruptible(job.thread):
                # Inside an import: interrupting now could leave a module lock held. Retry
                # from a short-lived thread until the import is over or the job ends.
                job.cancel_deferred = True
                threading.Thread(
                    target=self._deferred_cancel, args=(job,), name="snakeport-cancel", daemon=True
                ).start()
            else:
                job.cancel_sent = True
                self._interrupt(job.thread, Cancelled)
        return False

    def _deferred_cancel(self, job: Job) -> None:
        """Interrupt ``job`` as soon as its thread has left the import machinery."""
        while True:
            time.sleep(self._defer_interval)
            with self._jlock:
                if job.state != _RUNNING:
                    return
                if not self._uninterruptible(job.thread):
                    job.cancel_sent = True
                    self._interrupt(job.thread, Cancelled)
                    return

    def _finish(self, job: Job) -> None:
        """Leave the cancellable state, clearing a ``Cancelled`` that is still pending."""
        while True:
            try:
                with self._jlock:
                    if job.state == _RUNNING:
                        job.state = _DONE
                        if self._jobs.get(job.request_id) is job:
                            del self._jobs[job.request_id]
                    if job.cancel_sent:
                        # No new exception can be set now (state is DONE); drop a pending one.
                        self._interrupt(job.thread, None)
                return
            except Cancelled:
                # Raised between the user code's end and the state change: try again.
                continue

    def _failure_reply(self, request_id: int, exc: BaseException) -> tuple:
        if isinstance(exc, RequestError):
            return _request_error_reply(request_id, exc)
        return error_reply(
            request_id,
            "python_error",
            _safe_str(exc),
            type_=type_name(type(exc)),
            traceback_lines=_format_traceback(exc),
        )

    def _marshal_result(self, job: Job, result: Any) -> list:
        if self._marshal_lock is None:
            return self._marshal_locked(job, result)
        # With several call threads, two calls returning the same new object must not both
        # find it without a ref and give it one each: finding and storing refs is serialised
        # (it holds the GIL anyway).
        with self._marshal_lock:
            return self._marshal_locked(job, result)

    def _marshal_locked(self, job: Job, result: Any) -> list:
        rid = job.request_id
        mode = job.mode
        t = type(result)
        session = job.session
        if mode == _REF:
            ref_id = self.table.existing_ref(session, result)
            if ref_id is None:
                ref_id = self.table.new_ref_id()
                reply = (REPLY, rid, OK, (REF_TAG, session.session_id, ref_id, type_name(t)))
                return self._stored(job, [(ref_id, result)], reply)
            return [(REPLY, rid, OK, (REF_TAG, session.session_id, ref_id, type_name(t)))]
        if t in _DATA:
            return [(REPLY, rid, OK, result)]
        marshal = _Marshal(self.table, session, mode == _AUTO, self.max_depth)
        value = marshal.convert(result, 0)
        if not marshal.new:
            return [(REPLY, rid, OK, value)]
        return self._stored(job, marshal.new, (REPLY, rid, OK, value))

    def _stored(self, job: Job, new: list[tuple[int, Any]], reply: tuple) -> list:
        """Store a result's new refs; return the reply preceded by any events."""
        session = job.session
        evicted = self.table.store(session, new)
        job.new_refs = [ref_id for ref_id, _ in new]
        out = []
        if evicted:
            out.append(_evicted_event(session.session_id, evicted))
        fill = self.table.fill_warning(session)
        if fill is not None:
            refs, limit = fill
            out.append(
                warning_event(
                    f"session {session.session_id!r} holds {refs} of its {limit} refs",
                    session=session.session_id,
                    refs=refs,
                    max_refs=limit,
                )
            )
        out.append(reply)
        return out


class _Marshal:
    """Turns one result into a term: data stays data, other objects become new refs."""

    __slots__ = ("table", "session", "sid", "auto", "max_depth", "seen", "new", "path")

    def __init__(self, table: SessionTable, session: Session, auto: bool, max_depth: int) -> None:
        self.table = table
        self.session = session
        self.sid = session.session_id
        self.auto = auto
        self.max_depth = max_depth
        self.seen: dict[int, tuple] = {}
        self.new: list[tuple[int, Any]] = []
        self.path: set[int] = set()

    def leaf(self, obj: Any, why: str = "") -> tuple:
        """Return the ref term for ``obj``: its existing ref in the session, or a new one."""
        if not self.auto:
            name = type_name(type(obj))
            raise RequestError(
                "not_encodable",
                why or f"the result holds a {name}, which cannot travel as data (result => value)",
                details={"type": name},
            )
        key = id(obj)
        ref = self.seen.get(key)
        if ref is None:
            ref_id = self.table.existing_ref(self.session, obj)
            if ref_id is None:
                ref_id = self.table.new_ref_id()
                self.new.append((ref_id, obj))
            ref = (REF_TAG, self.sid, ref_id, type_name(type(obj)))
            self.seen[key] = ref
        return ref

    def convert(self, value: Any, depth: int) -> Any:
        """Return the term for ``value`` at nesting ``depth``."""
        t = type(value)
        if t in _DATA:
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


# ----------------------------------------------------------------- term helpers


def _cancelled_reply(request_id: int) -> tuple:
    return error_reply(request_id, "cancelled", "the call was cancelled")


def _evicted_event(sid: str | bytes, ids: list[int]) -> tuple:
    return (
        EVENT,
        _A_REFS_EVICTED,
        {_A_COUNT: len(ids)},
        {_A_SESSION: sid, _A_REASON: _A_OVERFLOW, _A_REF_IDS: ids},
    )


def _info_term(info: SessionInfo) -> dict:
    term = dict(zip(_INFO_KEYS, info))
    term[_A_OVERFLOW] = _OVERFLOW_ATOMS[info.overflow]
    return term


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
