"""The server: wires the worker's pieces together and runs its frame loop and its threads.

Everything that reads the protocol input or starts a thread of the worker is reached from
here; each concern lives in its own module:

- :mod:`snakeport._framing` splits the input into frames, :mod:`snakeport.etf` decodes and
  encodes terms, :mod:`snakeport._dispatch` handles requests (with :mod:`snakeport._jobs`
  running the calls), :mod:`snakeport._sessions` keeps sessions and refs;
- :mod:`snakeport._scheduler` places each call (inline on the reader, on a call thread, or
  queued) and owns the loop threads that share the reading role and the call pool;
- :mod:`snakeport._tools` carries the calls of Python code to Elixir tools (the worker's
  own requests to the VM) and their waits;
- :mod:`snakeport._spin` decides how long the reader polls before it blocks in ``readv``;
- :mod:`snakeport._writer` writes frames from any thread, batching them into one ``writev``;
- :mod:`snakeport._process` takes the protocol fds from stdio and ends the process;
- :mod:`snakeport._async` runs awaitable results on the worker's event loop;
- :mod:`snakeport._output` forwards Python's output (``logging``, ``warnings``, fds 1 and
  2) to the VM as ``log`` events, with ``--forward-logs``.

Threads: the loop threads (two, more while calls wait for Elixir tools; the reader runs
:meth:`Server._read_frames`), the call pool (``--threads`` > 1), a sweep thread that prunes refs past their TTL every
``--sweep-interval`` seconds, a watchdog thread that ends the process when the parent dies,
a short-lived thread per cancel held back by an import, the asyncio event loop's thread
(:mod:`snakeport._async`, from the first awaitable result on) and, with ``--forward-logs``,
the thread that reads fds 1 and 2 (:mod:`snakeport._output`). The main thread only waits.

Locks, each with one name: ``Scheduler.lock`` (scheduling state), ``Jobs.lock`` (job
states), ``SessionTable.lock`` (sessions and refs), ``FrameWriter._write_lock`` and
``FrameWriter._queue_lock``, ``ToolCalls._lock`` (tool calls in flight), ``Awaits._lock``
(the event loop's start, the count of awaiting jobs) and ``RateLimit._lock`` (forwarded
output), the last two leaves. No thread ever
holds two of them at once, except the writer's pair, always taken in that order
(``_write_lock``, then ``_queue_lock``), and the internal lock of a tool waiter's
``threading.Event``, set (never waited on) under the jobs' lock or the tool calls' lock and
holding nothing else: the scheduler calls out (run a job, encode, send, submit) only after
letting its lock go, the jobs' lock is never held around user code or the table, and the
table's lock is held only while the marshalling puts ref terms in a converted value, which
takes no lock and runs no user code. So no lock order can deadlock.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections import namedtuple

from snakeport import _limits as limits
from snakeport import _process as process
from snakeport import etf
from snakeport._async import Awaits
from snakeport._dispatch import Dispatcher
from snakeport._framing import FrameSplitter, Oversized, Placed
from snakeport._guard import guarded, safe_str, type_name
from snakeport._blobs import BlobReply, encode_with_blobs
from snakeport import _batch
from snakeport import _lane
from snakeport._jobs import Job, Jobs, thread_stack
from snakeport._lane import LOST
from snakeport._protocol import OK, REPLY, TOOL_REPLY, error_reply, protocol_error_event, warning_event
from snakeport._scheduler import Scheduler
from snakeport._sessions import SessionTable
from snakeport._spin import SpinPolicy
from snakeport._tagged import TagContext, encode_default
from snakeport._tools import ToolCalls
from snakeport._writer import SEGMENT_BYTES, Borrowed, FrameWriter, segmented_reply
from snakeport.errors import DecodeError, EncodeError

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from snakeport._allow import AllowList

__all__ = ["Config", "Server", "run"]

log = logging.getLogger("snakeport")

#: Largest payload a ``{packet, 4}`` frame can carry.
_MAX_PACKET = limits.MAX_PACKET

_TAGGED_BYTES = etf.TAGGED_PREFIX.encode("ascii")


#: Config's fields, in order, and their defaults.
_CONFIG_DEFAULTS = {
    "max_frame_bytes": limits.MAX_FRAME_BYTES.default,
    "threads": limits.THREADS.default,
    "default_max_refs": limits.MAX_REFS.default,
    "default_ttl_seconds": limits.TTL_SECONDS.default,
    "sweep_interval": limits.SWEEP_INTERVAL.default,
    "max_tombstones": limits.MAX_TOMBSTONES.default,
    "max_depth": limits.MAX_DEPTH.default,
    "spin_us": limits.SPIN_US.default,
    "tool_timeout": limits.TOOL_TIMEOUT.default,
    "default_overflow": limits.DEFAULT_OVERFLOW,
    "allow": None,
    "forward_logs": 0,
    "preload": (),
}
_ConfigFields = namedtuple("_ConfigFields", _CONFIG_DEFAULTS, defaults=_CONFIG_DEFAULTS.values())


#: The rule of each Config field, in field order.
_CONFIG_LIMITS = (
    limits.MAX_FRAME_BYTES,
    limits.THREADS,
    limits.MAX_REFS,
    limits.TTL_SECONDS,
    limits.SWEEP_INTERVAL,
    limits.MAX_TOMBSTONES,
    limits.MAX_DEPTH,
    limits.SPIN_US,
    limits.TOOL_TIMEOUT,
)


class Config(_ConfigFields):
    """The worker's settings (the CLI options); immutable, validated at construction.

    A ``collections.namedtuple`` rather than a dataclass (``dataclasses``, with ``inspect``
    and ``ast``, costs ~10 ms of the worker's start) or a ``typing.NamedTuple`` (twice the
    cost of a ``namedtuple`` per class, and ``typing`` itself). Defaults and rules are those
    of :mod:`snakeport._limits`.

    Attributes:
        max_frame_bytes: Largest accepted frame payload.
        threads: How many calls execute at once.
        default_max_refs: ``max_refs`` of sessions that do not state one.
        default_ttl_seconds: ``ttl_seconds`` of sessions that do not state one.
        sweep_interval: Seconds between TTL sweeps.
        max_tombstones: Released ref ids remembered for ``ref_released`` errors.
        max_depth: Deepest term nesting decoded, and marshalled as data.
        spin_us: How long the reader polls for the next frame before it blocks
            (microseconds; 0: never).
        tool_timeout: Seconds the VM gives an Elixir tool (waits end a little later).
        default_overflow: ``overflow`` of sessions that do not state one.
        allow: The allow-list's entries (``--allow``), or ``None``: every name may be
            called (see :mod:`snakeport._allow`).
        forward_logs: Least level of Python's output sent to the VM as ``log`` events (a
            ``logging`` level number); 0: none (see :mod:`snakeport._output`).
        preload: Modules imported before the ready frame, in order.

    Raises:
        ValueError: A setting is out of range, an allow-list entry is invalid, or a preload
            is not a module name.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Config:
        self = super().__new__(cls, *args, **kwargs)
        for name, limit, value in zip(self._fields, _CONFIG_LIMITS, self):
            limit.check(value, name)
        if self.default_overflow not in limits.OVERFLOW_POLICIES:
            raise ValueError(f"expected default_overflow to be error or evict_lru, got: {self.default_overflow!r}")
        _allow_list(self.allow)  # checks the entries
        if self.forward_logs not in limits.FORWARD_LEVELS.values():
            raise ValueError(f"expected forward_logs to be a logging level, got: {self.forward_logs!r}")
        if type(self.preload) is not tuple:
            raise ValueError(f"expected preload to be a tuple of module names, got: {self.preload!r}")
        for module in self.preload:
            limits.module_name(module)
        return self


