"""The worker process: protocol fds, reader loop, executor, writer, sweep and watchdog.

Everything that touches a file descriptor or a thread lives here; request handling itself is
in :mod:`snakeport._dispatch` and framing in :mod:`snakeport._framing`.

Threads:

- two *loop threads* share the frame-reading role (the main thread only waits); the one
  that holds it reads frames, answers control requests at once, and runs a Python operation
  itself ("inline") when no other call is executing, which saves a thread hand-off (tens of
  microseconds) per call. The other one stands by: when it sees the reader busy in the same
  inline call for ``_TAKEOVER_POLL`` seconds, it takes the reading role over, so control
  requests are still answered within a few milliseconds during a long call. The reader that
  lost the role finishes its call and becomes the stand-by;
- with ``--threads N`` > 1, a ``ThreadPoolExecutor`` of N threads runs the calls that cannot
  run inline (another call is executing, or more frames are already buffered). At most N
  calls execute at once; the rest wait in arrival order and are started by the thread whose
  call ends;
- a sweep thread prunes refs past their TTL every ``--sweep-interval`` seconds;
- a watchdog thread ends the process when the parent process dies.

Before the reader blocks in ``readv`` for the next frame, it polls the input for up to
``--spin-us`` microseconds (when no call is executing). A blocked thread on a virtual machine
pays tens of microseconds to be woken when its vCPU went idle meanwhile; a request that
arrives within the spin window skips that, which is most of a sequential caller's round trip.
The cost is CPU time, mostly time that would be idle otherwise: the thread yields its CPU
between polls and stops spinning as soon as another task took the CPU meanwhile (then the CPU
is busy and a wake-up is cheap); when most spins end that way (other programs keep the CPU
busy), it does not spin at all for ``_SPIN_BACKOFF``, then tries again. At most one spin
window follows each batch of frames, none while idle (``--spin-us 0`` turns it off). The
BEAM's schedulers do the same (``+sbwt``).

Every thread writes its own frames through one :class:`FrameWriter`, which batches frames
queued while another thread is writing into a single ``os.writev``.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import select
import stat
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, NamedTuple, NoReturn

from snakeport import etf
from snakeport._dispatch import (
    OK,
    REPLY,
    Dispatcher,
    Job,
    TagContext,
    error_reply,
    protocol_error_event,
    warning_event,
)
from snakeport._framing import FrameSplitter, Oversized
from snakeport._sessions import SessionTable
from snakeport.errors import EncodeError

__all__ = ["Config", "Server", "FrameWriter", "claim_stdio", "grow_pipe", "F_SETPIPE_SZ"]

log = logging.getLogger("snakeport")

#: ``fcntl`` command that sets a pipe's capacity (Linux).
F_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_pack_header = struct.Struct(">I").pack

#: Largest payload a ``{packet, 4}`` frame can carry.
_MAX_PACKET = 0xFFFFFFFF

#: Capacity requested for the protocol pipes.
PIPE_SIZE = 1 << 20

#: Most buffers one ``writev`` call takes (Linux ``IOV_MAX``).
_IOV_MAX = 1024

#: How often the watchdog looks at the parent pid (seconds).
_WATCHDOG_INTERVAL = 0.2

#: How long ``shutdown`` waits for cancelled calls to reply before exiting (seconds).
_SHUTDOWN_GRACE = 2.0

#: The stand-by loop thread looks at the reader this often (seconds); a call running inline
#: for this long gets the reading role taken over.
_TAKEOVER_POLL = 0.002

#: After this many looks without an inline call, the stand-by sleeps until woken.
_STANDBY_DEEP_AFTER = 100

#: Longest accepted ``--spin-us`` (a second: longer spins only burn CPU).
_MAX_SPIN_US = 1_000_000

#: A spin step (poll + yield) longer than this means another task ran on the CPU (s).
_YIELD_BUSY = 10e-6

#: How long the reader stops spinning when most spins found the CPU busy (seconds).
_SPIN_BACKOFF = 0.1

#: ``sched_yield`` where the OS has it (every POSIX system), else a no-op.
_sched_yield = getattr(os, "sched_yield", lambda: None)

#: Highest recursion limit set for a large ``--max-depth``.
_MAX_RECURSION = 20_000


class _ConfigFields(NamedTuple):
    max_frame_bytes: int = 256 * 1024 * 1024
    threads: int = 1
    default_max_refs: int = 10_000
    default_ttl_seconds: float = 3600
    sweep_interval: float = 1.0
    max_tombstones: int = 100_000
    max_depth: int = 512
    spin_us: int = 200


class Config(_ConfigFields):
    """The worker's settings (the CLI options); immutable.

    A NamedTuple rather than a dataclass: ``dataclasses`` (with ``inspect`` and ``ast``)
    costs ~10 ms of the worker's start.

    Attributes:
        max_frame_bytes: Largest accepted frame payload.
        threads: Executor size.
        default_max_refs: ``max_refs`` of sessions that do not state one.
        default_ttl_seconds: ``ttl_seconds`` of sessions that do not state one.
        sweep_interval: Seconds between TTL sweeps.
        max_tombstones: Released ref ids remembered for ``ref_released`` errors.
        max_depth: Deepest term nesting decoded, and marshalled as data.
        spin_us: How long the reader polls for the next frame before it blocks
            (microseconds; 0: never).
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Config:
        self = super().__new__(cls, *args, **kwargs)
        self._validate()
        return self

    def _validate(self) -> None:
        """Validate the limits.

        Raises:
            ValueError: A limit is out of range.
        """
        for name in ("max_frame_bytes", "threads", "default_max_refs", "max_depth"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"expected {name} to be a positive integer, got: {value!r}")
        if self.max_frame_bytes > _MAX_PACKET:
            raise ValueError(f"expected max_frame_bytes to be at most {_MAX_PACKET}, got: {self.max_frame_bytes}")
        for name in ("max_tombstones", "spin_us"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"expected {name} to be a non-negative integer, got: {value!r}")
        if self.spin_us > _MAX_SPIN_US:
            raise ValueError(f"expected spin_us to be at most {_MAX_SPIN_US}, got: {self.spin_us}")
        for name in ("default_ttl_seconds", "sweep_interval"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not 0 < value < float("inf"):
                raise ValueError(f"expected {name} to be a positive number, got: {value!r}")


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _exit(status: int) -> NoReturn:
    """Flush stderr/stdout and end the process now, without joining any thread."""
    logging.shutdown()
    _flush_stdio()
    os._exit(status)


def _fatal(what: str) -> NoReturn:
    """Log the current exception and end the process with status 1."""
    log.critical("%s; exiting", what, exc_info=True)
    _exit(1)


def claim_stdio() -> tuple[int, int]:
    """Keep private copies of fds 0 and 1 for frames; point fd 1 at stderr, fd 0 at /dev/null.

    After this, ``print()``, C code writing to fd 1 and child processes write to stderr and
    read an empty stdin, so nothing can corrupt or steal a frame. ``sys.stdout`` becomes a
    line-buffered writer on the new fd 1, ``sys.stdin`` reads ``/dev/null``.

    Returns:
        ``(in_fd, out_fd)``: the private, non-inheritable protocol fds.
    """
    _flush_stdio()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    for fd in (in_fd, out_fd):  # the reader and the writer expect blocking I/O
        try:
            os.set_blocking(fd, True)
        except OSError:  # pragma: no cover - not settable on this kind of fd
            pass
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr: send fd 1 to /dev/null instead
        null_out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null_out, 1)
        os.close(null_out)
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.close(null_in)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return in_fd, out_fd


