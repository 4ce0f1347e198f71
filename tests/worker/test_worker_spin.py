"""Unit tests of the spin policy (snakeport._spin), in-process over real pipes.

Most tests give the policy a counting clock (each reading advances it by a fixed step) and
a yield function that records its calls, so that the window, the busy detection and the
back-off are checked exactly; one test runs it against a real CPU hog.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from snakeport._spin import SPIN_BACKOFF, YIELD_BUSY, SpinPolicy


class Clock:
    """A clock that advances by ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_readable_input_ends_the_spin_at_once(pipe) -> None:
    r, w = pipe
    yields = []
    policy = SpinPolicy(r, spin_us=1_000_000, clock=Clock(1e-6), yield_cpu=lambda: yields.append(1))
    os.write(w, b"x")
    policy.wait()
    assert yields == [] and policy.busy == 0.0


def test_an_idle_cpu_spins_the_whole_window(pipe) -> None:
    r, _ = pipe
    yields = []
    policy = SpinPolicy(r, spin_us=200, clock=Clock(1e-6), yield_cpu=lambda: yields.append(1))
    policy.wait()
    assert 195 <= len(yields) <= 201  # one yield per microsecond step, for 200 µs
    assert policy.busy == 0.0 and policy.resume == 0.0


def test_input_arriving_during_the_spin_ends_it(pipe) -> None:
    r, w = pipe
    yields = []

    def yield_cpu() -> None:
        yields.append(1)
        if len(yields) == 10:
            os.write(w, b"x")  # the frame arrives while the reader spins

    SpinPolicy(r, spin_us=1_000_000, clock=Clock(1e-6), yield_cpu=yield_cpu).wait()
    assert len(yields) == 10


def test_a_busy_cpu_ends_spins_then_backs_off(pipe) -> None:
    r, _ = pipe
    clock = Clock(2 * YIELD_BUSY)  # every yield "took" longer than YIELD_BUSY: another task ran
    yields = []
    policy = SpinPolicy(r, spin_us=1_000_000, clock=clock, yield_cpu=lambda: yields.append(1))
    averages = []
    while policy.resume == 0.0:
        policy.wait()
        averages.append(policy.busy)
        assert len(averages) < 20, "never backed off"
    # Each spin ended after one yield; the moving average crossed one half on the 7th.
    assert len(yields) == len(averages) == 7
    assert averages[-1] == 0.0 and all(a > 0 for a in averages[:-1])
    assert 0 < policy.resume - clock.now <= SPIN_BACKOFF
    policy.wait()  # backing off: no spin at all
    assert len(yields) == 7
    clock.now = policy.resume  # the back-off is over: it spins again
    policy.wait()
    assert len(yields) == 8


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_the_reader_stops_spinning_on_a_cpu_that_another_program_keeps_busy(pipe) -> None:
    # A real CPU hog pinned to the same CPU as this thread: every yield of the spin hands the
    # CPU over, so spins end "busy" and, after a few, the policy backs off (no spinning).
    r, _ = pipe
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        policy = SpinPolicy(r, spin_us=5000)
        deadline = time.monotonic() + 10.0
        while time.perf_counter() >= policy.resume:
            assert time.monotonic() < deadline, "the reader never backed off"
            policy.wait()
        resume = policy.resume
        assert resume - time.perf_counter() <= SPIN_BACKOFF
        assert policy.busy == 0.0  # the average starts afresh after the back-off
        policy.wait()  # backing off: returns before spinning
        assert (policy.resume, policy.busy) == (resume, 0.0) or time.perf_counter() >= resume
    finally:
        os.sched_setaffinity(0, previous)
        hog.kill()
        hog.wait()