def _allow_list(entries: tuple[str, ...] | None) -> AllowList | None:
    """The allow-list of ``entries``, or ``None`` without entries.

    :mod:`snakeport._allow` is imported here, by a worker that has an allow-list, only.

    Raises:
        ValueError: An entry is invalid.
    """
    if entries is None:
        return None
    from snakeport._allow import AllowList

    return AllowList(entries)


def preload(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in order (the worker's ``--preload``), before the ready frame.

    A module that fails to import ends the process with status
    :data:`~snakeport._limits.PRELOAD_FAILED`
    and its traceback on stderr: the harness then reports that the worker exited before
    its ready frame.

    Args:
        modules: Module names.
    """
    import importlib

    for module in modules:
        started = time.monotonic()
        try:
            importlib.import_module(module)
        except BaseException:  # noqa: BLE001 - any failure of a preload ends the worker
            log.critical("--preload %s failed; exiting", module, exc_info=True)
            process.exit_now(limits.PRELOAD_FAILED)
        log.info("preloaded %s in %.0f ms", module, (time.monotonic() - started) * 1000)


def _output_closed(exc: OSError) -> NoReturn:
    """The writer's ``on_closed``: the VM closed its end, or the fd is gone; exit."""
    if exc.errno == errno.EBADF:
        log.warning("protocol output fd is not valid (%s); exiting", exc)
    else:
        # The VM halted or closed the port: a normal end of life, silent by default.
        log.info("protocol output closed (%s); exiting", exc)
    process.exit_now(0)


def _log_internal_error(request_id: int, exc: BaseException) -> None:
    """Log a request that failed inside the worker, with the exception's traceback."""
    log.error("request %s failed inside the worker", request_id, exc_info=exc)


class Server:
    """One worker process: owns the protocol fds, the pieces and the threads.

    Args:
        config: The settings.
        in_fd: Protocol input fd (frames from the VM).
        out_fd: Protocol output fd (frames to the VM).
    """

    def __init__(self, config: Config, in_fd: int, out_fd: int) -> None:
        self.config = config
        self._in_fd = in_fd
        self._writer = FrameWriter(out_fd, on_closed=_output_closed)
        self.table = SessionTable(
            default_max_refs=config.default_max_refs,
            default_ttl_seconds=config.default_ttl_seconds,
            default_overflow=config.default_overflow,
            max_tombstones=config.max_tombstones,
        )
        self._splitter = FrameSplitter(max_frame_bytes=config.max_frame_bytes)
        self._sched = Scheduler(
            threads=config.threads,
            execute=self._execute,
            send=self._writer.send,
            encode=self._encode,
            more_input=lambda: self._splitter.has_partial_frame,
            fatal=process.fatal,
        )
        jobs = Jobs()
        self.awaits = Awaits(complete=self._complete_awaited, on_start=self._loop_started)
        jobs.awaits = self.awaits
        self.awaits.jobs = jobs
        self.tools = ToolCalls(
            send=self._send_request,
            table=self.table,
            jobs=jobs,
            suspend=self._sched.suspend,
            resume=self._sched.resume,
            timeout=config.tool_timeout,
            max_depth=config.max_depth,
        )
        self.dispatcher = Dispatcher(
            self.table,
            jobs=jobs,
            max_depth=config.max_depth,
            max_frame_bytes=config.max_frame_bytes,
            threads=config.threads,
            rss=process.rss_bytes,
            tools=self.tools,
            allow=_allow_list(config.allow),
        )
        # (The request counter lets the policy measure whether spinning pays.)
        dispatcher = self.dispatcher
        self._spin = (
            SpinPolicy(in_fd, spin_us=config.spin_us, requests=lambda: dispatcher.requests)
            if config.spin_us
            else None
        )
        # How the reader waits for input (SCHED_BATCH while frames come several per read).
        self._batch = _batch.BatchWaits(lambda: dispatcher.requests) if _batch.available() else None
        self._stop = threading.Event()
        self._parent = os.getppid()
        # The codec skips its limit checks when given its own default objects.
        self._max_depth = etf.DEFAULT_MAX_DEPTH if config.max_depth == etf.DEFAULT_MAX_DEPTH else config.max_depth
        self._max_size = (
            etf.DEFAULT_MAX_SIZE if config.max_frame_bytes == etf.DEFAULT_MAX_SIZE else config.max_frame_bytes
        )
        # Outgoing terms nest deeper than --max-depth: the reply envelope, a ref term where
        # the marshalling stopped, two levels per set ({'$snakeport_set', List}), and a few
        # more inside the terms of converted values (an array's shape in a column of a
        # DataFrame's data).
        self._max_out_depth = 2 * config.max_depth + 8
        # The limits of request frames, checked once (not at each frame).
        self._decode_prefix = etf.Decoder(max_depth=config.max_depth, max_size=config.max_frame_bytes).decode_prefix
        self._encoder = etf.Encoder(max_depth=self._max_out_depth, default=encode_default)
        # The C lane of the common call, when it is built and applies (snakeport._lane).
        self._lane = _lane.build(self)
        self.dispatcher.fast_path = self._lane is not None
        # Large call frames' binaries read into their own bytes: Lane.take decodes them
        # without a copy (a Placed event); only the lane does (_handle joins them again).
        self._splitter.place_binaries = self._lane is not None

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

    def _send_request(self, terms: list) -> None:
        """Encode and send the worker's own requests (tool calls), from a job's thread.

        Raises:
            EncodeError: A term cannot be encoded (nothing is sent).
        """
        encode = self._encoder.encode
        payloads = []
        for term in terms:
            if term.__class__ is BlobReply:  # a tool call with large arrays: written before send returns
                payload = Borrowed(encode_with_blobs(term, self._encode_term, encode_default))
            else:
                payload = encode(term)
            if len(payload) > _MAX_PACKET:
                raise EncodeError(f"a frame of {len(payload)} bytes exceeds the {{packet, 4}} limit")
            payloads.append(payload)
        self._writer.send(payloads)

    def _encode(self, terms: list, job: Job | None = None, payloads: list | None = None) -> list:
        """Encode terms into frame payloads (appended to ``payloads``); see :meth:`send`."""
        encode = self._encoder.encode
        if payloads is None:
            payloads = []
        for term in terms:
            if term.__class__ is BlobReply:
                try:
                    payload = Borrowed(encode_with_blobs(term, self._encode_term, encode_default))
                    if len(payload) > _MAX_PACKET:
                        raise EncodeError(f"a frame of {len(payload)} bytes exceeds the {{packet, 4}} limit")
                    payloads.append(payload)
                except Exception as exc:  # noqa: BLE001 - EncodeError, RecursionError, ...
                    payloads.append(encode(self._unencodable(term, exc)))
                    if job is not None:
                        self.dispatcher.unsent(job)
                continue
            if (
                term.__class__ is tuple
                and len(term) == 4
                and term[3].__class__ is bytes
                and len(term[3]) >= SEGMENT_BYTES
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
            except BaseException as exc:  # noqa: BLE001 - EncodeError, RecursionError, and
                # whatever a user object that another thread put in a data result raises
                replacement = self._unencodable(term, exc)
                if replacement is not None:
                    if job is not None:
                        self.dispatcher.unsent(job)
                    payloads.append(encode(replacement))
        return payloads

    def _encode_term(self, term: Any, *, default: Any) -> bytes:
        """``etf.encode`` with the server's depth limit and another ``default`` hook."""
        return etf.encode(term, default=default, max_depth=self._max_out_depth)

    @staticmethod
    def _unencodable(term: Any, exc: BaseException) -> Any:
        if isinstance(term, tuple) and len(term) == 4 and term[0] == "reply" and type(term[1]) is int:
            return error_reply(term[1], "not_encodable", f"the result cannot be encoded: {safe_str(exc)}")
        log.error("dropping an event that cannot be encoded: %s", safe_str(exc))
        return None

    def _execute(self, job: Job) -> list | None:
        """Run one job on this thread; return its encoded frames (the scheduler's
        ``execute``)."""
        try:
            terms = self.dispatcher.run_job(job)
        except BaseException as exc:  # noqa: BLE001 - a worker bug: answer, keep serving
            terms = self._internal_error(job.request_id, exc)
        return self._job_payloads(job, terms)

    def finish_lane(self, job: Job, result: Any) -> list:
        """The terms of a job whose code the C lane ran (:mod:`snakeport._lane`) when the
        lane does not answer it itself: the end of :meth:`_execute`, in two steps around the
        session's check-in, which the lane does itself: these terms, then their frames
        (:meth:`_job_payloads`)."""
        try:
            return self.dispatcher.finish_lane(job, result)
        except BaseException as exc:  # noqa: BLE001 - a worker bug: answer, keep serving
            return self._internal_error(job.request_id, exc)

    def lane_failed(self, request_id: int, job: Job | None, exc: BaseException, placed: bool) -> list | None:
        """Answer a request that the C lane took (its session checked out) and could not
        finish because the worker itself failed (:mod:`snakeport._lane`), as :meth:`_execute`
        answers a failure of the general path: an internal error. The lane has checked the
        session in already; the job leaves :data:`~snakeport._jobs.CURRENT` and the jobs
        table.

        Args:
            request_id: The request's id.
            job: Its job, or ``None`` when the lane failed before making it.
            exc: The exception.
            placed: Whether the scheduler placed the job inline: the frames are then returned
                for ``Scheduler.inline_ended`` (which frees the slot); else they are sent now.

        Returns:
            The frames when ``placed``, else ``None``.
        """
        if job is not None:
            self.dispatcher.jobs.abandon(job, exc)
        terms = self._internal_error(request_id, exc)
        if placed:
            return self._job_payloads(job, terms)
        self.send(terms, job)
        return None

    @staticmethod
    def _internal_error(request_id: int, exc: BaseException) -> list:
        # (Formatting the traceback may run user code: guarded like the message.)
        guarded(_log_internal_error, request_id, exc, default=None)
        return [
            error_reply(
                request_id,
                "python_error",
                f"internal worker error: {safe_str(exc)}",
                type_=type_name(type(exc)),
            )
        ]

    def _job_payloads(self, job: Job, terms: list) -> list | None:
        """A job's terms encoded; a frame that borrows arrays' memory is written now."""
        if not terms:
            return None
        payloads = self._encode(terms, job)
        for payload in payloads:
            if payload.__class__ is Borrowed:
                # The frame borrows the buffers of the result's arrays: written now, before
                # this thread runs anything else (no held reply, no queue left behind).
                self._writer.send(payloads)
                return None
        return payloads

    def _complete_awaited(self, job: Job, result: Any) -> None:
        """Send the reply of a job whose awaitable is done (on the event loop's thread)."""
        try:
            terms = self.dispatcher.finish_awaited(job, result)
        except Exception as exc:  # noqa: BLE001 - a worker bug: answer, keep serving
            log.exception("request %s failed inside the worker", job.request_id)
            terms = [error_reply(job.request_id, "python_error", f"internal worker error: {exc!r}")]
        if terms:
            self.send(terms, job)

    def _loop_started(self, thread: int) -> None:
        """The event loop runs on ``thread``: tool calls must not block it."""
        self.tools.event_loop_thread = thread

    # ------------------------------------------------------------------- input

    def serve(self) -> NoReturn:
        """Send the ready frame, start the threads and serve frames until EOF or shutdown."""
        self.send([self.dispatcher.ready_term()])
        if self.config.forward_logs:
            from snakeport._output import Output

            Output(self.send, level=self.config.forward_logs).install()
        threading.Thread(target=self._sweep_loop, name="snakeport-sweep", daemon=True).start()
        threading.Thread(target=self._watchdog, name="snakeport-watchdog", daemon=True).start()
        # Calls never run on the main thread (as with an executor), which only waits here:
        # every exit goes through os._exit.
        self._sched.start(self._read_frames)
        try:
            while True:
                self._stop.wait()
                time.sleep(3600)  # pragma: no cover - _stop is set right before os._exit
        except KeyboardInterrupt:
            log.warning("interrupted (SIGINT); exiting")
            process.exit_now(130)

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
        sched = self._sched
        place = sched.place
        run_inline = sched.run_inline
        flush_held = sched.flush_held
        spin = self._spin.wait if self._spin is not None else None
        lane = self._lane
        receive = self._receive
        lane_run = lane.run if lane is not None else None
        lane_take = lane.take if lane is not None else None
        batch = self._batch
        out: list = []  # (empty at the top of each turn: sent, then replaced)
        while True:
            while True:
                job = None
                # Bytes buffered after the frame handled in this turn, when known (the lane
                # looked at the buffer); else -1.
                left = -1
                if lane is not None and (view := splitter.buffered()) is not None:
                    buf, r, w = view
                    if w - r < 4:
                        break  # not even a frame header buffered: next_event() would say None
                    if out:  # control replies go out before a call runs (as below)
                        self.send(out)
                        out = []
                    # It tells the splitter what it took and, once it took every complete
                    # frame, sends the replies held and does this loop's next read itself
                    # when nothing else is to be done first (see snakeport._lane). `left`:
                    # the bytes buffered after the frames it took.
                    left, term = lane_run(buf, r, w, me, True)
                    if term is LOST:
                        flush_held()
                        return  # another loop thread reads now
                    if term is not None:  # decoded, and not the lane's
                        left = -1
                        job = receive(term, None, out)
                    elif left < 4:
                        break  # it took them all (what next_event() would say: None)
                if job is None:
                    event = splitter.next_event()
                    if event is None:
                        break
                    if left >= 0 and event.__class__ is bytes:
                        left -= 4 + len(event)  # the frame at `end`: its header and payload
                    else:
                        left = -1
                    if (event.__class__ is bytearray or event.__class__ is Placed) and lane is not None:
                        # A large frame: the lane's when it is a call it takes (an echo of
                        # megabytes of Snakeport.bytes/1), else decoded by it or not at all.
                        if not process.malloc_tuned:  # (as _handle does for the first one)
                            process.tune_malloc()
                        if out:  # control replies go out before a call runs (as above)
                            self.send(out)
                            out = []
                        term = lane_take(event, me)
                        if term is LOST:
                            flush_held()
                            return  # another loop thread reads now
                        if term is event:
                            job = handle(event, out)
                        elif term is not None:
                            job = receive(term, None, out)
                    else:
                        job = handle(event, out)
                if job is not None and place(job):
                    if out:
                        self.send(out)
                        out = []
                    if not run_inline(job, me):
                        flush_held()
                        return  # another loop thread reads now
                if 0 <= left < 4:
                    # What buffered() would say next (this thread still reads, so nothing
                    # else took or moved the splitter's bytes meanwhile; I4 of _scheduler).
                    break
            if out or sched.held:
                flush_held(out)
                out = []
            if dispatcher.shutting_down:
                self._on_shutdown()
            if spin is not None and not sched.running:  # (a call on the pool would compete for the GIL)
                spin()
            buf = splitter.get_buffer()
            waits = False
            if batch is not None:
                batch.reads += 1
                if batch.reads >= _batch.REVIEW_READS:
                    batch.review()
                if batch.engaged:
                    waits = True
                    _batch.wait_as_batch(True)
            try:
                n = readv(fd, [buf])
            except OSError as exc:
                log.warning("protocol input failed (%s); exiting", exc)
                n = 0
            if waits:
                _batch.wait_as_batch(False)
            del buf
            if not n:
                self._on_eof(splitter.has_partial_frame)
            splitter.buffer_updated(n)

    def _handle(self, event: Any, out: list) -> Job | None:
        """Handle one frame: control replies are appended to ``out``; a job is returned."""
        cls = event.__class__
        # No TagContext when no tagged tuple can be in the frame (not compressed, no prefix).
        # Large frames (bytearray) are not scanned, here or by the codec (above 64 KiB): the
        # codec then checks each decoded tuple's first element instead.
        # (find, not `in`: `in` first tries the prefix as an integer, raising and clearing a
        # TypeError on every frame.)
        scan = True
        if cls is bytes:
            if len(event) > 1 and event[1] != 80:
                if event.find(_TAGGED_BYTES) < 0:
                    ctx = None
                else:
                    ctx = TagContext()
                    scan = False  # (found: the codec need not look again)
            else:
                ctx = TagContext()
        elif cls is Oversized:
            self.dispatcher.requests += 1
            term = self._undecodable(
                event.head,
                "frame_too_large",
                f"frame of {event.size} bytes exceeds the limit of {event.limit} bytes",
            )
            if term is not None:
                out.append(term)
            return None
        else:  # a large frame (bytearray, or Placed: joined again)
            if not process.malloc_tuned:  # the first one
                process.tune_malloc()
            if cls is Placed:
                event = event.joined()
            ctx = TagContext()
        try:
            term, end = self._decode_prefix(event, ctx, scan=scan)
            if ctx is not None and ctx.blobs:
                ctx.bind(event, end)  # the bytes after the term are its blobs
            elif end != len(event):
                raise DecodeError(f"{len(event) - end} trailing bytes after the term at byte {end}")
        except Exception as exc:  # noqa: BLE001 - DecodeError, or a codec bug: same answer
            failure = f"invalid frame: {safe_str(exc)}"
        else:
            return self._receive(term, ctx, out)
        # (Outside the except block: the exception, and the copy of a large frame that a
        # DecodeError may hold, are gone before the error path reads the frame again.)
        self.dispatcher.requests += 1
        term = self._undecodable(event, "decode_error", failure)
        if term is not None:
            out.append(term)
        return None

    def _receive(self, term: Any, ctx: TagContext | None, out: list) -> Job | None:
        """Handle one decoded request: control replies are appended to ``out``; a job is
        returned."""
        result = self.dispatcher.receive(term, ctx)
        if type(result) is list:
            out.extend(result)
            return None
        return result

    def _undecodable(self, data: Any, reason: str, message: str) -> tuple | None:
        """Error reply for ``{Op, Id, ...}`` read from a frame's first bytes, else an event.

        A ``tool_reply`` is never answered: its waiting thread gets the error (``None`` is
        returned: nothing to send).
        """
        try:
            # The configured limits; a compressed frame is inflated only as far as {Op, Id.
            head = etf.decode_head(data, 2, max_depth=self._max_depth, max_size=self._max_size)
        except Exception:  # noqa: BLE001 - DecodeError or anything else: no id
            head = None
        if head is not None and len(head) == 2:
            request_id = head[1]
            if type(request_id) is int and request_id >= 0:
                if head[0] == TOOL_REPLY:
                    if self.tools.fail(request_id, reason, message):
                        return None
                    return protocol_error_event(reason, f"tool_reply {request_id}: {message}")
                return error_reply(request_id, reason, message)
        return protocol_error_event(reason, message)

    # ---------------------------------------------------------------- lifetime

    def _on_eof(self, partial: bool) -> NoReturn:
        if partial:
            log.warning("protocol input closed in the middle of a frame")
        log.info("protocol input closed; exiting")
        self._stop.set()
        self._sched.flush_held()
        self._writer.flush()
        process.exit_now(0)

    def _on_shutdown(self) -> NoReturn:
        log.info("shutdown requested; cancelling %d calls", self.dispatcher.in_flight)
        deadline = time.monotonic() + limits.SHUTDOWN_GRACE
        running = self._sched.drain(self.dispatcher.cancel_all(), limits.SHUTDOWN_GRACE)
        running += self.awaits.drain(max(deadline - time.monotonic(), 0.0))
        if running:
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
        process.exit_now(0)

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
        while not self._stop.wait(limits.WATCHDOG_INTERVAL):
            if os.getppid() != parent:
                # The VM is gone (halted or killed): a normal end of life, silent at the
                # default log level.
                log.info("parent process %d is gone; exiting", parent)
                process.exit_now(0)
            try:
                self._report_slow_cancels()
            except Exception:  # noqa: BLE001 - never let the watchdog die
                log.exception("looking at cancelled calls failed")

    def _report_slow_cancels(self) -> None:
        """Log (WARNING) where the thread of each call still running
        :data:`~snakeport._limits.CANCEL_REPORT_AFTER` seconds after its cancel is: the
        harness's next step is to mark the worker stuck, then to kill it."""
        for job, seconds in self.dispatcher.jobs.slow_cancels():
            held = job.cancel_deferred and not job.cancel_sent
            if held:
                why = " (held back: its thread is inside an import)"
            elif job.thread == self.awaits.thread:
                why = " (an awaited coroutine: this is the event loop's thread)"
            else:
                why = ""
            log.warning(
                "request %d (session %s) still runs %.1f s after it was cancelled%s; "
                "its thread is at (innermost last):\n%s",
                job.request_id,
                safe_str(job.session.session_id),
                seconds,
                why,
                thread_stack(job.thread).rstrip("\n"),
            )


def run(config: Config) -> NoReturn:
    """Take over stdio, start a :class:`Server` and serve until EOF or ``shutdown``.

    Args:
        config: The settings.
    """
    in_fd, out_fd = process.claim_stdio()
    process.grow_pipe(in_fd)
    process.grow_pipe(out_fd)
    # Let the frame-reading thread take the GIL from a busy call within about a millisecond.
    sys.setswitchinterval(0.001)
    # Results (and arguments holding refs) are walked recursively down to --max-depth
    # (bounded: a C int, and C code recursing that deep would overflow the thread's stack).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), min(2 * config.max_depth + 1000, limits.MAX_RECURSION)))
    preload(config.preload)
    server = Server(config, in_fd, out_fd)
    server.serve()
