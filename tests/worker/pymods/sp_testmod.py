"""Helpers the worker tests call inside the worker (on PYTHONPATH via tests/worker/pymods)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


class Box:
    """A plain object: travels as a ref."""

    def __init__(self, value=None):
        self.value = value

    def get(self):
        return self.value

    def same(self, other):
        return other is self


def identity(x):
    return x


def size(x):
    return len(x)


def kinds(*args, **kwargs):
    """Python type names of the arguments, as the worker saw them."""
    return [type(a).__name__ for a in args] + sorted(f"{k}={type(v).__name__}" for k, v in kwargs.items())


def stack_kinds(*args):
    """``kinds`` of the arguments, and the stack of the call (which path ran it)."""
    import traceback

    return kinds(*args), "".join(traceback.format_stack())


def boxes(n):
    return [Box(i) for i in range(n)]


def with_boxes(first, n):
    """``first`` (an object the caller holds as a ref, say), then ``n`` new boxes."""
    return [first] + boxes(n)


def mixed():
    box = Box(1)
    return {"n": 1, "box": box, "again": box, "items": [1, "two", Box(3)], "set": {1, 2}}


def fail(message="boom"):
    raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)
    return "slept"


def sleep_bytes(seconds, data):
    """``data`` back after ``seconds`` (a large frame's call that outlasts the reading)."""
    time.sleep(seconds)
    return data


def read_fifo_flagged(flag, fifo):
    """A call ``Cancelled`` cannot interrupt: one C call (``os.system``) runs a shell that
    creates ``flag``, then reads a byte from the named pipe ``fifo``. Once ``flag`` exists
    the thread is inside that C call, until the test writes to ``fifo``."""
    import shlex

    return os.system(f"touch {shlex.quote(flag)} && head -c 1 {shlex.quote(fifo)} >/dev/null")


def spin(seconds=60.0):
    """Busy Python loop (cancellable at any bytecode); swallows Exception on purpose."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        try:
            n += 1
        except Exception:  # noqa: BLE001 - Cancelled is a BaseException and gets through
            pass
    return n


def noisy():
    """Write to stdout three ways; none of it may reach the protocol channel."""
    print("print() from a call", flush=True)
    sys.stdout.write("sys.stdout.write\n")
    os.write(1, b"os.write(1) from a call\n")
    subprocess.run(["echo", "subprocess echo"], check=True)
    subprocess.run([sys.executable, "-c", "import sys; print(sys.stdin.read() == '')"], check=True)
    return "quiet"


def read_stdin():
    return sys.stdin.read()


def spin_flagged(path, seconds=60.0):
    """Create ``path`` (so the test knows the call is running), then spin."""
    with open(path, "w") as f:
        f.write("running")
    return spin(seconds)


def on_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def erl_inner(m, il):
    """Types inside an ErlMap and an ImproperList argument."""
    return [type(m.pairs[0][1]).__name__, type(il.elements[0]).__name__, type(il.tail).__name__]


def box_and_surrogate():
    """A result with a new object and a string the codec cannot encode."""
    return [Box(1), "bad \udc80 string"]


class Name(str):
    """A str subclass: an object, not data."""


def names():
    return [Name("a"), 1]


def cyclic():
    """A list that holds itself."""
    value = [1, "x"]
    value.append(value)
    return value


def nest(n, kind="list", leaf=1):
    """``n`` nested containers (``list`` or ``frozenset``) around ``leaf``."""
    value = leaf
    for _ in range(n):
        value = [value] if kind == "list" else frozenset([value])
    return value


_SHARED_BARRIERS: dict = {}


def shared_after_barrier(key, parties=2):
    """Return one object per ``key``, after ``parties`` calls have all reached this point."""
    import threading

    barrier, obj = _SHARED_BARRIERS.setdefault(key, (threading.Barrier(parties), object()))
    barrier.wait(timeout=10)
    return obj


def tool(name, **kwargs):
    """Call the Elixir tool ``name`` from inside a call, return its value."""
    import snakeport

    return snakeport.context().call_elixir_tool(name, **kwargs)


def tool_error(name, **kwargs):
    """Call a tool; return the ToolError's [type, reason, tool, str] instead of raising it."""
    import snakeport

    try:
        return ["ok", snakeport.context().call_elixir_tool(name, **kwargs)]
    except snakeport.ToolError as exc:
        return [type(exc).__name__, exc.reason, exc.tool, str(exc)]


def slow_bytes(n, seconds):
    """``n`` bytes after ``seconds`` of sleep (long enough for the reading role to move)."""
    time.sleep(seconds)
    return b"x" * n


def imported(name):
    """Whether the module ``name`` has been imported in this worker."""
    return name in sys.modules


def gen():
    """A generator (its public ``gi_frame`` leads to any global)."""
    yield 1


def a_module():
    """A module object (``os``) as a result."""
    return os


def regex_bomb_flagged(path):
    """Create ``path``, then hold the GIL in C for ages (catastrophic backtracking in ``re``:
    no bytecode runs, so no other thread of the worker runs either)."""
    import re

    with open(path, "w") as f:
        f.write("running")
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


# --- streams ---------------------------------------------------------------------------------

STREAM_LOG: list = []


def counting(n, tag="g"):
    """A generator of ``range(n)`` that records its start, its end and its ``finally``."""
    STREAM_LOG.append((tag, "start"))
    try:
        for i in range(n):
            yield i
        STREAM_LOG.append((tag, "exhausted"))
    finally:
        STREAM_LOG.append((tag, "finally"))


def failing_after(n):
    """Yields ``0 .. n-1``, then raises."""
    yield from range(n)
    raise ValueError(f"failed after {n}")


def big_strings(n, size):
    for _ in range(n):
        yield "x" * size


def stream_log():
    return list(STREAM_LOG)


def clear_stream_log():
    STREAM_LOG.clear()


class Counter:
    """An object whose method returns a generator."""

    def __init__(self, n):
        self.n = n

    def items(self):
        yield from (Box(i) for i in range(self.n))


# --- async -----------------------------------------------------------------------------------

ASYNC_LOG: list = []


async def async_add(a, b, delay=0.0):
    import asyncio

    await asyncio.sleep(delay)
    return a + b


async def async_fail(message):
    raise ValueError(message)


async def async_box(value):
    return Box(value)


async def async_guarded(tag, seconds):
    """Sleeps; records its cancellation and its ``finally``."""
    import asyncio

    ASYNC_LOG.append((tag, "start"))
    try:
        await asyncio.sleep(seconds)
        return "slept"
    except asyncio.CancelledError:
        ASYNC_LOG.append((tag, "cancelled"))
        raise
    finally:
        ASYNC_LOG.append((tag, "finally"))


async def async_block(seconds):
    """Blocks the event loop (time.sleep inside a coroutine)."""
    time.sleep(seconds)
    return "blocked"


async def async_context():
    import snakeport

    ctx = snakeport.context()
    return [ctx.session_id, ctx.request_id]


async def async_tool(name):
    import snakeport

    return await snakeport.context().acall_elixir_tool(name, x=1)


async def async_sync_tool(name):
    import snakeport

    return snakeport.context().call_elixir_tool(name, x=1)


def async_log():
    return list(ASYNC_LOG)


def asyncio_imported():
    return "asyncio" in sys.modules


# --- output ----------------------------------------------------------------------------------


def log_record(level, message, logger="sp.test"):
    import logging

    logging.getLogger(logger).log(level, message)
    return "logged"


def warn(message):
    import warnings

    warnings.warn(message, UserWarning, stacklevel=1)
    return "warned"


def print_lines(n, text="line"):
    for i in range(n):
        print(f"{text} {i}")
    sys.stdout.flush()
    return n


def write_fd(fd, data):
    os.write(fd, data.encode() if isinstance(data, str) else data)
    return len(data)


def flood_fd(fd, megabytes, line=100):
    """Write ``megabytes`` MiB of ``line``-byte lines to ``fd`` (from C: os.write)."""
    chunk = ((b"x" * (line - 1)) + b"\n") * ((1 << 20) // line)
    for _ in range(megabytes):
        os.write(fd, chunk)
    return megabytes


def slow_gen(seconds):
    """Yields one item, then spins for ``seconds`` before the next."""
    yield 0
    spin(seconds)
    yield 1


async def async_exit():
    """Raises SystemExit in a coroutine (asyncio lets it out of the loop's run)."""
    raise SystemExit(3)


HELD: list = []


def held_counting(n, tag):
    """A :func:`counting` generator that this module holds too (so that only an explicit
    close, not its last reference going, runs its ``finally``)."""
    gen = counting(n, tag)
    HELD.append(gen)
    return gen


def _pending_future():
    import asyncio

    return asyncio.Future(loop=asyncio.new_event_loop())


def __getattr__(name):
    if name == "PENDING_FUTURE":  # a future nobody completes (made on first access)
        future = _pending_future()
        globals()[name] = future
        return future
    raise AttributeError(name)
