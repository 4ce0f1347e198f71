"""Python code calling Elixir tools: the worker's requests to the VM and the waits for them.

A running call asks the VM to run a tool (an Elixir function registered in the harness) and
waits for the answer, synchronously, on its own thread:

1. :meth:`ToolCalls.call` registers a waiter on the job (:meth:`~snakeport._jobs.Jobs.enter_wait`:
   from then on a cancel wakes it instead of raising ``Cancelled`` in the middle of this
   module's bookkeeping);
2. the keyword arguments are marshalled like a result (data stays data, other objects
   become refs of the call's session);
3. the job gives up its scheduler slot (:meth:`~snakeport._scheduler.Scheduler.suspend`:
   another job, e.g. the nested call the tool makes back into Python, can run; the reading
   role moves on if this thread held it);
4. ``{tool_call, CallId, RequestId, Session, Name, Kwargs}`` is sent, and the thread waits
   for ``{tool_reply, CallId, ok | error, Value}`` (delivered by the reader thread with
   :meth:`ToolCalls.deliver`), a cancel, or its deadline (``--tool-timeout`` plus
   :data:`~snakeport._limits.TOOL_GRACE`: the VM answers within its timeout);
5. it takes a slot again (:meth:`~snakeport._scheduler.Scheduler.resume`), unregisters the
   waiter (a cancel that came meanwhile raises ``Cancelled`` now), resolves the refs of the
   answer in the session and returns the value, or raises
   :class:`~snakeport.errors.ToolError`. A wait that ends without an answer (cancel,
   deadline) sends ``{tool_cancel, CallId}``, so that the VM stops the tool.

A thread of the job other than its own (user code that passed the context to a thread of
its own) may call tools too: it waits the same way, but the job keeps its slot (the job's
own thread is running, or waits for that thread).

Locks: :attr:`ToolCalls._lock` guards the table of waits; it is a leaf (nothing else is
taken while it is held). Waiters are ``threading.Event``-based and may be set under the
jobs' lock (a cancel) or this one (an answer).
"""

from __future__ import annotations

import itertools
import logging
import threading

from snakeport import _limits as limits
from snakeport._blobs import BlobReply
from snakeport._jobs import Failure
from snakeport._guard import short
from snakeport._marshal import DATA, marshal
from snakeport._protocol import OK, evicted_event, fill_warning_event, tool_call_term, tool_cancel_term
from snakeport._requests import AUTO
from snakeport._sessions import SessionTable
from snakeport._tagged import realize, substitute
from snakeport.errors import RequestError, ToolError, ToolTimeout

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["ToolCalls"]

log = logging.getLogger("snakeport")

_CANCELLED = object()


class _Wait:
    """One thread's wait for one tool's answer.

    Attributes:
        thread: The waiting thread's ident.
        event: Set when the answer (or a cancel) came.
        cancelled: Whether a cancel of the job woke it.
        reply: ``(ok, value, handles)`` once answered.
    """

    __slots__ = ("thread", "event", "cancelled", "reply")

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.event = threading.Event()
        self.cancelled = False
        self.reply: tuple[bool, Any, list] | None = None

    def cancel(self) -> None:
        """Wake the waiting thread: its job is cancelled."""
        self.cancelled = True
        self.event.set()


