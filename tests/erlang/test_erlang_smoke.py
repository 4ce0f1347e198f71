"""Drive the worker from a real Erlang VM: tests/erlang/smoke.escript opens it as a Port."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PYMODS = HERE.parent / "worker" / "pymods"


def test_escript_smoke() -> None:
    escript = shutil.which("escript")
    if escript is None:
        pytest.fail("escript (Erlang/OTP) is not installed; `make setup` installs it")
    proc = subprocess.run(
        [escript, str(HERE / "smoke.escript"), sys.executable, str(PYMODS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for line in [
        "ready:",
        "unopened session: session_not_found",
        "open_session: ok",
        "call operator.add: 3",
        "call collections.Counter: {'$snakeport_ref',<<\"s\">>,",
        "method most_common: ok",
        "foreign session: session_mismatch",
        "release_ref: ok",
        "released ref: ref_released",
        "python error: ok",
        "1 MiB binary round trip: 1048576",
        "released session: session_not_found",
        "ping and stats: ok",
        "shutdown: exit_status_0",
    ]:
        assert line in output, output
    assert output.rstrip().endswith("SMOKE OK"), output
