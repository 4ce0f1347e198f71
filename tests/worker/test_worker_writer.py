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

from snakeport import etf
from snakeport._protocol import OK, REPLY
from snakeport._writer import IOV_MAX, SEGMENT_BYTES, FrameWriter, segmented_reply

F_GETPIPE_SZ = 1032


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        assert chunk, "the pipe closed early"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes:
    (n,) = struct.unpack(">I", read_exact(fd, 4))
    return read_exact(fd, n)


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
    # once; A sends it after its own when the pipe drains.
    r, w = pipe
    writer = FrameWriter(w)
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
