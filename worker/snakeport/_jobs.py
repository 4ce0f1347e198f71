"""Jobs and cancellation: running a Python operation on a thread, and interrupting it.

Not I/O-free, on purpose: this is where user code runs (imports, attribute lookups, the
call itself), where ``Cancelled`` is raised in another thread (:func:`async_raise`:
``PyThreadState_SetAsyncExc``), and where a short-lived thread retries a cancel held back
by an import. The op handlers (:mod:`snakeport._dispatch`) build each :class:`Job`; the
scheduler decides on which thread :meth:`Jobs.run` runs it.

A job's life: ``QUEUED`` (registered, waiting for a thread) -> ``RUNNING`` (the user code
runs; ``Cancelled`` may strike at any bytecode) -> one final state, set under the lock when
the code is over: ``DONE`` (a result), ``FAILED`` (an exception), ``INTERRUPTED`` (cancelled
while running, or a cancel answered ``cancelled => true`` was still held back) or
``CANCELLED`` (cancelled while queued; its ``cancelled`` reply was given by the cancel).
Only the final states leave the in-flight table, so ``in_flight`` counts queued and running
jobs. Exactly one reply comes of every job.

While a job's code runs, :data:`CURRENT` (a thread-local) names the job and its
:class:`Jobs`, so that ``snakeport.context()`` (:mod:`snakeport._context`) can reach them.

Awaitable results (:mod:`snakeport._async`): when a job's code returns an awaitable (only
results that are not plain data are looked at), :meth:`Jobs.run` hands it to the event loop
and returns :data:`AWAITING`: the job stays ``RUNNING`` (its ``thread`` is then the loop
thread, and a waiter on the job makes a cancel cancel its task) until
:meth:`Jobs.finish_awaited` sets its final state, on the loop thread.

Waits for Elixir tools (:mod:`snakeport._tools`): a thread of a running job that waits for
a tool's answer registers a waiter on the job (:meth:`Jobs.enter_wait`). While the job's own
thread has one registered, a cancel does not raise ``Cancelled`` asynchronously in it (it
could strike inside the worker's bookkeeping there, e.g. the scheduler's slot accounting):
it wakes the waiters instead, and :meth:`Jobs.leave_wait` raises ``Cancelled`` in the
thread once the bookkeeping is done.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import traceback
from types import CoroutineType

from snakeport import _limits as limits
from snakeport._async import is_awaitable
from snakeport._guard import encodable_text, exact_str, safe_str, type_name
from snakeport._protocol import error_reply, request_error_reply
from snakeport._sessions import Session
from snakeport.errors import Cancelled, NoCallContext, NotAllowed, RequestError

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

    from snakeport._allow import AllowList

__all__ = [
    "Job",
    "AttributeJob",
    "Jobs",
    "Failure",
    "QUEUED",
    "RUNNING",
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "CANCELLED",
    "async_raise",
    "in_import_machinery",
    "import_module",
    "lookup",
    "format_traceback",
    "thread_stack",
    "failure_reply",
    "CURRENT",
    "AWAITING",
]

# Job states (see the module docstring).
QUEUED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = 0, 1, 2, 3, 4, 5

#: Leading traceback frames in these files are the worker's own (left out of replies).
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_modules = sys.modules

#: What :meth:`Jobs.run` returns for a job whose awaitable went to the event loop.
AWAITING: Any = object()

#: Results of these exact types are never awaitable (plain data and built-in containers):
#: the only ones not looked at further.
_PLAIN = frozenset(
    {int, float, str, bytes, bytearray, bool, type(None), list, tuple, dict, set, frozenset}
)

_get_ident = threading.get_ident

#: ``CURRENT.job`` is the job whose code the current thread runs (``None`` otherwise), and
#: ``CURRENT.jobs`` its :class:`Jobs`: set by :meth:`Jobs.run` around the job's code.
CURRENT = threading.local()


class Job:
    """One Python operation (``call``, ``method``, ``getattr``, ``setattr``) and its state.

    Attributes:
        request_id: The request's id.
        session: The request's session.
        fn: Runs the operation and returns its raw result (dropped when it starts, so that
            the job keeps no argument alive past its request).
        mode: How to marshal the result (auto, ref, value or arrow; see :mod:`snakeport._requests`).
        state: One of the states of the module docstring.
        thread: ``threading.get_ident()`` of the thread running it.
        failure: The exception it raised (state ``FAILED``), until the reply is built.
        cancel_sent: Whether ``Cancelled`` was raised (or is pending) in that thread.
        cancel_deferred: Whether a cancel waits for the thread to leave an import.
        new_refs: Ids of the refs its result added to the session.
        ref_ids: Ids of the refs the request used (target, arguments), refreshed when it
            ends (:meth:`~snakeport._sessions.SessionTable.checkin`).
        waits: The waiters of its threads waiting for Elixir tools (see the module doc);
            each has ``thread`` (an ident), ``cancelled`` and ``cancel()``.
    """

    __slots__ = (
        "request_id",
        "session",
        "fn",
        "mode",
        "state",
        "thread",
        "failure",
        "cancel_sent",
        "cancel_deferred",
        "new_refs",
        "ref_ids",
        "waits",
    )

    def __init__(
        self, request_id: int, session: Session, fn: Callable[[], Any], mode: int, ref_ids: Any = ()
    ) -> None:
        self.request_id = request_id
        self.session = session
        self.fn: Callable[[], Any] | None = fn
        self.mode = mode
        self.state = QUEUED
        self.thread = 0
        self.failure: BaseException | None = None
        self.cancel_sent = False
        self.cancel_deferred = False
        self.new_refs: list[int] = []
        self.ref_ids = ref_ids
        self.waits: Any = ()  # a new list each change (no allocation for jobs that never wait)

    #: Whether an awaitable result is awaited (see the module doc): for calls, methods,
    #: ``eval`` and streams, which *call* something; not for :class:`AttributeJob`.
    awaits_result = True

    def __repr__(self) -> str:
        return f"Job(id={self.request_id}, state={self.state})"


class AttributeJob(Job):
    """A ``getattr`` or ``setattr`` job: an awaitable attribute is a value like any other
    (reading ``obj.future`` does not wait for the future)."""

    __slots__ = ()
    awaits_result = False


def async_raise(thread_ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in another Python thread at its next bytecode (``None`` clears it).

    ``PyThreadState_SetAsyncExc``, called by the C lane's module, else through ``ctypes``
    (imported on the first cancel only: ctypes and libffi cost a worker some 0.35 MB).

    Args:
        thread_ident: ``threading.get_ident()`` of the target thread.
        exc: Exception class to raise, or ``None`` to clear a pending one.
    """
    if _c_async_raise is not None:
        _c_async_raise(thread_ident, exc)
        return
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_ident), ctypes.py_object(exc) if exc is not None else None
    )


