"""A short, seeded run of the codec fuzzer (``make fuzz`` runs it for a minute)."""

from __future__ import annotations

from fuzz_etf import fuzz

# The fuzzer compares the two paths itself.
BOTH_CODEC_PATHS = False


def test_a_short_fuzz_run_finds_nothing() -> None:
    # Time-bounded (2 s); the seed fixes the inputs, so a finding reproduces with
    # `python tests/codec/fuzz_etf.py --seed 1313`.
    assert fuzz(seconds=2.0, seed=1313) > 200
