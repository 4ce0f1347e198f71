"""The spin policy: how long the reader polls its input before it blocks in ``readv``.

A blocked thread on a virtual machine pays tens of microseconds to be woken when its vCPU
went idle meanwhile; a request that arrives within the spin window skips that, which is
most of a sequential caller's round trip. The cost is CPU time, and on few CPUs that time
is taken from the process that writes the next frame; so the policy spins only while
spinning measurably pays:

- A spin pays when the next frame arrives within the window. It does not when the window
  runs out (the peer is slower than the window: the CPU time was wasted), or when a step
  took longer than :data:`YIELD_BUSY` (between polls the thread gives its CPU to any other
  runnable task with ``sched_yield``; a long step means another task ran: the CPU is busy,
  and a wake-up is cheap then). When most recent spins did not pay (a moving average above
  one half), the policy does not spin at all for :data:`SPIN_BACKOFF`, then tries again.
- On one CPU (the process's affinity allows one: ``taskset -c 0``) a spin can never pay:
  the peer needs that very CPU to write the frame. The policy then does not spin, and
  looks at the affinity again every :data:`SPIN_RECHECK`.
- A spin that finds its frame can still cost more than it saves: on two CPUs the spinning
  reader takes CPU time from the peer (the BEAM's schedulers), which then writes later.
  Only the outcome tells, so with a request counter (the server gives its own) the policy
  measures it: every :data:`TRIAL_EVERY` it runs a trial of :data:`TRIAL_BLOCKS` blocks of
  :data:`BLOCK_CYCLES` reads each, alternately without and with spinning, and keeps
  spinning until the next trial only if the wall time per request with spinning was below
  :data:`PAYS` times the time without (the median block of each side: one block slowed by
  something else, such as a first import while the worker warms up, does not decide the
  verdict). A gap longer than :data:`IDLE_GAP` between two
  reads (the peer was idle, not slow) restarts the block under way. Before the first trial
  ends the policy alternates, as in a trial.
- A trial's short blocks can favour spinning: a reader that spins for one block has taken
  little CPU time just before and wins the CPU from the peer, while one that spins all the
  time loses it (e.g. a ref's create, method and release, where the BEAM does more between
  requests than for plain calls). So spinning must keep paying: while it spins after a
  verdict, every :data:`SUSTAIN_BLOCKS` blocks (a window) the policy compares the wall time
  per request of the window's median block with the time per request without spinning that
  the trial measured, and stops spinning until the next trial when :data:`STRIKES`
  consecutive windows were not below it (``verdicts[2]`` counts these). One window is not
  enough: a trial's four blocks without spinning can be fast by chance, and one window
  slowed by a burst of other work on the machine then revoked a right verdict for up to
  :data:`TRIAL_EVERY` (seen with ref churn through the BEAM, 2026-12-03).

The server spins at most once after each batch of frames, and only when no call is
executing (a call on another thread would compete for the GIL); never while idle. The
BEAM's schedulers do the same (``+sbwt``).

Both the poll and the yield release the GIL. The clock, the yield and the CPU count are
injectable, for tests.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Callable

__all__ = [
    "SpinPolicy",
    "YIELD_BUSY",
    "SPIN_BACKOFF",
    "SPIN_RECHECK",
    "TRIAL_EVERY",
    "TRIAL_BLOCKS",
    "BLOCK_CYCLES",
    "PAYS",
    "SUSTAIN_BLOCKS",
    "STRIKES",
    "IDLE_GAP",
    "usable_cpus",
]

#: A spin step (poll + yield) longer than this means another task ran on the CPU (s).
YIELD_BUSY = 10e-6

#: How long the reader stops spinning when most recent spins did not pay (seconds).
SPIN_BACKOFF = 0.1

#: How often a reader allowed on one CPU only looks at its affinity again (seconds).
SPIN_RECHECK = 1.0

#: How often the policy measures whether spinning pays (seconds between trials).
TRIAL_EVERY = 1.0

#: Blocks of a trial, half without spinning and half with, alternating (even).
TRIAL_BLOCKS = 8

#: Reads (calls of :meth:`SpinPolicy.wait`) per block of a trial.
BLOCK_CYCLES = 64  # (16 measured a reader that had just slept: see SUSTAIN_BLOCKS)

#: Spinning pays when the time per request with it is below this fraction of the time
#: without it.
PAYS = 0.9

#: Blocks of sustained spinning (after a verdict that spinning pays) between two checks
#: that it still pays.
SUSTAIN_BLOCKS = 4

#: Consecutive windows of sustained spinning that did not pay before the policy stops.
STRIKES = 2

#: A gap between two reads longer than this means the peer was idle: the block restarts (s).
IDLE_GAP = 0.02

#: ``sched_yield`` where the OS has it (every POSIX system), else a no-op.
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity; ``os.cpu_count()`` without one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _median(values: list[float]) -> float:
    """The median of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


