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
- with ``threads`` > 1, a pool of call threads (``ThreadPoolExecutor``) runs the jobs that
  cannot run inline (at most ``threads`` at once; the pool may hold up to
  :data:`~snakeport._limits.MAX_TOOL_WAITS` more threads, for jobs that wait for tools);
- more loop threads, started when a job waits for an Elixir tool (below), which end after
  :data:`SPARE_IDLE` seconds without work once there are more than two.

Waiting for an Elixir tool (:meth:`Scheduler.suspend`, :meth:`Scheduler.resume`, called by
:mod:`snakeport._tools` on the job's own thread): the waiting job gives up its slot, so that
another job (the nested call that the tool makes back into Python, or any queued job) can
run meanwhile; the freed slot goes to a job that resumes first, then to a queued job (run
on the pool), else it is free. If the waiting thread holds the reading role, the role moves
at once to the stand-by, or to a new loop thread when there is none, and a new stand-by is
started when none is left, so that frames (the tool's answer among them) are always read.
When the answer arrives the job takes a slot again before it continues, waiting for one
with priority over queued jobs: ``threads`` bounds the jobs *executing*, not those waiting
for tools.

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
  only in :meth:`standby`, while ``inline_active`` (the reader is executing a job inline:
  set by the reader in ``place``/``_inline_ended_locked``, cleared when that job ends), and
  in :meth:`suspend`, called by the reader's inline job itself; so the role moves only away
  from a thread that is inside :meth:`run_inline` (or the C lane's inline call), and only to
  another loop thread (one in :meth:`standby`, or a new one), never back to a thread still
  inside its call. The frame
  splitter is the reader's alone: the C lane relies on this to hold a view of its buffer
  across an inline call (see :mod:`snakeport._lane`).
- I5 ``held`` holds encoded replies of inline jobs that ended while their thread still
  held the reading role; they go out with the reader's next batch (:meth:`flush_held`, or
  the C lane's own copy of it, which the lane runs when it took every complete frame
  buffered), or from the stand-by at its next look, whichever comes first. Whoever sends
  them takes the whole list out under :attr:`lock` (a new list in its place) and sends it
  after letting the lock go, so each reply goes out once.
- I6 Once ``draining`` is set (by the reader, in :meth:`drain`, which never returns to
  reading), the reading role never moves again (I4: the reader runs no inline job any
  more), so a thread inside :meth:`run_inline` then never holds the role.
- I7 ``inline_active`` says that the *reader* executes an inline job: it is cleared when the
  role moves (:meth:`standby`, :meth:`suspend`), and only the reader clears it when its
  inline job ends.
- I8 ``resuming`` not empty implies ``running == threads``: a job waits to resume only when
  no slot is free, and a freed slot goes to the first one waiting.
- I9 Only the *active* stand-by (``active_standby``) takes over reading; other loop threads
  in :meth:`standby` are spares that wait to become the active one, or end.

The C lane (:mod:`snakeport._lane`) does the common case of :meth:`Scheduler.place` and of
:meth:`Scheduler.inline_ended`, and :meth:`Scheduler.flush_held` without terms, itself, on
``running``, ``reader``, ``held``, ``_inline_seq``, ``_inline_active``, ``_standby_deep``,
``_pending``, ``_resuming`` and ``_draining``, under :attr:`Scheduler.lock`: a change to what
those mean, or to those three methods, must change ``lane_place``/``lane_ended``/
``lane_flush`` in ``_clane.c`` too.

Locks: :attr:`Scheduler.lock` is the one lock (``_wake``, where the stand-by waits, and
``_idle``, where :meth:`drain` waits, are conditions on it). While it is held the scheduler
calls nothing but ``more_input`` (a property read of the splitter, which takes no lock):
``execute``, ``send``, ``encode`` and the pool's ``submit`` run after it is let go. So it is
never held together with another lock of the worker (see :mod:`snakeport._server`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from snakeport import _limits as limits
from snakeport._jobs import Job

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable, NoReturn

__all__ = ["Scheduler", "STANDBY_DEEP_AFTER", "SPARE_IDLE"]

#: After this many looks without an inline call, the stand-by sleeps until woken.
STANDBY_DEEP_AFTER = 100
#: Seconds a spare loop thread (one more than the reader and the active stand-by) waits for
#: work before it ends, when there are more than two loop threads.
SPARE_IDLE = 10.0


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

    # Slots: the C lane reads and writes the fields of place() and inline_ended() in place
    # (a slot costs it a fraction of a generic attribute access; see slot_of in _clane.c).
    __slots__ = (
        "_active_standby",
        "_draining",
        "_encode",
        "_execute",
        "_fatal",
        "_idle",
        "_inline_active",
        "_inline_seq",
        "_loop_seq",
        "_loops",
        "_more_input",
        "_pending",
        "_pool",
        "_read",
        "_resumed",
        "_resuming",
        "_send",
        "_standby_deep",
        "_standbys",
        "_takeover_poll",
        "_threads",
        "_wake",
        "held",
        "lock",
        "reader",
        "running",
        "waiting",
    )

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
            self._pool = self._new_pool()
        self._read: Callable[[], None] | None = None
        self._loops = 0  # loop threads alive
        self._loop_seq = 0  # for thread names
        self._active_standby = 0  # ident of the stand-by that takes over reading (I9)
        self._standbys: set[int] = set()  # loop threads inside standby()
        self._resuming: deque[list] = deque()  # [granted] tickets of jobs waiting for a slot (I8)
        self._resumed = threading.Condition(self.lock)
        #: Jobs waiting for an Elixir tool's answer (their slots given up).
        self.waiting = 0

    def _new_pool(self) -> Any:
        from concurrent.futures import ThreadPoolExecutor  # not imported by 1-thread workers

        return ThreadPoolExecutor(
            max_workers=self._threads + limits.MAX_TOOL_WAITS, thread_name_prefix="snakeport-call"
        )

    # ------------------------------------------------------------ loop threads

    def start(self, read: Callable[[], None]) -> None:
        """Start the two loop threads; the first one holds the reading role.

        Args:
            read: The reader's work: reads and handles frames while the calling thread
                holds the reading role, returns when the role was taken over.
        """
        self._read = read
        with self.lock:
            self.reader = self._start_loop_locked()
            self._start_loop_locked()

    def _start_loop_locked(self) -> int:
        """Start one more loop thread (lock held; it starts once the lock is let go)."""
        self._loops += 1
        self._loop_seq += 1
        thread = threading.Thread(
            target=self._loop, args=(self._read,), name=f"snakeport-loop-{self._loop_seq}", daemon=True
        )
        thread.start()
        return thread.ident  # type: ignore[return-value]

    def _loop(self, read: Callable[[], None]) -> None:
        """A loop thread: read while holding the reading role, else stand by (or end)."""
        me = threading.get_ident()
        with self.lock:  # the starter publishes the reader under this lock
            pass
        try:
            while True:
                if self.reader == me:
                    read()
                elif not self.standby(me):
                    return
        except BaseException:  # noqa: BLE001 - a broken loop thread cannot be recovered
            self._fatal("the frame loop failed")

    def standby(self, me: int) -> bool:
        """Wait until the reader is stuck in an inline job (or hands the role over), then
        take the reading role.

        Meanwhile send the replies held back behind inline jobs (I5). Sleeps until woken
        by :meth:`place` after :data:`STANDBY_DEEP_AFTER` looks without an inline job. Only
        the active stand-by does this (I9); another loop thread here is a spare: it waits to
        become the active stand-by, and ends after :data:`SPARE_IDLE` seconds without work
        when there are more than two loop threads.

        Args:
            me: The calling loop thread's ident.

        Returns:
            True when the calling thread took the reading role; False when it must end.
        """
        with self.lock:
            self._standbys.add(me)
            try:
                return self._standby_locked(me)
            finally:
                self._standbys.discard(me)
                if self._active_standby == me:
                    self._active_standby = 0

    def _standby_locked(self, me: int) -> bool:
        """The loop of :meth:`standby` (lock held)."""
        seen = -1
        idle = 0
        spare_since = 0.0
        lock = self.lock
        while True:
            if self.reader == me:  # handed the role by suspend()
                self._wake.notify_all()  # a spare stand-by takes the active place
                return True
            if self._active_standby not in (0, me):
                # A spare (I9): wait for the active stand-by's place, or end.
                now = time.monotonic()
                if not spare_since:
                    spare_since = now
                elif now - spare_since >= SPARE_IDLE and self._loops > 2:
                    self._loops -= 1
                    return False
                self._wake.wait(SPARE_IDLE)
                continue
            self._active_standby = me
            spare_since = 0.0
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
                    self._take_over_locked(me)
                    return True
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

    def _take_over_locked(self, me: int) -> None:
        """The active stand-by becomes the reader (lock held); a spare may become active."""
        self.reader = me
        self._inline_active = False  # (I7) the new reader executes nothing yet
        self._active_standby = 0
        self._wake.notify_all()  # a spare stand-by takes the active place

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
            if self._threads == 1 or pool is None or (self.running == 1 and not self._more_input()):
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
            next_job, still_reader = self.inline_ended(self._execute(job), me)
            if next_job is None:
                return still_reader
            job = next_job

    def inline_ended(self, payloads: list | None, me: int) -> tuple[Job | None, bool]:
        """Account for an inline job that ended on the calling thread (:meth:`run_inline`,
        and the C lane, :mod:`snakeport._lane`): its frames are held when the thread still
        reads (sent first otherwise), and its slot goes to the next queued job or is freed.

        Args:
            payloads: The job's encoded frames, or ``None``.
            me: The calling thread's ident.

        Returns:
            ``(next job, still reader)``: a queued job this thread must run now (it keeps
            the slot), and whether the thread still holds the reading role.
        """
        with self.lock:
            if payloads and self.reader == me:  # (I6: never while draining)
                self.held.extend(payloads)  # sent with the rest of the read's replies
                payloads = None
            if not payloads:
                return self._inline_ended_locked(me)
        # No longer the reader: send before the slot is freed.
        self._send(payloads)
        with self.lock:
            return self._inline_ended_locked(me)

    def _inline_ended_locked(self, me: int) -> tuple[Job | None, bool]:
        """Account for an ended inline job (lock held): ``(next job, still reader)``."""
        still_reader = self.reader == me
        if still_reader:  # (I7) a thread that lost the role leaves the flag to the reader
            self._inline_active = False
        next_job = self._job_ended_locked()
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
        if self._resuming:  # (I8) the slot goes to a job that waited for a tool
            self._resuming.popleft()[0] = True
            self._resumed.notify_all()
            return None
        if self._pending:
            return self._pending.popleft()  # keeps the slot (I2, I3)
        self.running -= 1
        if self._draining:
            self._idle.notify_all()
        return None

    # -------------------------------------------------------- waits for tools

    def suspend(self, me: int) -> None:
        """Give up the slot of the job running on the calling thread, which is about to
        wait for an Elixir tool's answer (see the module doc).

        Must be followed by exactly one :meth:`resume` on the same thread. Call it where
        ``Cancelled`` cannot strike (see :mod:`snakeport._jobs`, tool waits).

        Args:
            me: The calling thread's ident.
        """
        submit: Job | None = None
        with self.lock:
            self.waiting += 1
            if self.reader == me:
                # Reading must go on (the tool's answer is a frame): hand the role to a
                # stand-by at once (it sees itself named reader when it wakes), or to a new
                # loop thread; keep a stand-by in reserve.
                self._inline_active = False  # (I7)
                target = self._active_standby or next(iter(self._standbys), 0)
                if target:
                    self.reader = target
                    if self._active_standby == target:
                        self._active_standby = 0
                    if len(self._standbys) < 2:
                        self._start_loop_locked()
                    self._wake.notify_all()
                else:
                    self.reader = self._start_loop_locked()
                    self._start_loop_locked()
            if self._resuming:  # (I8)
                self._resuming.popleft()[0] = True
                self._resumed.notify_all()
            elif self._pending:
                submit = self._pending.popleft()  # keeps the slot (I3); runs on the pool
                if self._pool is None:
                    self._pool = self._new_pool()
            else:
                self.running -= 1
                if self._draining:
                    self._idle.notify_all()
            pool = self._pool
        if submit is not None:
            pool.submit(self._pool_task, submit)

    def resume(self, me: int) -> None:
        """Take a slot again after :meth:`suspend`, waiting for one if none is free (before
        any queued job gets it).

        Args:
            me: The calling thread's ident.
        """
        with self.lock:
            self.waiting -= 1
            if self.running < self._threads:  # (I8: nobody waits to resume then)
                self.running += 1
                return
            ticket = [False]
            self._resuming.append(ticket)
            while not ticket[0]:
                self._resumed.wait()

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
