"""Python's output to the VM: ``logging``, ``warnings`` and fds 1 and 2 as ``log`` events.

With ``--forward-logs LEVEL`` (the harness's ``:python_log_level``), once the ready frame is
sent, :meth:`Output.install`:

- points fds 1 and 2 at two pipes that a thread (``snakeport-output``) reads: ``print()``,
  ``sys.stderr``, C code writing to fd 1 or 2 and child processes all land there, and each
  line becomes a ``log`` event (source ``stdout`` at ``INFO``, ``stderr`` at ``WARNING``);
  a line left unfinished is sent after :data:`IDLE` seconds without output;
- sets a handler on the root logger that sends each record as a ``log`` event (source
  ``logging``, the record's level and logger name, the session and request id of the call
  that logged, when it runs on a call's thread or in its coroutine), and routes
  ``warnings`` there (``logging.captureWarnings``: source ``warnings``); the root logger's
  level is ``LEVEL``;
- keeps the real stderr for the worker itself: the ``snakeport`` logger (``--log-level``)
  and ``faulthandler`` write there, so the worker's own messages, fatal ones included, are
  seen even when the VM side is gone.

Everything forwarded passes the bounds of :mod:`snakeport._logs` (a rate limit shared by
all sources, with a count of what it dropped, and lines cut to :data:`MAX_LINE_BYTES`), and
goes out with the server's ``send`` (events on the protocol channel, never raw bytes).

Not I/O-free: this module owns fds 1 and 2 and a thread. Locks: only the rate limit's (a
leaf); sending takes the writer's.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import sys
import threading

from snakeport import _limits as limits
from snakeport import _process as process
from snakeport._async import CURRENT_JOB
from snakeport._jobs import CURRENT
from snakeport._logs import LineBuffer, RateLimit, clip, line_cost
from snakeport._protocol import encodable_text, log_event

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Callable, TextIO

__all__ = ["Output", "ForwardHandler", "IDLE", "MAX_LINE_BYTES"]

log = logging.getLogger("snakeport")

#: Longest line (or record) forwarded, in bytes; the rest is cut, and the cut counted.
MAX_LINE_BYTES = limits.LOG_LINE_BYTES
#: Seconds without output after which an unfinished line is sent as it is.
IDLE = 0.2
#: Bytes read from a pipe at once.
_READ = 1 << 20

_STDOUT_LEVEL = logging.INFO
_STDERR_LEVEL = logging.WARNING


class ForwardHandler(logging.Handler):
    """The root logger's handler: each record to :meth:`Output.record` (thread-safe without
    the handler's own lock: records of different threads go out concurrently)."""

    def __init__(self, output: Output) -> None:
        super().__init__()
        self._output = output
        self.setFormatter(logging.Formatter("%(message)s"))

    def createLock(self) -> None:  # noqa: N802 - logging's name
        self.lock = None  # type: ignore[assignment]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)  # the message, and the traceback of exc_info
        except Exception:  # noqa: BLE001 - a broken __str__ in the args: logging's own report
            self.handleError(record)
            return
        source = "warnings" if record.name == "py.warnings" else "logging"
        self._output.record(record.levelno, source, text, record.name)


