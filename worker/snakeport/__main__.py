"""Command line of the worker: ``python -m snakeport [options]`` (or ``snakeport-worker``).

The VM starts it as a Port with ``{packet, 4}`` framing; see ``docs/PROTOCOL.md``. The
worker writes only frames to its stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from snakeport import PROTOCOL_VERSION, __version__
from snakeport import _limits as limits
from snakeport._limits import Limit

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable, NoReturn, Sequence

__all__ = ["main", "build_parser", "config_from_args"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _option(limit: Limit) -> Callable[[str], Any]:
    """The argparse ``type`` of an option: :meth:`Limit.parse` with argparse's error type.

    Args:
        limit: The option's rule (in :mod:`snakeport._limits`).

    Returns:
        A callable that converts the text or raises ``argparse.ArgumentTypeError``.
    """

    def parse(text: str) -> Any:
        try:
            return limit.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = limit.name
    return parse


def _allow_option(text: str) -> list[str]:
    """The argparse ``type`` of ``--allow``: the entries of one value."""
    from snakeport._allow import parse_entries  # (only a worker with an allow-list needs it)

    try:
        return parse_entries(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _module_name(text: str) -> str:
    """The argparse ``type`` of ``--preload``."""
    try:
        return limits.module_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _allow_entries(values: list[list[str]] | None) -> tuple[str, ...] | None:
    """The entries of every ``--allow`` given, or ``None`` when there was none."""
    return None if values is None else tuple(name for names in values for name in names)


def _terminal_columns() -> int:
    """The width ``shutil.get_terminal_size()`` reports, without importing ``shutil``.

    ``COLUMNS`` when it is a positive integer, else the width of the terminal on
    ``sys.__stdout__`` (a worker's stdout is the Port's pipe: none), else 80.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or 80


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter, sized as argparse sizes it but without importing ``shutil``.

    ``add_argument`` makes a formatter for every option (it checks the metavar), and
    argparse's own imports ``shutil`` to read the terminal's width: with it ``bz2``,
    ``lzma`` and their shared libraries, some 0.4 MB of every worker's memory that only
    ``--help`` would use.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def build_parser() -> argparse.ArgumentParser:
    """Return the worker's argument parser.

    Returns:
        The parser; ``--help`` documents every option.
    """

    parser = argparse.ArgumentParser(
        prog="python -m snakeport",
        description=(
            "Snakeport worker: run Python calls for an Erlang/Elixir VM that drives this "
            "process as a Port ({packet, 4} frames of External Term Format on stdin/stdout, "
            f"protocol version {PROTOCOL_VERSION}). Logs go to stderr."
        ),
        epilog=(
            "Security: a worker runs any code its caller names: os.system, builtins.eval, "
            "any attribute including dunder ones (__globals__, __subclasses__), with the "
            "rights of this process. Sessions are bookkeeping (refs, limits, TTLs), not a "
            "security boundary between callers. Only let trusted code choose the names a "
            "worker calls; an app that forwards names chosen by its users should start its "
            "workers with --allow (names with parts starting with _ are then refused too, "
            "and a name outside the list is refused before anything is imported)."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"snakeport {__version__}")
    parser.add_argument(
        "--max-frame-bytes",
        type=_option(limits.MAX_FRAME_BYTES),
        default=limits.MAX_FRAME_BYTES.default,
        metavar="N",
        help="largest frame accepted, in bytes; larger ones are skipped and answered with a "
        "frame_too_large error",
    )
    parser.add_argument(
        "--threads",
        type=_option(limits.THREADS),
        default=limits.THREADS.default,
        metavar="N",
        help="how many call/method/getattr/setattr/eval run at once: a lone call runs on the "
        "frame-reading thread, more on a pool of N threads (control requests are always "
        "answered at once by the frame-reading thread); a call waiting for an Elixir tool "
        "does not count until the tool answers",
    )
    parser.add_argument(
        "--default-max-refs",
        type=_option(limits.MAX_REFS),
        default=limits.MAX_REFS.default,
        metavar="N",
        help="max_refs of a session that does not state one",
    )
    parser.add_argument(
        "--default-ttl-seconds",
        type=_option(limits.TTL_SECONDS),
        default=limits.TTL_SECONDS.default,
        metavar="SECONDS",
        help="ttl_seconds of a session that does not state one: refs idle for longer are "
        "released by the sweep",
    )
    parser.add_argument(
        "--default-overflow",
        choices=limits.OVERFLOW_POLICIES,
        default=limits.DEFAULT_OVERFLOW,
        help="overflow policy of a session that does not state one: error (a result that "
        "does not fit fails with max_refs_exceeded) or evict_lru (the least recently used "
        "refs are released to make room)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_option(limits.SWEEP_INTERVAL),
        default=limits.SWEEP_INTERVAL.default,
        metavar="SECONDS",
        help="how often the TTL sweep runs (it runs even when the worker is idle)",
    )
    parser.add_argument(
        "--max-tombstones",
        type=_option(limits.MAX_TOMBSTONES),
        default=limits.MAX_TOMBSTONES.default,
        metavar="N",
        help="how many released/evicted/pruned ref ids are remembered so that their later "
        "use fails with ref_released rather than ref_not_found, and how many released "
        "session ids, so that session_not_found says cause => session_released (0: none); "
        "memory: 17 bytes per ref and 8 per session, allocated as the tables fill",
    )
    parser.add_argument(
        "--max-depth",
        type=_option(limits.MAX_DEPTH),
        default=limits.MAX_DEPTH.default,
        metavar="N",
        help="deepest term nesting decoded from the VM, and marshalled back as data "
        f"(deeper parts of a result become refs); at most {limits.MAX_DEPTH.high}: CPython hashes "
        "nested tuples recursively in C, and deeper map keys could overflow a thread's stack",
    )
    parser.add_argument(
        "--spin-us",
        type=_option(limits.SPIN_US),
        default=limits.SPIN_US.default,
        metavar="N",
        help="before waiting for the next frame, poll for it this many microseconds (0: "
        "never); saves the wake-up of a sleeping thread on busy request streams, at the "
        "cost of CPU time after each batch of frames",
    )
    parser.add_argument(
        "--tool-timeout",
        type=_option(limits.TOOL_TIMEOUT),
        default=limits.TOOL_TIMEOUT.default,
        metavar="SECONDS",
        help="how long the VM gives an Elixir tool called from Python (the harness passes "
        f"its :tool_timeout); a thread waiting for one gives up {limits.TOOL_GRACE:g} s later",
    )
    parser.add_argument(
        "--allow",
        type=_allow_option,
        action="append",
        default=argparse.SUPPRESS,  # (absent: no allow-list; not shown as "default: None")
        metavar="NAMES",
        help="allow-list: only these dotted names (comma-separated; the option may be "
        "repeated; '' allows none) and the names under them may be called or read: "
        "'math' allows math.sqrt, 'json.loads' only itself. With it, names with parts "
        "starting with _ are refused, a refused name is refused before any import, and "
        "method/getattr/setattr on refs may not reach a module outside the list, a frame "
        "or a code object. Without --allow, every name may be called",
    )
    parser.add_argument(
        "--vm-pid",
        type=_option(limits.VM_PID),
        default=None,
        metavar="PID",
        help="OS pid of the VM that starts this worker: at start, the worker exits when that "
        "process is neither its parent nor an ancestor of its parent (the VM died while the "
        "worker started). On Linux the kernel kills the worker (SIGKILL) when its parent "
        "exits in any case",
    )
    parser.add_argument(
        "--forward-logs",
        type=str.upper,
        choices=tuple(limits.FORWARD_LEVELS),
        default="OFF",
        metavar="LEVEL",
        help="send Python's output to the VM as log events (protocol: the log event), at "
        "this level and above: logging records (the root logger gets this level), warnings, "
        "and the lines written to fds 1 and 2 (print(), C code, child processes; INFO and "
        "WARNING); rate-limited. OFF (the default): fd 1 goes to stderr, logging is Python's "
        "own. Levels: " + ", ".join(limits.FORWARD_LEVELS),
    )
    parser.add_argument(
        "--preload",
        action="append",
        type=_module_name,
        default=[],
        metavar="MODULE",
        help="import MODULE before reporting ready (repeat it for several, imported in order): "
        "a slow first import (sklearn, torch) is paid at start instead of by the first call; "
        f"a failing import ends the worker with status {limits.PRELOAD_FAILED}",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default="WARNING",
        help="the worker's own log level (its messages go to stderr, also with --forward-logs)",
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
        tool_timeout=args.tool_timeout,
        default_overflow=args.default_overflow,
        allow=_allow_entries(getattr(args, "allow", None)),
        forward_logs=limits.FORWARD_LEVELS[args.forward_logs],
        preload=tuple(args.preload),
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse the command line and run the worker until stdin EOF or ``shutdown``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: For ``--help``, ``--version`` and invalid options (before any frame).
    """
    parent = os.getppid()  # before anything slow: see die_with_parent
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="snakeport[%(process)d] %(levelname)s %(threadName)s: %(message)s",
    )
    from snakeport import _process
    from snakeport._server import run

    _process.die_with_parent(parent, args.vm_pid)
    run(config_from_args(args))


if __name__ == "__main__":
    main()
