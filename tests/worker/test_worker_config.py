"""The worker's settings: CLI parsing and Config validation (no process)."""

from __future__ import annotations

import pytest

from snakeport.__main__ import build_parser, config_from_args
from snakeport._server import Config


def test_defaults() -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert config == Config()
    assert (config.max_frame_bytes, config.threads, config.default_max_refs) == (256 * 1024 * 1024, 1, 10_000)
    assert (config.default_ttl_seconds, config.sweep_interval, config.max_tombstones, config.max_depth) == (3600, 1.0, 100_000, 512)
    assert config.spin_us == 200


def test_options() -> None:
    args = build_parser().parse_args(
        ["--max-frame-bytes", "1000", "--threads", "4", "--default-max-refs", "5", "--default-ttl-seconds", "0.5",
         "--sweep-interval", "0.1", "--max-tombstones", "0", "--max-depth", "64", "--spin-us", "0",
         "--log-level", "debug"]
    )
    config = config_from_args(args)
    assert config == Config(1000, 4, 5, 0.5, 0.1, 0, 64, 0)
    assert args.log_level == "DEBUG"


@pytest.mark.parametrize(
    "argv",
    [["--threads", "0"], ["--max-frame-bytes", "4294967296"], ["--default-ttl-seconds", "-1"], ["--sweep-interval", "nan"],
     ["--max-tombstones", "-1"], ["--log-level", "loud"], ["--max-depth", "x"], ["--spin-us", "-1"],
     ["--spin-us", "1000001"], ["--spin-us", "1.5"]],
)
def test_bad_options_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "kw",
    [{"threads": 0}, {"max_frame_bytes": 1 << 32}, {"default_ttl_seconds": 0}, {"sweep_interval": float("inf")},
     {"max_tombstones": -1}, {"max_depth": True}, {"spin_us": -1}, {"spin_us": 1_000_001}, {"spin_us": 0.5}],
)
def test_config_validates(kw) -> None:
    with pytest.raises(ValueError):
        Config(**kw)


@pytest.mark.parametrize("columns", [None, "60", "200", "0", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch, columns) -> None:
    # The worker's formatter reads the terminal's width itself (argparse's imports shutil,
    # and with it bz2 and lzma, at every add_argument): the same width as argparse's.
    import argparse

    from snakeport.__main__ import _HelpFormatter

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _HelpFormatter("p")._width == argparse.HelpFormatter("p")._width
    assert isinstance(build_parser()._get_formatter(), _HelpFormatter)
