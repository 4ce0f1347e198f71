"""The scheduler: where each call runs (inline, on a call thread, or queued) and who reads.

Threads it owns:

- two *loop threads* share the frame-reading role (the process's main thread only waits).
  The one holding it (the *reader*) runs the server's read function, which reads frames,
  answers control requests at once and hands each job to :meth:`Scheduler.place`; a job
  that may run *inline* it runs itself with :meth:`Scheduler.run_inline`, which saves a
  thread hand-off (tens of microseconds) per call. The other loop thread *stands by*
  (:meth:`Scheduler.standby`): when it sees the reader busy in the same inline call for a
  whole ``takeover_poll``, it takes the reading role over, so control requests are still
  answered within a few milliseconds during a long call; the reader that lost the role
  finishes its call (and any queued ones) and becomes the stand-by;
- with ``threads`` > 1, a pool of ``threads`` call threads (``ThreadPoolExecutor``) runs
  the jobs that cannot run inline.

Placement of a job (:meth:`Scheduler.place`, called by the reader only): when ``threads``
jobs are executing, it is queued (arrival order); else it takes a slot and runs inline
when it is the only job executing and the reader has no more input buffered (always so
with ``threads == 1``), else on the pool. A thread whose job ends runs the next queued job
itself, keeping the slot; only when the queue is empty does it give the slot back.

Invariants (all state is guarded by :attr:`Scheduler.lock`):

- I1 ``0 <= running <= threads``: ``running`` counts the jobs holding a slot, executing
  inline or on the pool (or being handed from one to the next by the thread that runs them).
- I2 ``pending`` is appended to by the reader only (in :meth:`place`), and popped only by
  a thread whose job ended (in ``_job_ended_locked``), which keeps that job's slot.
- I3 ``pending`` not empty implies ``running == threads``: a job is queued only when
  ``running == threads``, and ``running`` drops only when ``pending`` is empty. Hence
  ``running == 0`` implies that no job executes and none is queued (the spin policy and
  ``drain`` rely on it), and ``place`` need not look at ``pending``.
- I4 ``reader`` is the ident of the loop thread holding the reading role. It changes hands
  only in :meth:`standby`, and only while ``inline_active`` (the reader is executing a job
  inline: set by the reader in ``place``/``_inline_ended_locked``, cleared when that job
  ends), so the role moves only away from a thread that is inside :meth:`run_inline`.
- I5 ``held`` holds encoded replies of inline jobs that ended while their thread still
  held the reading role; they go out with the reader's next batch (:meth:`flush_held`),
  or from the stand-by at its next look, whichever comes first.
- I6 Once ``draining`` is set (by the reader, in :meth:`drain`, which never returns to
  reading), the reading role never moves again (I4: the reader runs no inline job any
  more), so a thread inside :meth:`run_inline` then never holds the role.

Locks: :attr:`Scheduler.lock` is the one lock (``_wake``, where the stand-by waits, and
``_idle``, where :meth:`drain` waits, are conditions on it). While it is held the scheduler
calls nothing but ``more_input`` (a property read of the splitter, which takes no lock):
``execute``, ``send``, ``encode`` and the pool's ``submit`` run after it is let go. So it is
never held together with another lock of the worker (see :mod:`snakeport._server`).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, NoReturn

from snakeport import _limits as limits
from snakeport._jobs import Job

__all__ = ["Scheduler", "STANDBY_DEEP_AFTER"]

#: After this many looks without an inline call, the stand-by sleeps until woken.
STANDBY_DEEP_AFTER = 100


def _raise(what: str) -> NoReturn:
    raise  # noqa: PLE0704 - re-raises the exception being handled


class Scheduler:
    """Places jobs and runs them; owns the loop threads and the call pool.

    Args:
        threads: How many jobs execute at once (a positive integer).
        execute: ``execute(job)`` runs a job on the current thread and returns its encoded
            frames (or ``None`` when there are none).
        send: ``send(payloads)`` writes frames (``FrameWriter.send``).
        encode: ``encode(terms, None, payloads)`` appends the frames of ``terms`` to
            ``payloads`` and returns it (for :meth:`flush_held`).
        more_input: Tells whether the reader has input not yet handled (then a job does not
            run inline when a pool exists).
        fatal: Called with a message, inside an ``except``, when a loop or call thread
            fails (the server logs and ends the process); default: re-raise.
        takeover_poll: How often the stand-by looks at the reader (seconds).

    Attributes:
        lock: The one lock of the scheduling state.
        reader: Ident of the loop thread holding the reading role.
        running: Jobs holding a slot (I1).
        held: Encoded replies held back (I5).
    """

    def __init__(
        self,
        *,
        threads: int,
        execute: Callable[[Job], list | None],
        send: Callable[[list], None],
        encode: Callable[[list, Any, list], list],
        more_input: Callable[[], bool],
        fatal: Callable[[str], Any] = _raise,
        takeover_poll: float = limits.TAKEOVER_POLL,
    ) -> None:
        self._threads = limits.THREADS.check(threads)
        self._execute = execute
        self._send = send
        self._encode = encode
        self._more_input = more_input
        self._fatal = fatal
        self._takeover_poll = takeover_poll
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)  # the stand-by waits here
        self._idle = threading.Condition(self.lock)  # drain() waits here for running == 0
        self.reader = 0
        self.running = 0
        self._pending: deque[Job] = deque()
        self._inline_seq = 0  # bumped each time the reader starts a job inline
        self._inline_active = False
        self._standby_deep = False
        self._draining = False
        self.held: list = []
        self._pool: Any = None
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor  # not imported by 1-thread workers

            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="snakeport-call")

    # ------------------------------------------------------------ loop threads

    def start(self, read: Callable[[], None]) -> None:
        """Start the two loop threads; the first one holds the reading role.

        Args:
            read: The reader's work: reads and handles frames while the calling thread
                holds the reading role, returns when the role was taken over.
        """
        first = threading.Thread(target=self._loop, args=(read,), name="snakeport-loop-1", daemon=True)
        with self.lock:
            first.start()
            self.reader = first.ident  # type: ignore[assignment]
        threading.Thread(target=self._loop, args=(read,), name="snakeport-loop-2", daemon=True).start()

    def _loop(self, read: Callable[[], None]) -> None:
        """A loop thread: read while holding the reading role, else stand by."""
        me = threading.get_ident()
        with self.lock:  # start() publishes the first reader under this lock
            pass
        try:
            while True:
                if self.reader == me:
                    read()
                else:
                    self.standby(me)
        except BaseException:  # noqa: BLE001 - a broken loop thread cannot be recovered
            self._fatal("the frame loop failed")

    def standby(self, me: int) -> None:
        """Wait until the reader is stuck in an inline job, then take the reading role.

        Meanwhile send the replies held back behind inline jobs (I5). Sleeps until woken
        by :meth:`place` after :data:`STANDBY_DEEP_AFTER` looks without an inline job.

        Args:
            me: The calling loop thread's ident.
        """
        seen = -1
        idle = 0
        lock = self.lock
        with lock:
            while True:
                if self.held:  # replies held behind an inline job: send them now
                    held = self.held
                    self.held = []
                    lock.release()
                    try:
                        self._send(held)
                    finally:
                        lock.acquire()
                    continue
                if self._inline_active:
                    seq = self._inline_seq
                    if seq == seen:  # the same job has run for a whole poll: take over
                        self.reader = me
                        return
                    seen = seq
                    idle = 0
                else:
                    seen = -1
                    idle += 1
                if idle > STANDBY_DEEP_AFTER:
                    self._standby_deep = True
                    self._wake.wait()
                    self._standby_deep = False
                    idle = 0
                else:
                    self._wake.wait(self._takeover_poll)

    # -------------------------------------------------------------- placement

    def place(self, job: Job) -> bool:
        """Start, submit or queue a job (called by the reader only).

        Args:
            job: The job.

        Returns:
            True when the caller must run it now with :meth:`run_inline`.
        """
        with self.lock:
            if self.running >= self._threads:  # (I3: pending is empty otherwise)
                self._pending.append(job)
                return False
            self.running += 1
            pool = self._pool
            if pool is None or (self.running == 1 and not self._more_input()):
                self._inline_seq += 1
                self._inline_active = True
                if self._standby_deep:
                    self._wake.notify_all()
                return True
        pool.submit(self._pool_task, job)
        return False

    def run_inline(self, job: Job, me: int) -> bool:
        """Run a placed job, then queued ones, on the calling loop thread.

        Args:
            job: The job :meth:`place` said to run inline.
            me: The calling thread's ident.

        Returns:
            Whether the calling thread still holds the reading role.
        """
        while True:
            payloads = self._execute(job)
            with self.lock:
                if payloads and self.reader == me:  # (I6: never while draining)
                    self.held.extend(payloads)  # sent with the rest of the read's replies
                    payloads = None
                if not payloads:
                    next_job, still_reader = self._inline_ended_locked(me)
            if payloads:
                # No longer the reader: send before the slot is freed.
                self._send(payloads)
                with self.lock:
                    next_job, still_reader = self._inline_ended_locked(me)
            if next_job is None:
                return still_reader
            job = next_job

    def _inline_ended_locked(self, me: int) -> tuple[Job | None, bool]:
        """Account for an ended inline job (lock held): ``(next job, still reader)``."""
        self._inline_active = False
        next_job = self._job_ended_locked()
        still_reader = self.reader == me
        if next_job is not None and still_reader:
            self._inline_seq += 1
            self._inline_active = True
        return next_job, still_reader

    def _pool_task(self, job: Job) -> None:
        """Pool task: run a job, then queued ones while there are any."""
        try:
            next_job: Job | None = job
            while next_job is not None:
                payloads = self._execute(next_job)
                if payloads:
                    self._send(payloads)
                with self.lock:
                    next_job = self._job_ended_locked()
        except BaseException:  # noqa: BLE001 - the slot accounting would be lost
            self._fatal("a call thread failed")

    def _job_ended_locked(self) -> Job | None:
        """Account for an ended job (lock held); return the next queued job to run."""
        if self._pending:
            return self._pending.popleft()  # keeps the slot (I2, I3)
        self.running -= 1
        if self._draining:
            self._idle.notify_all()
        return None

    # ---------------------------------------------------------------- output

    def flush_held(self, terms: list | None = None) -> None:
        """Send ``terms`` and the replies held back by inline jobs, as one batch.

        Args:
            terms: Reply and event terms to encode and send with them.
        """
        with self.lock:
            held = self.held
            self.held = []
        if terms:
            held = self._encode(terms, None, held)
        if held:
            self._send(held)

    # ---------------------------------------------------------------- shutdown

    def drain(self, terms: list, timeout: float) -> int:
        """Stop reading for good, send ``terms`` and held replies, wait for running jobs.

        Called by the reader (I6).

        Args:
            terms: Terms to send first (the ``cancelled`` replies of queued jobs).
            timeout: Longest wait for running jobs (seconds).

        Returns:
            How many jobs still run after the wait (0 when all ended).
        """
        with self.lock:
            self._draining = True
        self.flush_held(terms)
        with self.lock:
            self._idle.wait_for(lambda: self.running == 0, timeout)
            return self.running
