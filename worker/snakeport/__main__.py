"""Command line of the worker: ``python -m snakeport [options]`` (or ``snakeport-worker``).

The VM starts it as a Port with ``{packet, 4}`` framing; see ``docs/PROTOCOL.md``. The
worker writes only frames to its stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any, Callable, NoReturn, Sequence

from snakeport import PROTOCOL_VERSION, __version__

__all__ = ["main", "build_parser", "config_from_args"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _checked(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse ``type`` that converts the text and checks the value.

    Args:
        convert: Parses the text (``int``, ``float``); its ``ValueError`` means bad input.
        ok: Tells whether the parsed value is acceptable.
        expected: What a good value is, for the message ("expected X, got: 'text'").

    Returns:
        The ``type`` callable; it raises ``argparse.ArgumentTypeError`` on bad input.
    """

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got: {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def _positive_number(text: str) -> int | float:
    value = _positive_float(text)
    return int(value) if value.is_integer() else value


def _frame_limit(text: str) -> int:
    value = _positive_int(text)
    if value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("a {packet, 4} frame holds at most 4294967295 bytes")
    return value


def _depth(text: str) -> int:
    from snakeport.etf import MAX_DECODE_DEPTH

    value = _positive_int(text)
    if value > MAX_DECODE_DEPTH:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_DECODE_DEPTH} (deeper terms could overflow the C stack), got: {text!r}"
        )
    return value


def _spin(text: str) -> int:
    value = _non_negative_int(text)
    if value > 1_000_000:
        raise argparse.ArgumentTypeError(f"expected at most 1000000 microseconds (a second), got: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the worker's argument parser.

    Returns:
        The parser; ``--help`` documents every option.
    """
    from snakeport.etf import MAX_DECODE_DEPTH  # (the worker imports the codec anyway)

    parser = argparse.ArgumentParser(
        prog="python -m snakeport",
        description=(
            "Snakeport worker: run Python calls for an Erlang/Elixir VM that drives this "
            "process as a Port ({packet, 4} frames of External Term Format on stdin/stdout, "
            f"protocol version {PROTOCOL_VERSION}). Logs go to stderr."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snakeport {__version__}")
    parser.add_argument(
        "--max-frame-bytes",
        type=_frame_limit,
        default=256 * 1024 * 1024,
        metavar="N",
        help="largest frame accepted, in bytes; larger ones are skipped and answered with a "
        "frame_too_large error",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="executor threads running call/method/getattr/setattr (control requests are "
        "always answered at once by the frame-reading thread)",
    )
    parser.add_argument(
        "--default-max-refs",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="max_refs of a session that does not state one",
    )
    parser.add_argument(
        "--default-ttl-seconds",
        type=_positive_number,
        default=3600,
        metavar="SECONDS",
        help="ttl_seconds of a session that does not state one: refs idle for longer are "
        "released by the sweep",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_positive_number,
        default=1.0,
        metavar="SECONDS",
        help="how often the TTL sweep runs (it runs even when the worker is idle)",
    )
    parser.add_argument(
        "--max-tombstones",
        type=_non_negative_int,
        default=100_000,
        metavar="N",
        help="how many released/evicted/pruned ref ids are remembered so that their later "
        "use fails with ref_released rather than ref_not_found, and how many released "
        "session ids, so that session_not_found says cause => session_released (0: none)",
    )
    parser.add_argument(
        "--max-depth",
        type=_depth,
        default=512,
        metavar="N",
        help="deepest term nesting decoded from the VM, and marshalled back as data "
        f"(deeper parts of a result become refs); at most {MAX_DECODE_DEPTH}: CPython hashes "
        "nested tuples recursively in C, and deeper map keys could overflow a thread's stack",
    )
    parser.add_argument(
        "--spin-us",
        type=_spin,
        default=200,
        metavar="N",
        help="before waiting for the next frame, poll for it this many microseconds (0: "
        "never); saves the wake-up of a sleeping thread on busy request streams, at the "
        "cost of CPU time after each batch of frames",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="WARNING",
        help="stderr log level",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> "Config":  # noqa: F821 - imported lazily
    """Build the server's :class:`~snakeport._server.Config` from parsed arguments.

    Args:
        args: The result of :func:`build_parser`'s ``parse_args``.

    Returns:
        The configuration.
    """
    from snakeport._server import Config

    return Config(
        max_frame_bytes=args.max_frame_bytes,
        threads=args.threads,
        default_max_refs=args.default_max_refs,
        default_ttl_seconds=args.default_ttl_seconds,
        sweep_interval=args.sweep_interval,
        max_tombstones=args.max_tombstones,
        max_depth=args.max_depth,
        spin_us=args.spin_us,
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse the command line and run the worker until stdin EOF or ``shutdown``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: For ``--help``, ``--version`` and invalid options (before any frame).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="snakeport[%(process)d] %(levelname)s %(threadName)s: %(message)s",
    )
    from snakeport._server import run

    run(config_from_args(args))


if __name__ == "__main__":
    main()
