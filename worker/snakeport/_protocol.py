"""The wire vocabulary: the atoms the worker emits and the builders of its reply and event terms.

(``type_name``, ``encodable_text`` and ``safe_str``, which read users' objects for error
maps and ref terms, live in :mod:`snakeport._guard` and are re-exported here.)

I/O-free: plain Python terms in and out (no threads, no file descriptors, no user code).
Every atom the worker puts in a frame on its own comes from :data:`EMITTED_ATOMS` through
:func:`emit`; the atoms it only reads (request fields and options) are named here too, so
that ``docs/PROTOCOL.md`` has one Python counterpart. The shapes are those of
``docs/PROTOCOL.md``: replies ``{reply, Id, ok, Value}`` / ``{reply, Id, error, ErrorMap}``,
events ``{event, Name, Measurements, Metadata}``, the ready frame, and the worker's own
requests to the VM (``{tool_call, CallId, RequestId, Session, Name, Kwargs}`` and
``{tool_cancel, CallId}``).
"""

from __future__ import annotations

import os
import sys

from snakeport import PROTOCOL_VERSION, __version__
from snakeport._guard import encodable_text, safe_str, short, type_name
from snakeport._sessions import SessionInfo
from snakeport.errors import RequestError
from snakeport.types import Atom

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "EMITTED_ATOMS",
    "emit",
    "type_name",
    "encodable_text",
    "safe_str",
    "error_reply",
    "request_error_reply",
    "cancelled_reply",
    "protocol_error_event",
    "warning_event",
    "fill_warning_event",
    "evicted_event",
    "pruned_event",
    "info_term",
    "ready_term",
    "stats_term",
    "tool_call_term",
    "tool_cancel_term",
    "expire_reply_value",
    "batch_value",
    "log_event",
    "LOG_SOURCES",
    "OVERFLOW_POLICIES",
    "REPLY",
    "OK",
    "ERROR",
    "EVENT",
    "PONG",
    "READY",
    "REF_TAG",
    "SET_TAG",
    "ARRAY_TAG",
    "BLOB_TAG",
    "DATE_TAG",
    "TIME_TAG",
    "DATETIME_TAG",
    "TIMEDELTA_TAG",
    "DECIMAL_TAG",
    "UUID_TAG",
    "RANGE_TAG",
    "DATAFRAME_TAG",
    "SERIES_TAG",
    "INDEX_TAG",
    "EXT_TAG",
    "ARROW_TAG",
    "KIND_S",
    "KIND_U",
    "KIND_F",
    "KIND_C",
    "DECIMAL_NAN",
    "DECIMAL_SNAN",
    "DECIMAL_INF",
    "BYTES_TAG",
    "MODULE",
    "TOOL_REPLY",
]

#: Every atom the worker puts in its output on its own: ready frame, replies, errors, events,
#: reasons, causes, detail and context keys, session info and stats keys, policy names and
#: the atoms the codec uses for Python values. The VM decodes worker output with
#: ``binary_to_term(_, [safe])``, so each one must already exist there; the same list is in
#: ``docs/PROTOCOL.md`` (*Atoms the worker emits*) and in the harness, and tests keep the three
#: equal. Atoms that travel as user data (sent by the VM, or ``Atom`` values that a call
#: returns) are not part of it. The builders here refuse any other atom (an ``assert``: a
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
        "cancelled", "import_error", "attribute_error", "shutting_down", "not_allowed",
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
        "sessions", "rss_bytes", "uptime_ms", "in_flight", "requests", "fast_path",
        # the worker's requests to the VM (Python code calling Elixir tools)
        "tool_call", "tool_cancel",
        # expire_session reply keys (plus released)
        "expired", "idle_ms",
        # stream batches (the ok value of a call/method with batch_size, and of iter_next)
        "items", "done", "ref",
        # Python's output forwarded to the VM (log events): keys, sources
        "log", "level", "source", "logger", "request_id", "dropped", "logging", "warnings",
        "stdout", "stderr",
        # values: booleans, None, non-finite floats, reserved tags
        "true", "false", "nil", "infinity", "neg_infinity", "nan", "$snakeport_ref",
        "$snakeport_set", "$snakeport_array", "$snakeport_blob", "$snakeport_date",
        "$snakeport_time", "$snakeport_datetime", "$snakeport_timedelta", "$snakeport_decimal",
        "$snakeport_uuid", "$snakeport_range", "$snakeport_dataframe", "$snakeport_series",
        "$snakeport_index", "$snakeport_ext", "$snakeport_arrow",
        # array element kinds (Nx's notation) and the special Decimal coefficients
        "s", "u", "f", "c", "NaN", "sNaN", "inf",
    }
)


