"""One source for every default and limit (snakeport._limits), read by every entry point."""

from __future__ import annotations

import math

import pytest

from snakeport import _limits as limits
from snakeport import etf
from snakeport.__main__ import build_parser, config_from_args
from snakeport._dispatch import Dispatcher
from snakeport._framing import FrameSplitter
from snakeport._server import Config
from snakeport._sessions import SessionTable
from snakeport.errors import RequestError

#: (limit, accepted values, refused values)
CASES = [
    (limits.MAX_FRAME_BYTES, [1, 256 << 20, 0xFFFFFFFF], [0, -1, 1 << 32, 1.0, True, None, "1"]),
    (limits.THREADS, [1, 64], [0, -1, 1.5, True, False]),
    (limits.MAX_REFS, [1, 10**9], [0, -5, 2.0, True]),
    (limits.TTL_SECONDS, [0.001, 1, 3600, 1e9], [0, -1, math.inf, math.nan, True, "5"]),
    (limits.SWEEP_INTERVAL, [0.01, 2], [0.0, math.inf, -0.5]),
    (limits.MAX_TOMBSTONES, [0, 1, 100_000], [-1, 0.0, False]),
    (limits.MAX_DEPTH, [1, 10_000], [0, 512.0, 10_001]),
    (limits.SPIN_US, [0, 200, 1_000_000], [-1, 1_000_001, 0.5]),
]


@pytest.mark.parametrize(("limit", "good", "bad"), CASES, ids=[c[0].name for c in CASES])
def test_each_limit_accepts_and_refuses_its_values(limit, good, bad) -> None:
    assert limit.ok(limit.default)
    for value in good:
        assert limit.check(value) is value
    for value in bad:
        with pytest.raises(ValueError, match=f"^expected {limit.name} to be {limit.what}, got: "):
            limit.check(value)
    with pytest.raises(ValueError, match="^expected other to be"):
        limit.check(bad[0], "other")


def test_parse_turns_text_into_the_checked_value() -> None:
    assert limits.TTL_SECONDS.parse("3600") == 3600 and type(limits.TTL_SECONDS.parse("3600")) is int
    assert limits.TTL_SECONDS.parse("0.5") == 0.5
    assert limits.SPIN_US.parse("0") == 0
    for limit, text in [(limits.SPIN_US, "1.5"), (limits.THREADS, "0"), (limits.TTL_SECONDS, "nan"),
                        (limits.TTL_SECONDS, "inf"), (limits.MAX_FRAME_BYTES, "4294967296"), (limits.MAX_DEPTH, "x")]:
        with pytest.raises(ValueError, match=f"^expected {limit.what}, got: {text!r}$"):
            limit.parse(text)


def test_every_entry_point_has_the_same_defaults() -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert config == Config()
    assert tuple(config) == (
        limits.MAX_FRAME_BYTES.default,
        limits.THREADS.default,
        limits.MAX_REFS.default,
        limits.TTL_SECONDS.default,
        limits.SWEEP_INTERVAL.default,
        limits.MAX_TOMBSTONES.default,
        limits.MAX_DEPTH.default,
        limits.SPIN_US.default,
        limits.TOOL_TIMEOUT.default,
        limits.DEFAULT_OVERFLOW,
        None,  # allow: no allow-list
        limits.FORWARD_LEVELS["OFF"],
        (),  # preload: nothing
    )
    table = SessionTable()
    assert (table.default_max_refs, table.default_ttl_seconds, table.max_tombstones, table.default_overflow) == (
        config.default_max_refs, config.default_ttl_seconds, config.max_tombstones, config.default_overflow)
    dispatcher = Dispatcher(table)
    assert (dispatcher.max_depth, dispatcher.max_frame_bytes, dispatcher.threads) == (
        config.max_depth, config.max_frame_bytes, config.threads)
    assert (etf.DEFAULT_MAX_DEPTH, etf.DEFAULT_MAX_SIZE) == (config.max_depth, config.max_frame_bytes)
    assert FrameSplitter().max_frame_bytes == config.max_frame_bytes


def test_every_entry_point_refuses_with_the_same_words(capsys) -> None:
    # The CLI, Config, the session table (defaults and open_session), the dispatcher, the
    # splitter and the codec all check with the rules of _limits.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--default-max-refs", "0"])
    assert "argument --default-max-refs: expected a positive integer, got: '0'" in capsys.readouterr().err
    for make in (lambda: Config(default_max_refs=0), lambda: SessionTable(default_max_refs=0)):
        with pytest.raises(ValueError, match="^expected default_max_refs to be a positive integer, got: 0$"):
            make()
    table = SessionTable()
    with pytest.raises(RequestError, match="^expected max_refs to be a positive integer, got: 0$") as e:
        table.open_session("s", max_refs=0)
    assert e.value.reason == "bad_request"
    with pytest.raises(RequestError, match="^expected ttl_seconds to be a positive number, got: inf$"):
        table.open_session("s", ttl_seconds=math.inf)
    with pytest.raises(ValueError, match="^expected max_frame_bytes to be an integer from 1 to 4294967295"):
        FrameSplitter(max_frame_bytes=1 << 32)
    with pytest.raises(ValueError, match="^expected max_frame_bytes to be an integer from 1 to 4294967295"):
        Dispatcher(table, max_frame_bytes=0)
    with pytest.raises(ValueError, match="^expected max_depth to be an integer from 1 to 10000, got: 0$"):
        etf.decode(etf.encode(1), max_depth=0)


def test_preload_names_are_checked_by_the_cli_and_config(capsys) -> None:
    assert config_from_args(build_parser().parse_args(["--preload", "a.b_c", "--preload", "json"])).preload == (
        "a.b_c",
        "json",
    )
    for bad in ["1x", "a..b", "a.", "", "os/path", "a b"]:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["--preload", bad])
        assert exit_info.value.code == 2
        assert f"expected preload to be a module name (dotted identifiers), got: {bad!r}" in capsys.readouterr().err
        with pytest.raises(ValueError, match="expected preload to be a module name"):
            Config(preload=(bad,))
    with pytest.raises(ValueError, match="expected preload to be a tuple"):
        Config(preload=["json"])