try:
    from snakeport._clane import async_raise as _c_async_raise
except ImportError:  # the C lane's module is not built: ctypes
    _c_async_raise = None


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


# ------------------------------------------------------- what a job's code calls


class Failure(RequestError):
    """A request error caused by a Python exception (``import_error``, ``attribute_error``).

    Attributes:
        cause: The exception; its type and traceback go into the error reply.
    """

    def __init__(self, reason: str, cause: BaseException) -> None:
        super().__init__(reason, safe_str(cause))
        self.cause = cause


def import_module(module: str) -> Any:
    """Import a module for a call (runs the module's code on its first import).

    Args:
        module: The dotted module name.

    Returns:
        The module.

    Raises:
        Failure: ``import_error``, whatever the import raised (except ``Cancelled``).
    """
    found = _modules.get(module)
    if found is not None and not getattr(getattr(found, "__spec__", None), "_initializing", False):
        return found  # fast path: imported already and fully initialised
    try:
        return importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001 - any failure of the import is import_error
        if issubclass(type(exc), Cancelled):  # (not isinstance: it would read exc.__class__)
            raise
        raise Failure("import_error", exc) from None


def lookup(obj: Any, path: str, allow: AllowList | None = None, root: str | None = None) -> Any:
    """Follow a dotted attribute path (``"Path.cwd"``) from ``obj``.

    Args:
        obj: A module or any object.
        path: Attribute names joined with dots.
        allow: The worker's allow-list, if any: each object reached is checked
            (:meth:`~snakeport._allow.AllowList.lookup`).
        root: ``obj``'s dotted name when it is a module imported by name (for ``allow``).

    Returns:
        The attribute.

    Raises:
        Failure: ``attribute_error``.
        NotAllowed: ``allow`` refuses an object reached.
    """
    try:
        if allow is not None:
            return allow.lookup(obj, path, root)
        if "." not in path:  # the common case: one attribute
            return getattr(obj, path)
        for part in path.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise Failure("attribute_error", exc) from None
    return obj