def emit(name: str) -> Atom:
    """Return the atom ``name``, which the worker may emit.

    Args:
        name: The atom's text.

    Returns:
        The :class:`~snakeport.types.Atom`.

    Raises:
        AssertionError: ``name`` is not in :data:`EMITTED_ATOMS`.
    """
    assert name in EMITTED_ATOMS, (
        f"the worker must not emit the atom {name!r}: the VM decodes with [safe] and may not "
        "know it; add it to EMITTED_ATOMS, docs/PROTOCOL.md and the harness first"
    )
    return Atom(name)


# Envelopes, values and reserved tags.
REPLY = emit("reply")
OK = emit("ok")
ERROR = emit("error")
EVENT = emit("event")
PONG = emit("pong")
READY = emit("snakeport_ready")
REF_TAG = emit("$snakeport_ref")
SET_TAG = emit("$snakeport_set")
ARRAY_TAG = emit("$snakeport_array")
BLOB_TAG = emit("$snakeport_blob")
DATE_TAG = emit("$snakeport_date")
TIME_TAG = emit("$snakeport_time")
DATETIME_TAG = emit("$snakeport_datetime")
TIMEDELTA_TAG = emit("$snakeport_timedelta")
DECIMAL_TAG = emit("$snakeport_decimal")
UUID_TAG = emit("$snakeport_uuid")
RANGE_TAG = emit("$snakeport_range")
DATAFRAME_TAG = emit("$snakeport_dataframe")
SERIES_TAG = emit("$snakeport_series")
INDEX_TAG = emit("$snakeport_index")
EXT_TAG = emit("$snakeport_ext")
ARROW_TAG = emit("$snakeport_arrow")
#: Array element kinds, Nx's notation: signed and unsigned integers, floats, complex.
KIND_S = emit("s")
KIND_U = emit("u")
KIND_F = emit("f")
KIND_C = emit("c")
#: The coefficients of the special Decimal values (as the Elixir ``decimal`` package names them).
DECIMAL_NAN = emit("NaN")
DECIMAL_SNAN = emit("sNaN")
DECIMAL_INF = emit("inf")

# Atoms the worker only reads (VM -> worker): never emitted, so not in EMITTED_ATOMS.
BYTES_TAG = Atom("$snakeport_bytes")
MODULE = Atom("module")  # getattr's {module, Name} target
A_RESULT = Atom("result")  # Opts key of the Python operations
A_AUTO = Atom("auto")
A_REF = Atom("ref")
A_VALUE = Atom("value")
A_ARROW = Atom("arrow")
TOOL_REPLY = Atom("tool_reply")  # the VM's answer to a tool_call (not a request)
A_BATCH_SIZE = Atom("batch_size")  # Opts keys of a stream's call/method and of iter_next
A_BATCH_BYTES = Atom("batch_bytes")

# Keys and values of replies and events (also read as open_session options).
A_REASON = emit("reason")
A_MESSAGE = emit("message")
A_TYPE = emit("type")
A_TRACEBACK = emit("traceback")
A_DETAILS = emit("details")
A_COUNT = emit("count")
A_SESSION = emit("session")
A_REF_IDS = emit("ref_ids")
A_RELEASED = emit("released")
A_CANCELLED = emit("cancelled")
A_REFS_PRUNED = emit("refs_pruned")
A_REFS_EVICTED = emit("refs_evicted")
A_TTL = emit("ttl")
A_OVERFLOW = emit("overflow")
A_PROTOCOL_ERROR = emit("protocol_error")
A_WARNING = emit("warning")
A_MAX_REFS = emit("max_refs")
A_TTL_SECONDS = emit("ttl_seconds")
A_TAGS = emit("tags")

TOOL_CALL = emit("tool_call")
TOOL_CANCEL = emit("tool_cancel")
A_EXPIRED = emit("expired")
A_IDLE_MS = emit("idle_ms")
A_ITEMS = emit("items")
A_DONE = emit("done")
A_REF_KEY = emit("ref")
A_LOG = emit("log")
A_LEVEL = emit("level")
A_SOURCE = emit("source")
A_LOGGER = emit("logger")
A_REQUEST_ID = emit("request_id")
A_DROPPED = emit("dropped")

#: The ``source`` of a log event: Python ``logging`` records, ``warnings``, lines written to
#: fd 1 or fd 2 (``print()``, C code, child processes), and the worker's own notices about
#: them (dropped lines).
LOG_SOURCES: dict[str, Atom] = {
    name: emit(name) for name in ("logging", "warnings", "stdout", "stderr", "snakeport")
}

#: Overflow policy atom -> the session table's policy name, and back.
OVERFLOW_POLICIES: dict[Atom, str] = {emit("error"): "error", emit("evict_lru"): "evict_lru"}
_OVERFLOW_ATOMS = {name: atom for atom, name in OVERFLOW_POLICIES.items()}