class ToolCalls:
    """The tool calls in flight of one worker.

    Args:
        send: ``send(terms)`` encodes and writes terms from any thread, raising when one
            cannot be encoded.
        table: The session table (kwargs are marshalled, answers resolved, in the call's
            session).
        jobs: The worker's :class:`~snakeport._jobs.Jobs` (waiters, cancel).
        suspend: ``suspend(thread_ident)`` gives up the job's slot.
        resume: ``resume(thread_ident)`` takes a slot again.
        timeout: The VM's timeout for a tool (seconds, ``--tool-timeout``).
        max_depth: Deepest nesting of kwargs marshalled as data.
        grace: Seconds waited beyond ``timeout``.
        max_waits: Most waits at once.

    Raises:
        ValueError: ``timeout`` is not a positive number.
    """

    def __init__(
        self,
        *,
        send: Callable[[list], None],
        table: SessionTable,
        jobs: Any,
        suspend: Callable[[int], None],
        resume: Callable[[int], None],
        timeout: float = limits.TOOL_TIMEOUT.default,
        max_depth: int = limits.MAX_DEPTH.default,
        grace: float = limits.TOOL_GRACE,
        max_waits: int = limits.MAX_TOOL_WAITS,
    ) -> None:
        self._send = send
        self._table = table
        self._jobs = jobs
        self._suspend = suspend
        self._resume = resume
        self.timeout = limits.TOOL_TIMEOUT.check(timeout)
        self._max_depth = max_depth
        self._grace = grace
        self._max_waits = max_waits
        self._lock = threading.Lock()
        self._waits: dict[int, _Wait] = {}
        self._ids = itertools.count(1)
        #: The event loop's thread (:mod:`snakeport._async`; 0 before it starts): a blocking
        #: tool call there would stop every task, so it is refused.
        self.event_loop_thread = 0

    @property
    def in_flight(self) -> int:
        """Tool calls waiting for their answer."""
        return len(self._waits)

    # ------------------------------------------------------------ job threads

    def call(self, job: Any, name: str, kwargs: dict[str, Any]) -> Any:
        """Run the Elixir tool ``name`` with ``kwargs`` for ``job`` and return its value.

        Args:
            job: The running job (:class:`~snakeport._jobs.Job`) on whose behalf the tool
                runs: its request id and session go to the VM.
            name: The tool's name.
            kwargs: Its keyword arguments.

        Returns:
            The tool's value (refs in it resolved to their objects).

        Raises:
            ToolError: The tool failed, is unknown, or its answer cannot be used;
                :class:`~snakeport.errors.ToolTimeout` when it did not answer in time.
            NoCallContext: The job is not running.
            Cancelled: The job was cancelled meanwhile.
        """
        if type(name) is not str or not name:
            raise TypeError(f"expected the tool name to be a non-empty str, got: {name!r}")
        me = threading.get_ident()
        if me == self.event_loop_thread:
            raise ToolError(
                name,
                "blocks_event_loop",
                "call_elixir_tool would block the event loop (every coroutine of the worker); "
                "in a coroutine, use: await snakeport.context().acall_elixir_tool(...)",
            )
        wait = _Wait(me)
        self._jobs.enter_wait(job, wait)
        # From here to leave_wait, no Cancelled strikes asynchronously in this thread.
        try:
            outcome = self._exchange(job, wait, name, kwargs)
        finally:
            self._jobs.leave_wait(job, wait)
        if outcome is _CANCELLED:
            from snakeport.errors import Cancelled

            raise Cancelled()
        if isinstance(outcome, ToolError):
            raise outcome
        return outcome

    def _exchange(self, job: Any, wait: _Wait, name: str, kwargs: dict[str, Any]) -> Any:
        """Send the request and wait: the value, a ToolError (returned) or _CANCELLED."""
        session = job.session
        sid = session.session_id
        try:
            blobs = False
            if type(kwargs) is dict and all(type(v) in DATA for v in kwargs.values()):
                value, events = kwargs, []
            else:
                stored = marshal(self._table, session, kwargs, AUTO, self._max_depth)
                value, events, blobs = stored.value, [], stored.blobs
                if stored.evicted:
                    events.append(evicted_event(sid, stored.evicted))
                if stored.fill is not None:
                    events.append(fill_warning_event(sid, *stored.fill))
        except RequestError as err:
            return ToolError(name, err.reason, f"the arguments cannot be sent: {err.message}", details=err.details)
        with self._lock:
            if len(self._waits) >= self._max_waits:
                return ToolError(name, "too_many_waits", f"{self._max_waits} tool calls are waiting already")
            call_id = next(self._ids)
            self._waits[call_id] = wait
        own = wait.thread == job.thread
        got = False
        sent = False
        try:
            if own:
                self._suspend(wait.thread)
            try:
                term = tool_call_term(call_id, job.request_id, sid, name, value)
                # Arrays' buffers travel after the term (written before this thread goes on).
                events.append(BlobReply(term) if blobs else term)
                self._send(events)
                sent = True
                got = wait.event.wait(self.timeout + self._grace)
            finally:
                if own:
                    self._resume(wait.thread)
        except Exception as exc:  # noqa: BLE001 - e.g. EncodeError of the kwargs
            return ToolError(name, "not_encodable", f"the request cannot be sent: {exc}")
        finally:
            with self._lock:
                self._waits.pop(call_id, None)
        if wait.cancelled or not got:
            if sent:
                try:
                    self._send([tool_cancel_term(call_id)])
                except Exception:  # noqa: BLE001 - the VM is gone; nothing to stop
                    log.debug("tool_cancel %d not sent", call_id)
            if wait.cancelled:
                return _CANCELLED
            return ToolTimeout(
                name,
                "timeout",
                f"no answer within {self.timeout + self._grace:g} s (the harness's :tool_timeout is {self.timeout:g} s)",
            )
        ok, answer, handles, deferred = wait.reply  # type: ignore[misc]
        if not ok:
            return _error_of(name, answer)
        if handles:
            try:
                self._table.resolve(sid, handles)
            except RequestError as err:
                return ToolError(name, err.reason, f"the answer holds an unusable ref: {err.message}", details=err.details)
            answer = substitute(answer)
        if deferred:
            try:
                answer = realize(answer)
            except Failure as err:
                return ToolError(name, "bad_reply", f"the answer cannot be built: {err.message}")
        return answer

    # ---------------------------------------------------------------- reader

    def deliver(self, call_id: int, ok: bool, value: Any, handles: list, deferred: bool = False) -> bool:
        """Hand a ``tool_reply`` to its waiting thread.

        Args:
            call_id: The tool call's id.
            ok: Whether the answer is ``ok`` (else ``error``, ``value`` its error map).
            value: The decoded value.
            handles: The ref handles of the frame (resolved by the waiting thread).
            deferred: Whether the value holds deferred values (arrays, frames), built by the
                waiting thread (:func:`~snakeport._tagged.realize`).

        Returns:
            False when no thread waits for that call (it gave up): the answer is dropped.
        """
        with self._lock:
            wait = self._waits.get(call_id)
            if wait is None or wait.reply is not None:
                return False
            wait.reply = (ok, value, handles, deferred)
            wait.event.set()
        return True

    def fail(self, call_id: int, reason: str, message: str) -> bool:
        """Answer a waiting tool call with an error of the worker (e.g. its answer could not
        be decoded).

        Returns:
            False when no thread waits for that call.
        """
        return self.deliver(call_id, False, {"reason": reason, "message": message}, [])


def _error_of(name: str, error: Any) -> ToolError:
    """The :class:`ToolError` of a ``tool_reply`` error map (reason, message, details)."""
    if type(error) is not dict:
        return ToolError(name, "bad_reply", f"malformed error answer: {short(error, 500)}")
    reason = _text(error.get("reason"), "tool_error")
    message = _text(error.get("message"), "")
    details = error.get("details")
    cls = ToolTimeout if reason == "timeout" else ToolError
    return cls(name, reason, message, details=details if type(details) is dict else {})


def _text(value: Any, default: str) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return default
