"""Every default, limit and timing of the worker, and the one validation of each (I/O-free).

The command line (``__main__``), :class:`~snakeport._server.Config`, the session table,
the dispatcher, the codec (``etf``) and the frame splitter all read their defaults and
bounds here, and check values with the :class:`Limit` rules here, so that a default or a
bound is written once and every entry point refuses the same values with the same words
("expected max_refs to be a positive integer, got: -1"). Only the command line turns text
into values (:meth:`Limit.parse`); everything else checks Python values (:meth:`Limit.check`).

Settings (the worker's options; each a :class:`Limit` with its default):

========================  ==============================  =============================
Limit                     default                         accepted values
========================  ==============================  =============================
:data:`MAX_FRAME_BYTES`   268435456 (256 MiB)             integer 1 .. :data:`MAX_PACKET`
:data:`THREADS`           1                               positive integer
:data:`MAX_REFS`          10000                           positive integer
:data:`TTL_SECONDS`       3600                            positive finite number
:data:`SWEEP_INTERVAL`    1.0                             positive finite number
:data:`MAX_TOMBSTONES`    100000                          non-negative integer
:data:`MAX_DEPTH`         512                             integer 1 .. 10000     
:data:`SPIN_US`           200                             integer 0 .. 1000000
:data:`TOOL_TIMEOUT`      30                              positive finite number
========================  ==============================  =============================

``--default-overflow`` (``error`` or ``evict_lru``, default :data:`DEFAULT_OVERFLOW`) is a
choice, not a number: the command line and :class:`~snakeport._sessions.SessionTable` check
it against :data:`OVERFLOW_POLICIES`.

``MAX_REFS`` and ``TTL_SECONDS`` are both the rule of a session's ``max_refs`` and
``ttl_seconds`` (``open_session``) and of the worker's defaults for them
(``--default-max-refs``, ``--default-ttl-seconds``).
"""

from __future__ import annotations

import math
import re
from collections import namedtuple

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "Limit",
    "positive_int",
    "MAX_PACKET",
    "MAX_FRAME_BYTES",
    "THREADS",
    "MAX_REFS",
    "TTL_SECONDS",
    "SWEEP_INTERVAL",
    "MAX_TOMBSTONES",
    "MAX_DEPTH",
    "SPIN_US",
    "VM_PID",
    "TOOL_TIMEOUT",
    "OVERFLOW_POLICIES",
    "DEFAULT_OVERFLOW",
    "WATCHDOG_INTERVAL",
    "SHUTDOWN_GRACE",
    "TAKEOVER_POLL",
    "CANCEL_RETRY_INTERVAL",
    "CANCEL_REPORT_AFTER",
    "MAX_RECURSION",
    "TOOL_GRACE",
    "MAX_TOOL_WAITS",
    "EVAL_CACHE_SIZE",
    "EVAL_CACHE_MAX_SOURCE",
    "MAX_QUEUED_BYTES",
    "QUEUED_FRAME_COST",
    "FORWARD_LEVELS",
    "LOG_RATE",
    "LOG_BURST",
    "LOG_LINE_BYTES",
    "module_name",
    "PRELOAD_FAILED",
]

#: Largest payload a ``{packet, 4}`` frame can carry (its length is 32 bits).
MAX_PACKET = 0xFFFFFFFF


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not an integer here


def _is_number(value: Any) -> bool:
    t = type(value)
    return (t is int or t is float) and math.isfinite(value)


