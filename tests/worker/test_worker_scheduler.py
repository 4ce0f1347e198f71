"""Unit tests of the scheduler (snakeport._scheduler), in-process with real threads.

The jobs here are plain strings and ``execute`` returns their frames: the scheduler only
hands jobs to ``execute`` and frames to ``send``, so this drives its placement, its loop
threads and its accounting exactly as the server does, without a process or a codec.
Waits are bounded (``Event.wait``, ``Queue.get`` with a timeout).
"""

from __future__ import annotations

import queue
import sys
import threading
import time

import pytest

from snakeport._scheduler import Scheduler

TIMEOUT = 10.0


class Calls:
    """``execute`` for string jobs: records where each runs; ``gates[job]`` blocks it."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.threads: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.order: list[str] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def gate(self, job: str) -> threading.Event:
        self.started[job] = threading.Event()
        self.gates[job] = threading.Event()
        return self.gates[job]

    def __call__(self, job: str) -> list:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.order.append(job)
            self.threads[job] = threading.get_ident()
            self.names[job] = threading.current_thread().name
        if job in self.gates:
            self.started[job].set()
            assert self.gates[job].wait(TIMEOUT)
        with self._lock:
            self.active -= 1
        return [job.encode()]


def eventually(predicate, what: str) -> None:
    """Bounded poll until ``predicate()`` holds."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


def make(threads: int = 1, more_input: bool = False, **kw):
    calls = Calls()
    sent: queue.Queue = queue.Queue()
    sched = Scheduler(
        threads=threads,
        execute=calls,
        send=lambda payloads: sent.put(list(payloads)),
        encode=lambda terms, job, payloads: payloads + list(terms),
        more_input=lambda: more_input,
        **kw,
    )
    return sched, calls, sent


def test_one_thread_runs_a_call_inline_and_holds_its_reply() -> None:
    sched, calls, sent = make()
    me = sched.reader = threading.get_ident()
    assert sched.place("a") is True
    assert sched.run_inline("a", me) is True  # still the reader
    assert calls.threads["a"] == me and sched.running == 0
    assert sched.held == [b"a"] and sent.empty()  # held for the read's batch
    sched.flush_held([b"pong"])
    assert sent.get_nowait() == [b"a", b"pong"] and sched.held == []  # one batch, one writev


def test_calls_placed_while_one_runs_queue_and_run_in_order_on_its_thread() -> None:
    sched, calls, sent = make()
    gate = calls.gate("a")
    runner_ident = []

    def runner() -> None:
        me = threading.get_ident()
        runner_ident.append(me)
        sched.reader = me
        assert sched.place("a")
        runner_ident.append(sched.run_inline("a", me))

    t = threading.Thread(target=runner)
    t.start()
    assert calls.started["a"].wait(TIMEOUT)
    # The reading role moved to this thread (as a stand-by takes it over) while "a" runs.
    sched.reader = threading.get_ident()
    assert sched.place("b") is False and sched.place("c") is False
    with sched.lock:
        assert sched.running == 1 and list(sched._pending) == ["b", "c"]  # I3: running == threads
    gate.set()
    t.join(TIMEOUT)
    assert runner_ident[1] is False  # it lost the role: it ran the queue, then stood down
    assert calls.order == ["a", "b", "c"]
    assert calls.threads["b"] == calls.threads["c"] == runner_ident[0]
    # Not the reader: each reply went out at once, in order, before the slot was freed.
    assert [sent.get_nowait() for _ in range(3)] == [[b"a"], [b"b"], [b"c"]]
    assert sched.running == 0 and sched.held == []


def test_with_a_pool_the_second_call_runs_there_and_the_rest_queue() -> None:
    sched, calls, sent = make(threads=2)
    me = sched.reader = threading.get_ident()
    assert sched.place("inline") is True  # nothing else executes, no input buffered
    gate = calls.gate("pooled")
    assert sched.place("pooled") is False
    assert calls.started["pooled"].wait(TIMEOUT)
    assert calls.names["pooled"].startswith("snakeport-call")
    assert sched.place("queued") is False
    with sched.lock:
        assert sched.running == 2 and list(sched._pending) == ["queued"]
    assert sched.run_inline("inline", me) is True
    # The inline call's thread took the queued one (it ended first) and kept the slot.
    assert calls.threads["queued"] == me and sched.running == 1
    assert sched.held == [b"inline", b"queued"]  # the reader's replies wait for its batch
    gate.set()
    assert sent.get(timeout=TIMEOUT) == [b"pooled"]  # a call thread sends its own at once
    assert sched.drain([], TIMEOUT) == 0
    assert sent.get_nowait() == [b"inline", b"queued"] and sent.empty()
    assert calls.most_active == 2


def test_buffered_input_sends_even_a_lone_call_to_the_pool() -> None:
    sched, calls, sent = make(threads=2, more_input=True)
    sched.reader = threading.get_ident()
    assert sched.place("a") is False  # more frames to read first: not inline
    assert sent.get(timeout=TIMEOUT) == [b"a"]
    assert calls.names["a"].startswith("snakeport-call")
    assert sched.drain([], TIMEOUT) == 0


