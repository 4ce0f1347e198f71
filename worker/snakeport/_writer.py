"""The frame writer: ``{packet, 4}`` frames to the protocol output fd, from any thread.

Every thread that has frames to send (the reader, the stand-by loop thread, call threads,
the sweep) calls :meth:`FrameWriter.send`. A thread that finds the fd busy queues its frames
and returns at once; the thread that is writing sends everything queued meanwhile with one
``os.writev``. Headers and payloads go out as separate buffers, and a large binary reply is
given as :func:`segmented_reply` buffers, so large payloads are not copied, with one
exception: where the kernel's copy of a large buffer into the pipe would run several times
slower (see :func:`realigned`), the buffer is first copied once to a place where it does not.

Spliced buffers: on Linux, with the C lane's module, into a pipe (the worker's stdout), a
buffer of at least :data:`SPLICE_BYTES` does not go through the kernel's copy into the pipe,
or most of it does not: ``_clane.splice`` (``vmsplice``) puts its memory pages in the pipe,
and the VM reads the bytes from them. No pipe pages are allocated, filled and freed for
them; on the machine of bench/RESULTS.md the worker's CPU per 1 MiB echo fell from ~206 to
~145 µs and the VM's from ~379 to ~303, and an 8 MiB array's round trip ran 1.27x as fast
(bench/PROFILE.md, *Spliced replies*). The reader copies from those pages later, so their
bytes must not change, nor their memory be reused, until it has: two rules see to it.

Invariant (kept): a spliced ``bytes`` stays referenced by ``_spliced`` until the pipe was
seen empty (``_clane.unread`` 0: the reader has read every byte written before), so that
its memory is not freed and reused while the reader may still copy from it (a ``bytes``
never changes). ``_spliced`` is emptied by the next write that finds the pipe empty (any
write: ``_writev``, and the C lane's ``lane_send`` through
:meth:`FrameWriter._release_spliced`), and holds at most :data:`SPLICE_HOLD_BYTES`. So after
a large reply, up to that many bytes stay alive until the next reply is written.

Invariant (a pipe's worth after it): any other buffer (one that ``_spliced`` has no room
for, or one its owner may change, as an array's: :class:`Borrowed`) is spliced only when it
is longer than the pipe's capacity by :data:`SPLICE_BYTES` or more, and then all but its last
capacity's worth of bytes, which are copied into the pipe right after: a copy of that many
bytes is written only once the pipe holds nothing else, so when it is written no spliced
page of the buffer is left in the pipe (spliced pages take no more bytes: the copy starts a
page of its own). Any other buffer is copied, as ``os.writev`` does.
``SNAKEPORT_NO_SPLICE=1`` (read when a writer is made) turns splicing off.

Backpressure: the queue holds at most ``max_queued`` bytes (each frame counted with
:data:`~snakeport._limits.QUEUED_FRAME_COST` more for its objects). A thread whose frames
would take it past that waits for the writing thread instead and then writes its frames
itself (after the queue): when the VM does not read, the reader thread blocks there and
stops reading requests, call threads stop producing replies, and memory stays bounded
however many requests are pipelined. The fast path (nobody writing) never looks at it.

Locks: ``_write_lock`` (held by the one thread inside ``os.writev``) and ``_queue_lock``
(the queue of frames waiting); when both are held, ``_write_lock`` was taken first. No other
lock is taken while either is held, and no other lock of the worker is held by a thread
that calls :meth:`FrameWriter.send` (so the wait for ``_write_lock`` cannot deadlock: the
thread holding it waits only for the VM to read).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading

from snakeport import _limits as limits
from snakeport import etf
# (page_offset: a buffer's address within its page, from the C lane's module; None without
# it, and buffers are then written where they are. _payload_buffer: the same module's
# buffers that are not zeroed first, as the splitter's payloads.)
from snakeport._framing import _payload_buffer, aliases, page_offset

try:  # (Linux, with the C lane's module: see "Spliced buffers" above)
    from snakeport._clane import splice as _splice, unread as _unread
except ImportError:
    _splice = _unread = None

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "FrameWriter",
    "Borrowed",
    "segmented_reply",
    "realigned",
    "SEGMENT_BYTES",
    "IOV_MAX",
    "SPLICE_BYTES",
    "SPLICE_HOLD_BYTES",
    "NO_SPLICE_ENV",
]

_pack_header = struct.Struct(">I").pack

#: ``fcntl``'s command for a pipe's capacity (Linux; absent from older Pythons' module).
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: Most buffers one ``writev`` call takes (Linux ``IOV_MAX``).
IOV_MAX = 1024

#: Binaries at least this long leave a reply as their own ``writev`` buffer.
SEGMENT_BYTES = 64 * 1024

#: Buffers at least this long may be spliced into a pipe (see the module doc): the segments'
#: size (writes of less than that go to writev at once: nothing in them to realign or splice).
SPLICE_BYTES = SEGMENT_BYTES

#: Most bytes of spliced buffers kept alive for the reader (see the module doc).
SPLICE_HOLD_BYTES = 8 * 1024 * 1024

#: Set to a non-empty value other than ``0`` to copy every buffer (read when a writer is made).
NO_SPLICE_ENV = "SNAKEPORT_NO_SPLICE"

#: What a queued frame costs beyond its bytes (see ``max_queued``).
_FRAME_COST = limits.QUEUED_FRAME_COST

#: ``errno`` values that mean the reading end is gone (the VM halted or closed the port).
_CLOSED = (errno.EPIPE, errno.ECONNRESET, errno.EBADF)


class _Segments(tuple):
    """A frame payload given as consecutive buffers (never joined: large binaries)."""

    __slots__ = ()

    def __len__(self) -> int:  # the payload's byte count, as for bytes
        return sum(map(_nbytes, tuple.__iter__(self)))


def _nbytes(buf: Any) -> int:
    return buf.nbytes if buf.__class__ is memoryview else len(buf)


class Borrowed(_Segments):
    """A payload whose buffers belong to user objects (the blobs of large arrays).

    :meth:`FrameWriter.send` returns only once such a payload is written, so that the
    sending thread cannot run code that changes the arrays before their bytes are out.
    """

    __slots__ = ()


def segmented_reply(term: tuple) -> _Segments | None:
    """``etf.encode`` of ``{reply, Id, ok, Binary}`` as buffers, for a large Binary.

    The envelope is encoded by the codec; the binary follows as its own buffer, so a result
    of megabytes is written without being copied into the frame. The buffers joined are the
    bytes of ``etf.encode(term)`` (the tests compare them).

    Args:
        term: A reply term ``(reply, Id, ok, Value)``.

    Returns:
        The payload, or ``None`` when the value is not ``bytes`` of at least
        :data:`SEGMENT_BYTES`.
    """
    value = term[3]
    if value.__class__ is not bytes or len(value) < SEGMENT_BYTES:
        return None
    # An empty binary encodes as BINARY_EXT with length 0: replace the length.
    envelope = etf.encode((term[0], term[1], term[2], b""))
    return _Segments((envelope[:-4], len(value).to_bytes(4, "big"), value))


def realigned(buf: Any, pos: int) -> Any:
    """``buf``, or a copy of it placed where the kernel copies it into the pipe at full speed.

    Writing to a pipe copies the bytes into the pipe's pages. When the source address lies
    a few bytes *behind* the destination modulo a page (``snakeport._framing.aliases``:
    4K aliasing), that copy runs several times slower: writing 1 MiB took ~500 µs instead
    of ~115 on the machine of bench/RESULTS.md, and a worker whose echo buffers landed there
    answered a 1 MiB echo at two thirds of the speed (bench/PROFILE.md, *4K aliasing*).
    Where the source lies is the allocator's chance; where it goes in the pipe is ``pos``
    within the batch when the pipe is empty, as it is for a reply to a waiting caller. A
    buffer in that window is copied once (a ``memmove``, ~50-80 µs per MiB there, against
    the ~350 µs that the slow copy adds) to a spare buffer placed 0 modulo 64 from its
    destination; any other is returned as it is.

    Args:
        buf: A large C-contiguous buffer (``bytes``, a ``memoryview``, ...).
        pos: Where its first byte goes in the ``writev`` batch (bytes written before it).

    Returns:
        ``buf``, or a ``memoryview`` of a spare buffer holding the same bytes.
    """
    if page_offset is None or not aliases(page_offset(buf), pos):
        return buf
    src = _byte_view(buf)
    n = src.nbytes
    spare = _payload_buffer(n + 64)
    start = (pos - page_offset(spare)) % 64
    view = memoryview(spare)[start : start + n]
    view[:] = src
    return view


def _byte_view(buf: Any) -> memoryview:
    """A 1-dimensional ``memoryview`` of the bytes of a C-contiguous buffer."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _realigned_all(bufs: list[Any]) -> list[Any]:
    """``bufs``, or a copy of the list in which each buffer of at least
    :data:`SEGMENT_BYTES` is :func:`realigned` by its place among them."""
    out = bufs
    pos = 0
    for i, buf in enumerate(bufs):
        size = _nbytes(buf)
        if size >= SEGMENT_BYTES:
            moved = realigned(buf, pos)
            if moved is not buf:
                if out is bufs:
                    out = list(bufs)
                out[i] = moved
        pos += size
    return out


