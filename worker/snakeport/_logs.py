"""The bounds of forwarded output: the rate limit and the line splitter (I/O-free).

With ``--forward-logs``, Python's output goes to the VM as ``log`` events
(:mod:`snakeport._output`). Whatever the program does (a loop printing a gigabyte, a library
logging in a tight loop), what reaches the VM and what the worker holds stay bounded:

- :class:`RateLimit`: a token bucket shared by every source; a line (or record) costs one
  token plus one per KiB. Lines beyond it are dropped and counted, and the count is reported
  (one ``log`` event with measurement ``dropped``) once tokens are back, at most once a
  ``report_interval``;
- :class:`LineBuffer`: splits the bytes read from a pipe into lines, keeping at most
  ``max_bytes`` of a line that has not ended yet (the rest is cut and counted), and can skip
  a whole chunk by counting its newlines (what the reader does while the bucket is empty:
  no per-line work at all);
- :func:`clip`: cuts one line or record to ``max_bytes``.

No threads are started and no file descriptors are read here; :class:`RateLimit` takes a
lock (a leaf) since logging happens on any thread.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Callable

__all__ = ["RateLimit", "LineBuffer", "clip", "line_cost"]


def line_cost(size: int) -> int:
    """Tokens one line of ``size`` bytes (or characters) costs: one, plus one per KiB."""
    return 1 + (size >> 10)


def clip(line: bytes, max_bytes: int) -> tuple[bytes, int]:
    """Cut a line to ``max_bytes``.

    Args:
        line: The line.
        max_bytes: Longest line kept.

    Returns:
        ``(line, bytes_cut)``.
    """
    if len(line) <= max_bytes:
        return line, 0
    return line[:max_bytes], len(line) - max_bytes


class RateLimit:
    """A token bucket with a count of what it refused.

    Args:
        rate: Tokens added per second.
        burst: Most tokens held (the bucket starts full).
        report_interval: Least seconds between two reports of dropped lines.
        monotonic: The clock (seconds); injectable for tests.

    Raises:
        ValueError: ``rate`` or ``burst`` is not positive.
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        report_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0 or not burst > 0:
            raise ValueError(f"expected rate and burst to be positive, got: {rate!r}, {burst!r}")
        self.rate = rate
        self.burst = burst
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._at = monotonic()
        self.report_interval = report_interval
        self._reported = self._at - report_interval
        #: Lines refused since the last :meth:`take_dropped`.
        self.dropped = 0

    def _refill_locked(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, cost: int) -> bool:
        """Spend ``cost`` tokens for one line, or count the line as dropped.

        Returns:
            Whether the line may go.
        """
        with self._lock:
            self._refill_locked()
            if self._tokens >= cost:
                self._tokens -= cost
                return True
            self.dropped += 1
            return False

    def exhausted(self) -> bool:
        """Whether not even a one-token line may go now."""
        with self._lock:
            self._refill_locked()
            return self._tokens < 1

    def drop(self, lines: int) -> None:
        """Count ``lines`` dropped without asking (a chunk skipped while exhausted)."""
        if lines:
            with self._lock:
                self.dropped += lines

    def take_dropped(self) -> int:
        """Return the count of dropped lines and reset it, when a report may go now (it
        costs one token, and comes ``report_interval`` after the last one at the earliest);
        else 0.

        Returns:
            The count to report, or 0.
        """
        with self._lock:
            if not self.dropped:
                return 0
            self._refill_locked()
            if self._tokens < 1 or self._at - self._reported < self.report_interval:
                return 0
            self._reported = self._at
            self._tokens -= 1
            dropped, self.dropped = self.dropped, 0
            return dropped


class LineBuffer:
    """Splits one pipe's bytes into lines (without their ``\\n``; a ``\\r`` before it is
    dropped too), holding at most ``max_bytes`` of an unfinished line.

    Args:
        max_bytes: Longest part of an unfinished line kept (positive).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"expected max_bytes to be a positive integer, got: {max_bytes!r}")
        self.max_bytes = max_bytes
        self._partial = b""
        self._cut = 0  # bytes of the unfinished line not kept

    def _hold(self, tail: bytes) -> None:
        """Append ``tail`` (no newline in it) to the unfinished line, within the bound."""
        room = self.max_bytes - len(self._partial)
        if len(tail) <= room:
            self._partial += tail
        else:
            self._partial += tail[: max(room, 0)]
            self._cut += len(tail) - max(room, 0)

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """The lines that ``data`` completes.

        Lines other than the first may be longer than ``max_bytes`` (at most ``data``'s
        length): cut them with :func:`clip` when they are used.

        Args:
            data: Bytes read from the pipe.

        Returns:
            ``(lines, first_cut)``: the complete lines, and the bytes already cut from the
            first one (an unfinished line that outgrew the bound).
        """
        parts = data.split(b"\n")
        tail = parts.pop()
        cut = 0
        if parts:
            first = parts[0]
            if self._partial or self._cut:
                self._hold(first)
                first, cut = self._partial, self._cut
                self._partial, self._cut = b"", 0
            parts[0] = first
            parts = [p[:-1] if p.endswith(b"\r") else p for p in parts]
        self._hold(tail)
        return parts, cut

    def skip(self, data: bytes) -> int:
        """Drop the lines ``data`` completes without splitting it (count its newlines).

        Returns:
            How many lines were completed (and dropped).
        """
        count = data.count(b"\n")
        if count:
            self._partial, self._cut = b"", 0
            self._hold(data[data.rfind(b"\n") + 1 :])
        else:
            self._hold(data)
        return count

    def flush(self) -> tuple[bytes, int] | None:
        """Take the unfinished line (e.g. a prompt written without ``\\n``).

        Returns:
            ``(line, bytes_cut)``, or ``None`` when there is none.
        """
        if not self._partial and not self._cut:
            return None
        out = (self._partial, self._cut)
        self._partial, self._cut = b"", 0
        return out