def grow_pipe(fd: int, size: int = PIPE_SIZE) -> bool:
    """Raise a pipe's capacity with ``F_SETPIPE_SZ`` when ``fd`` is a pipe and it is allowed.

    Args:
        fd: A file descriptor.
        size: The capacity wanted, in bytes.

    Returns:
        Whether the capacity was set.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:  # EPERM above /proc/sys/fs/pipe-max-size, EBUSY, not Linux, ...
        return False
    return True


#: glibc ``mallopt`` parameters (malloc.h) and the values set by :func:`tune_malloc`.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_KEEP_FREED = 256 * 1024 * 1024
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit

_malloc_tuned = False


def tune_malloc() -> bool:
    """Tell glibc to keep freed memory instead of returning it to the kernel at once.

    Large frames (megabytes) are otherwise served from fresh ``mmap``/heap pages for every
    request, and the page faults of those pages cost more than the copies themselves. Called
    once, when the first large frame arrives (so small-only workers do not import ctypes).
    Does nothing outside glibc; failures are ignored.

    Returns:
        Whether the settings were applied.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return False
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        ok = mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED) and ok
        ok = mallopt(_M_TOP_PAD, 16 * 1024 * 1024) and ok
        return bool(ok)
    except Exception:  # noqa: BLE001 - not glibc, no ctypes, ...: keep the defaults
        return False


