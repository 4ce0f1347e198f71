"""Hostile frames against the real worker: bounded memory, no crash, exact replies (issue 13).

Each attack runs against a fresh worker; when it has answered it and a ping, the worker's
peak RSS is read from ``/proc/PID/status`` (``VmHWM``, the high-water mark since the worker
started) and compared with an idle worker's (``baseline``). The issue's target: a peak under
64 MiB for any frame under 1 MiB, and under 4 times the frame limit.
"""

from __future__ import annotations

import fcntl
import struct
import subprocess
import sys
import termios
import threading
import time
import zlib
from typing import Any

import pytest
from snakeport import etf
from snakeport.types import Atom, ErlMap, ImproperList
from sp_client import A, Worker, worker_env

MiB = 1 << 20
KiB = 1024


def peak_rss(w: Worker) -> int:
    """The worker's peak RSS so far, in bytes (Linux: VmHWM)."""
    with open(f"/proc/{w.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture(scope="module")
def baseline() -> int:
    """Peak RSS of a worker that answered one ping."""
    w = Worker()
    try:
        assert w.ok("ping") is not None
        return peak_rss(w)
    finally:
        w.kill()


@pytest.fixture
def fresh():
    made: list[Worker] = []
    yield made
    for w in made:
        w.kill()


def attack(made: list[Worker], payload: bytes, *flags: str) -> tuple[Any, int]:
    """Send ``payload`` as one frame to a new worker; return (its reply to id 8, peak RSS)."""
    w = Worker(*flags)
    made.append(w)
    w.send_frame(payload)
    reply = w.wait(8)
    assert w.ok("ping") is not None  # still serving
    return reply, peak_rss(w)


def compressed(body: bytes, declared: int | None = None) -> bytes:
    """A COMPRESSED term of ``body`` (the term without its version byte)."""
    size = len(body) if declared is None else declared
    return b"\x83P" + size.to_bytes(4, "big") + zlib.compress(body, 9)


def ping_with(tail: bytes) -> bytes:
    """``{ping, 8, <tail>}`` without version byte (``tail`` is an encoded term)."""
    return b"h\x03w\x04pinga\x08" + tail


def streamed(head: bytes, filler: bytes, count: int, declared: int) -> bytes:
    """A COMPRESSED term: ``head`` then ``count`` times ``filler``, deflated in a stream."""
    z = zlib.compressobj(9)
    parts = [z.compress(head)]
    parts += [z.compress(filler) for _ in range(count)]
    parts.append(z.flush())
    return b"\x83P" + declared.to_bytes(4, "big") + b"".join(parts)


def assert_refused(reply: Any, reason: str = "decode_error", words: str = "") -> None:
    assert reply[:3] == (A("reply"), 8, A("error")), reply
    assert reply[3][A("reason")] == reason, reply
    assert words in reply[3][A("message")], reply


# ---------------------------------------------------------------------------------------
# Item 1: memory amplification by valid terms
# ---------------------------------------------------------------------------------------


def test_a_compressed_frame_of_16_million_empty_lists_is_refused_cheaply(fresh, baseline) -> None:
    # The issue: a 15 KiB {ping, 8, [[], ...]} took 1.3 GiB and 15 s (measured here before
    # the fix: 1325 MiB peak, 6.5 s). Now refused before inflating.
    n = 16 * MiB
    payload = compressed(ping_with(b"l" + n.to_bytes(4, "big") + b"j" * n + b"j"))
    assert len(payload) < 20 * KiB
    reply, peak = attack(fresh, payload)
    assert_refused(reply, words="memory budget")
    assert peak - baseline < 8 * MiB, (peak, baseline)


def test_a_254_kib_frame_declaring_254_mib_of_empty_lists_is_refused_cheaply(fresh, baseline) -> None:
    # At the default frame limit (256 MiB) this would have needed ~20 GiB.
    count = 254
    declared = len(ping_with(b"")) + 5 + count * MiB + 1
    head = ping_with(b"l" + (count * MiB).to_bytes(4, "big"))
    payload = streamed(head, b"j" * MiB, count, declared)[:-4]  # (the last [] and tail cut:
    # the frame is refused before anything is inflated anyway)
    assert 200 * KiB < len(payload) < 300 * KiB
    reply, peak = attack(fresh, payload)
    assert_refused(reply, words="memory budget")
    assert peak - baseline < 8 * MiB, (peak, baseline)


NAMES = [Atom(f"a{i:04d}") for i in range(5000)]
MEGABYTE_TERMS = {  # (element count for ~1 MiB frames, element)
    "empty lists": lambda n: [[]] * n,
    "5000 atoms cycling": lambda n: [NAMES[i % 5000] for i in range(n)],
    "1-pair maps": lambda n: [{1: 2}] * n,
    "unhashable keys": lambda n: [ErlMap([([], [])])] * n,
    "1-tuples": lambda n: [(1,)] * n,
    "improper lists": lambda n: [ImproperList([1], 2)] * n,
}


def megabyte_frame(make: Any) -> bytes:
    """``{ping, 8, List}`` with as many elements as fit in 1 MiB."""
    one = len(etf.encode((A("ping"), 8, make(1))))
    two = len(etf.encode((A("ping"), 8, make(2))))
    payload = etf.encode((A("ping"), 8, make((MiB - one) // (two - one))))
    assert MiB - 64 < len(payload) <= MiB
    return payload


@pytest.mark.parametrize("name", list(MEGABYTE_TERMS))
def test_hostile_frames_under_a_megabyte_cost_under_64_mib(fresh, baseline, name: str) -> None:
    reply, peak = attack(fresh, megabyte_frame(MEGABYTE_TERMS[name]))
    assert reply[0] == A("reply") and reply[1] == 8
    assert reply[3][A("reason")] in ("decode_error", "bad_request"), reply
    assert peak - baseline < 48 * MiB, (name, peak, baseline)


def test_legit_large_data_still_decodes_through_the_worker(fresh) -> None:
    w = Worker()
    fresh.append(w)
    floats = [i / 7 for i in range(10**6)]
    assert w.call("builtins", "len", [floats]) == 10**6
    assert w.call("builtins", "sum", [list(range(100_000, 1_100_000))]) == sum(range(100_000, 1_100_000))
    records = [{A("id"): i, A("name"): f"n{i}"} for i in range(100_000)]
    assert w.call("builtins", "len", [records]) == 100_000
    assert w.call("builtins", "len", [b"\xfe" * (64 * MiB)]) == 64 * MiB


# ---------------------------------------------------------------------------------------
# Item 2: a raised depth limit
# ---------------------------------------------------------------------------------------


def test_max_depth_above_the_bound_is_refused_at_startup() -> None:
    # Before the bound, --max-depth 200000 was accepted and a 150,000-deep map key killed
    # the worker with SIGSEGV (CPython hashes nested tuples recursively in C).
    bound = etf.MAX_DECODE_DEPTH
    done = subprocess.run(
        [sys.executable, "-m", "snakeport", "--max-depth", str(bound + 1)],
        capture_output=True, text=True, env=worker_env(), timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert f"--max-depth: expected an integer from 1 to {bound}" in done.stderr


def deep_key_arg(depth: int) -> bytes:
    """``#{DeepTuple => 1}`` whose key nests ``depth`` tuples (no version byte)."""
    return b"t\x00\x00\x00\x01" + b"h\x01" * depth + b"a\x01" + b"a\x01"


def deep_call(rid: int, function: str, arg: bytes) -> bytes:
    """``{call, Id, "s1", "builtins", Function, [Arg], #{}, #{}}``."""
    body = etf.encode((A("call"), rid, "s1", "builtins", function))[3:]  # the 5 elements
    return b"\x83h\x08" + body + b"l\x00\x00\x00\x01" + arg + b"jt\x00\x00\x00\x00t\x00\x00\x00\x00"


def test_deep_map_keys_at_the_bound_are_safe_on_the_worker_threads(fresh) -> None:
    bound = etf.MAX_DECODE_DEPTH
    w = Worker("--max-depth", str(bound), "--threads", "2")
    fresh.append(w)
    assert w.call("sp_testmod", "on_main_thread") is False  # calls (and decoding) run on threads
    # A map key as deep as allowed (the argument list and the map take 2 levels, the call
    # tuple 1): decoded and hashed by a loop thread, then hashed again by the call.
    depth = bound - 3
    w.send_frame(deep_call(8, "len", deep_key_arg(depth)))
    assert w.wait(8)[2:] == (A("ok"), 1)
    tuple_arg = b"h\x01" * (bound - 2) + b"a\x01"
    w.send_frame(deep_call(9, "hash", tuple_arg))
    assert w.wait(9)[2] == A("ok")
    w.send_frame(deep_call(10, "repr", tuple_arg))
    assert w.wait(10)[2] in (A("ok"), A("error"))  # (a RecursionError is an error reply)
    w.send_frame(deep_call(11, "len", deep_key_arg(depth + 1)))
    reply = w.wait(11)
    assert reply[2] == A("error") and reply[3][A("reason")] == A("decode_error")
    assert "max_depth" in reply[3][A("message")]
    assert w.call("operator", "add", [1, 2]) == 3


# ---------------------------------------------------------------------------------------
# Item 3: the error path
# ---------------------------------------------------------------------------------------


def test_the_error_path_uses_the_configured_frame_limit(fresh, baseline) -> None:
    # The issue: with --max-frame-bytes 1048576, a 199 KiB frame declaring 200 MiB was still
    # inflated by the error path's head decoder (default limits): 417 MiB peak.
    payload = compressed(ping_with(b"m" + (200 * MiB).to_bytes(4, "big") + bytes(200 * MiB)))
    assert len(payload) < 256 * KiB
    reply, peak = attack(fresh, payload, "--max-frame-bytes", str(MiB))
    assert_refused(reply, words="exceeds max_size=1048576")
    assert peak - baseline < 8 * MiB, (peak, baseline)


def test_a_zlib_bomb_is_inflated_once_and_only_as_far_as_the_request_id(fresh, baseline) -> None:
    # The issue: 2 GiB of zeros declared as 256 MiB was inflated twice (873 MiB, 4-6 s).
    # Here 256 MiB of zeros (a 256 KiB stream) declared as 64 MiB: over the frame's budget
    # (refused before inflating), and the error path inflates 4 KiB to find {ping, 8.
    head = ping_with(b"m" + (256 * MiB).to_bytes(4, "big"))
    payload = streamed(head, bytes(MiB), 256, 64 * MiB)
    reply, peak = attack(fresh, payload)
    assert_refused(reply, words="memory budget")
    assert peak - baseline < 8 * MiB, (peak, baseline)
    # Declared small enough for the budget (8 MiB): inflated once by the decoder (which
    # stops at the declared size), not again by the error path.
    payload = streamed(head, bytes(MiB), 256, 8 * MiB)
    reply, peak = attack(fresh, payload)
    assert_refused(reply, words="does not inflate to the declared")
    assert peak - baseline < 24 * MiB, (peak, baseline)


def test_the_error_path_of_a_large_invalid_frame_holds_one_copy_of_it(fresh, baseline) -> None:
    # Measured here before the fix: the DecodeError (holding a copy of the frame) was still
    # alive while the error path read the frame's head (a second copy): 3 times the frame
    # (+96 MiB for 32 MiB; 765 MiB for a 255 MiB frame). Now at most twice.
    size = 32 * MiB
    for payload in (
        ping_with(b"\xff" * size),  # an unknown tag
        ping_with(b"l" + (100 * MiB).to_bytes(4, "big") + b"j" * size),  # over the budget
    ):
        reply, peak = attack(fresh, b"\x83" + payload)
        assert reply[:3] == (A("reply"), 8, A("error")), reply
        assert peak - baseline < 2.5 * size, (peak - baseline) / MiB


# ---------------------------------------------------------------------------------------
# Item 4: replies queued behind a blocked write
# ---------------------------------------------------------------------------------------


def input_waiting(w: Worker) -> int:
    """Bytes in the worker's input pipe that it has not read (FIONREAD on our end)."""
    return struct.unpack("i", fcntl.ioctl(w.proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def bytes_read(w: Worker) -> int:
    """Bytes the worker process has read so far (``rchar`` of /proc/PID/io)."""
    with open(f"/proc/{w.proc.pid}/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def sent_or_stalled(w: Worker, sender: threading.Thread, timeout: float = 60.0) -> None:
    """Wait until ``sender`` is done, or the worker stopped reading what it sends (its input
    pipe holds bytes and it read nothing between two looks 0.1 s apart)."""
    deadline = time.monotonic() + timeout
    last = None
    while sender.is_alive():
        assert time.monotonic() < deadline, "the sender neither finished nor stalled"
        now = (bytes_read(w), input_waiting(w))
        if now == last and now[1] > 0:
            return
        last = now
        sender.join(0.1)


def test_replies_behind_a_blocked_write_stop_the_reading_not_the_memory(fresh, baseline) -> None:
    # The issue: while one thread was blocked writing a large reply to a VM that did not
    # read, the reader kept reading and the writer queued every other reply in memory: a
    # million pipelined pings grew RSS by 120 MiB. Measured here before the fix: 300,000
    # pings, +53 MiB (the 8 MiB result included). Now the reader waits once 4 MiB of
    # replies wait, the pings stay in the pipe, and nothing is lost.
    w = Worker()
    fresh.append(w)
    count = 300_000
    ping = etf.encode((A("ping"), 7))
    pong = etf.encode((A("reply"), 7, A("ok"), A("pong")))
    # The call outlasts the takeover poll: the other loop thread reads meanwhile, and the
    # call's own thread writes its 8 MiB reply. Its first bytes show that the write has
    # begun; it stays blocked (the pipe holds 1 MiB) until this test reads on.
    w.request("call", "s1", "sp_testmod", "slow_bytes", [8 * MiB, 0.05], {}, {})
    (size,) = struct.unpack(">I", w._read_exact(4))
    sender = threading.Thread(target=w.send_raw, args=((struct.pack(">I", len(ping)) + ping) * count,))
    sender.start()
    sent_or_stalled(w, sender)
    reply = etf.decode(w._read_exact(size))
    assert reply[2] == A("ok") and reply[3] == "x" * (8 * MiB)  # (valid UTF-8: a str)
    for _ in range(count):
        (n,) = struct.unpack(">I", w._read_exact(4))
        assert w._read_exact(n) == pong
    sender.join(60)
    assert w.ok("ping") == A("pong")
    peak = peak_rss(w)
    assert peak - baseline < 24 * MiB, (peak, baseline)


# ---------------------------------------------------------------------------------------
# Item 6: a list changed while it is encoded
# ---------------------------------------------------------------------------------------


def test_results_changed_by_a_background_thread_are_encoded_exactly(fresh) -> None:
    # The issue: the list header was written from len() before the elements were read, and
    # a concurrent append made a frame that the VM decoded as an improper list. Every reply
    # here is decoded strictly (trailing bytes or a wrong count fail in recv_frame).
    w = Worker()
    fresh.append(w)
    assert w.call("sp_race", "start", [200]) is True
    try:
        for _ in range(300):
            items, mapping = w.call("sp_race", "shared")
            assert type(items) is list and all(x == 2**70 for x in items) and 200 <= len(items) <= 301
            assert type(mapping) is dict and 200 - 64 <= len(mapping) <= 264
    finally:
        assert w.call("sp_race", "stop") is True
