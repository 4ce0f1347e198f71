"""A short, seeded run of the lane's differential fuzzer (``make fuzz`` runs it for a minute)."""

from __future__ import annotations

import pytest
from fuzz_lane import fuzz
from snakeport import _lane

pytestmark = pytest.mark.skipif(not _lane.available(), reason="the C lane is not built here (test_worker_lane.py says why)")


def test_a_short_lane_fuzz_run_finds_nothing(tmp_path) -> None:
    # Time-bounded (2 s): the lane and the general path write the same frames for the same
    # batches; a finding reproduces with `python tests/worker/fuzz_lane.py --seed 1313`.
    assert fuzz(seconds=2.0, seed=1313, out_dir=tmp_path) > 50


def test_a_short_lane_fuzz_run_with_an_allow_list_finds_nothing(tmp_path) -> None:
    # Both workers with an allow-list that refuses some of the fuzzer's functions by name
    # (builtins.str, operator.mul, ...); a finding reproduces with `python
    # tests/worker/fuzz_lane.py --seed 1414 --allow operator.add,operator.getitem,builtins.len,builtins.sorted,builtins.int`.
    allow = "operator.add,operator.getitem,builtins.len,builtins.sorted,builtins.int"
    assert fuzz(seconds=2.0, seed=1414, out_dir=tmp_path, allow=allow) > 50