_TAGGED_BYTES = etf.TAGGED_PREFIX.encode("ascii")

#: Binaries at least this long leave a reply as their own ``writev`` buffer.
_SEGMENT_BYTES = 64 * 1024


class _Segments(tuple):
    """A frame payload given as consecutive buffers (never joined: large binaries)."""

    __slots__ = ()

    def __len__(self) -> int:  # the payload's byte count, as for bytes
        return sum(map(len, tuple.__iter__(self)))


def segmented_reply(term: tuple) -> _Segments | None:
    """``etf.encode`` of ``{reply, Id, ok, Binary}`` as two buffers, for a large Binary.

    The envelope is encoded by the codec; the binary follows as its own buffer, so a result
    of megabytes is written without being copied into the frame. The buffers joined are the
    bytes of ``etf.encode(term)`` (the tests compare them).

    Returns:
        The payload, or ``None`` when the value is not ``bytes`` of at least 64 KiB.
    """
    value = term[3]
    if value.__class__ is not bytes or len(value) < _SEGMENT_BYTES:
        return None
    # An empty binary encodes as BINARY_EXT with length 0: replace the length.
    envelope = etf.encode((term[0], term[1], term[2], b""))
    return _Segments((envelope[:-4], len(value).to_bytes(4, "big"), value))


