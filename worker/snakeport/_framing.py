"""I/O-free splitter for ``{packet, 4}`` frames (a 4-byte big-endian length, then the payload).

The splitter never reads or writes anything itself (h11 style). Bytes go in either with
:meth:`FrameSplitter.feed` (convenient: any bytes-like object, any size) or with the
zero-copy pair :meth:`FrameSplitter.get_buffer` / :meth:`FrameSplitter.buffer_updated`
(the caller reads straight into the returned buffer, e.g. with ``os.readv``). Events come
out of :meth:`FrameSplitter.next_event`:

- ``bytes`` or ``bytearray``: one complete frame payload (a large payload is a
  ``bytearray`` the caller's reads were written into directly, without further copies);
  the memory of a large payload is allocated as its bytes arrive, never all at once from
  its header: first ``large_chunk`` bytes, then 4 times more each time they are filled (a
  payload of at most ``large_chunk`` bytes is one allocation; a larger one is moved at most
  once per growth, e.g. 2 moves for 16 MiB; with the C lane's module built, the
  buffer is not zeroed first and grows in place when the allocator can), so a header alone
  costs at most ``large_chunk`` bytes whatever length it declares; a first buffer that the
  allocator placed where the kernel's copy into it would be slow (:func:`aliases`) is set
  aside for another;
- :class:`Placed` (only with ``place_binaries`` set, and the C lane's module built): a
  large ``call`` frame whose big binary argument was read straight into its own ``bytes``
  (:class:`Placed` says where it goes back; the worker's decoder takes that ``bytes`` as the
  value, where the frame's buffer would have been copied into a new one);
- :class:`Oversized`: a frame whose declared length exceeds ``max_frame_bytes``; it carries
  the first ``head_bytes`` of the payload (enough for ``etf.decode_head`` to recover
  ``{Op, Id}``); the rest of that frame is skipped, never buffered;
- ``None``: more bytes are needed.

Example::

    splitter = FrameSplitter(max_frame_bytes=1 << 20)
    splitter.feed(b"\\x00\\x00\\x00\\x02hi")
    assert splitter.next_event() == b"hi"
    assert splitter.next_event() is None
"""

from __future__ import annotations

import struct
from collections import deque, namedtuple

from snakeport import _limits

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable

try:  # large payload buffers not zeroed first (the reads fill them), grown in place
    from snakeport._clane import BytesFiller
    from snakeport._clane import grow as _grow_buffer
    from snakeport._clane import page_offset, placeable
    from snakeport._clane import uninitialized as _payload_buffer
except ImportError:  # the C lane's module is not built
    _payload_buffer = bytearray
    page_offset = None
    placeable = None
    BytesFiller = None

    def _grow_buffer(old: bytearray, size: int) -> bytearray:
        grown = bytearray(size)
        grown[: len(old)] = old
        return grown

__all__ = ["FrameSplitter", "Oversized", "Placed", "Event", "encode_header", "aliases", "HEADER_SIZE", "ALIAS_WINDOW"]

#: Page size of a pipe's buffers, and how close behind its destination (modulo a page, in
#: bytes) the source of a large copy may lie before :func:`aliases` calls the copy slow.
PAGE = 4096
ALIAS_WINDOW = 48


def aliases(source: int, destination: int) -> bool:
    """Whether a large copy between these page offsets runs several times slower.

    The kernel's copy between a pipe's pages and a process's buffer (either way) runs
    ~4x slower when the source lies 1-14 bytes behind the destination modulo 4096, and
    ~1.5x when 32-40 bytes: its stores then alias the loads that follow them ("4K
    aliasing"; bench/profile/pipe_alias.py, bench/PROFILE.md). Both the reader of large
    frames (:class:`FrameSplitter`) and the writer (``snakeport._writer.realigned``) keep
    their buffers out of this window.

    Args:
        source: The source's address (or offset in its pipe page) modulo :data:`PAGE`.
        destination: The destination's, the same way.

    Returns:
        True when the source lies 1 to :data:`ALIAS_WINDOW` bytes behind the destination.
    """
    return (source - destination) % PAGE >= PAGE - ALIAS_WINDOW

#: Size of the ``{packet, 4}`` length prefix.
HEADER_SIZE = 4

_HEADER = struct.Struct(">I")
_unpack_header = _HEADER.unpack_from

#: Largest length a ``{packet, 4}`` header can state.
_MAX_PACKET = _limits.MAX_PACKET