class SpinPolicy:
    """Polls one fd until it is readable or the spin window is over (see the module).

    Args:
        fd: The protocol input fd.
        spin_us: The spin window in microseconds (positive; the server makes no policy for
            ``--spin-us 0``).
        clock: Monotonic clock in seconds (default ``time.perf_counter``).
        yield_cpu: Gives the CPU to another runnable task (default ``os.sched_yield``).
        cpus: How many CPUs the process may run on (default :func:`usable_cpus`).
        requests: The number of requests read so far (a counter that only grows); with it
            the policy measures whether spinning pays (the trials of the module
            docstring), without it every spin is tried.

    Attributes:
        seconds: The spin window in seconds.
        unpaid: Moving average of the spins that did not pay (0..1): the window ran out, or
            the CPU was busy.
        resume: ``clock()`` time before which :meth:`wait` does not spin (backing off, or
            one CPU only).
        spinning: Whether the current block (or the last trial's verdict) spins.
        verdicts: How many trials ended, how many of them found that spinning pays, and how
            many of those verdicts sustained spinning revoked.

    Invariant: outside a trial ``spinning`` is the last trial's verdict, or False once
    sustained spinning stopped paying (until the next trial); in a trial it is False in
    even blocks and True in odd ones.

    The C lane (:mod:`snakeport._lane`) does not call :meth:`wait` while the clock is
    before ``resume`` (what :meth:`wait` looks at first, returning at once): a change to
    that must change ``spin_waits`` in ``_clane.c`` too.
    """

    __slots__ = (
        "seconds",
        "unpaid",
        "resume",
        "spinning",
        "verdicts",
        "_poll",
        "_clock",
        "_yield",
        "_cpus",
        "_requests",
        "_last",
        "_cycles",
        "_t0",
        "_n0",
        "_block",
        "_sums",
        "_next_trial",
        "_off_cost",
        "_window",
        "_strikes",
    )

    def __init__(
        self,
        fd: int,
        *,
        spin_us: int,
        clock: Callable[[], float] = time.perf_counter,
        yield_cpu: Callable[[], None] = _sched_yield,
        cpus: Callable[[], int] = usable_cpus,
        requests: Callable[[], int] | None = None,
    ) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll
        self._clock = clock
        self._yield = yield_cpu
        self._cpus = cpus
        self.seconds = spin_us / 1e6
        self.unpaid = 0.0
        self.resume = 0.0
        self._requests = requests
        self.spinning = requests is None  # (with a counter: the first block of a trial)
        self.verdicts = [0, 0, 0]
        self._last = self._t0 = -1e9  # (the first read restarts the block)
        self._cycles = self._n0 = 0
        self._block = 0  # the block of the trial under way; TRIAL_BLOCKS: no trial
        self._sums: tuple[list[float], list[float]] = ([], [])  # seconds per request of each
        # block without, then with spinning
        self._next_trial = 0.0
        self._off_cost = 0.0  # seconds per request without spinning, in the last trial
        self._window: list[float] = []  # seconds per request of each block spun in the window
        self._strikes = 0  # consecutive windows since the verdict that did not pay

    def _observe(self, now: float) -> None:
        """Account for the read that ends at ``now``: the trial's blocks and its verdict."""
        last, self._last = self._last, now
        if now - last > IDLE_GAP:  # the peer was idle: this block starts afresh
            self._cycles = 0
            self._t0 = now
            self._n0 = self._requests()  # type: ignore[misc]
            return
        self._cycles += 1
        if self._cycles < BLOCK_CYCLES:
            return
        n = self._requests()  # type: ignore[misc]
        if self._block < TRIAL_BLOCKS:  # a block of the trial ended: add it up
            if n > self._n0:  # (a block without requests tells nothing)
                self._sums[self.spinning].append((now - self._t0) / (n - self._n0))
            self._block += 1
            if self._block < TRIAL_BLOCKS:
                self.spinning = not self.spinning
            else:  # the verdict, until the next trial
                off, on = _median(self._sums[0]), _median(self._sums[1])
                self.spinning = off > 0.0 and on > 0.0 and on < PAYS * off
                self.verdicts[0] += 1
                self.verdicts[1] += self.spinning
                self._next_trial = now + TRIAL_EVERY
                self._off_cost = off
                self._window = []
                self._strikes = 0
        elif now >= self._next_trial:  # a new trial, from a block without spinning
            self._block = 0
            self._sums = ([], [])
            self.spinning = False
        elif self.spinning:  # spinning since a verdict: does it still pay?
            window = self._window
            if n > self._n0:  # (a block without requests tells nothing)
                window.append((now - self._t0) / (n - self._n0))
            if len(window) >= SUSTAIN_BLOCKS:
                if _median(window) < self._off_cost:
                    self._strikes = 0
                else:  # not even as fast as without
                    self._strikes += 1
                    if self._strikes >= STRIKES:  # not a burst: stop until the next trial
                        self.spinning = False
                        self.verdicts[2] += 1
                self._window = []
        self._cycles = 0
        self._t0 = now
        self._n0 = n

    def wait(self) -> None:
        """Return when the fd is readable, the window is over, or the CPU is busy.

        Returns at once when the fd is readable already, the policy backs off, or the
        process may run on one CPU only.
        """
        poll = self._poll
        clock = self._clock
        now = clock()
        if now < self.resume:
            return  # backing off: most recent spins did not pay (or one CPU only)
        if self._requests is not None:
            self._observe(now)  # (a back-off leaves a gap: the block under way restarts)
            if not self.spinning:
                return
        if poll(0):
            return
        if self._cpus() < 2:
            self.resume = now + SPIN_RECHECK  # the peer needs this CPU to write the frame
            return
        deadline = now + self.seconds
        yield_cpu = self._yield
        unpaid = 0.0
        while not poll(0):
            if now > deadline:
                unpaid = 1.0  # the window ran out: the peer is slower than the window
                break
            yield_cpu()
            before, now = now, clock()
            if now - before > YIELD_BUSY:
                unpaid = 1.0  # another task ran meanwhile: this CPU is not idle, sleep instead
                break
        # When most spins do not pay (other programs keep the CPU busy, or the frames come
        # slower than the window), a spin costs more than the wake-up it saves: stop
        # spinning for a while, then try again.
        average = self.unpaid = 0.9 * self.unpaid + 0.1 * unpaid
        if average > 0.5:
            self.unpaid = 0.0
            self.resume = now + SPIN_BACKOFF