def format_traceback(exc: BaseException) -> list[str]:
    """Format ``exc`` with its traceback, leaving out the worker's own leading frames.

    Reads source lines (``linecache``) and runs user code (the exception's ``__str__``, its
    attributes, ``str`` subclasses it returns); never raises.

    Args:
        exc: The exception.

    Returns:
        The lines (exact ``str``), as Python prints them.
    """
    try:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            tb = tb.tb_next
        text = exact_str("".join(traceback.format_exception(type(exc), exc, tb)))
        if text is not None:
            return encodable_text(text).splitlines()
    except BaseException:  # noqa: BLE001 - user code may raise anything, SystemExit included
        pass
    return [f"{type_name(type(exc))}: <traceback could not be formatted>"]


def failure_reply(request_id: int, exc: BaseException, prefix: str = "") -> tuple:
    """Build the error reply of a job whose code raised ``exc``; never raises.

    Args:
        request_id: The job's request id.
        exc: A :class:`Failure` (its reason, with the cause's type and traceback), a
            :class:`~snakeport.errors.NotAllowed` (``not_allowed``), or any other exception
            (``python_error``).
        prefix: Put before the message (what the worker was doing).

    Returns:
        The reply term.
    """
    if type(exc) is NotAllowed:  # (raised by the allow-list as the code reached an object)
        return request_error_reply(request_id, exc)
    if type(exc) is Failure:
        cause = exc.cause
        return error_reply(
            request_id,
            exc.reason,
            prefix + exc.message,
            type_=type_name(type(cause)),
            traceback_lines=format_traceback(cause),
            details=exc.details,
        )
    return error_reply(
        request_id,
        "python_error",
        prefix + safe_str(exc),
        type_=type_name(type(exc)),
        traceback_lines=format_traceback(exc),
    )


def thread_stack(thread_ident: int, *, limit: int = 30) -> str:
    """The Python stack of a thread, innermost frame last, as ``traceback`` prints it.

    Reads ``sys._current_frames()``: no user code runs, except a module loader's
    ``get_source`` when a frame's source line is not cached (guarded: whatever it raises,
    ``BaseException`` too, gives a placeholder).

    Args:
        thread_ident: ``threading.get_ident()`` of the thread.
        limit: At most this many innermost frames.

    Returns:
        The formatted stack, or a one-line note when the thread has no Python frame (it
        ended, or runs no Python code) or the stack could not be read.
    """
    try:
        frame = sys._current_frames().get(thread_ident)
        if frame is None:
            return "  (no Python frame: the thread ended or runs no Python code)\n"
        summary = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=limit)
        summary.reverse()
        return "".join(summary.format())
    except BaseException as exc:  # noqa: BLE001 - a loader's get_source is user code
        return f"  (the stack could not be read: {type_name(type(exc))})\n"


# ------------------------------------------------------------------- the jobs