#: First allocation for a large payload: a 1 MiB binary with its request envelope fits.
_LARGE_CHUNK = 1024 * 1024 + 64 * 1024

#: Bytes of a large frame that ``place_binaries`` waits for in the splitter's buffer before
#: it looks for a binary to place (the head of a call, up to its first big argument).
_PLACE_HEAD = 4096


class Oversized(namedtuple("Oversized", "size limit head")):
    """A frame larger than the limit; its payload is skipped (a named tuple).

    Attributes:
        size (int): The length the frame's header declared.
        limit (int): The configured ``max_frame_bytes``.
        head (bytes): The first bytes of the payload (at most ``head_bytes``), for
            ``decode_head``.
    """

    __slots__ = ()


class Placed(namedtuple("Placed", "buffer start value")):
    """A large frame whose binary ``value`` was read into its own ``bytes`` (a named tuple).

    Invariant: the payload is ``buffer[:start] + value + buffer[start:]``; ``buffer[:start]``
    ends with the ``BINARY_EXT`` header of ``value`` (its tag and length). The worker's C
    lane decodes it without joining it (``Lane.take``: the decoder gives ``value`` itself for
    that binary); everything else takes :meth:`joined`.

    Attributes:
        buffer (bytearray): The payload without the binary's bytes.
        start (int): Where the binary's bytes belong in the payload.
        value (bytes): The binary's bytes.
    """

    __slots__ = ()

    def joined(self) -> bytearray:
        """The whole payload, as the splitter would have given it without placing."""
        buffer, start, value = self
        end = start + len(value)
        whole = _payload_buffer(len(buffer) + len(value))
        with memoryview(whole) as view, memoryview(buffer) as source:
            view[:start] = source[:start]
            view[start:end] = value
            view[end:] = source[start:]
        return whole


#: What :meth:`FrameSplitter.next_event` returns.
Event = bytes | bytearray | Placed | Oversized | None


def encode_header(size: int) -> bytes:
    """Return the 4-byte ``{packet, 4}`` header for a payload of ``size`` bytes.

    Args:
        size: Payload length in bytes.

    Returns:
        The big-endian 4-byte length.

    Raises:
        ValueError: ``size`` does not fit in 32 bits.
    """
    if not 0 <= size <= _MAX_PACKET:
        raise ValueError(f"a {{packet, 4}} frame cannot hold {size} bytes")
    return _HEADER.pack(size)


