"""Unit tests of the frame writer (snakeport._writer), in-process over real pipes and threads."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
import threading
import time

import pytest
from pipe_io import read_exact, read_frame

from snakeport import _writer, etf
from snakeport._protocol import OK, REPLY
from snakeport._limits import QUEUED_FRAME_COST
from snakeport._clane import page_offset
from snakeport._framing import ALIAS_WINDOW
from snakeport._writer import (
    IOV_MAX,
    SEGMENT_BYTES,
    Borrowed,
    FrameWriter,
    realigned,
    segmented_reply,
)

F_GETPIPE_SZ = 1032


def buffered(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_frames_go_out_with_their_headers_in_order(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    writer.send([b"a", b"", b"bc"])
    writer.send([b"d" * 1000])
    assert [read_frame(r) for _ in range(4)] == [b"a", b"", b"bc", b"d" * 1000]
    assert buffered(r) == 0


def test_a_segmented_reply_is_written_as_the_codec_bytes(pipe) -> None:
    r, w = pipe
    value = os.urandom(SEGMENT_BYTES + 5)
    term = (REPLY, 7, OK, value)
    payload = segmented_reply(term)
    done = threading.Thread(target=FrameWriter(w).send, args=([payload, b"next"],))
    done.start()  # larger than the pipe: the reader below lets it finish
    assert read_frame(r) == etf.encode(term)
    assert read_frame(r) == b"next"
    done.join(10)


def placed(size: int, offset: int) -> memoryview:
    """``size`` random bytes whose first byte lies at ``offset`` (mod 4096) in its page."""
    backing = bytearray(size + 8192)
    start = (offset - page_offset(backing)) % 4096
    view = memoryview(backing)[start : start + size]
    view[:] = os.urandom(size)
    assert page_offset(view) == offset % 4096
    return view


@pytest.mark.parametrize("behind", [1, 8, 17, ALIAS_WINDOW])
def test_a_buffer_just_behind_its_place_in_the_pipe_is_copied_where_it_is_not(behind) -> None:
    # (4K aliasing: the kernel's copy into the pipe runs several times slower there.)
    pos = 25
    buf = placed(SEGMENT_BYTES, pos - behind)
    out = realigned(buf, pos)
    assert out is not buf
    assert bytes(out) == bytes(buf)
    assert (page_offset(out) - pos) % 64 == 0


@pytest.mark.parametrize("ahead", [0, 1, 64, 2048, 4096 - ALIAS_WINDOW - 1])
def test_a_buffer_elsewhere_is_written_where_it_is(ahead) -> None:
    pos = 4 + 17 + 4
    buf = placed(SEGMENT_BYTES, pos + ahead)
    assert realigned(buf, pos) is buf


def test_a_realigned_buffer_of_another_format_keeps_its_bytes() -> None:
    pos = 100
    raw = placed(SEGMENT_BYTES, pos - 9)
    doubles = raw.cast("d")  # as an array's blob would be
    out = realigned(doubles, pos)
    assert out.format == "B" and out.nbytes == raw.nbytes
    assert bytes(out) == bytes(raw)


@pytest.mark.parametrize("splice", [True, False])
def test_a_frame_whose_large_buffer_is_realigned_arrives_intact(pipe, splice: bool, monkeypatch) -> None:
    # (A writer that splices realigns as it writes, by the buffer's place in its run; one
    # that does not, in send: the same place here, the first run being the batch.)
    r, w = pipe
    envelope = etf.encode((REPLY, 7, OK, b""))[:-4]
    value = placed(SEGMENT_BYTES + 100, 4 + len(envelope) + 4 - 3)  # 3 bytes behind its place
    size = value.nbytes.to_bytes(4, "big")
    calls = []
    real = _writer.realigned
    monkeypatch.setattr(_writer, "realigned", lambda buf, pos: calls.append(pos) or real(buf, pos))
    writer = FrameWriter(w, splice=splice)
    assert writer.splices is splice
    sender = threading.Thread(target=writer.send, args=([Borrowed((envelope, size, value)), b"next"],))
    sender.start()  # larger than the pipe: the reader below lets it finish
    assert read_frame(r) == envelope + size + bytes(value)
    assert read_frame(r) == b"next"
    sender.join(10)
    assert not sender.is_alive()
    assert calls == [4 + len(envelope) + 4]


def test_a_batch_of_more_than_iov_max_buffers_is_written_whole(pipe) -> None:
    r, w = pipe
    frames = [bytes([i % 256]) * (i % 7) for i in range(IOV_MAX)]  # 2 buffers per frame
    sender = threading.Thread(target=FrameWriter(w).send, args=(frames,))
    sender.start()
    assert [read_frame(r) for _ in frames] == frames
    sender.join(10)


def test_a_thread_that_finds_the_fd_busy_queues_and_returns(pipe) -> None:
    # Thread A writes a frame larger than the pipe and blocks in writev (nobody reads yet);
    # the test thread's send then finds the writer busy, queues its frame and returns at
    # once; A sends it after its own when the pipe drains. (Copied, not spliced: a spliced
    # buffer fills the pipe's slots, not its bytes, and the loop below counts bytes;
    # test_worker_writer_splice.py has the spliced case.)
    r, w = pipe
    writer = FrameWriter(w, splice=False)
    big = b"x" * (2 * fcntl.fcntl(w, F_GETPIPE_SZ))
    a = threading.Thread(target=writer.send, args=([big],))
    a.start()
    deadline = time.monotonic() + 10
    while buffered(r) < fcntl.fcntl(w, F_GETPIPE_SZ):  # the pipe is full: A is blocked
        assert time.monotonic() < deadline, "the big frame never filled the pipe"
        time.sleep(0.001)
    queuer = threading.Thread(target=writer.send, args=([b"queued"],))
    queuer.start()
    queuer.join(10)
    assert not queuer.is_alive(), "send blocked behind the busy writer instead of queueing"
    assert a.is_alive() and buffered(r) == fcntl.fcntl(w, F_GETPIPE_SZ)  # nothing read yet
    assert read_frame(r) == big
    assert read_frame(r) == b"queued"
    a.join(10)
    assert not a.is_alive()


def test_a_sender_that_would_overfill_the_queue_waits_then_writes_after_it(pipe) -> None:
    # Backpressure (issue 13, item 4): the queue holds at most max_queued bytes (frames
    # counted with their overhead); a sender that would take it past that waits for the
    # writing thread and then writes its frames itself, after the queued ones.
    r, w = pipe
    writer = FrameWriter(w, max_queued=1000, splice=False)  # (as above)
    capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
    big = b"x" * (2 * capacity)
    a = threading.Thread(target=writer.send, args=([big],))
    a.start()
    deadline = time.monotonic() + 10
    while buffered(r) < capacity:  # the pipe is full: A is blocked in writev
        assert time.monotonic() < deadline, "the big frame never filled the pipe"
        time.sleep(0.001)
    writer.send([b"q" * 100])  # fits: queued, returns at once
    assert writer.queued_bytes == 100 + 4 + QUEUED_FRAME_COST
    waiter = threading.Thread(target=writer.send, args=([b"w" * 800, b"v"],))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "a sender queued past max_queued instead of waiting"
    assert writer.queued_bytes == 100 + 4 + QUEUED_FRAME_COST  # nothing more queued
    assert read_frame(r) == big
    assert [read_frame(r) for _ in range(3)] == [b"q" * 100, b"w" * 800, b"v"]
    for t in (a, waiter):
        t.join(10)
        assert not t.is_alive()
    assert writer.queued_bytes == 0 and buffered(r) == 0


def test_max_queued_is_validated() -> None:
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="expected max_queued to be a positive integer"):
            FrameWriter(1, max_queued=bad)


def test_frames_of_many_threads_never_interleave(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    threads, per_thread = 8, 200

    def sender(k: int) -> None:
        for i in range(per_thread):
            writer.send([f"{k}:{i}:".encode() + bytes([k]) * (i * 37 % 5000)])

    senders = [threading.Thread(target=sender, args=(k,)) for k in range(threads)]
    for t in senders:
        t.start()
    seen: dict[int, list[int]] = {k: [] for k in range(threads)}
    for _ in range(threads * per_thread):
        frame = read_frame(r)
        k, i, body = frame.split(b":", 2)
        k, i = int(k), int(i)
        assert body == bytes([k]) * (i * 37 % 5000)  # whole, not mixed with another frame
        seen[k].append(i)
    for t in senders:
        t.join(10)
    writer.flush()
    assert all(ids == list(range(per_thread)) for ids in seen.values())  # each thread's order


def test_a_closed_reader_calls_on_closed(pipe) -> None:
    r, w = pipe
    os.close(r)
    closed = []
    with pytest.raises(BrokenPipeError):
        FrameWriter(w, on_closed=closed.append).send([b"x"])
    assert [e.errno for e in closed] == [errno.EPIPE]
    with pytest.raises(BrokenPipeError):  # without on_closed the error reaches the sender
        FrameWriter(w).send([b"x"])


def test_a_writev_that_a_signal_cuts_short_is_finished(pipe) -> None:
    """A partial ``writev`` is finished by the next ones: a signal that arrives while
    ``writev`` blocks on a full pipe makes the kernel return the bytes written so far (no
    EINTR once some were written), and ``_writev`` writes the rest."""
    import signal

    r, w = pipe
    writer = FrameWriter(w)
    frames = [bytes([i]) * 200_000 for i in range(3)]  # one writev of ~600 KB: the pipe is 64 KiB
    signalled = threading.Event()
    received: list[bytes] = []

    def reader() -> None:
        assert signalled.wait(20), "SIGALRM never came"
        received.extend(read_frame(r) for _ in frames)

    previous = signal.signal(signal.SIGALRM, lambda *_: signalled.set())
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # writev is blocked on the full pipe by then
        writer.send(frames)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        thread.join(20)
    assert signalled.is_set()
    assert received == frames
    assert buffered(r) == 0