class Limit(namedtuple("Limit", "name default integer low high what")):
    """One setting: its name, its default and the values it accepts (a named tuple).

    Attributes:
        name (str): The keyword (``max_refs``); messages use it unless told another name.
        default (Any): The default value.
        integer (bool): Whether only ``int`` is accepted (else ``int`` or finite ``float``).
        low (int): Smallest accepted value (an integer limit), or ``0`` exclusive (a number).
        high (int | None): Largest accepted value, or ``None``.
        what (str): The accepted values in words, for messages ("a positive integer").
    """

    __slots__ = ()

    def ok(self, value: Any) -> bool:
        """Tell whether ``value`` is accepted.

        Args:
            value: Any Python value.

        Returns:
            True when the value follows the rule (``bool`` is never accepted).
        """
        if self.integer:
            return _is_int(value) and value >= self.low and (self.high is None or value <= self.high)
        return _is_number(value) and value > 0 and (self.high is None or value <= self.high)

    def check(self, value: Any, name: str | None = None) -> Any:
        """Return ``value`` when it is accepted.

        Args:
            value: The value to check.
            name: The name for the message (default: :attr:`name`).

        Returns:
            ``value``.

        Raises:
            ValueError: ``expected <name> to be <what>, got: <value!r>``.
        """
        if not self.ok(value):
            from snakeport._guard import short  # (a value from the VM may be huge: cut)

            raise ValueError(f"expected {name or self.name} to be {self.what}, got: {short(value)}")
        return value

    def parse(self, text: str) -> Any:
        """Convert command-line text and check it.

        Numbers that are whole come back as ``int`` (``"3600"`` is ``3600``, ``"0.5"`` is
        ``0.5``).

        Args:
            text: The option's text.

        Returns:
            The value.

        Raises:
            ValueError: ``expected <what>, got: <text!r>``.
        """
        value: Any
        try:
            if self.integer:
                value = int(text)
            else:
                value = float(text)
                if math.isfinite(value) and value.is_integer():
                    value = int(value)
        except ValueError:
            value = None
        if not self.ok(value):
            raise ValueError(f"expected {self.what}, got: {text!r}")
        return value


def _int_limit(name: str, default: int, low: int, high: int | None = None, what: str = "") -> Limit:
    if not what:
        what = {0: "a non-negative integer", 1: "a positive integer"}[low] if high is None else (
            f"an integer from {low} to {high}"
        )
    return Limit(name, default, True, low, high, what)


def _number_limit(name: str, default: int | float) -> Limit:
    return Limit(name, default, False, 0, None, "a positive number")


#: Largest frame payload accepted; larger frames are skipped and answered ``frame_too_large``.
#: Also the codec's default ``max_size`` (input and decompressed bytes).
MAX_FRAME_BYTES = _int_limit("max_frame_bytes", 256 * 1024 * 1024, 1, MAX_PACKET)
#: How many calls execute at once (``--threads``).
THREADS = _int_limit("threads", 1, 1)
#: Refs a session may hold (a session's ``max_refs``, ``--default-max-refs``).
MAX_REFS = _int_limit("max_refs", 10_000, 1)
#: Seconds a ref may stay unused before the sweep drops it (``ttl_seconds``).
TTL_SECONDS = _number_limit("ttl_seconds", 3600)
#: Seconds between two TTL sweeps.
SWEEP_INTERVAL = _number_limit("sweep_interval", 1.0)
#: Released ref ids (and, apart, released session ids) remembered for precise errors: 17
#: bytes per ref and 8 per session (2.5 MB when both tables are full at the default),
#: allocated as they fill (:mod:`snakeport._tombstones`).
MAX_TOMBSTONES = _int_limit("max_tombstones", 100_000, 0)
#: Deepest container nesting decoded, and marshalled back as data; the codec's default.
#: At most 10,000: CPython hashes a nested tuple (a map key) recursively in C without a
#: guard, and deeper keys could overflow a thread's C stack (see ``etf.MAX_DECODE_DEPTH``).
MAX_DEPTH = _int_limit("max_depth", 512, 1, 10_000)
#: Microseconds the reader polls for the next frame before it blocks (0: never; a second
#: at most: longer spins only burn CPU).
SPIN_US = _int_limit("spin_us", 200, 0, 1_000_000)
#: Seconds the VM gives an Elixir tool (``--tool-timeout``, the harness's ``:tool_timeout``);
#: a Python thread waiting for a tool's answer gives up :data:`TOOL_GRACE` seconds later.
TOOL_TIMEOUT = _number_limit("tool_timeout", 30)

#: The overflow policies of a session (``open_session``'s ``overflow``, ``--default-overflow``).
OVERFLOW_POLICIES = ("error", "evict_lru")
#: The overflow policy of sessions that do not state one.
DEFAULT_OVERFLOW = "error"

