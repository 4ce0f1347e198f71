"""Batch waits (snakeport._batch): the policy in-process, and a real worker over pipes.

The policy's reviews are checked with a request counter and a CPU count the test sets; the
scheduling calls on the test's own thread; and a real worker pinned to one CPU (as under
``taskset -c 0``) is driven with bursts of pipelined calls and with sequential ones, its
threads' scheduling policy read from the kernel while its reader waits for input.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from snakeport import _batch, etf
from snakeport._batch import ENGAGE, NO_BATCH_WAITS_ENV, RELEASE, REVIEW_READS, BatchWaits, wait_as_batch

from sp_client import A, Worker, worker_env


class Counter:
    def __init__(self) -> None:
        self.requests = 0
        self.cpus = 1


def policy(counter: Counter) -> BatchWaits:
    return BatchWaits(lambda: counter.requests, cpus=lambda: counter.cpus)


def review_after(waits: BatchWaits, counter: Counter, frames_per_read: float) -> bool:
    counter.requests += round(frames_per_read * REVIEW_READS)
    waits.reads = REVIEW_READS  # (what the readers count)
    engaged = waits.review()
    assert waits.reads == 0  # counting again
    return engaged


def test_it_engages_from_engage_frames_per_read_and_lets_go_below_release() -> None:
    counter = Counter()
    waits = policy(counter)
    assert waits.engaged is False
    assert review_after(waits, counter, 1.0) is False  # a sequential caller
    assert review_after(waits, counter, ENGAGE - 0.1) is False
    assert review_after(waits, counter, ENGAGE) is True
    assert waits.engaged is True
    assert review_after(waits, counter, RELEASE) is True  # (hysteresis: still a burst)
    assert review_after(waits, counter, RELEASE - 0.1) is False
    assert review_after(waits, counter, (RELEASE + ENGAGE) / 2) is False  # engaging needs ENGAGE again


def test_it_never_engages_with_more_than_one_cpu() -> None:
    counter = Counter()
    counter.cpus = 2
    waits = policy(counter)
    assert review_after(waits, counter, 40.0) is False
    counter.cpus = 1  # the affinity narrowed: the next review sees it
    assert review_after(waits, counter, 40.0) is True
    counter.cpus = 2
    assert review_after(waits, counter, 40.0) is False


def test_requests_before_the_policy_began_do_not_count() -> None:
    counter = Counter()
    counter.requests = 10_000
    waits = policy(counter)
    assert review_after(waits, counter, 1.0) is False


def test_wait_as_batch_sets_and_resets_the_calling_threads_policy_only() -> None:
    seen: dict[str, int] = {}

    def other() -> None:
        seen["other"] = os.sched_getscheduler(0)

    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    wait_as_batch(True)
    try:
        assert os.sched_getscheduler(0) == os.SCHED_BATCH
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    finally:
        wait_as_batch(False)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    # (A thread started meanwhile inherits it: hence the reader waits so only in `read`.)
    assert seen["other"] == os.SCHED_BATCH


def test_available_only_under_the_normal_policy_and_not_turned_off(monkeypatch) -> None:
    assert _batch.available()
    monkeypatch.setenv(NO_BATCH_WAITS_ENV, "1")
    assert not _batch.available()
    monkeypatch.setenv(NO_BATCH_WAITS_ENV, "0")
    wait_as_batch(True)  # a worker started under another policy (e.g. `chrt -b`) keeps it
    try:
        assert not _batch.available()
    finally:
        wait_as_batch(False)
    assert _batch.available()


# --- a real worker


def pinned_worker(*, cpus: int = 1, env: dict[str, str] | None = None) -> Worker:
    """A worker whose process may run on `cpus` CPUs of this one's (its affinity set by the
    test before the worker starts: the policy looks at it in each review)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cpus:
        pytest.fail(f"the test needs {cpus} CPUs, this process may use {len(allowed)}")
    previous = set(allowed)
    os.sched_setaffinity(0, set(allowed[:cpus]))
    try:
        return Worker(env={**worker_env(), **(env or {})})  # (inherits the affinity)
    finally:
        os.sched_setaffinity(0, previous)