_INFO_KEYS = tuple(emit(k) for k in SessionInfo._fields)


# ----------------------------------------------------------------- error terms


def _details_term(details: dict) -> dict:
    """Details/context with atom keys; keys and atom values must be in :data:`EMITTED_ATOMS`."""
    out = {}
    for key, value in details.items():
        t = type(key)
        if t is str:
            key = emit(key)
        elif t is Atom:
            emit(str.__str__(key))
        if type(value) is Atom:
            emit(str.__str__(value))
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
            A_REASON: emit(reason),
            A_MESSAGE: message,
            A_TYPE: type_,
            A_TRACEBACK: traceback_lines or [],
            A_DETAILS: _details_term(details) if details else {},
        },
    )


def request_error_reply(request_id: int, err: RequestError) -> tuple:
    """Build the error reply of a :class:`~snakeport.errors.RequestError` (reason, details).

    Args:
        request_id: The request id.
        err: The error.

    Returns:
        The reply term.
    """
    return error_reply(request_id, err.reason, err.message, details=err.details)


def cancelled_reply(request_id: int) -> tuple:
    """Build the ``cancelled`` error reply of a cancelled call.

    Args:
        request_id: The call's request id.

    Returns:
        The reply term.
    """
    return error_reply(request_id, "cancelled", "the call was cancelled")


def protocol_error_event(reason: str, message: str) -> tuple:
    """Build ``{event, protocol_error, #{}, #{reason, message}}``.

    Args:
        reason: The reason atom's text (``decode_error``, ``frame_too_large``, ...).
        message: Human readable message.

    Returns:
        The event term.
    """
    return (EVENT, A_PROTOCOL_ERROR, {}, {A_REASON: emit(reason), A_MESSAGE: message})


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
    meta = {A_MESSAGE: message}
    meta.update(_details_term(context))
    return (EVENT, A_WARNING, {}, meta)


def fill_warning_event(session_id: str | bytes, refs: int, limit: int) -> tuple:
    """Build the ``warning`` event of a session that reached its fill threshold.

    Args:
        session_id: The session.
        refs: Refs it holds.
        limit: Its ``max_refs``.

    Returns:
        The event term.
    """
    return warning_event(
        f"session {short(session_id)} holds {refs} of its {limit} refs",
        session=session_id,
        refs=refs,
        max_refs=limit,
    )


def evicted_event(session_id: str | bytes, ref_ids: list[int]) -> tuple:
    """Build ``{event, refs_evicted, #{count}, #{session, reason => overflow, ref_ids}}``.

    Args:
        session_id: The session that lost refs.
        ref_ids: The evicted ref ids, oldest first.

    Returns:
        The event term.
    """
    return (
        EVENT,
        A_REFS_EVICTED,
        {A_COUNT: len(ref_ids)},
        {A_SESSION: session_id, A_REASON: A_OVERFLOW, A_REF_IDS: ref_ids},
    )


def pruned_event(session_id: str | bytes, ref_ids: list[int]) -> tuple:
    """Build ``{event, refs_pruned, #{count}, #{session, reason => ttl, ref_ids}}``.

    Args:
        session_id: The session that lost refs.
        ref_ids: The pruned ref ids.

    Returns:
        The event term.
    """
    return (
        EVENT,
        A_REFS_PRUNED,
        {A_COUNT: len(ref_ids)},
        {A_SESSION: session_id, A_REASON: A_TTL, A_REF_IDS: ref_ids},
    )


def info_term(info: SessionInfo) -> dict:
    """Build the ``SessionInfo`` map of ``open_session`` and ``session_info`` replies.

    Args:
        info: The session table's snapshot.

    Returns:
        The map.
    """
    term = dict(zip(_INFO_KEYS, info))
    term[A_OVERFLOW] = _OVERFLOW_ATOMS[info.overflow]
    return term


def ready_term(
    *, max_frame_bytes: int, threads: int, default_max_refs: int, default_ttl_seconds: int | float
) -> tuple:
    """Build the ready frame's term, ``{snakeport_ready, Version, Info}``.

    Args:
        max_frame_bytes: The worker's frame limit.
        threads: How many calls run at once.
        default_max_refs: ``max_refs`` of sessions that do not state one.
        default_ttl_seconds: ``ttl_seconds`` of sessions that do not state one.

    Returns:
        The term.
    """
    return (
        READY,
        PROTOCOL_VERSION,
        {
            emit("pid"): os.getpid(),
            emit("python"): sys.version.split()[0],  # (platform.python_version(), without importing platform: 2 ms of start)
            emit("snakeport"): __version__,
            emit("max_frame_bytes"): max_frame_bytes,
            emit("threads"): threads,
            emit("default_max_refs"): default_max_refs,
            emit("default_ttl_seconds"): default_ttl_seconds,
        },
    )


