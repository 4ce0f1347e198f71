"""Unit tests of the spin policy (snakeport._spin), in-process over real pipes.

Most tests give the policy a counting clock (each reading advances it by a fixed step) and
a yield function that records its calls (and a CPU count of 2), so that the window, the
busy detection and the back-off are checked exactly; two tests run it on real CPU affinity
(against a real CPU hog, and pinned to one CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from snakeport._spin import (
    BLOCK_CYCLES,
    IDLE_GAP,
    SPIN_BACKOFF,
    SPIN_RECHECK,
    STRIKES,
    SUSTAIN_BLOCKS,
    TRIAL_BLOCKS,
    TRIAL_EVERY,
    YIELD_BUSY,
    SpinPolicy,
    usable_cpus,
)

TWO = lambda: 2  # noqa: E731 (a CPU count: the spin can pay)


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
    policy = SpinPolicy(r, spin_us=1_000_000, clock=Clock(1e-6), yield_cpu=lambda: yields.append(1), cpus=TWO)
    os.write(w, b"x")
    policy.wait()
    assert yields == [] and policy.unpaid == 0.0


def test_an_idle_cpu_spins_the_whole_window(pipe) -> None:
    r, _ = pipe
    yields = []
    policy = SpinPolicy(r, spin_us=200, clock=Clock(1e-6), yield_cpu=lambda: yields.append(1), cpus=TWO)
    policy.wait()
    assert 195 <= len(yields) <= 201  # one yield per microsecond step, for 200 µs
    assert policy.unpaid == pytest.approx(0.1) and policy.resume == 0.0  # it did not pay


def test_spins_whose_window_runs_out_back_off(pipe) -> None:
    # No frame ever comes within the window (a peer slower than it): after a few spins the
    # policy stops spinning for SPIN_BACKOFF.
    r, _ = pipe
    clock = Clock(1e-6)
    yields = []
    policy = SpinPolicy(r, spin_us=50, clock=clock, yield_cpu=lambda: yields.append(1), cpus=TWO)
    spins = 0
    while policy.resume == 0.0:
        policy.wait()
        spins += 1
        assert spins < 20, "never backed off"
    assert spins == 7 and policy.unpaid == 0.0
    count = len(yields)
    policy.wait()  # backing off: no spin at all
    assert len(yields) == count


def test_spins_that_pay_keep_the_policy_spinning(pipe) -> None:
    # Every frame arrives within the window: the policy never backs off.
    r, w = pipe
    yields = []

    def yield_cpu() -> None:
        yields.append(1)
        if len(yields) % 5 == 0:
            os.write(w, b"x")

    policy = SpinPolicy(r, spin_us=1_000_000, clock=Clock(1e-6), yield_cpu=yield_cpu, cpus=TWO)
    for _ in range(50):
        policy.wait()
        os.read(r, 1)
    assert len(yields) == 250 and policy.unpaid == 0.0 and policy.resume == 0.0


def test_on_one_cpu_the_policy_does_not_spin(pipe) -> None:
    r, _ = pipe
    clock = Clock(1e-6)
    count = [1]
    yields = []
    policy = SpinPolicy(r, spin_us=100, clock=clock, yield_cpu=lambda: yields.append(1), cpus=lambda: count[0])
    policy.wait()
    assert yields == [] and 0 < policy.resume - clock.now <= SPIN_RECHECK
    count[0] = 2  # the affinity changed: looked at again after SPIN_RECHECK
    policy.wait()
    assert yields == []
    clock.now = policy.resume
    policy.wait()  # spins again: the whole window
    assert 95 <= len(yields) <= 101


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_reader_pinned_to_one_cpu_does_not_spin(pipe) -> None:
    # Real affinity (as under `taskset -c 0`): the default CPU count sees one CPU.
    r, _ = pipe
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(previous)})
        assert usable_cpus() == 1
        yields = []
        policy = SpinPolicy(r, spin_us=1_000_000, yield_cpu=lambda: yields.append(1))
        policy.wait()
        assert yields == [] and policy.resume > time.perf_counter()
    finally:
        os.sched_setaffinity(0, previous)
    assert usable_cpus() == len(previous)


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
    policy = SpinPolicy(r, spin_us=1_000_000, clock=clock, yield_cpu=lambda: yields.append(1), cpus=TWO)
    averages = []
    while policy.resume == 0.0:
        policy.wait()
        averages.append(policy.unpaid)
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
    # (The CPU count says 2: on one CPU the policy would not spin at all, see below.)
    r, _ = pipe
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        policy = SpinPolicy(r, spin_us=5000, cpus=TWO)
        deadline = time.monotonic() + 10.0
        while time.perf_counter() >= policy.resume:
            assert time.monotonic() < deadline, "the reader never backed off"
            policy.wait()
        resume = policy.resume
        assert resume - time.perf_counter() <= SPIN_BACKOFF
        assert policy.unpaid == 0.0  # the average starts afresh after the back-off
        policy.wait()  # backing off: returns before spinning
        assert (policy.resume, policy.unpaid) == (resume, 0.0) or time.perf_counter() >= resume
    finally:
        os.sched_setaffinity(0, previous)
        hog.kill()
        hog.wait()


class Peer:
    """A request stream as the policy sees it: one request per read, each read ``off`` or
    ``on`` seconds after the previous one depending on whether the policy spins."""

    def __init__(self, off: float, on: float) -> None:
        self.now = 100.0
        self.requests = 0
        self.off, self.on = off, on

    def run(self, policy: SpinPolicy, reads: int) -> list[bool]:
        modes = []
        for _ in range(reads):
            self.now += self.on if policy.spinning else self.off
            self.requests += 1
            policy.wait()
            modes.append(policy.spinning)
        return modes


def trial_policy(pipe, peer: Peer) -> SpinPolicy:
    r, w = pipe
    os.write(w, b"x")  # readable: a spin returns at once (the trial alone is under test)
    return SpinPolicy(
        r, spin_us=200, clock=lambda: peer.now, yield_cpu=lambda: None, cpus=TWO, requests=lambda: peer.requests
    )


def paying_trial(pipe, peer: Peer) -> SpinPolicy:
    """A policy after its first trial, which found that spinning pays (``peer`` makes it pay)."""
    policy = trial_policy(pipe, peer)
    peer.run(policy, 1 + TRIAL_BLOCKS * BLOCK_CYCLES)
    assert policy.verdicts == [1, 1, 0] and policy.spinning
    return policy


def test_a_trial_keeps_spinning_when_it_pays(pipe) -> None:
    peer = Peer(off=50e-6, on=20e-6)  # a wake-up saved per request
    policy = trial_policy(pipe, peer)
    modes = peer.run(policy, 1 + TRIAL_BLOCKS * BLOCK_CYCLES)
    # The trial alternates blocks without and with spinning, then keeps the verdict.
    assert modes[BLOCK_CYCLES - 1 : BLOCK_CYCLES + 1] == [False, True]
    assert policy.verdicts == [1, 1, 0] and policy.spinning
    assert all(peer.run(policy, 1000))  # until the next trial, TRIAL_EVERY later


def test_a_trial_stops_spinning_when_it_does_not_pay(pipe) -> None:
    peer = Peer(off=50e-6, on=48e-6)  # less than the PAYS margin
    policy = trial_policy(pipe, peer)
    peer.run(policy, 1 + TRIAL_BLOCKS * BLOCK_CYCLES)
    assert policy.verdicts == [1, 0, 0] and not policy.spinning
    # Until the next trial: no spinning; then a new trial with the same outcome.
    reads = int(TRIAL_EVERY / peer.off)
    assert not any(peer.run(policy, reads - 10))
    peer.run(policy, 10 + BLOCK_CYCLES + TRIAL_BLOCKS * BLOCK_CYCLES)  # (from the next block boundary)
    assert policy.verdicts == [2, 0, 0]


def test_a_trial_follows_the_peer(pipe) -> None:
    peer = Peer(off=50e-6, on=80e-6)  # spinning slows the peer down (it takes its CPU)
    policy = trial_policy(pipe, peer)
    peer.run(policy, 1 + TRIAL_BLOCKS * BLOCK_CYCLES)
    assert policy.verdicts == [1, 0, 0]
    peer.on = 10e-6  # the machine changed: the next trial finds that spinning pays
    peer.run(policy, int(TRIAL_EVERY / peer.off) + (1 + TRIAL_BLOCKS) * BLOCK_CYCLES)
    assert policy.verdicts == [2, 1, 0] and policy.spinning


def test_one_slow_block_does_not_decide_a_trial(pipe) -> None:
    # The worker warming up (first imports) slows the trial's first block, one without
    # spinning: compared by sums, spinning would seem to pay; by the median block it does not.
    peer = Peer(off=50e-6, on=48e-6)  # less than the PAYS margin
    policy = trial_policy(pipe, peer)
    peer.run(policy, 1)
    peer.off = 500e-6
    peer.run(policy, BLOCK_CYCLES)
    peer.off = 50e-6
    peer.run(policy, TRIAL_BLOCKS * BLOCK_CYCLES)
    assert policy.verdicts == [1, 0, 0] and not policy.spinning


class TiringPeer(Peer):
    """Spinning pays for the first ``fresh`` reads of a run of spinning reads only (a reader
    that has just slept wins the CPU from the peer; one that spins all the time loses it)."""

    def __init__(self, off: float, on: float, tired: float, fresh: int) -> None:
        super().__init__(off, on)
        self.tired, self.fresh, self.run_length = tired, fresh, 0

    def run(self, policy: SpinPolicy, reads: int) -> list[bool]:
        modes = []
        for _ in range(reads):
            self.run_length = self.run_length + 1 if policy.spinning else 0
            if policy.spinning:
                self.now += self.on if self.run_length <= self.fresh else self.tired
            else:
                self.now += self.off
            self.requests += 1
            policy.wait()
            modes.append(policy.spinning)
        return modes


def test_spinning_that_stops_paying_when_sustained_stops_until_the_next_trial(pipe) -> None:
    peer = TiringPeer(off=50e-6, on=20e-6, tired=90e-6, fresh=BLOCK_CYCLES)
    policy = paying_trial(pipe, peer)  # the trial's blocks are short
    modes = peer.run(policy, STRIKES * SUSTAIN_BLOCKS * BLOCK_CYCLES)
    assert all(modes[:-1]) and not modes[-1]  # STRIKES windows of SUSTAIN_BLOCKS blocks each
    assert policy.verdicts == [1, 1, 1]
    reads = int(TRIAL_EVERY / peer.off)
    spun = STRIKES * SUSTAIN_BLOCKS * BLOCK_CYCLES * peer.tired / peer.off  # (in reads of off)
    assert not any(peer.run(policy, reads - int(spun) - BLOCK_CYCLES))  # until the next trial


@pytest.mark.parametrize(
    ("lead_blocks", "slow", "slow_blocks"),
    [
        # A window of slow blocks (another program took the CPU for a while) meets a trial
        # whose blocks without spinning were fast: one window is not a verdict.
        pytest.param(0, 90e-6, (STRIKES - 1) * SUSTAIN_BLOCKS, id="a burst of other work"),
        # Two very slow blocks across the boundary of two windows: by sums both windows
        # fail; by their median blocks neither does.
        pytest.param(SUSTAIN_BLOCKS - 1, 500e-6, 2, id="two slow blocks across windows"),
    ],
)
def test_a_slow_spell_does_not_revoke_spinning_that_pays(pipe, lead_blocks, slow, slow_blocks) -> None:
    peer = Peer(off=50e-6, on=20e-6)
    policy = paying_trial(pipe, peer)
    assert all(peer.run(policy, lead_blocks * BLOCK_CYCLES))
    peer.on = slow  # slower than without spinning
    assert all(peer.run(policy, slow_blocks * BLOCK_CYCLES))
    peer.on = 20e-6
    assert all(peer.run(policy, 3 * SUSTAIN_BLOCKS * BLOCK_CYCLES))
    assert policy.verdicts == [1, 1, 0]


def test_an_idle_gap_restarts_the_block(pipe) -> None:
    peer = Peer(off=50e-6, on=20e-6)
    policy = trial_policy(pipe, peer)
    peer.run(policy, BLOCK_CYCLES - 2)
    peer.now += 2 * IDLE_GAP  # the peer went idle: that gap is not a slow request
    peer.run(policy, BLOCK_CYCLES)
    assert not policy.spinning  # the first block restarted after the gap
    peer.run(policy, 1)
    assert policy.spinning


def test_a_worker_measures_whether_spinning_pays() -> None:
    # The server gives its policy the request counter: the trials run on real requests.
    from snakeport._server import Config, Server

    r, w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        srv = Server(Config(spin_us=200), r, out_w)
        policy = srv._spin
        assert policy is not None and policy.spinning is False  # a trial starts without
        srv.dispatcher.requests = 5
        assert policy._requests() == 5
    finally:
        for fd in (r, w, out_r, out_w):
            os.close(fd)
