"""``async def``: the worker's asyncio event loop and the jobs awaiting on it.

A call whose result is awaitable (calling a coroutine function, ``asyncio.sleep(...)``, a
method returning a coroutine or a future) is not answered with the awaitable: the job hands
it to the worker's one event loop (:class:`Awaits`) and gives up its scheduler slot, and its
reply is sent when the awaitable is done. So thousands of awaiting calls proceed at once in
one worker, on one thread, without a slot or a thread each.

The model:

- one event loop per worker, on its own thread (``snakeport-asyncio``), started on the
  first awaitable result; until then ``asyncio`` is not even imported;
- the call's code runs as usual (on the reader or a call thread, within ``--threads``) up
  to the moment it returns the awaitable; the awaitable then runs as a task of the loop, and
  the job holds no slot meanwhile (``--threads`` bounds the calls *executing* synchronously);
- the job stays in flight (``cancel`` finds it, ``stats`` counts it) and its session in use
  (no TTL expiry, the refs it was sent stay resolved) until the task is done; the result is
  marshalled and the reply sent from the loop thread;
- ``cancel`` (and so a VM timeout) cancels the task: ``asyncio.CancelledError`` is raised
  inside the coroutine at its current ``await``, its ``finally`` blocks run, and the reply is
  ``cancelled``. A coroutine that blocks the loop (``time.sleep`` in an ``async def``) delays
  every task of the worker, but not ``ping``/``cancel`` (the reader is another thread): the
  cancel is answered at once and takes effect at the coroutine's next ``await``;
- ``snakeport.context()`` works inside the coroutine (a ``contextvars`` variable names the
  job, inherited by the tasks it creates); Elixir tools are called there with
  ``await ctx.acall_elixir_tool(...)``, which waits on a thread of the loop's executor (the
  blocking ``call_elixir_tool`` is refused on the loop thread: it would stop every task).

Locks: :attr:`Awaits._lock` (starting the loop, the count of awaiting jobs) is a leaf. A
waiter's :meth:`_Await.cancel` is called under the jobs' lock and only schedules a callback
on the loop (``call_soon_threadsafe`` takes none of the worker's locks).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from types import CoroutineType

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["Awaits", "is_awaitable", "CURRENT_JOB"]

log = logging.getLogger("snakeport")

#: ``(job, tools)``: the job whose awaitable the current asyncio task runs and the worker's
#: tool calls (``None`` outside one), for ``snakeport.context()``; set in the task's own
#: context, so the tasks it creates inherit it.
CURRENT_JOB: contextvars.ContextVar[Any] = contextvars.ContextVar("snakeport_job", default=None)


def is_awaitable(obj: Any) -> bool:
    """Tell whether a result is awaitable (a coroutine, or its type has ``__await__``).

    Reads only the type (never calls user code on the object); a metaclass whose attribute
    lookup fails counts as not awaitable.

    Args:
        obj: A call's result.

    Returns:
        True for coroutines, asyncio futures and tasks, and any object with ``__await__``.
    """
    t = type(obj)
    if t is CoroutineType:
        return True
    try:
        return getattr(t, "__await__", None) is not None
    except BaseException:  # noqa: BLE001 - a metaclass's __getattr__ is user code
        return False


async def _drive(job: Any, tools: Any, awaitable: Any) -> Any:
    """The task of one job: names the job for ``snakeport.context()``, awaits the result."""
    CURRENT_JOB.set((job, tools))
    return await awaitable


class _Await:
    """A job's wait for its task: the waiter registered on the job (see
    :meth:`~snakeport._jobs.Jobs.enter_wait`), so that a cancel of the job cancels the task.

    Attributes:
        thread: The loop thread's ident (the job's ``thread`` while it awaits).
        cancelled: Whether the job was cancelled.
        task: The asyncio task, once created on the loop.
    """

    __slots__ = ("thread", "cancelled", "task", "_loop")

    def __init__(self, loop: Any, thread: int) -> None:
        self.thread = thread
        self.cancelled = False
        self.task: Any = None
        self._loop = loop

    def cancel(self) -> None:
        """Cancel the task (from any thread; the loop does it at its next turn)."""
        self.cancelled = True
        self._loop.call_soon_threadsafe(self._cancel_task)

    def _cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Awaits:
    """The worker's event loop and the jobs whose awaitables run on it.

    Args:
        complete: ``complete(job, result)``, called on the loop thread once a job's final
            state is set: builds and sends its reply (``result`` is the awaited value when
            the state is ``DONE``).
        on_start: Called with the loop thread's ident once the loop runs (the tool calls
            refuse to block that thread).

    Attributes:
        thread: The loop thread's ident (0 until the loop is started).
    """

    def __init__(self, *, complete: Callable[[Any, Any], None], on_start: Callable[[int], None] | None = None) -> None:
        self._complete = complete
        self._on_start = on_start
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop: Any = None
        self.thread = 0
        self.pending = 0
        self.jobs: Any = None  # the Jobs, set by Jobs when it is given this object

    # ------------------------------------------------------------- job threads

    def waiter(self) -> _Await:
        """A new waiter for a job about to hand its awaitable over (starts the loop first).

        Returns:
            The waiter (its ``thread`` is the loop thread).
        """
        loop = self._loop or self._start()
        return _Await(loop, self.thread)

    def submit(self, job: Any, wait: _Await, awaitable: Any) -> None:
        """Run ``awaitable`` as a task of the loop for ``job`` (whose waiter is ``wait``).

        Args:
            job: The job (registered as awaiting: its waiter is in ``job.waits``).
            wait: Its waiter.
            awaitable: What its code returned.
        """
        with self._lock:
            self.pending += 1
        self._loop.call_soon_threadsafe(self._begin, job, wait, awaitable)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every awaiting job to end (for ``shutdown``).

        Returns:
            How many still await.
        """
        with self._lock:
            self._idle.wait_for(lambda: self.pending == 0, timeout)
            return self.pending

    def _start(self) -> Any:
        """Start the loop thread (once); return the loop."""
        with self._lock:
            if self._loop is not None:
                return self._loop
            import asyncio  # first awaitable result: only now

            loop = asyncio.new_event_loop()
            started = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(loop, started), name="snakeport-asyncio", daemon=True
            )
            thread.start()
            started.wait()
            self.thread = thread.ident  # type: ignore[assignment]
            self._loop = loop
        if self._on_start is not None:
            self._on_start(self.thread)
        return loop

    # -------------------------------------------------------------- loop thread

    @staticmethod
    def _run(loop: Any, started: threading.Event) -> None:
        import asyncio

        asyncio.set_event_loop(loop)
        started.set()
        while True:
            try:
                loop.run_forever()
            except BaseException:  # noqa: BLE001 - SystemExit/KeyboardInterrupt of a task
                # asyncio lets these escape the loop (the task has them as its exception,
                # and its job fails with them): keep running the other tasks.
                log.debug("an exception left the event loop; running on", exc_info=True)

    def _begin(self, job: Any, wait: _Await, awaitable: Any) -> None:
        """On the loop: start the job's task (cancelled at once if the job was meanwhile)."""
        task = self._loop.create_task(_drive(job, self.jobs.tools, awaitable))
        wait.task = task
        if wait.cancelled:
            task.cancel()
        task.add_done_callback(functools.partial(self._done, job, wait))

    def _done(self, job: Any, wait: _Await, task: Any) -> None:
        """On the loop: the task is over; set the job's final state and send its reply."""
        try:
            result: Any = None
            exc: BaseException | None
            if task.cancelled():
                import asyncio

                exc = asyncio.CancelledError()
            else:
                exc = task.exception()
                if exc is None:
                    result = task.result()
            wait.task = None
            del task
            result = self.jobs.finish_awaited(job, wait, result, exc)
            del exc
            self._complete(job, result)
        except BaseException:  # noqa: BLE001 - a worker bug: never let the loop die
            log.exception("request %s: finishing its awaitable failed", job.request_id)
        finally:
            with self._lock:
                self.pending -= 1
                if not self.pending:
                    self._idle.notify_all()