#: The VM's OS pid (``--vm-pid``, no default): checked at start by the worker's process.
VM_PID = _int_limit("vm_pid", 0, 1, what="a positive integer (an OS pid)")

_POSITIVE_INT = _int_limit("value", 1, 1)


def positive_int(name: str, value: Any) -> int:
    """Check a positive integer option that has no setting of its own (codec, splitter sizes).

    Args:
        name: The option's name, for the message.
        value: The value.

    Returns:
        ``value``.

    Raises:
        ValueError: ``expected <name> to be a positive integer, got: <value!r>``.
    """
    return _POSITIVE_INT.check(value, name)


# ------------------------------------------------------------- timings (not options)

#: How often the watchdog looks at the parent pid (seconds).
WATCHDOG_INTERVAL = 0.2
#: How long ``shutdown`` waits for cancelled calls to end before the process exits (seconds).
SHUTDOWN_GRACE = 2.0
#: How often the stand-by loop thread looks at the reader (seconds): a call running inline
#: for this long has the reading role taken over, so control requests stay answered.
TAKEOVER_POLL = 0.002
#: How often a cancel held back by an import is retried (seconds).
CANCEL_RETRY_INTERVAL = 0.002
#: Seconds a running job may go on after its cancel before the worker logs (WARNING) where
#: its thread is: a call stuck in C code, in a blocking system call or in an import that
#: does not end (the harness marks such a worker stuck after ``:cancel_grace``).
CANCEL_REPORT_AFTER = 1.0
#: Highest recursion limit set for a large ``max_depth`` (results are walked recursively;
#: C code recursing deeper would overflow a thread's stack).
MAX_RECURSION = 20_000
#: Seconds a thread waiting for an Elixir tool's answer waits beyond ``--tool-timeout``
#: (the VM answers within the timeout; this covers the trip).
TOOL_GRACE = 5.0
#: Most threads waiting for Elixir tools at once (each keeps its thread, and a loop thread
#: may be started for each); one more call to a tool fails with ``ToolError`` at once.
MAX_TOOL_WAITS = 64
#: Distinct ``eval`` sources whose compiled code is kept (least recently used dropped).
EVAL_CACHE_SIZE = 256
#: Longer ``eval`` sources (characters) are compiled each time, not kept.
EVAL_CACHE_MAX_SOURCE = 65_536
#: Most bytes of frames waiting behind a blocked write (``FrameWriter``): a thread that would
#: queue more waits until the write is over and writes its frames itself, so while the VM
#: does not read the reader stops reading requests (backpressure) and memory stays bounded.
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: What a queued frame costs beyond its bytes (its header and payload objects, list slots),
#: counted against :data:`MAX_QUEUED_BYTES` so that many tiny replies count too.
QUEUED_FRAME_COST = 128

#: ``--forward-logs`` levels (``logging`` level numbers); ``OFF`` (0): nothing is forwarded.
FORWARD_LEVELS = {"OFF": 0, "DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
#: Lines (or records) of forwarded output per second, all sources together; a line costs one
#: more per KiB. Beyond it lines are dropped and their count reported.
LOG_RATE = 1000
#: Lines of forwarded output allowed at once (the rate limit's bucket).
LOG_BURST = 2000
#: Longest forwarded line or record (bytes of a line, characters of a record); the rest is
#: cut, and the cut counted in the text.
LOG_LINE_BYTES = 16_384


#: A dotted name of Python identifiers (compiled by ``re`` on first use, kept in its cache:
#: only ``--preload`` needs it).
_MODULE_NAME = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\Z"

#: Exit status of a worker whose ``--preload`` import failed (before its ready frame).
PRELOAD_FAILED = 3


def module_name(value: Any, name: str = "preload") -> str:
    """Check a module name (``--preload``): dotted Python identifiers.

    Args:
        value: The value to check.
        name: The option's name, for the message.

    Returns:
        ``value``.

    Raises:
        ValueError: "expected preload to be a module name (dotted identifiers), got: ...".
    """
    if type(value) is not str or not re.match(_MODULE_NAME, value):
        raise ValueError(f"expected {name} to be a module name (dotted identifiers), got: {value!r}")
    return value
