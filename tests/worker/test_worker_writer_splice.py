"""Spliced buffers of the frame writer (snakeport._writer, "Spliced buffers"; _clane.splice):
in-process, over real pipes, sockets and threads.

A spliced buffer goes into the pipe as its own memory pages; the reader copies from them
later. These tests check that every byte arrives as it was, the writer's two rules (a
spliced ``bytes`` kept alive until the pipe was read empty, else freed memory reused by the
next object would be what the reader reads; any other buffer spliced but for its last
pipe's worth, copied after it, so that its owner may change it once ``send`` returns), and
where it copies instead.
"""

from __future__ import annotations

import fcntl
import gc
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest
from pipe_io import read_exact, read_frame

from snakeport import _clane, _writer, etf
from snakeport._protocol import OK, REPLY
from snakeport._writer import (
    NO_SPLICE_ENV,
    SEGMENT_BYTES,
    SPLICE_BYTES,
    SPLICE_HOLD_BYTES,
    Borrowed,
    FrameWriter,
    segmented_reply,
)

F_SETPIPE_SZ = 1031


def fcntl_setpipe(fd: int, size: int) -> None:
    fcntl.fcntl(fd, F_SETPIPE_SZ, size)


def send_while_reading(writer: FrameWriter, r: int, payloads: list, count: int) -> list[bytes]:
    """``writer.send(payloads)`` in a thread while this one reads ``count`` frames."""
    sender = threading.Thread(target=writer.send, args=(payloads,))
    sender.start()
    got = [read_frame(r) for _ in range(count)]
    sender.join(10)
    assert not sender.is_alive()
    return got


def test_the_platform_splices_into_a_pipe(pipe) -> None:
    # (The worker's tests run on Linux with the C lane's module: this is the path they test.)
    assert hasattr(_clane, "splice") and hasattr(_clane, "unread")
    assert FrameWriter(pipe[1]).splices
    assert not FrameWriter(pipe[1], splice=False).splices


def test_snakeport_no_splice_turns_it_off(pipe, monkeypatch) -> None:
    monkeypatch.setenv(NO_SPLICE_ENV, "1")
    assert not FrameWriter(pipe[1]).splices
    monkeypatch.setenv(NO_SPLICE_ENV, "0")
    assert FrameWriter(pipe[1]).splices


def test_a_socket_or_a_file_is_written_by_copy(tmp_path) -> None:
    a, b = socket.socketpair()
    with a, b:
        assert not FrameWriter(a.fileno()).splices
        assert _clane.splice(a.fileno(), b"x" * SPLICE_BYTES) is False  # refused, nothing sent
        writer = FrameWriter(a.fileno())
        data = os.urandom(SPLICE_BYTES * 2)
        sender = threading.Thread(target=writer.send, args=([data],))
        sender.start()
        got = b""
        while len(got) < 4 + len(data):
            got += b.recv(1 << 20)
        sender.join(10)
        assert got == struct.pack(">I", len(data)) + data and not writer._spliced
    with open(tmp_path / "out", "wb") as f:
        assert not FrameWriter(f.fileno()).splices