class FrameWriter:
    """Writes ``{packet, 4}`` frames to one fd from any thread.

    A thread that finds the fd busy queues its frames and returns; the thread that is
    writing sends everything queued meanwhile with one ``os.writev``. Headers and payloads
    go out as separate buffers, so large payloads are never copied.

    Args:
        fd: The protocol output fd.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[Any] = []

    def send(self, payloads: list[bytes]) -> None:
        """Send frames (payloads without headers), in order, as one batch.

        Args:
            payloads: The encoded terms.
        """
        bufs = []
        total = 0
        for payload in payloads:
            n = len(payload)
            total += n + 4
            bufs.append(_pack_header(n))
            if payload.__class__ is _Segments:
                bufs.extend(tuple.__iter__(payload))
            else:
                bufs.append(payload)
        if self._write_lock.acquire(False):
            # Fast path: nobody is writing; send what others queued, then ours, at once.
            try:
                if self._queue:
                    with self._queue_lock:
                        bufs[:0] = self._queue
                        self._queue = []
                    total = -1
                self._writev(bufs, total)
            finally:
                self._write_lock.release()
            if self._queue:
                self._drain(blocking=False)
            return
        with self._queue_lock:
            self._queue.extend(bufs)
        self._drain(blocking=False)

    def flush(self) -> None:
        """Wait until every queued frame is written."""
        self._drain(blocking=True)

    def _drain(self, *, blocking: bool) -> None:
        while True:
            if not self._write_lock.acquire(blocking):
                return  # the writing thread will send our frames
            try:
                while True:
                    with self._queue_lock:
                        bufs = self._queue
                        if not bufs:
                            break
                        self._queue = []
                    self._writev(bufs)
            finally:
                self._write_lock.release()
            # Frames queued after our last look, by a thread that saw us writing.
            with self._queue_lock:
                if not self._queue:
                    return
            blocking = False

    def _writev(self, bufs: list[Any], total: int = -1) -> None:
        """Write every buffer (``total``: their byte count when known, else -1)."""
        fd = self._fd
        try:
            while bufs:
                batch = bufs[:_IOV_MAX] if len(bufs) > _IOV_MAX else bufs
                written = os.writev(fd, batch)
                if written == total and batch is bufs:
                    return  # all written at once (the common case)
                i = 0
                n = len(batch)
                while i < n and written >= len(batch[i]):
                    written -= len(batch[i])
                    i += 1
                if i < n and written:
                    rest = memoryview(batch[i])[written:]
                    bufs = [rest, *bufs[i + 1 :]]
                else:
                    bufs = bufs[i:]
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                # The VM closed its end (it halted or closed the port): a normal end of life,
                # silent at the default log level.
                log.info("protocol output closed (%s); exiting", exc)
                _exit(0)
            if exc.errno == errno.EBADF:
                log.warning("protocol output fd is not valid (%s); exiting", exc)
                _exit(0)
            raise


class Server:
    """One worker process: owns the protocol fds and the threads.

    Args:
        config: The settings.
        in_fd: Protocol input fd (frames from the VM).
        out_fd: Protocol output fd (frames to the VM).
    """

    def __init__(self, config: Config, in_fd: int, out_fd: int) -> None:
        self.config = config
        self._in_fd = in_fd
        self._writer = FrameWriter(out_fd)
        self.table = SessionTable(
            default_max_refs=config.default_max_refs,
            default_ttl_seconds=config.default_ttl_seconds,
            max_tombstones=config.max_tombstones,
        )
        self.dispatcher = Dispatcher(
            self.table,
            max_depth=config.max_depth,
            max_frame_bytes=config.max_frame_bytes,
            threads=config.threads,
        )
        self._threads = config.threads
        if config.threads > 1:
            from concurrent.futures import ThreadPoolExecutor  # not imported by 1-thread workers
        self._pool = (
            ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="snakeport-call")
            if config.threads > 1
            else None
        )
        self._splitter = FrameSplitter(max_frame_bytes=config.max_frame_bytes)
        self._stop = threading.Event()
        self._parent = os.getppid()
        self._default = self.dispatcher.encode_default
        # The codec skips its limit checks when given its own default objects.
        self._max_depth = etf.DEFAULT_MAX_DEPTH if config.max_depth == etf.DEFAULT_MAX_DEPTH else config.max_depth
        self._max_size = (
            etf.DEFAULT_MAX_SIZE if config.max_frame_bytes == etf.DEFAULT_MAX_SIZE else config.max_frame_bytes
        )
        # Outgoing terms nest deeper than --max-depth: the reply envelope, a ref term where
        # the marshalling stopped, and two levels per set ({'$snakeport_set', List}).
        self._encoder = etf.Encoder(max_depth=2 * config.max_depth + 2, default=self._default)
        # Scheduling state, guarded by _sched (see the module docstring).
        self._sched_lock = threading.RLock()  # entered directly on the hot paths
        self._sched = threading.Condition(self._sched_lock)
        self._reader = 0  # ident of the loop thread that holds the reading role
        self._inline_seq = 0  # bumped each time the reader starts a call inline
        self._inline_active = False
        self._standby_deep = False
        self._running = 0  # calls executing (inline or on the pool)
        self._pending: deque[Job] = deque()  # calls waiting for a free slot, in order
        self._draining = False  # set by shutdown: job ends notify _drained
        self._drained = threading.Condition(self._sched)
        # Payloads of inline calls' replies, held while the reader still has buffered frames
        # to handle, so that one writev sends them all (guarded by _sched). Sent when the
        # buffered frames are handled, when the reader role changes hands, or by the stand-by
        # thread when an inline call runs for a whole poll (bounded like control requests).
        self._held: list = []
        # Polling before a blocking read (see the module docstring).
        self._spin = config.spin_us / 1e6
        self._poll: Any = None
        if config.spin_us:
            poller = select.poll()
            poller.register(in_fd, select.POLLIN)
            self._poll = poller.poll
        self._spin_busy = 0.0  # moving average: spins that ended on a busy CPU
        self._spin_resume = 0.0  # perf_counter() time before which the reader does not spin

    # ------------------------------------------------------------------ output

    def send(self, terms: list, job: Job | None = None) -> None:
        """Encode terms and send them as one batch of frames.

        A reply that cannot be encoded is replaced by a ``not_encodable`` error reply (and the
        refs its result added are released); an event that cannot be encoded is dropped with
        a log line.

        Args:
            terms: Reply and event terms.
            job: The job whose terms these are, if any.
        """
        payloads = self._encode(terms, job)
        if payloads:
            self._writer.send(payloads)

    def _encode(self, terms: list, job: Job | None = None, payloads: list | None = None) -> list:
        """Encode terms into frame payloads (appended to ``payloads``); see :meth:`send`."""
        encode = self._encoder.encode
        if payloads is None:
            payloads = []
        for term in terms:
            if (
                term.__class__ is tuple
                and len(term) == 4
                and term[3].__class__ is bytes
                and len(term[3]) >= _SEGMENT_BYTES
                and term[0] is REPLY
                and term[2] is OK
            ):
                payload = segmented_reply(term)
                if payload is not None and len(payload) <= _MAX_PACKET:
                    payloads.append(payload)
                    continue
            try:
                payload = encode(term)
                if len(payload) > _MAX_PACKET:
                    raise EncodeError(f"a frame of {len(payload)} bytes exceeds the {{packet, 4}} limit")
                payloads.append(payload)
            except Exception as exc:  # noqa: BLE001 - EncodeError, RecursionError, ...
                replacement = self._unencodable(term, exc)
                if replacement is not None:
                    if job is not None:
                        self.dispatcher.unsent(job)
                    payloads.append(encode(replacement))
        return payloads

    def _flush_held(self, terms: list | None = None) -> None:
        """Send ``terms`` and the replies held back by inline calls, with one ``writev``."""
        with self._sched_lock:
            held = self._held
            self._held = []
        if terms:
            held = self._encode(terms, None, held)
        if held:
            self._writer.send(held)

    @staticmethod
    def _unencodable(term: Any, exc: Exception) -> Any:
        if type(term) is tuple and len(term) == 4 and term[0] == "reply" and type(term[1]) is int:
            return error_reply(term[1], "not_encodable", f"the result cannot be encoded: {exc}")
        log.error("dropping an event that cannot be encoded: %s", exc)
        return None

    # ------------------------------------------------------------------- input

    def serve(self) -> NoReturn:
        """Send the ready frame, start the threads and serve frames until EOF or shutdown."""
        self.send([self.dispatcher.ready_term()])
        threading.Thread(target=self._sweep_loop, name="snakeport-sweep", daemon=True).start()
        threading.Thread(target=self._watchdog, name="snakeport-watchdog", daemon=True).start()
        # Two loop threads share the reading role; the first one starts as the reader. Calls
        # never run on the main thread (as with an executor), which only waits here: every
        # exit goes through os._exit.
        first = threading.Thread(target=self._loop, name="snakeport-loop-1", daemon=True)
        with self._sched:
            first.start()
            self._reader = first.ident  # type: ignore[assignment]
        threading.Thread(target=self._loop, name="snakeport-loop-2", daemon=True).start()
        try:
            while True:
                self._stop.wait()
                time.sleep(3600)  # pragma: no cover - _stop is set right before os._exit
        except KeyboardInterrupt:
            log.warning("interrupted (SIGINT); exiting")
            _exit(130)

    def _loop(self) -> NoReturn:
        """A loop thread: read frames while holding the reading role, else stand by."""
        me = threading.get_ident()
        with self._sched:  # serve() publishes the first reader under this lock
            pass
        try:
            while True:
                if self._reader == me:
                    self._read_frames()
                else:
                    self._standby(me)
        except BaseException:  # noqa: BLE001 - a broken loop thread cannot be recovered
            _fatal("the frame loop failed")

    def _standby(self, me: int) -> None:
        """Wait until the reader is stuck in an inline call, then take the reading role."""
        seen = -1
        idle = 0
        with self._sched:
            while True:
                if self._held:  # replies held behind an inline call: send them now
                    held = self._held
                    self._held = []
                    self._sched.release()
                    try:
                        self._writer.send(held)
                    finally:
                        self._sched.acquire()
                    continue
                if self._inline_active:
                    seq = self._inline_seq
                    if seq == seen:  # the same call has run for a whole poll: take over
                        self._reader = me
                        return
                    seen = seq
                    idle = 0
                else:
                    seen = -1
                    idle += 1
                if idle > _STANDBY_DEEP_AFTER:
                    self._standby_deep = True
                    self._sched.wait()
                    self._standby_deep = False
                    idle = 0
                else:
                    self._sched.wait(_TAKEOVER_POLL)

    def _read_frames(self) -> None:
        """Read and handle frames while this thread holds the reading role.

        Returns when the role was taken over during an inline call.
        """
        me = threading.get_ident()
        splitter = self._splitter
        readv = os.readv
        fd = self._in_fd
        handle = self._handle
        dispatcher = self.dispatcher
        spin = self._spin
        while True:
            out: list = []
            while True:
                event = splitter.next_event()
                if event is None:
                    break
                job = handle(event, out)
                if job is not None and self._place(job):
                    if out:
                        self.send(out)
                        out = []
                    if not self._run_inline(job, me):
                        self._flush_held()
                        return  # another loop thread reads now
            if out or self._held:
                self._flush_held(out)
            if dispatcher.shutting_down:
                self._on_shutdown()
            if spin and not self._running:  # (a call on the pool would compete for the GIL)
                self._spin_until_readable(spin)
            buf = splitter.get_buffer()
            try:
                n = readv(fd, [buf])
            except OSError as exc:
                log.warning("protocol input failed (%s); exiting", exc)
                n = 0
            del buf
            if not n:
                self._on_eof(splitter.has_partial_frame)
            splitter.buffer_updated(n)

    def _spin_until_readable(self, seconds: float) -> None:
        """Poll the protocol input until it is readable or ``seconds`` have passed.

        Between polls the thread gives its CPU to any other runnable thread or process
        (``sched_yield``), and it stops as soon as one took it (a step longer than
        ``_YIELD_BUSY``), so the spin mostly takes CPU time that would be idle otherwise;
        both calls release the GIL.
        """
        poll = self._poll
        if poll(0):
            return
        clock = time.perf_counter
        now = clock()
        if now < self._spin_resume:
            return  # backing off: most recent spins found the CPU busy
        deadline = now + seconds
        yield_cpu = _sched_yield
        busy = 0.0
        while not poll(0):
            if now > deadline:
                break
            yield_cpu()
            before, now = now, clock()
            if now - before > _YIELD_BUSY:
                busy = 1.0  # another task ran meanwhile: this CPU is not idle, sleep instead
                break
        # When most spins find the CPU busy (other programs keep it so), a yield costs more
        # than the wake-up it saves: stop spinning for a while, then try again.
        average = self._spin_busy = 0.9 * self._spin_busy + 0.1 * busy
        if average > 0.5:
            self._spin_busy = 0.0
            self._spin_resume = now + _SPIN_BACKOFF

    def _handle(self, event: Any, out: list) -> Job | None:
        """Handle one frame: control replies are appended to ``out``; a job is returned."""
        if type(event) is Oversized:
            self.dispatcher.requests += 1
            out.append(
                self._undecodable(
                    event.head,
                    "frame_too_large",
                    f"frame of {event.size} bytes exceeds the limit of {event.limit} bytes",
                )
            )
            return None
        if event.__class__ is bytearray and not _malloc_tuned:  # the first large frame
            tune_malloc()
        # No TagContext when no tagged tuple can be in the frame (not compressed, no prefix).
        # Large frames (bytearray) are not scanned, here or by the codec (above 64 KiB): the
        # codec then checks each decoded tuple's first element instead.
        if event.__class__ is bytes and len(event) > 1 and event[1] != 80 and _TAGGED_BYTES not in event:
            ctx = None
        else:
            ctx = TagContext()
        try:
            term = etf.decode(event, tagged=ctx, max_depth=self._max_depth, max_size=self._max_size)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or a codec bug: same answer
            self.dispatcher.requests += 1
            out.append(self._undecodable(event, "decode_error", f"invalid frame: {exc}"))
            return None
        result = self.dispatcher.receive(term, ctx)
        if type(result) is list:
            out.extend(result)
            return None
        return result

    def _undecodable(self, data: Any, reason: str, message: str) -> tuple:
        """Error reply for ``{Op, Id, ...}`` read from a frame's first bytes, else an event."""
        try:
            # The configured limits; a compressed frame is inflated only as far as {Op, Id.
            head = etf.decode_head(data, 2, max_depth=self._max_depth, max_size=self._max_size)
        except Exception:  # noqa: BLE001 - DecodeError or anything else: no id
            head = None
        if head is not None and len(head) == 2:
            request_id = head[1]
            if type(request_id) is int and request_id >= 0:
                return error_reply(request_id, reason, message)
        return protocol_error_event(reason, message)

    # -------------------------------------------------------------- scheduling

    def _place(self, job: Job) -> bool:
        """Start, submit or queue a job; return True when the reader must run it inline."""
        with self._sched_lock:
            if self._running >= self._threads or self._pending:
                self._pending.append(job)
                return False
            self._running += 1
            pool = self._pool
            if pool is None or (self._running == 1 and not self._splitter.has_partial_frame):
                self._inline_seq += 1
                self._inline_active = True
                if self._standby_deep:
                    self._sched.notify_all()
                return True
        pool.submit(self._pool_task, job)
        return False

    def _run_inline(self, job: Job, me: int) -> bool:
        """Run a job (and queued ones) on the reader; return whether it still reads."""
        while True:
            payloads = self._run(job, False)
            with self._sched_lock:
                if payloads and self._reader == me and not self._draining:
                    self._held.extend(payloads)  # sent with the rest of the read's replies
                    payloads = None
                if not payloads:
                    next_job, still_reader = self._inline_ended_locked(me)
            if payloads:
                # No longer the reader, or shutting down: send before the slot is freed.
                self._writer.send(payloads)
                with self._sched_lock:
                    next_job, still_reader = self._inline_ended_locked(me)
            if next_job is None:
                return still_reader
            job = next_job

    def _inline_ended_locked(self, me: int) -> tuple[Job | None, bool]:
        """Account for an ended inline job (``_sched`` held): ``(next job, still reader)``."""
        self._inline_active = False
        next_job = self._job_ended_locked()
        still_reader = self._reader == me
        if next_job is not None and still_reader:
            self._inline_seq += 1
            self._inline_active = True
        return next_job, still_reader

    def _pool_task(self, job: Job | None) -> None:
        """Executor task: run a job, then queued ones while there are any."""
        try:
            while job is not None:
                self._run(job)
                with self._sched_lock:
                    job = self._job_ended_locked()
        except BaseException:  # noqa: BLE001 - the slot accounting would be lost
            _fatal("a call thread failed")

    def _job_ended_locked(self) -> Job | None:
        """Account for an ended job (``_sched`` held); return the next queued job to run."""
        if self._pending:
            return self._pending.popleft()  # keeps the slot
        self._running -= 1
        if self._draining:
            self._drained.notify_all()
        return None

    def _run(self, job: Job, send: bool = True) -> list | None:
        """Run one job on this thread and send its frames (or, without ``send``, return them)."""
        try:
            terms = self.dispatcher.run_job(job)
        except Exception as exc:  # noqa: BLE001 - a worker bug: answer, keep serving
            log.exception("request %s failed inside the worker", job.request_id)
            terms = [error_reply(job.request_id, "python_error", f"internal worker error: {exc!r}")]
        if not terms:
            return None
        if send:
            self.send(terms, job)
            return None
        return self._encode(terms, job)

    # ---------------------------------------------------------------- lifetime

    def _on_eof(self, partial: bool) -> NoReturn:
        if partial:
            log.warning("protocol input closed in the middle of a frame")
        log.info("protocol input closed; exiting")
        self._stop.set()
        self._flush_held()
        self._writer.flush()
        _exit(0)

    def _on_shutdown(self) -> NoReturn:
        log.info("shutdown requested; cancelling %d calls", self.dispatcher.in_flight)
        with self._sched:
            self._draining = True
        self._flush_held(self.dispatcher.cancel_all())
        with self._sched:
            idle = self._drained.wait_for(lambda: self._running == 0, _SHUTDOWN_GRACE)
            running = self._running
        if not idle:
            self.send(
                [
                    warning_event(
                        f"exiting with {running} calls still running (blocked outside Python?)",
                        running=running,
                    )
                ]
            )
        self._stop.set()
        self._writer.flush()
        _exit(0)

    def _sweep_loop(self) -> None:
        interval = self.config.sweep_interval
        while not self._stop.wait(interval):
            try:
                events = self.dispatcher.sweep()
                if events:
                    self.send(events)
            except Exception:  # noqa: BLE001 - never let the sweep die
                log.exception("TTL sweep failed")

    def _watchdog(self) -> None:
        parent = self._parent
        while not self._stop.wait(_WATCHDOG_INTERVAL):
            if os.getppid() != parent:
                # The VM is gone (halted or killed): a normal end of life, silent at the
                # default log level.
                log.info("parent process %d is gone; exiting", parent)
                _exit(0)


def run(config: Config) -> NoReturn:
    """Take over stdio, start a :class:`Server` and serve until EOF or ``shutdown``.

    Args:
        config: The settings.
    """
    in_fd, out_fd = claim_stdio()
    grow_pipe(in_fd)
    grow_pipe(out_fd)
    # Let the frame-reading thread take the GIL from a busy call within about a millisecond.
    sys.setswitchinterval(0.001)
    # Results (and arguments holding refs) are walked recursively down to --max-depth
    # (bounded: a C int, and C code recursing that deep would overflow the thread's stack).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), min(2 * config.max_depth + 1000, _MAX_RECURSION)))
    server = Server(config, in_fd, out_fd)
    server.serve()