class Jobs:
    """The jobs in flight (queued or running): running them, cancelling them.

    One lock (:attr:`lock`) guards every job's state and the in-flight table; it is never
    held while user code runs, and no other lock is taken while it is held, except the
    internal lock of a waiter's ``threading.Event`` (a leaf: set, never waited on, there).

    Args:
        interrupt: ``interrupt(thread_ident, exc_or_None)`` raises or clears an
            asynchronous exception in a thread (default :func:`async_raise`).
        uninterruptible: Tells whether a thread must not be interrupted now (default
            :func:`in_import_machinery`).
        retry_interval: Seconds between two tries of a cancel held back by an import.
    """

    def __init__(
        self,
        *,
        interrupt: Callable[[int, type[BaseException] | None], None] = async_raise,
        uninterruptible: Callable[[int], bool] = in_import_machinery,
        retry_interval: float = limits.CANCEL_RETRY_INTERVAL,
    ) -> None:
        self._interrupt = interrupt
        self._uninterruptible = uninterruptible
        self._retry_interval = retry_interval
        #: Guards job states, their waiters, :attr:`_jobs` and :attr:`_cancelled`.
        self.lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        #: Running jobs that were cancelled and not yet looked at again by
        #: :meth:`slow_cancels`: request id -> (job, monotonic time of the cancel).
        self._cancelled: dict[int, tuple[Job, float]] = {}
        #: The Elixir tool calls of the worker (a :class:`~snakeport._tools.ToolCalls`, set
        #: by the server), for ``snakeport.context()``; ``None`` when there are none.
        self.tools: Any = None
        #: The event loop of awaitable results (a :class:`~snakeport._async.Awaits`, set by
        #: the server); ``None``: awaitables are results like any other object.
        self.awaits: Any = None

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        return len(self._jobs)

    def add(self, job: Job) -> Job:
        """Register a new (queued) job.

        Args:
            job: The job.

        Returns:
            The job.
        """
        with self.lock:
            self._jobs[job.request_id] = job
        return job

    def run(self, job: Job) -> Any:
        """Run a job's code on the current thread and leave it in a final state.

        ``Cancelled`` may strike at any bytecode from the moment the job is ``RUNNING``
        until its final state is set; every such point is inside this method's loop, and a
        pending one is cleared before it returns, so nothing leaks to the caller.

        Args:
            job: A registered job (each job runs at most once).

        Returns:
            The code's result when the final state is ``DONE``; else ``None`` (the state
            says why; ``FAILED`` leaves the exception in ``job.failure``).
        """
        result: Any = None
        interrupted = False
        started = False
        lock = self.lock
        current = CURRENT
        while True:
            try:
                try:
                    if not started:
                        started = True
                        with lock:
                            if job.state != QUEUED:  # cancelled while queued: already answered
                                return None
                            job.state = RUNNING
                            job.thread = _get_ident()
                        fn = job.fn
                        job.fn = None  # the job keeps no argument alive past its request
                        current.jobs = self
                        current.job = job
                        result = fn()  # type: ignore[misc]
                        del fn
                        # (`in _PLAIN` hashes the type: only for types of plain metaclass, whose
                        # hash is type's own; a user metaclass's is user code, run later, guarded.)
                        t = type(result)
                        if (type(t) is not type or t not in _PLAIN) and self.awaits is not None and self._hand_over(job, result):
                            current.job = None
                            return AWAITING
                except Cancelled:
                    interrupted = True
                except BaseException as exc:  # noqa: BLE001 - user code may raise anything
                    job.failure = exc
                current.job = None
                return self._final(job, result, interrupted)
            except Cancelled:
                # Raised between the code's end and the final state: try again.
                interrupted = True

    def end_lane(self, job: Job, result: Any, interrupted: bool) -> Any:
        """The end of :meth:`run` for a job whose code the C lane ran on this thread and
        whose result is not plain data (:mod:`snakeport._lane`): an awaitable goes to the
        event loop, else the final state is set as :meth:`run` sets it.

        Args:
            job: The job (``RUNNING`` on this thread, named in :data:`CURRENT`).
            result: What its code returned.
            interrupted: Whether a ``Cancelled`` struck already (the lane calls again with
                True when one struck as this method started).

        Returns:
            :data:`AWAITING`, or as :meth:`run`.
        """
        handed = interrupted
        while True:
            try:
                try:
                    if not handed:
                        handed = True
                        if self.awaits is not None and self._hand_over(job, result):
                            CURRENT.job = None
                            return AWAITING
                except Cancelled:
                    interrupted = True
                except BaseException as exc:  # noqa: BLE001 - as in run()
                    job.failure = exc
                CURRENT.job = None
                return self._final(job, result, interrupted)
            except Cancelled:
                interrupted = True

    def abandon(self, job: Job, exc: BaseException) -> None:
        """End a job of the C lane that the worker itself failed to finish
        (:mod:`snakeport._lane`): it leaves :data:`CURRENT` and the table, ``FAILED`` with
        ``exc`` unless its state is final already (a pending ``Cancelled`` is cleared).

        Args:
            job: The job (registered by the lane; queued, running on this thread, or ended).
            exc: What failed.
        """
        if getattr(CURRENT, "job", None) is job:
            CURRENT.job = None
        with self.lock:
            if job.state == QUEUED:  # (the lane failed before it started the job)
                job.state = RUNNING
            if job.state == RUNNING and job.failure is None:
                job.failure = exc
        self._final(job, None, False)

    def _final(self, job: Job, result: Any, interrupted: bool) -> Any:
        """Set the final state of a job whose code ran on this thread (see :meth:`run`);
        return ``result`` when it is ``DONE``, else ``None``."""
        with self.lock:
            if job.state == RUNNING:
                # A cancel answered ``cancelled => true`` makes the reply ``cancelled``,
                # also when it was still held back (the thread never left importlib) when
                # the code ended.
                if interrupted or job.cancel_sent or job.cancel_deferred:
                    job.state = INTERRUPTED
                elif job.failure is not None:
                    job.state = FAILED
                else:
                    job.state = DONE
            # Outside the `if`: a Cancelled that struck after the final state was set and
            # before this (an earlier cancel's exception, delivered late) brings us back
            # here with the state final; the job must still leave the table.
            jobs, rid = self._jobs, job.request_id
            if jobs.get(rid) is job:
                del jobs[rid]
            if job.cancel_sent:
                # No new exception can be set now (final state); drop a pending one.
                self._interrupt(job.thread, None)
        return result if job.state == DONE else None

    def _hand_over(self, job: Job, result: Any) -> bool:
        """Give an awaitable result to the event loop (see the module doc).

        Returns:
            False when ``result`` is not awaitable (nothing done); True once it is handed.

        Raises:
            Cancelled: The job was cancelled before it could be handed (the awaitable is
                closed unstarted).
        """
        if not job.awaits_result or not is_awaitable(result):
            return False
        awaits = self.awaits
        wait = awaits.waiter()
        with self.lock:
            cancelled = job.cancel_sent or job.cancel_deferred
            if not cancelled:
                job.thread = wait.thread
                job.waits = [*job.waits, wait]
        if cancelled:
            if type(result) is CoroutineType:
                result.close()  # never started: runs no code, and no "never awaited" warning
            raise Cancelled()
        awaits.submit(job, wait, result)
        return True

    def finish_awaited(self, job: Job, wait: Any, result: Any, exc: BaseException | None) -> Any:
        """Set the final state of a job whose awaitable is done (on the loop thread).

        Args:
            job: The job.
            wait: Its waiter (unregistered here).
            result: The awaited value (when ``exc`` is ``None``).
            exc: The exception the awaitable ended with (``CancelledError`` when its task
                was cancelled), or ``None``.

        Returns:
            ``result`` when the final state is ``DONE``; else ``None`` (``FAILED`` leaves
            the exception in ``job.failure``; a cancel answered ``cancelled => true`` makes
            the state ``INTERRUPTED`` whatever the task did).
        """
        with self.lock:
            job.waits = [w for w in job.waits if w is not wait]
            if job.state == RUNNING:
                if job.cancel_sent or job.cancel_deferred:
                    job.state = INTERRUPTED
                elif exc is not None:
                    job.failure = exc
                    job.state = FAILED
                else:
                    job.state = DONE
                if self._jobs.get(job.request_id) is job:
                    del self._jobs[job.request_id]
        return result if job.state == DONE else None

    def cancel(self, request_id: int) -> tuple[bool, bool]:
        """Cancel a job in flight.

        A queued job is cancelled at once; a running one gets ``Cancelled`` raised in its
        thread (held back while the thread is inside importlib, then retried).

        Args:
            request_id: The job's request id.

        Returns:
            ``(found, was_queued)``: whether the job was in flight, and whether it was
            still queued (its ``cancelled`` reply is then the caller's to send).
        """
        with self.lock:
            job = self._jobs.get(request_id)
            if job is None:
                return False, False
            return True, self._cancel_locked(job)

    def cancel_all(self) -> list[int]:
        """Cancel every job in flight (for ``shutdown``).

        Returns:
            The request ids of the jobs that were still queued (the caller sends their
            ``cancelled`` replies; running ones reply when they end).
        """
        with self.lock:
            return [job.request_id for job in list(self._jobs.values()) if self._cancel_locked(job)]

    def cancel_session(self, session_id: str | bytes) -> list[int]:
        """Cancel every job in flight of one session (for ``release_session``).

        Looks at every job in flight (O(in_flight)); returns at once, without waiting for
        the running ones to end.

        Args:
            session_id: The released session's id.

        Returns:
            The request ids of its jobs that were still queued (the caller sends their
            ``cancelled`` replies; running ones reply when they end).
        """
        with self.lock:
            if not self._jobs:
                return []
            return [
                job.request_id
                for job in list(self._jobs.values())
                if job.session.session_id == session_id and self._cancel_locked(job)
            ]

    def _cancel_locked(self, job: Job) -> bool:
        """Cancel one job (lock held); return True when it was still queued."""
        if job.state == QUEUED:
            job.state = CANCELLED
            job.fn = None  # a queued job keeps no argument alive until a thread drops it
            del self._jobs[job.request_id]
            return True
        if job.state == RUNNING and not job.cancel_sent and not job.cancel_deferred:
            self._cancelled[job.request_id] = (job, time.monotonic())
            if job.waits:
                self._cancel_waits_locked(job)
            elif self._uninterruptible(job.thread):
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

    def slow_cancels(
        self, now: float | None = None, *, after: float = limits.CANCEL_REPORT_AFTER
    ) -> list[tuple[Job, float]]:
        """The running jobs whose cancel is at least ``after`` seconds old, each given once.

        Jobs that ended since their cancel are forgotten here; so is each job returned, so
        that a job stuck for good is reported once. The table holds the jobs in flight that
        were cancelled while running, and, until the next look here (the watchdog's, every
        0.2 s), those of them that ended since.

        Args:
            now: The current ``time.monotonic()`` (default: read it).
            after: Seconds since the cancel.

        Returns:
            ``(job, seconds since its cancel)`` of each such job.
        """
        if not self._cancelled:
            return []
        now = time.monotonic() if now is None else now
        slow = []
        with self.lock:
            for rid, (job, since) in list(self._cancelled.items()):
                if job.state != RUNNING or self._jobs.get(rid) is not job:
                    del self._cancelled[rid]
                elif now - since >= after:
                    del self._cancelled[rid]
                    slow.append((job, now - since))
        return slow

    def _deferred_cancel(self, job: Job) -> None:
        """Interrupt ``job`` as soon as its thread has left the import machinery."""
        while True:
            time.sleep(self._retry_interval)
            with self.lock:
                if job.state != RUNNING:
                    return
                if job.waits:
                    self._cancel_waits_locked(job)
                    return
                if not self._uninterruptible(job.thread):
                    job.cancel_sent = True
                    self._interrupt(job.thread, Cancelled)
                    return

    # ---------------------------------------------------------- tool waits

    def _cancel_waits_locked(self, job: Job) -> None:
        """Cancel a running job that has threads waiting for Elixir tools (lock held).

        The waiters are woken; ``Cancelled`` is raised asynchronously only when the job's
        own thread is not one of them (it then runs user code, or the worker's code outside
        a wait); otherwise :meth:`leave_wait` raises it when that thread's wait is over.
        """
        job.cancel_sent = True
        own = False
        for wait in job.waits:
            wait.cancel()
            own = own or wait.thread == job.thread
        if not own:
            self._interrupt(job.thread, Cancelled)

    def enter_wait(self, job: Job, wait: Any) -> None:
        """Register a waiter of ``job``: from now on a cancel wakes it (see the module doc).

        Args:
            job: The running job.
            wait: The waiter (``thread``: the waiting thread's ident; ``cancelled``;
                ``cancel()``).

        Raises:
            NoCallContext: The job is not running (it ended, or has not started).
            Cancelled: The job is being cancelled (nothing was registered).
        """
        with self.lock:
            if job.state != RUNNING:
                raise NoCallContext(f"the call {job.request_id} is not running any more")
            if job.cancel_sent or job.cancel_deferred:
                raise Cancelled()
            job.waits = [*job.waits, wait]

    def leave_wait(self, job: Job, wait: Any) -> None:
        """Unregister a waiter; when a cancel woke it and it is the job's own thread, raise
        ``Cancelled`` there (asynchronously: at its next bytecode, in the code that called
        the tool).

        Args:
            job: The job.
            wait: A waiter registered with :meth:`enter_wait`.
        """
        with self.lock:
            job.waits = [w for w in job.waits if w is not wait]
            if wait.cancelled and wait.thread == job.thread and job.state == RUNNING:
                self._interrupt(job.thread, Cancelled)