def batch_threads(worker: Worker) -> list[int]:
    """The worker's threads now under SCHED_BATCH."""
    found = []
    for tid in os.listdir(f"/proc/{worker.proc.pid}/task"):
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_BATCH:
                found.append(int(tid))
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended meanwhile
    return found


#: x86_64 system call numbers of read and readv (the C lane reads with read, the loop with readv).
READS = {"0", "19"}


def reader_blocked(worker: Worker) -> bool:
    """Whether one of the worker's threads is blocked in read/readv (its input: idle)."""
    for tid in os.listdir(f"/proc/{worker.proc.pid}/task"):
        try:
            with open(f"/proc/{worker.proc.pid}/task/{tid}/syscall") as f:
                if f.read().split(" ", 1)[0] in READS:
                    return True
        except OSError:
            pass  # the thread ended meanwhile
    return False


def burst(worker: Worker, frames: int) -> None:
    """`frames` calls written at once (one write: the reader gets them in one read), then
    their replies awaited."""
    ids = [worker.new_id() for _ in range(frames)]
    data = b"".join(
        struct.pack(">I", len(p)) + p
        for p in (etf.encode((A("call"), i, "s1", "operator", "add", [i, 1], {}, {})) for i in ids)
    )
    worker.send_raw(data)
    for i in ids:
        assert worker.wait(i) == (A("reply"), i, A("ok"), i + 1)


def sequential(worker: Worker, calls: int) -> None:
    for n in range(calls):
        assert worker.call("operator", "add", [n, 1]) == n + 1


def until(predicate, timeout: float = 10.0) -> bool:
    """A bounded poll: whether `predicate()` came true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.mark.parametrize("reader", ["C lane", "Python loop"])
def test_a_pinned_worker_waits_as_a_batch_task_during_bursts_and_as_a_normal_one_after(reader) -> None:
    # (Both readers follow the policy: the C lane's read, and the read loop's without it.)
    worker = pinned_worker(env={"SNAKEPORT_NO_LANE": "1"} if reader == "Python loop" else {})
    try:
        assert batch_threads(worker) == []
        for _ in range(2 * REVIEW_READS):  # reads of 8 frames each: engaged at a review
            burst(worker, 8)
        # Its reader now waits in `read` under SCHED_BATCH (it set it right before the read);
        # nothing else runs under it.
        assert until(lambda: len(batch_threads(worker)) == 1)
        sequential(worker, 2 * REVIEW_READS)  # one frame per read: let go at a review
        assert until(lambda: reader_blocked(worker))
        assert batch_threads(worker) == []
        for _ in range(2 * REVIEW_READS):  # engaged again
            burst(worker, 8)
        assert until(lambda: len(batch_threads(worker)) == 1)
        # A call runs under the normal policy (the reader set it back when its read returned).
        assert worker.call("os", "sched_getscheduler", [0]) == os.SCHED_OTHER
    finally:
        assert worker.close() == 0


@pytest.mark.parametrize("case", ["two cpus", "turned off"])
def test_no_batch_waits_with_two_cpus_or_when_turned_off(case) -> None:
    if case == "two cpus":
        worker = pinned_worker(cpus=2)
    else:
        worker = pinned_worker(env={NO_BATCH_WAITS_ENV: "1"})
    try:
        for round_ in range(2 * REVIEW_READS):
            burst(worker, 8)
            if round_ % 16 == 0:
                assert batch_threads(worker) == []
        # The worker is now idle, its reader blocked in `read`: as a normal task.
        assert until(lambda: reader_blocked(worker))
        assert batch_threads(worker) == []
    finally:
        assert worker.close() == 0