def _pipe_size(fd: int) -> int:
    """The capacity of the pipe ``fd`` in bytes (``F_GETPIPE_SZ``), 0 when unknown."""
    try:
        return fcntl.fcntl(fd, F_GETPIPE_SZ)
    except OSError:
        return 0


class FrameWriter:
    """Writes ``{packet, 4}`` frames to one fd from any thread (see the module docstring).

    Args:
        fd: The protocol output fd (blocking).
        on_closed: Called with the ``OSError`` when the fd's reader is gone (``EPIPE``,
            ``ECONNRESET``) or the fd is invalid (``EBADF``); the worker's ends the process.
            Without it, the error propagates to the sending thread.
        max_queued: Most bytes queued behind a blocked write before senders wait (a
            positive integer; default :data:`~snakeport._limits.MAX_QUEUED_BYTES`).
        splice: Splice large buffers into the pipe (see the module doc) when ``fd`` is a
            pipe, this platform can and :data:`NO_SPLICE_ENV` is not set; ``False`` copies
            every byte, as ``os.writev`` does. (:attr:`splices` tells which.)

    Raises:
        ValueError: ``max_queued`` is not a positive integer.

    Invariant: ``queued_bytes`` is the cost of the frames in the queue (0 when it is
    empty), and a sender adds frames only while the total stays within ``max_queued``.

    The C lane (:mod:`snakeport._lane`) does the common case of :meth:`send` itself, on
    ``_fd``, ``_write_lock``, ``_queue`` and ``_spliced``: frames of ``bytes`` only,
    ``_write_lock`` taken without waiting, the queue empty then; it lets spliced buffers go
    first as :meth:`_writev` does (:meth:`_release_spliced`), writes its frames by copy as
    :meth:`_write_all` does (partial writes and ``EINTR`` alike; none is spliced, nor
    realigned), reports a failure with :meth:`_failed` and calls :meth:`_send_queued`
    after letting the lock go, as :meth:`send` does. A change to what those mean must change ``lane_send`` in
    ``_clane.c`` too.
    """

    # (Slots: the C lane reads _queue and _spliced in place; see slot_of in _clane.c.)
    __slots__ = (
        "_fd",
        "_on_closed",
        "_max_queued",
        "_write_lock",
        "_queue_lock",
        "_queue",
        "_queued",
        "_splices",
        "_spliced",
        "_spliced_bytes",
    )

    def __init__(
        self,
        fd: int,
        *,
        on_closed: Callable[[OSError], Any] | None = None,
        max_queued: int = limits.MAX_QUEUED_BYTES,
        splice: bool = True,
    ) -> None:
        self._fd = fd
        self._on_closed = on_closed
        self._max_queued = limits.positive_int("max_queued", max_queued)
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[Any] = []
        self._queued = 0
        self._splices = (
            bool(splice)
            and _splice is not None
            and os.environ.get(NO_SPLICE_ENV, "") in ("", "0")
            and _is_pipe(fd)
        )
        # The spliced buffers kept alive for the reader, and their bytes (see the module
        # doc); both changed only with _write_lock held.
        self._spliced: list[bytes] = []
        self._spliced_bytes = 0

    @property
    def splices(self) -> bool:
        """Whether large buffers are spliced into the pipe (see the module doc)."""
        return self._splices

    @property
    def queued_bytes(self) -> int:
        """The cost of the frames waiting behind the write in progress (see the module)."""
        return self._queued

    def send(self, payloads: list[Any]) -> None:
        """Send frames (payloads without headers), in order, as one batch.

        Frames sent by one thread arrive in the order sent; frames of different threads
        never interleave inside a frame. Returns once the frames are written, or queued for
        the thread that is writing; waits for that thread when the queue is full, and
        always returns once written when one is :class:`Borrowed`.

        Args:
            payloads: The encoded terms (``bytes``, :func:`segmented_reply` buffers or
                :class:`Borrowed` buffers).
        """
        bufs = []
        total = 0
        borrowed = False
        for payload in payloads:
            n = len(payload)
            bufs.append(_pack_header(n))
            cls = payload.__class__
            if cls is _Segments or cls is Borrowed:
                # (Realigned, where need be, as they are written: _write_all.)
                bufs.extend(tuple.__iter__(payload))
                borrowed = borrowed or cls is Borrowed
            else:
                bufs.append(payload)
            total += n + 4
        if not self._write_lock.acquire(False):
            cost = total + _FRAME_COST * len(payloads)
            with self._queue_lock:
                queued = self._queued + cost
                if borrowed or queued <= self._max_queued:
                    self._queue.extend(bufs)
                    self._queued = queued
                    bufs = None
            if bufs is None:
                # Borrowed buffers must be written before this returns: wait for the
                # writing thread (it writes ours too, or we do once it is done).
                self._drain(blocking=borrowed)
                return
            # Backpressure: the queue is full; wait for the writing thread, then write.
            self._write_lock.acquire()
        # Nobody writes now: send what others queued, then ours, at once.
        try:
            if self._queue:
                with self._queue_lock:
                    bufs[:0] = self._queue
                    self._queue = []
                    self._queued = 0
                total = -1
            self._writev(bufs, total)
        finally:
            self._write_lock.release()
        if self._queue:
            self._send_queued()

    def _send_queued(self) -> None:
        """Write the frames other threads queued while this one wrote (unless another
        thread writes now: it writes them)."""
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
                        self._queued = 0
                    self._writev(bufs)
            finally:
                self._write_lock.release()
            # Frames queued after our last look, by a thread that saw us writing.
            with self._queue_lock:
                if not self._queue:
                    return
            blocking = False

    def _writev(self, bufs: list[Any], total: int = -1) -> None:
        """Write every buffer (``total``: their byte count when known, else -1), large
        ones spliced when the writer splices. Called with ``_write_lock`` held."""
        try:
            if self._spliced:
                self._release_spliced()
            if self._splices and (total < 0 or total >= SPLICE_BYTES):
                self._write_spliced(bufs)
            else:
                self._write_all(bufs, total)
        except OSError as exc:
            self._failed(exc)
            raise

    def _write_spliced(self, bufs: list[Any]) -> None:
        """Write every buffer in order, spliced where the module doc says: each ``bytes``
        of at least :data:`SPLICE_BYTES` while ``_spliced`` has room for it (kept there),
        any other buffer longer than the pipe by that much but for its last pipe's worth;
        the runs of other buffers (and those last bytes) between them with
        :meth:`_write_all` (a run starts a pipe page: spliced pages take no more bytes)."""
        fd = self._fd
        run: list[Any] = []
        pipe_size = -1  # asked once a buffer needs it
        for buf in bufs:
            size = _nbytes(buf)
            head = 0  # the bytes of buf to splice
            kept = False
            if size >= SPLICE_BYTES and self._splices:
                if buf.__class__ is bytes and self._spliced_bytes + size <= SPLICE_HOLD_BYTES:
                    head = size
                    kept = True
                else:
                    # All but a pipe's worth spliced, that rest copied after it: once the
                    # copy is written, no page of the buffer is left in the pipe.
                    if pipe_size < 0:
                        pipe_size = _pipe_size(fd)
                    if pipe_size and size - pipe_size >= SPLICE_BYTES:
                        head = size - pipe_size
            if head:
                if run:
                    self._write_all(run)
                    run = []
                if kept:  # (before the first page goes in: a failed splice may have moved some)
                    self._spliced.append(buf)
                    self._spliced_bytes += size
                if _splice(fd, buf, head):
                    if kept:
                        continue
                    buf = _byte_view(buf)[head:]
                else:
                    self._splices = False  # refused, nothing written: copy from now on
                    if kept:
                        self._spliced.pop()
                        self._spliced_bytes -= size
            run.append(buf)
        if run:
            self._write_all(run)

    def _release_spliced(self) -> None:
        """Let the spliced buffers go once the pipe is empty (the reader has read them).
        Called with ``_write_lock`` held (the C lane calls it too, from ``lane_send``)."""
        try:
            empty = _unread(self._fd) == 0
        except OSError:
            return  # (the fd is gone: the write that follows says so)
        if empty:
            self._spliced = []
            self._spliced_bytes = 0

    def _write_all(self, bufs: list[Any], total: int = -1) -> None:
        """Write every buffer with ``writev`` (``total``: as for :meth:`_writev`), each large
        one :func:`realigned` by where it goes in ``bufs`` (written from the start of a pipe
        page: an empty pipe's, or one after spliced pages)."""
        fd = self._fd
        if total < 0 or total >= SEGMENT_BYTES:
            bufs = _realigned_all(bufs)
        while bufs:
            batch = bufs[:IOV_MAX] if len(bufs) > IOV_MAX else bufs
            written = os.writev(fd, batch)
            if written == total and batch is bufs:
                return  # all written at once (the common case)
            i = 0
            n = len(batch)
            while i < n and written >= _nbytes(batch[i]):
                written -= _nbytes(batch[i])
                i += 1
            if i < n and written:
                rest = memoryview(batch[i])[written:]
                bufs = [rest, *bufs[i + 1 :]]
            else:
                bufs = bufs[i:]

    def _failed(self, exc: OSError) -> None:
        """A write failed with ``exc`` (raised after this returns): ``on_closed`` is told
        when the fd's reader is gone or the fd is invalid."""
        if exc.errno in _CLOSED and self._on_closed is not None:
            self._on_closed(exc)


def _is_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe (or FIFO): what ``vmsplice`` writes to."""
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (OSError, TypeError, ValueError):
        return False
