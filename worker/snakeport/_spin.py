"""The spin policy: how long the reader polls its input before it blocks in ``readv``.

A blocked thread on a virtual machine pays tens of microseconds to be woken when its vCPU
went idle meanwhile; a request that arrives within the spin window skips that, which is
most of a sequential caller's round trip. The cost is CPU time, mostly time that would be
idle otherwise: between polls the thread gives its CPU to any other runnable task
(``sched_yield``), and it stops spinning as soon as a step took longer than
:data:`YIELD_BUSY` (another task ran on the CPU: the CPU is busy, and a wake-up is cheap
then). When most spins end that way (a moving average above one half: other programs keep
the CPU busy), the policy does not spin at all for :data:`SPIN_BACKOFF`, then tries again.
The server spins at most once after each batch of frames, and only when no call is
executing (a call on another thread would compete for the GIL); never while idle. The
BEAM's schedulers do the same (``+sbwt``).

Both the poll and the yield release the GIL. The clock and the yield are injectable, for
tests.
"""

from __future__ import annotations

import os
import select
import time
from typing import Callable

__all__ = ["SpinPolicy", "YIELD_BUSY", "SPIN_BACKOFF"]

#: A spin step (poll + yield) longer than this means another task ran on the CPU (s).
YIELD_BUSY = 10e-6

#: How long the reader stops spinning when most spins found the CPU busy (seconds).
SPIN_BACKOFF = 0.1

#: ``sched_yield`` where the OS has it (every POSIX system), else a no-op.
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


class SpinPolicy:
    """Polls one fd until it is readable or the spin window is over (see the module).

    Args:
        fd: The protocol input fd.
        spin_us: The spin window in microseconds (positive; the server makes no policy for
            ``--spin-us 0``).
        clock: Monotonic clock in seconds (default ``time.perf_counter``).
        yield_cpu: Gives the CPU to another runnable task (default ``os.sched_yield``).

    Attributes:
        seconds: The spin window in seconds.
        busy: Moving average of the spins that ended because the CPU was busy (0..1).
        resume: ``clock()`` time before which :meth:`wait` does not spin (backing off).
    """

    __slots__ = ("seconds", "busy", "resume", "_poll", "_clock", "_yield")

    def __init__(
        self,
        fd: int,
        *,
        spin_us: int,
        clock: Callable[[], float] = time.perf_counter,
        yield_cpu: Callable[[], None] = _sched_yield,
    ) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll
        self._clock = clock
        self._yield = yield_cpu
        self.seconds = spin_us / 1e6
        self.busy = 0.0
        self.resume = 0.0

    def wait(self) -> None:
        """Return when the fd is readable, the window is over, or the CPU is busy.

        Returns at once when the fd is readable already or the policy backs off.
        """
        poll = self._poll
        if poll(0):
            return
        clock = self._clock
        now = clock()
        if now < self.resume:
            return  # backing off: most recent spins found the CPU busy
        deadline = now + self.seconds
        yield_cpu = self._yield
        busy = 0.0
        while not poll(0):
            if now > deadline:
                break
            yield_cpu()
            before, now = now, clock()
            if now - before > YIELD_BUSY:
                busy = 1.0  # another task ran meanwhile: this CPU is not idle, sleep instead
                break
        # When most spins find the CPU busy (other programs keep it so), a yield costs more
        # than the wake-up it saves: stop spinning for a while, then try again.
        average = self.busy = 0.9 * self.busy + 0.1 * busy
        if average > 0.5:
            self.busy = 0.0
            self.resume = now + SPIN_BACKOFF