class Output:
    """Forwards Python's output to the VM (see the module doc).

    Args:
        send: ``send(terms)`` encodes and writes event terms (the server's).
        level: Least level forwarded (a ``logging`` level number).
        rate: Lines per second allowed (all sources together).
        burst: Lines allowed at once.
    """

    def __init__(
        self,
        send: Callable[[list], None],
        *,
        level: int,
        rate: float = limits.LOG_RATE,
        burst: int = limits.LOG_BURST,
    ) -> None:
        self._send = send
        self.level = level
        self.limit = RateLimit(rate=rate, burst=burst)
        self.real_stderr: TextIO | None = None

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Take fds 1 and 2 over, set the logging handler, start the reading thread."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - nothing to lose
                pass
        try:
            real_fd = os.dup(2)  # not inheritable: the children's fd 2 is the pipe
        except OSError:  # started without a stderr: the worker's own logs go nowhere
            real_fd = os.open(os.devnull, os.O_WRONLY)
        self.real_stderr = open(  # noqa: SIM115 - lives as long as the process
            real_fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1
        )
        pipes = {}
        for fd, source, level in ((1, "stdout", _STDOUT_LEVEL), (2, "stderr", _STDERR_LEVEL)):
            read_fd, write_fd = os.pipe()
            process.grow_pipe(write_fd)
            os.dup2(write_fd, fd)  # inheritable: child processes write there too
            os.close(write_fd)
            pipes[read_fd] = (source, level, LineBuffer(MAX_LINE_BYTES))
        self._own_logs()
        faulthandler.enable(self.real_stderr)
        root = logging.getLogger()
        root.handlers = [ForwardHandler(self)]
        root.setLevel(self.level)
        logging.captureWarnings(True)
        threading.Thread(target=self._pump, args=(pipes,), name="snakeport-output", daemon=True).start()

    def _own_logs(self) -> None:
        """The worker's own logger writes to the real stderr (never forwarded)."""
        root = logging.getLogger()
        own = logging.getLogger("snakeport")
        handler = logging.StreamHandler(self.real_stderr)
        formatter = next((h.formatter for h in root.handlers if h.formatter is not None), None)
        if formatter is not None:
            handler.setFormatter(formatter)
        own.setLevel(root.level)  # --log-level, before the root logger gets LEVEL
        own.addHandler(handler)
        own.propagate = False

    # ------------------------------------------------------------------ records

    def record(self, level: int, source: str, text: str, logger: str | None = None) -> None:
        """Forward one ``logging`` record or warning (from any thread).

        Args:
            level: Its level number.
            source: ``logging`` or ``warnings``.
            text: The formatted record.
            logger: The logger's name.
        """
        if level < self.level:
            return
        job = getattr(CURRENT, "job", None)
        if job is None:
            running = CURRENT_JOB.get()
            job = running[0] if running is not None else None
        session = request_id = None
        if job is not None:
            session, request_id = job.session.session_id, job.request_id
        cut = len(text) - MAX_LINE_BYTES
        if cut > 0:
            text = text[:MAX_LINE_BYTES]
        if not self.limit.take(line_cost(len(text))):
            return
        events = self._dropped_report()
        text = encodable_text(text.rstrip("\n"))
        if cut > 0:
            text += f" [... {cut} more characters]"
        events.append(log_event(level, source, text, logger=logger, session=session, request_id=request_id))
        self._send(events)

    def _dropped_report(self) -> list:
        dropped = self.limit.take_dropped()
        if not dropped:
            return []
        message = (
            f"{dropped} lines of Python output were dropped (more than {self.limit.rate:g} "
            f"lines a second, or {self.limit.burst} at once)"
        )
        return [log_event(logging.WARNING, "snakeport", message, dropped=dropped)]

    # -------------------------------------------------------------- the pipes

    def _line(self, source: str, level: int, line: bytes, cut: int) -> bool:
        """Forward one line of a pipe; False when the rate limit refused it."""
        line, more = clip(line, MAX_LINE_BYTES)
        cut += more
        if not self.limit.take(line_cost(len(line))):
            return False
        events = self._dropped_report()
        text = line.decode("utf-8", "backslashreplace")
        if cut:
            text += f" [... {cut} more bytes]"
        events.append(log_event(level, source, text))
        self._send(events)
        return True

    def _pump(self, pipes: dict[int, tuple[str, int, LineBuffer]]) -> None:
        """The reading thread: lines of fds 1 and 2 to ``log`` events, within the bounds."""
        poller = select.poll()
        for fd in pipes:
            poller.register(fd, select.POLLIN)
        idle_ms = int(IDLE * 1000)
        while True:
            try:
                ready = poller.poll(idle_ms)
                if not ready:
                    self._idle(pipes)
                    continue
                for fd, _ in ready:
                    self._read(fd, *pipes[fd])
            except Exception:  # noqa: BLE001 - never let the thread die
                log.exception("forwarding output failed")

    def _read(self, fd: int, source: str, level: int, buf: LineBuffer) -> None:
        try:
            data = os.read(fd, _READ)
        except InterruptedError:
            return
        if level < self.level:
            buf.skip(data)  # below the level: not forwarded, not counted
            return
        if self.limit.exhausted():
            self.limit.drop(buf.skip(data))
            return
        lines, cut = buf.feed(data)
        for i, line in enumerate(lines):
            if not self._line(source, level, line, cut):
                self.limit.drop(len(lines) - i - 1)
                return
            cut = 0

    def _idle(self, pipes: dict[int, tuple[str, int, LineBuffer]]) -> None:
        """No output for a while: send unfinished lines and the count of dropped ones."""
        for source, level, buf in pipes.values():
            partial = buf.flush()
            if partial is not None and level >= self.level and (partial[0] or partial[1]):
                self._line(source, level, partial[0], partial[1])
        events = self._dropped_report()
        if events:
            self._send(events)