def test_at_most_threads_calls_execute_and_queued_ones_start_in_order() -> None:
    sched, calls, sent = make(threads=3, more_input=True)
    sched.reader = threading.get_ident()
    gates = [calls.gate(f"j{i}") for i in range(3)]
    for i in range(3):
        assert sched.place(f"j{i}") is False
    for i in range(3):
        assert calls.started[f"j{i}"].wait(TIMEOUT)
    for i in range(3, 10):
        assert sched.place(f"j{i}") is False
    with sched.lock:
        assert sched.running == 3 and len(sched._pending) == 7
    for g in gates:
        g.set()
    assert sched.drain([], TIMEOUT) == 0
    assert calls.most_active == 3
    assert calls.order[3:] == [f"j{i}" for i in range(3, 10)]  # arrival order
    assert sorted(sent.get_nowait()[0] for _ in range(10)) == sorted(f"j{i}".encode() for i in range(10))


def test_drain_sends_its_terms_and_waits_for_running_calls() -> None:
    sched, calls, sent = make(threads=2, more_input=True)
    sched.reader = threading.get_ident()
    gate = calls.gate("slow")
    sched.place("slow")
    assert calls.started["slow"].wait(TIMEOUT)
    assert sched.drain([b"cancelled"], 0.05) == 1  # still running after the grace
    assert sent.get_nowait() == [b"cancelled"]
    gate.set()
    assert sched.drain([], TIMEOUT) == 0
    assert sent.get(timeout=TIMEOUT) == [b"slow"]


def test_a_failing_call_thread_is_fatal() -> None:
    failures: queue.Queue = queue.Queue()

    def execute(job: str) -> list:
        raise SystemExit("broken")

    sched = Scheduler(
        threads=2,
        execute=execute,
        send=lambda payloads: None,
        encode=lambda terms, job, payloads: payloads,
        more_input=lambda: True,
        fatal=lambda what: failures.put((what, sys.exc_info()[0])),
    )
    sched.reader = threading.get_ident()
    sched.place("x")
    assert failures.get(timeout=TIMEOUT) == ("a call thread failed", SystemExit)


def test_the_stand_by_takes_the_reading_role_during_a_long_inline_call() -> None:
    sched, calls, sent = make()
    frames: queue.Queue = queue.Queue()
    readers: queue.Queue = queue.Queue()

    def read() -> None:
        # What the server's _read_frames does: control requests ("ctl:...") are answered
        # at once, calls go through place/run_inline, replies are flushed per batch.
        me = threading.get_ident()
        readers.put(me)
        while True:
            frame = frames.get()
            if frame.startswith("ctl:"):
                sched.flush_held([frame.encode()])
            elif sched.place(frame):
                if not sched.run_inline(frame, me):
                    sched.flush_held()
                    return  # the other loop thread reads now
            if frames.empty():
                sched.flush_held()

    gate = calls.gate("long")
    sched.start(read)
    first = readers.get(timeout=TIMEOUT)
    frames.put("long")
    assert calls.started["long"].wait(TIMEOUT)
    second = readers.get(timeout=TIMEOUT)  # the stand-by took the role over
    assert second != first and sched.reader == second
    frames.put("ctl:pong")
    assert sent.get(timeout=TIMEOUT) == [b"ctl:pong"]  # answered while the call runs
    frames.put("queued")  # one slot, taken: it waits for "long"
    eventually(lambda: list(sched._pending) == ["queued"], "the new reader queued the call")
    gate.set()
    assert sent.get(timeout=TIMEOUT) == [b"long"]
    assert sent.get(timeout=TIMEOUT) == [b"queued"]
    assert calls.threads["queued"] == first  # run by the thread whose call ended
    frames.put("after")
    assert sent.get(timeout=TIMEOUT) == [b"after"]
    assert calls.threads["after"] == second  # inline on the new reader
    assert sched.running == 0


def test_the_stand_by_sends_replies_held_behind_a_long_inline_call() -> None:
    sched, calls, sent = make()
    frames: queue.Queue = queue.Queue()

    def read() -> None:
        me = threading.get_ident()
        while True:
            frame = frames.get()
            if sched.place(frame) and not sched.run_inline(frame, me):
                sched.flush_held()
                return
            if frames.empty():
                sched.flush_held()

    gate = calls.gate("long")
    frames.put("quick")  # both frames read in one batch: "quick"'s reply is held...
    frames.put("long")
    sched.start(read)
    assert calls.started["long"].wait(TIMEOUT)
    assert sent.get(timeout=TIMEOUT) == [b"quick"]  # ...and sent by the stand-by meanwhile
    gate.set()
    assert sent.get(timeout=TIMEOUT) == [b"long"]


def test_threads_is_validated() -> None:
    with pytest.raises(ValueError, match="expected threads to be a positive integer"):
        make(threads=0)


# ------------------------------------------------------------ waits for Elixir tools