class FrameSplitter:
    """Splits a byte stream into ``{packet, 4}`` frames, skipping oversized ones.

    Args:
        max_frame_bytes: Largest accepted payload (1 to 4294967295); larger frames become
            :class:`Oversized`.
        head_bytes: How many leading payload bytes an :class:`Oversized` event keeps.
        buffer_size: Size of the internal buffer for small frames and reads; payloads of at
            least ``large_threshold`` bytes get a buffer of their own instead.
        large_threshold: Payloads at least this long are assembled in a dedicated
            ``bytearray`` (returned as is, no copy). Must be at most ``buffer_size - 4``.
        large_chunk: First allocation for such a payload (at least ``large_threshold``);
            it grows 4 times each time it is full until it holds the whole payload.
        place_binaries: Read the first binary of at least ``large_threshold`` bytes of a
            large ``call`` frame of at most ``large_chunk`` bytes into its own ``bytes``
            when its bytes are still to come (a :class:`Placed` event; ``placeable`` in
            ``_clane.c`` says which frames). Ignored without the C lane's module. Also an
            attribute, which may be set between frames.

    Raises:
        ValueError: A limit is not a positive integer or the sizes are inconsistent.
    """

    __slots__ = (
        "max_frame_bytes",
        "head_bytes",
        "_cap",
        "_large_threshold",
        "_buf",
        "_mv",
        "_r",
        "_w",
        "_large_chunk",
        "_large",
        "_large_size",
        "_large_filled",
        "_skip_remaining",
        "_skip_size",
        "_skip_head",
        "_skip_head_target",
        "_skip_reported",
        "_pending",
        "place_binaries",
        "_filler",
        "_filler_filled",
        "_placed_start",
    )

    def __init__(
        self,
        *,
        max_frame_bytes: int = _limits.MAX_FRAME_BYTES.default,
        head_bytes: int = 256,
        buffer_size: int = 256 * 1024,
        large_threshold: int = 64 * 1024,
        large_chunk: int = _LARGE_CHUNK,
        place_binaries: bool = False,
    ) -> None:
        _limits.MAX_FRAME_BYTES.check(max_frame_bytes)
        for name, value in (
            ("head_bytes", head_bytes),
            ("buffer_size", buffer_size),
            ("large_threshold", large_threshold),
            ("large_chunk", large_chunk),
        ):
            _limits.positive_int(name, value)
        if large_threshold > buffer_size - HEADER_SIZE:
            raise ValueError(
                f"expected large_threshold ({large_threshold}) to be at most "
                f"buffer_size - 4 ({buffer_size - HEADER_SIZE})"
            )
        if large_chunk < large_threshold:
            raise ValueError(
                f"expected large_chunk ({large_chunk}) to be at least large_threshold ({large_threshold})"
            )
        self.max_frame_bytes = max_frame_bytes
        self.head_bytes = head_bytes
        self._cap = buffer_size
        self._large_threshold = large_threshold
        # Fixed-size buffer: never resized, so memoryviews into it stay valid. Not zeroed
        # (with the C lane's module): only bytes up to _w are ever read, and its pages become
        # resident only as reads reach them (requests and replies alternating, that is the
        # first few KiB: _tail starts again at 0 once everything is consumed).
        self._buf = _payload_buffer(buffer_size)
        self._mv = memoryview(self._buf)
        self._r = 0  # start of unconsumed bytes in _buf
        self._w = 0  # end of valid bytes in _buf
        self._large_chunk = large_chunk
        self._large: bytearray | None = None  # the payload being assembled (len: allocated)
        self._large_size = 0  # its declared length
        self._large_filled = 0
        self._skip_remaining = 0
        self._skip_size = 0
        self._skip_head = bytearray()
        self._skip_head_target = 0
        self._skip_reported = True
        self._pending: deque[memoryview] = deque()
        self.place_binaries = place_binaries
        # A placed frame's binary while it is read (its bytes go there, then the rest of
        # the frame into _large), how many of its bytes are in, and where it belongs.
        self._filler: BytesFiller | None = None
        self._filler_filled = 0
        self._placed_start = 0

    # ----------------------------------------------------------------- input

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the stream (copied; any size; empty input is ignored).

        Args:
            data: The next bytes of the stream.
        """
        if data:
            if type(data) is not bytes:
                data = bytes(data)
            self._pending.append(memoryview(data))

    def get_buffer(self) -> memoryview:
        """Return a writable buffer for the next bytes of the stream (zero-copy input).

        Write up to ``len(buffer)`` bytes into it, then call :meth:`buffer_updated` with the
        count, then drain :meth:`next_event` until it returns ``None`` before asking for
        another buffer. The buffer is only valid until the next call on the splitter, and
        may be a view that the splitter keeps (the whole buffer, once everything in it was
        consumed): do not release it. (The C lane does the common case, everything
        consumed, and :meth:`buffer_updated` on the slots ``_r`` and ``_w``, reading into
        ``_buf`` itself: ``lane_read`` in ``_clane.c``.)

        Returns:
            A non-empty writable memoryview.

        Raises:
            RuntimeError: Bytes given to :meth:`feed` are still waiting to be processed.
        """
        if self._pending:
            raise RuntimeError("drain next_event() after feed() before using get_buffer()")
        if self._large is not None:
            return self._large_target()
        if self._r == self._w:  # everything consumed (the common case): the whole buffer
            self._r = self._w = 0
            return self._mv
        return self._tail()

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` bytes were written into the last :meth:`get_buffer` buffer.

        Args:
            nbytes: How many bytes were written (0 is allowed and does nothing).

        Raises:
            ValueError: ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise ValueError(f"expected nbytes to be >= 0, got: {nbytes}")
        if self._large is not None:
            if self._filling():
                self._filler_filled += nbytes
            else:
                self._large_filled += nbytes
        else:
            self._w += nbytes

    def buffered(self) -> tuple[bytearray, int, int] | None:
        """The internal buffer and the range ``[r, w)`` of its bytes not consumed yet, for a
        reader that takes whole frames in place (the worker's C lane, :mod:`snakeport._lane`);
        ``None`` while the splitter is inside a large or skipped frame, or holds fed bytes.

        The view stays true while nothing else is done with the splitter: the next call that
        gives it bytes may move unconsumed bytes to the front (:meth:`get_buffer`), and
        :meth:`next_event` takes frames. The buffer itself is never resized. The reader
        tells what it took with :meth:`consume`, which refuses a stale view.

        Returns:
            ``(buffer, r, w)``, or ``None``.
        """
        if self._large is not None or self._skip_remaining or self._pending:
            return None
        return self._buf, self._r, self._w

    def consume(self, start: int, end: int) -> None:
        """Mark the bytes ``[start, end)`` of the :meth:`buffered` range as taken (whole
        frames). (The C lane does the same on the slots ``_r`` and ``_w``: ``lane_consume``
        in ``_clane.c``.)

        Args:
            start: Where the caller's view begins: the ``r`` of :meth:`buffered`, or the
                ``end`` of the caller's last :meth:`consume` since.
            end: An offset within the range, at a frame boundary.

        Raises:
            RuntimeError: ``start`` is not the splitter's read offset: the view is stale
                (bytes were taken or moved since), nothing is taken.
            ValueError: ``end`` is outside ``[start, w]``.
        """
        if start != self._r:
            raise RuntimeError(f"stale buffered() view: it starts at {start}, the splitter reads at {self._r}")
        if not start <= end <= self._w:
            raise ValueError(f"expected end in [{start}, {self._w}], got: {end}")
        self._r = end

    @property
    def has_partial_frame(self) -> bool:
        """Whether bytes of an incomplete frame were received (e.g. truncated at EOF)."""
        return bool(
            self._pending or self._w > self._r or self._large is not None or self._skip_remaining
        )

    # ---------------------------------------------------------------- output

    def next_event(self) -> Event:
        """Return the next complete frame, an :class:`Oversized` notice, or ``None``.

        Returns:
            A payload (``bytes``, or ``bytearray`` for large frames), an :class:`Oversized`
            event, or ``None`` when more input is needed.
        """
        while True:
            event = self._step()
            if event is not None or not self._pending:
                return event
            self._pump()

    # -------------------------------------------------------------- internal

    def _tail(self) -> memoryview:
        """Make room at the end of ``_buf`` and return the free region."""
        r, w, cap = self._r, self._w, self._cap
        if r == w:
            self._r = self._w = r = w = 0
        elif cap - r < self._large_threshold + HEADER_SIZE:
            # Move the partial frame to the front so that any small frame fits.
            n = w - r
            self._buf[0:n] = self._mv[r:w]
            self._r, self._w = 0, n
            w = n
        return self._mv[w:]

    def _filling(self) -> bool:
        """Whether the next bytes of a placed frame are its binary's (see :meth:`_place`)."""
        filler = self._filler
        return filler is not None and self._filler_filled < len(filler)

    def _large_target(self) -> memoryview:
        """Where the next bytes of the large frame being assembled go."""
        if self._filling():
            return memoryview(self._filler)[self._filler_filled :]
        large = self._large
        assert large is not None
        if self._large_filled == len(large):
            large = self._grow()
        return memoryview(large)[self._large_filled :]

    def _large_buffer(self, size: int, have: int, make: Callable[[int], Any] | None = None) -> Any:
        """A buffer for a large payload whose first ``have`` bytes are buffered already.

        The reads will fill it from ``have`` on, with the stream's bytes from ``_w`` on.
        Reads into ``_buf`` start at its beginning once everything is consumed, and a frame
        written into an empty pipe starts a pipe page; so, as a rule, stream byte ``_w`` lies
        at ``_w`` modulo 4096 in its pipe page. A buffer whose place for it would make that
        copy slow (:func:`aliases`) is set aside and another taken (the allocator places it
        elsewhere while the first is held); the third is taken whatever it is. So for a
        moment up to three buffers of ``size`` are live (a header alone: three first chunks,
        ~3.2 MiB), and one is kept. (Buffers that ``malloc`` maps on their own all start at
        the same place in their page, where the retries cannot help; from its first large
        frame on, the worker has ``malloc`` take buffers of this size from its heap:
        :func:`snakeport._process.tune_malloc`.) ``make`` makes a buffer of a size: a
        placed frame's :class:`BytesFiller` is placed the same way (default: a bytearray).
        """
        if make is None:
            make = _payload_buffer
        large = make(size)
        if page_offset is None:
            return large
        source = self._w % PAGE
        if aliases(source, page_offset(large) + have):
            held = large
            large = make(size)
            if aliases(source, page_offset(large) + have):
                large = make(size)
            del held
        return large

    def _place(self, payload: int, size: int, have: int) -> bool:
        """Start a placed frame (see :class:`Placed`) whose payload begins at ``payload``
        in ``_buf`` and whose first ``have`` bytes are buffered, if it has a binary to place
        whose bytes are still to come; whether it did."""
        found = placeable(self._buf, payload, self._w, self._large_threshold)
        if found is None:
            return False
        start, length = found
        if start + length <= have or start + length > size:  # read already (copied either
            return False  # way), or longer than the frame (malformed: the decoder says so)
        large = _payload_buffer(size - length)
        with memoryview(large) as view:
            view[:start] = self._mv[payload : payload + start]
        # (The binary's bytes read so far; the next read goes on from have - start.)
        filler = self._large_buffer(length, have - start, BytesFiller)
        with memoryview(filler) as view:
            view[: have - start] = self._mv[payload + start : self._w]
        self._r = self._w
        self._large = large
        self._large_size = size - length
        self._large_filled = start
        self._filler = filler
        self._filler_filled = have - start
        self._placed_start = start
        return True

    def _grow(self) -> bytearray:
        """Make the full payload buffer 4 times larger (at most the declared size).

        With the C lane's module, the buffer is resized in place when nothing holds a view of
        it (the allocator then often extends it without a copy), and its new bytes are not
        zeroed (the reads fill them); else, and when the caller still holds a view of it
        (``get_buffer``), a new buffer and a copy.
        """
        old = self._large
        assert old is not None
        grown = _grow_buffer(old, min(self._large_size, 4 * len(old)))
        self._large = grown
        return grown

    def _pump(self) -> None:
        """Move fed bytes into the active buffer (as many as fit)."""
        pending = self._pending
        while pending:
            target = self._large_target() if self._large is not None else self._tail()
            if not target:  # cannot happen when events are drained in between
                raise RuntimeError("frame splitter buffer is full")
            chunk = pending[0]
            n = min(len(chunk), len(target))
            target[:n] = chunk[:n]
            self.buffer_updated(n)
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[n:]
            # One chunk at a time: the caller's loop steps the state machine in between.
            return

    def _step(self) -> Event:
        """Advance the state machine over the buffered bytes; return one event or None."""
        large = self._large
        if large is not None:
            if self._large_filled < self._large_size or self._filling():
                return None
            filler = self._filler
            self._large = None
            self._large_filled = 0
            if filler is not None:
                self._filler = None
                return Placed(large, self._placed_start, filler.take())
            return large

        if self._skip_remaining:
            avail = self._w - self._r
            if not avail:
                return None
            take = min(avail, self._skip_remaining)
            need = self._skip_head_target - len(self._skip_head)
            if need > 0:
                self._skip_head += self._mv[self._r : self._r + min(take, need)]
            self._r += take
            self._skip_remaining -= take
            if not self._skip_reported and len(self._skip_head) >= self._skip_head_target:
                self._skip_reported = True
                head = bytes(self._skip_head)
                self._skip_head = bytearray()
                return Oversized(self._skip_size, self.max_frame_bytes, head)
            if self._skip_remaining:
                return None

        r = self._r
        avail = self._w - r
        if avail < HEADER_SIZE:
            return None
        (size,) = _unpack_header(self._buf, r)
        if size > self.max_frame_bytes:
            self._r = r + HEADER_SIZE
            self._skip_size = size
            self._skip_remaining = size
            self._skip_head_target = min(size, self.head_bytes)
            self._skip_head = bytearray()
            self._skip_reported = False
            return self._step()
        end = r + HEADER_SIZE + size
        if end <= self._w:
            self._r = end
            return bytes(self._mv[r + HEADER_SIZE : end])
        if size >= self._large_threshold:
            have = avail - HEADER_SIZE
            if self.place_binaries and placeable is not None and size <= self._large_chunk:
                if have < min(_PLACE_HEAD, self._large_threshold):
                    return None  # too few bytes to tell: more are read into _buf (they fit)
                if self._place(r + HEADER_SIZE, size, have):
                    return None
            large = self._large_buffer(min(size, max(have, self._large_chunk)), have)
            # (Through a memoryview: a bytearray's slice assignment from a memoryview
            # copies the source into a temporary bytearray first, a second copy.)
            with memoryview(large) as view:
                view[:have] = self._mv[r + HEADER_SIZE : self._w]
            self._r = self._w
            self._large = large
            self._large_size = size
            self._large_filled = have
        return None
