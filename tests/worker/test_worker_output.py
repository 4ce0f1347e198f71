"""Python's output as ``log`` events (``--forward-logs``, ``_output``), against the real
worker; and the bounds themselves (``_logs``)."""

from __future__ import annotations

import time

import pytest
from sp_client import A

from snakeport._logs import LineBuffer, RateLimit, clip, line_cost

LEVEL, SOURCE, MESSAGE = A("level"), A("source"), A("message")


def log_event(worker, source, pred=None):
    return worker.wait_event("log", pred=lambda ev: ev[3][SOURCE] == source and (pred is None or pred(ev[3])))


# ----------------------------------------------------------------- the bounds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_counts_what_it_refuses_and_reports_once_a_second() -> None:
    clock = Clock()
    limit = RateLimit(rate=10, burst=3, monotonic=clock)
    assert [limit.take(1) for _ in range(5)] == [True, True, True, False, False]
    assert limit.dropped == 2 and limit.exhausted()
    assert limit.take_dropped() == 0  # no token for the report
    clock.now += 0.1
    assert limit.take_dropped() == 2 and limit.dropped == 0
    limit.drop(7)
    clock.now += 1.0
    assert limit.take(1)
    assert limit.take_dropped() == 7
    limit.drop(1)
    clock.now += 0.5
    assert limit.take_dropped() == 0  # a second since the last report has not passed
    with pytest.raises(ValueError):
        RateLimit(rate=0, burst=1)


def test_line_cost_and_clip() -> None:
    assert line_cost(0) == 1 and line_cost(1023) == 1 and line_cost(4096) == 5
    assert clip(b"abcdef", 4) == (b"abcd", 2) and clip(b"ab", 4) == (b"ab", 0)


def test_line_buffer_splits_and_bounds_lines() -> None:
    buf = LineBuffer(8)
    assert buf.feed(b"one\ntw") == ([b"one"], 0)
    assert buf.feed(b"o\r\nthree\n") == ([b"two", b"three"], 0)
    assert buf.flush() is None
    # An unfinished line holds at most 8 bytes; the rest is counted.
    assert buf.feed(b"x" * 20) == ([], 0)
    assert buf.feed(b"y" * 5 + b"\nz") == ([b"x" * 8], 17)
    assert buf.flush() == (b"z", 0)
    # Skipping counts lines without splitting, and keeps the unfinished tail.
    assert buf.skip(b"a\nb\nc\npartial") == 3
    assert buf.feed(b"!\n") == ([b"partial!"], 0)


# ----------------------------------------------------------------- the worker


def test_every_source_becomes_a_log_event(make_worker) -> None:
    w = make_worker("--forward-logs", "info")
    assert w.call("sp_testmod", "log_record", [40, "a record", "my.logger"]) == "logged"
    ev = log_event(w, "logging")
    assert ev[3] == {LEVEL: 40, SOURCE: A("logging"), MESSAGE: "a record", A("logger"): "my.logger",
                     A("session"): "s1", A("request_id"): ev[3][A("request_id")]}
    assert type(ev[3][A("request_id")]) is int
    w.call("sp_testmod", "warn", ["careful"])
    ev = log_event(w, "warnings")
    assert ev[3][LEVEL] == 30 and "UserWarning: careful" in ev[3][MESSAGE]
    w.call("sp_testmod", "print_lines", [2, "printed"])
    assert log_event(w, "stdout")[3] == {LEVEL: 20, SOURCE: A("stdout"), MESSAGE: "printed 0"}
    assert log_event(w, "stdout")[3][MESSAGE] == "printed 1"
    w.call("sp_testmod", "write_fd", [2, b"raw fd 2\n"])
    assert log_event(w, "stderr")[3] == {LEVEL: 30, SOURCE: A("stderr"), MESSAGE: "raw fd 2"}
    # A line left unfinished is sent after a short idle time.
    w.call("sp_testmod", "write_fd", [1, b"no newline"])
    assert log_event(w, "stdout")[3][MESSAGE] == "no newline"
    # Below the level: nothing.
    w.call("sp_testmod", "log_record", [10, "debug record"])
    w.call("sp_testmod", "log_record", [30, "after debug"])
    assert log_event(w, "logging")[3][MESSAGE] == "after debug"
    assert not [e for e in w.events if e[1] == "log" and e[3][MESSAGE] == "debug record"]
    # The protocol channel is intact.
    assert w.call("sp_testmod", "noisy") == "quiet"
    assert w.ok("ping") == "pong"
    assert w.close() == 0
    assert "print() from a call" not in w.stderr


def test_long_lines_and_records_are_cut(make_worker) -> None:
    w = make_worker("--forward-logs", "info")
    w.call("sp_testmod", "write_fd", [1, "x" * 40_000 + "\n"])
    text = log_event(w, "stdout")[3][MESSAGE]
    assert text.startswith("x" * 16_384) and text.endswith(f"[... {40_000 - 16_384} more bytes]")
    w.call("sp_testmod", "log_record", [30, "y" * 20_000])
    text = log_event(w, "logging")[3][MESSAGE]
    assert text.endswith(f"[... {20_000 - 16_384} more characters]")


def test_a_gigabyte_of_output_is_bounded(make_worker) -> None:
    w = make_worker("--forward-logs", "info")
    rss_before = w.ok("stats")[A("rss_bytes")]
    started = time.monotonic()
    assert w.call("sp_testmod", "flood_fd", [1, 1024]) == 1024  # 1 GiB of 100-byte lines
    elapsed = time.monotonic() - started
    report = w.wait_event("log", timeout=10, pred=lambda ev: A("dropped") in ev[2])
    assert report[3][SOURCE] == "snakeport" and "were dropped" in report[3][MESSAGE]
    assert w.ok("ping") == "pong"
    lines = [e for e in w.events if e[1] == "log" and e[3][SOURCE] == "stdout"]
    # The burst, then the rate: never the 10 million lines.
    assert len(lines) <= 2_000 + 1_000 * (elapsed + 2)
    dropped = report[2][A("dropped")] + sum(e[2].get(A("dropped"), 0) for e in w.events if e[1] == "log")
    assert dropped > 1_000_000
    assert w.ok("stats")[A("rss_bytes")] - rss_before < 64 * 1024 * 1024


def test_the_workers_own_logs_and_fatal_messages_stay_on_the_real_stderr(make_worker) -> None:
    w = make_worker("--forward-logs", "info", "--log-level", "info")
    w.call("sp_testmod", "log_record", [40, "user record"])
    log_event(w, "logging")
    assert w.close() == 0
    assert "protocol input closed" in w.stderr  # the worker's own INFO line
    assert "user record" not in w.stderr
    assert not [e for e in w.events if e[1] == "log" and "protocol input" in e[3][MESSAGE]]


def test_without_forward_logs_output_goes_to_stderr(worker) -> None:
    worker.call("sp_testmod", "log_record", [40, "plain record"])
    worker.call("sp_testmod", "print_lines", [1, "plain print"])
    assert worker.close() == 0
    assert "plain record" in worker.stderr and "plain print 0" in worker.stderr
    assert not [e for e in worker.events if e[1] == "log"]

