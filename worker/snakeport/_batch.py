"""How the reader waits for input: as a batch task while frames come several per read.

On one CPU, each request the VM writes wakes the blocked reader, and Linux lets a task that
wakes up preempt the one running: the worker takes the CPU from the VM's scheduler after
the first of a burst of requests, reads ~3 frames, answers them and blocks again, once per
few requests (64 callers, pinned: 0.3 involuntary switches of the VM per call, against 0.03
for the floor echo; bench/PROFILE.md). A task under ``SCHED_BATCH`` is never let preempt on
wake-up: it runs when the VM's scheduler sleeps or its time slice ends, and then finds the
whole burst. That halves the worker's CPU per call there and saves the VM some; but a
sequential caller waits for each reply, and a worker that cannot preempt waits for the VM's
scheduler to stop spinning (0.91x the calls/s); and with more than one CPU a woken worker
usually finds one idle, while one that waits for a busy (or spinning) scheduler's slice to
end answers later (16 callers on 2 vCPUs: ~0.92x). So the policy:

- the reader blocks in ``read`` under ``SCHED_BATCH`` only while the policy is engaged, and
  does everything else under its own policy: it is set right before the read and set back
  right after (two system calls, only while engaged), so no call runs under it and no
  thread the reader starts inherits it;
- every :data:`REVIEW_READS` reads the read loop asks :meth:`BatchWaits.review`, which
  looks at the frames per read since its last look (the dispatcher's request counter over
  the reads counted in :attr:`BatchWaits.reads`): it engages from :data:`ENGAGE` and lets
  go below :data:`RELEASE` (a sequential caller makes one frame per read; under
  ``SCHED_BATCH`` a burst makes many, so the policy stays engaged while the burst lasts),
  and only while the worker may run on one CPU only (its affinity, looked at in each
  review, as the spin policy does).

Both readers follow it: the read loop of ``snakeport._server``, and the C lane's own read
(``lane_read`` in ``_clane.c``), which counts its reads in C, adds them to
:attr:`BatchWaits.reads` when a review is due and leaves that read to the read loop, so
that no Python code runs inside its read. Only on Linux, and only when the worker started
under the normal policy (one started under another, e.g. with ``chrt``, keeps it);
``SNAKEPORT_NO_BATCH_WAITS=1`` turns it off. :class:`BatchWaits` is I/O-free given its two
callables; :func:`available` and :func:`wait_as_batch` ask the OS.
"""

from __future__ import annotations

import os

from snakeport._spin import usable_cpus

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Callable

__all__ = ["BatchWaits", "REVIEW_READS", "ENGAGE", "RELEASE", "NO_BATCH_WAITS_ENV", "available", "wait_as_batch"]

#: Reads between two looks of the policy.
REVIEW_READS = 512

#: Frames per read (over the last look's reads) from which the reader waits as a batch task.
ENGAGE = 2.0

#: Frames per read below which it waits as a normal task again.
RELEASE = 1.5

#: The environment variable that turns batch waits off (``1``).
NO_BATCH_WAITS_ENV = "SNAKEPORT_NO_BATCH_WAITS"

_BATCH = getattr(os, "SCHED_BATCH", None)
_OTHER = getattr(os, "SCHED_OTHER", None)


class BatchWaits:
    """Whether the reader's next reads wait under ``SCHED_BATCH`` (see the module doc).

    Args:
        requests: The request counter (a call returns the requests handled so far).
        cpus: How many CPUs the worker may run on (default: its affinity); for tests.

    Invariant: ``engaged`` changes only in :meth:`review`, and ``reads`` (the reads since
    the last review, but for the C lane's last ones, up to :data:`REVIEW_READS`) is reset
    only there; only the thread that reads touches them (the read loop before each read,
    the C lane every :data:`REVIEW_READS` reads and after each review), and only the read
    loop calls :meth:`review`.
    """

    __slots__ = ("_requests", "_cpus", "_seen", "engaged", "reads")

    def __init__(self, requests: Callable[[], int], cpus: Callable[[], int] = usable_cpus) -> None:
        self._requests = requests
        self._cpus = cpus
        self._seen = requests()
        self.engaged = False
        self.reads = 0

    def review(self) -> bool:
        """Look at the frames per read of the :attr:`reads` since the last review (and
        start counting again); return :attr:`engaged`.

        Returns:
            Whether the next reads wait as a batch task.
        """
        seen = self._requests()
        per_read = (seen - self._seen) / max(self.reads, 1)
        self._seen = seen
        self.reads = 0
        if self._cpus() > 1:
            self.engaged = False
        elif self.engaged:
            self.engaged = per_read >= RELEASE
        else:
            self.engaged = per_read >= ENGAGE
        return self.engaged


def available() -> bool:
    """Whether batch waits apply here: Linux's ``SCHED_BATCH``, the normal policy now, and
    not turned off by :data:`NO_BATCH_WAITS_ENV`."""
    if _BATCH is None or os.environ.get(NO_BATCH_WAITS_ENV, "") not in ("", "0"):
        return False
    try:
        return os.sched_getscheduler(0) == _OTHER
    except OSError:
        return False


_PARAM = os.sched_param(0) if _BATCH is not None else None


def wait_as_batch(on: bool) -> None:
    """Set the calling thread's policy: ``SCHED_BATCH`` when ``on``, else the normal one.

    Failures are ignored (the read then waits as it is).
    """
    try:
        os.sched_setscheduler(0, _BATCH if on else _OTHER, _PARAM)
    except OSError:
        pass