class Frames:
    """A frame loop for :meth:`Scheduler.start`: jobs come from ``inbox``; a job named in
    ``waits`` suspends its slot, waits for its event (the tool's answer), then resumes."""

    def __init__(self, threads: int) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.waits: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}
        self.before: dict[str, threading.Event] = {}
        self.log: queue.Queue = queue.Queue()
        self.threads: dict[str, int] = {}
        self.sched = Scheduler(
            threads=threads,
            execute=self.execute,
            send=lambda payloads: None,
            encode=lambda terms, job, payloads: payloads,
            more_input=lambda: False,
            takeover_poll=0.05,  # slow: a hand-off must not rely on a takeover
        )

    def read(self) -> None:
        me = threading.get_ident()
        while True:
            job = self.inbox.get()
            self.log.put(("read", job, me))
            if self.sched.place(job) and not self.sched.run_inline(job, me):
                self.sched.flush_held()
                return

    def execute(self, job: str) -> list:
        me = threading.get_ident()
        self.threads[job] = me
        self.log.put(("start", job))
        if job in self.before:
            assert self.before[job].wait(TIMEOUT)
        if job in self.waits:
            self.sched.suspend(me)
            self.log.put(("waiting", job))
            assert self.waits[job].wait(TIMEOUT)
            self.sched.resume(me)
            self.log.put(("resumed", job))
        if job in self.gates:
            assert self.gates[job].wait(TIMEOUT)
        self.log.put(("end", job))
        return [job.encode()]

    def until(self, entry: tuple) -> list:
        seen = []
        while True:
            item = self.log.get(timeout=TIMEOUT)
            seen.append(item)
            if item[: len(entry)] == entry:
                return seen


def test_a_call_waiting_for_a_tool_lets_the_nested_call_run_with_one_thread() -> None:
    f = Frames(threads=1)
    f.waits["outer"] = threading.Event()
    f.sched.start(f.read)
    f.inbox.put("outer")
    f.until(("waiting", "outer"))
    with f.sched.lock:
        assert f.sched.running == 0 and f.sched.waiting == 1
        assert f.sched.reader != f.threads["outer"]  # the role moved at once
    # The nested call (what the tool sends back) runs although the only slot was taken.
    f.inbox.put("nested")
    f.until(("end", "nested"))
    assert f.threads["nested"] != f.threads["outer"]
    f.waits["outer"].set()  # the tool answers
    f.until(("end", "outer"))
    # Control frames are still read.
    f.inbox.put("ping")
    f.until(("end", "ping"))
    with f.sched.lock:
        assert f.sched.running == 0 and f.sched.waiting == 0


def test_a_resuming_call_takes_the_next_free_slot_before_queued_ones() -> None:
    f = Frames(threads=1)
    f.waits["a"] = threading.Event()
    f.gates["b"] = threading.Event()
    f.sched.start(f.read)
    f.inbox.put("a")
    f.until(("waiting", "a"))
    f.inbox.put("b")
    f.until(("start", "b"))  # b holds the slot
    f.inbox.put("c")
    f.until(("read", "c"))
    with f.sched.lock:
        assert list(f.sched._pending) == ["c"]
    f.waits["a"].set()  # a's answer: no slot free, a waits for one
    eventually(lambda: len(f.sched._resuming) == 1, "a waits to resume")
    f.gates["b"].set()
    seen = f.until(("end", "c"))
    order = [item for item in seen if item[0] in ("resumed", "start")]
    assert order.index(("resumed", "a")) < order.index(("start", "c"))


def test_nested_waits_deeper_than_the_loop_threads() -> None:
    # Three levels, each waiting for a tool whose answer needs the next level: the loop
    # threads it has are not enough (two), so the scheduler starts more.
    f = Frames(threads=1)
    for job in ("l1", "l2", "l3"):
        f.waits[job] = threading.Event()
    f.sched.start(f.read)
    for job in ("l1", "l2", "l3"):
        f.inbox.put(job)
        f.until(("waiting", job))
    f.inbox.put("leaf")
    f.until(("end", "leaf"))
    assert len({f.threads[j] for j in ("l1", "l2", "l3", "leaf")}) == 4
    for job in ("l3", "l2", "l1"):
        f.waits[job].set()
        f.until(("end", job))
    with f.sched.lock:
        assert f.sched.running == 0 and f.sched.waiting == 0


def test_a_suspended_slot_goes_to_a_queued_call_on_the_pool() -> None:
    f = Frames(threads=1)
    f.waits["a"] = threading.Event()
    f.before["a"] = threading.Event()
    f.sched.start(f.read)
    # "b" arrives while "a" runs (before it waits): it queues ...
    f.inbox.put("a")
    f.until(("start", "a"))
    f.inbox.put("b")
    f.until(("read", "b"))
    with f.sched.lock:
        assert list(f.sched._pending) == ["b"]
    # ... and starts as soon as "a" waits, on a thread of the call pool.
    f.before["a"].set()
    f.until(("end", "b"))
    assert f.threads["b"] != f.threads["a"]
    f.waits["a"].set()
    f.until(("end", "a"))
    with f.sched.lock:
        assert f.sched.running == 0 and not f.sched._pending