def test_a_large_bytes_arrives_intact_and_is_kept_until_the_pipe_is_empty(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    data = os.urandom(3 * SPLICE_BYTES + 123)  # (not a whole number of pages)
    assert send_while_reading(writer, r, [data, b"small"], 2) == [data, b"small"]
    assert len(writer._spliced) == 1 and writer._spliced[0] is data
    assert writer._spliced_bytes == len(data)
    # The next write finds the pipe empty: the buffer is let go.
    assert send_while_reading(writer, r, [b"next"], 1) == [b"next"]
    assert writer._spliced == [] and writer._spliced_bytes == 0


def test_a_spliced_buffer_is_not_let_go_while_the_reader_has_not_read_it(pipe) -> None:
    r, w = pipe
    fcntl_setpipe(w, 1 << 20)
    writer = FrameWriter(w)
    data = os.urandom(SPLICE_BYTES)
    writer.send([data])  # (fits in the pipe: nobody reads yet)
    writer.send([b"more"])  # the pipe is not empty: data stays
    assert writer._spliced == [data]
    assert read_frame(r) == data and read_frame(r) == b"more"


def test_the_reader_gets_the_bytes_sent_even_when_their_memory_would_be_reused(pipe) -> None:
    # The sender drops its reference as soon as send returns, and new buffers of the same
    # size are made and overwritten at once: were the writer not to keep the spliced bytes,
    # malloc would hand their memory to the next buffer (96 KiB: below its mmap threshold,
    # so from its heap) and the reader would read the overwritten pages.
    r, w = pipe
    fcntl_setpipe(w, 1 << 20)
    writer = FrameWriter(w)
    size = 96 * 1024
    sent = []
    for i in range(8):
        data = bytes([i]) * size
        sent.append(hash(data))
        writer.send([data])
        del data
        gc.collect()
        scratch = [bytearray(b"\xee" * size) for _ in range(3)]
        del scratch
    assert [hash(read_frame(r)) for _ in range(8)] == sent


def test_small_buffers_and_other_types_are_copied(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    short = b"s" * (SPLICE_BYTES - 1)
    view = memoryview(os.urandom(SPLICE_BYTES * 2))
    array = bytearray(os.urandom(SPLICE_BYTES * 2))
    got = send_while_reading(writer, r, [short, Borrowed((view,)), Borrowed((array,))], 3)
    assert got == [short, bytes(view), bytes(array)]
    assert writer._spliced == []


def test_a_segmented_reply_splices_its_binary_not_its_envelope(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    value = os.urandom(SEGMENT_BYTES * 4)
    payload = segmented_reply((REPLY, 9, OK, value))
    assert send_while_reading(writer, r, [payload], 1) == [etf.encode((REPLY, 9, OK, value))]
    assert writer._spliced == [value]


def test_the_spliced_bytes_kept_stay_within_splice_hold_bytes(pipe) -> None:
    # One batch of three buffers: the first two fit within SPLICE_HOLD_BYTES and are kept;
    # the third would take it past that and is copied (too short to splice a part of).
    r, w = pipe
    writer = FrameWriter(w)
    part = SPLICE_HOLD_BYTES // 2 - 1
    frames = [os.urandom(part), os.urandom(part), os.urandom(SPLICE_BYTES)]
    assert send_while_reading(writer, r, frames, 3) == frames
    assert writer._spliced == frames[:2] and writer._spliced_bytes == 2 * part


@pytest.mark.parametrize("pipe_size", [64 * 1024, 1 << 20])
def test_a_buffer_longer_than_the_pipe_is_spliced_but_its_last_pipe_worth(pipe, pipe_size: int) -> None:
    # A buffer that is not kept (here one of an array, which its owner may change once send
    # returns) is spliced but for its last pipe's worth of bytes, which is copied after it:
    # once that copy is written, every spliced page has been read. The reader here reads a
    # page at a time and stops as soon as send has returned; then the buffer is changed,
    # and the rest of the frame must still be the bytes sent.
    r, w = pipe
    fcntl_setpipe(w, pipe_size)
    writer = FrameWriter(w)
    data = bytearray(os.urandom(2 * pipe_size + 777))
    sent = bytes(data)
    sender = threading.Thread(target=writer.send, args=([Borrowed((memoryview(data),))],))
    sender.start()
    got = bytearray()
    while sender.is_alive():
        got += os.read(r, 4096)
        sender.join(0.001)
    assert not sender.is_alive() and len(got) < 4 + len(sent)  # (some of it still unread)
    data[:] = b"\xee" * len(data)  # what its owner may do now
    got += read_exact(r, 4 + len(sent) - len(got))
    assert bytes(got) == struct.pack(">I", len(sent)) + sent
    assert writer._spliced == []  # (nothing kept: the copy after it answers for it)


def test_a_bytes_beyond_splice_hold_bytes_is_spliced_but_its_last_pipe_worth(pipe) -> None:
    r, w = pipe
    fcntl_setpipe(w, 1 << 20)
    writer = FrameWriter(w)
    data = os.urandom(SPLICE_HOLD_BYTES + 3 * 4096 + 5)
    assert send_while_reading(writer, r, [b"x", data, b"y"], 3) == [b"x", data, b"y"]
    assert writer._spliced == []


def test_a_spliced_write_larger_than_the_pipe_goes_on_across_reads(pipe) -> None:
    r, w = pipe  # (default capacity: 16 pages)
    writer = FrameWriter(w)
    data = os.urandom(40 * 4096 + 17)
    frames = [b"a", data, b"b", data, b"c"]
    assert send_while_reading(writer, r, frames, 5) == frames
    assert len(writer._spliced) == 2


def test_a_thread_that_finds_a_splice_in_progress_queues_and_returns(pipe) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    big = os.urandom(64 * 4096)  # four times the pipe's 16 pages: A blocks in vmsplice
    a = threading.Thread(target=writer.send, args=([big],))
    a.start()
    # A holds the write lock while it splices: a bounded poll until it has it.
    for _ in range(10_000):
        if writer._write_lock.locked():
            break
        threading.Event().wait(0.001)
    assert writer._write_lock.locked()
    queuer = threading.Thread(target=writer.send, args=([b"queued"],))
    queuer.start()
    queuer.join(10)
    assert not queuer.is_alive(), "send blocked behind the busy writer instead of queueing"
    assert read_frame(r) == big and read_frame(r) == b"queued"
    a.join(10)
    assert not a.is_alive()


def test_spliced_bytes_outlive_the_process_that_wrote_them(pipe) -> None:
    # A worker may exit right after its last reply (shutdown, a closed input): the pipe
    # holds references to the spliced pages, so the reader still gets every byte after the
    # process is gone. A real child process, waited for before anything is read.
    r, w = pipe
    fcntl_setpipe(w, 1 << 20)
    code = (
        "import os, sys\n"
        "from snakeport._writer import FrameWriter\n"
        "w = FrameWriter(int(sys.argv[1]))\n"
        "assert w.splices\n"
        "w.send([bytes(range(256)) * 2048, b'end'])\n"
        "os._exit(0)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(w)], pass_fds=(w,), timeout=60)
    assert child.returncode == 0
    assert read_frame(r) == bytes(range(256)) * 2048
    assert read_frame(r) == b"end"


def test_a_large_buffer_copied_between_spliced_ones_is_realigned_by_its_place_in_its_run(pipe, monkeypatch) -> None:
    # A writer that splices copies the other buffers in runs between the spliced ones; each
    # run starts a pipe page (a spliced page takes no more bytes), so a large copied buffer
    # is realigned by where it goes in its run, not in the batch.
    r, w = pipe
    writer = FrameWriter(w)
    calls = []
    real = _writer.realigned

    def recording(buf, pos):
        calls.append((buf, pos))
        return real(buf, pos)

    monkeypatch.setattr(_writer, "realigned", recording)
    spliced = os.urandom(SPLICE_BYTES + 5)
    envelope = b"e" * 11
    value = memoryview(os.urandom(SEGMENT_BYTES + 100))  # (too short to splice a part of)
    got = send_while_reading(writer, r, [spliced, Borrowed((envelope, value))], 2)
    assert got == [spliced, envelope + bytes(value)]
    assert writer._spliced == [spliced]
    # The run after `spliced`: the second frame's header, its envelope, then `value`.
    assert [(buf is value, pos) for buf, pos in calls] == [(True, 4 + len(envelope))]