def stats_term(
    *,
    sessions: int,
    refs: int,
    rss_bytes: int,
    uptime_ms: int,
    threads: int,
    in_flight: int,
    requests: int,
    fast_path: bool,
) -> dict:
    """Build the ``Stats`` map of the ``stats`` reply.

    Args:
        sessions: Open sessions.
        refs: Live refs, all sessions.
        rss_bytes: The process's resident set size.
        uptime_ms: Milliseconds since the worker started.
        threads: How many calls run at once.
        in_flight: Calls queued or running.
        requests: Requests received so far.
        fast_path: Whether plain calls run on the C lane (:mod:`snakeport._lane`): false on
            a worker with ``--threads`` above 1, without the C extensions, or with
            ``SNAKEPORT_NO_LANE=1``.

    Returns:
        The map.
    """
    return {
        emit("sessions"): sessions,
        emit("refs"): refs,
        emit("rss_bytes"): rss_bytes,
        emit("uptime_ms"): uptime_ms,
        emit("pid"): os.getpid(),
        emit("threads"): threads,
        emit("in_flight"): in_flight,
        emit("requests"): requests,
        emit("fast_path"): fast_path,
    }


def tool_call_term(call_id: int, request_id: int, session_id: str | bytes, name: str, kwargs: dict) -> tuple:
    """Build the worker's request ``{tool_call, CallId, RequestId, Session, Name, Kwargs}``.

    Args:
        call_id: The tool call's id (chosen by the worker, unique among its tool calls).
        request_id: The id of the call whose Python code calls the tool.
        session_id: That call's session.
        name: The tool's name.
        kwargs: The tool's keyword arguments (marshalled: ``str`` keys, data or ref terms).

    Returns:
        The term.
    """
    return (TOOL_CALL, call_id, request_id, session_id, name, kwargs)


def tool_cancel_term(call_id: int) -> tuple:
    """Build ``{tool_cancel, CallId}``: the worker no longer waits for that tool call.

    Args:
        call_id: The tool call's id.

    Returns:
        The term.
    """
    return (TOOL_CANCEL, call_id)


def expire_reply_value(expired: bool, amount: float) -> dict:
    """Build the ``ok`` value of ``expire_session``.

    Args:
        expired: Whether the session was released.
        amount: The refs released (when ``expired``), else the session's idle seconds.

    Returns:
        ``#{expired => true, released => N}`` or ``#{expired => false, idle_ms => Ms}``.
    """
    if expired:
        return {A_EXPIRED: True, A_RELEASED: int(amount)}
    return {A_EXPIRED: False, A_IDLE_MS: int(amount * 1000)}


def batch_value(items: Any, done: bool, *, ref: Any = None, error: dict | None = None, first: bool = False) -> dict:
    """Build the ``ok`` value of a stream batch.

    Args:
        items: The marshalled items (a list).
        done: Whether the iterator is exhausted (or failed): no more batches.
        ref: The iterator's ref term (the first batch of a stream that is not done).
        error: The error map of the iterator's failure after ``items``, if any.
        first: Whether this answers the stream's ``call``/``method`` (then ``ref`` is
            always present: ``nil`` when ``done``).

    Returns:
        ``#{items => Items, done => Bool}``, plus ``ref`` (first batch) and ``error``.
    """
    value = {A_ITEMS: items, A_DONE: done}
    if first:
        value[A_REF_KEY] = ref
    if error is not None:
        value[ERROR] = error
    return value


def log_event(
    level: int,
    source: str,
    message: str,
    *,
    logger: str | None = None,
    session: str | bytes | None = None,
    request_id: int | None = None,
    dropped: int = 0,
) -> tuple:
    """Build ``{event, log, Measurements, Metadata}``: Python output for the VM's logger.

    Args:
        level: Python's level number (``logging.INFO`` is 20, ...).
        source: One of :data:`LOG_SOURCES`.
        message: The text (one line, or one record with its traceback).
        logger: The Python logger's name (``logging`` and ``warnings`` records).
        session: The session of the call that logged, when known.
        request_id: The request id of that call, when known.
        dropped: Lines dropped by the rate limit since the last report (measurement
            ``dropped``, on the report itself).

    Returns:
        The event term.
    """
    meta: dict = {A_LEVEL: level, A_SOURCE: LOG_SOURCES[source], A_MESSAGE: message}
    if logger is not None:
        meta[A_LOGGER] = logger
    if session is not None:
        meta[A_SESSION] = session
    if request_id is not None:
        meta[A_REQUEST_ID] = request_id
    return (EVENT, A_LOG, {A_DROPPED: dropped} if dropped else {}, meta)
