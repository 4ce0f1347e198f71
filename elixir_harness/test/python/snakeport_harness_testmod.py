"""Helpers for the Elixir harness tests (imported by the real worker via :python_path)."""

from __future__ import annotations

import os
import sys
import time
import types

from snakeport.types import Atom


def make_atom(name: str) -> Atom:
    """Return an atom: unknown to the VM unless it already exists there."""
    return Atom(name)


def noisy(text: str) -> str:
    """Write to sys.stdout, to file descriptor 1 and from a child process, then return."""
    print("print() from a Python call:", text)
    sys.stdout.flush()
    os.write(1, b"raw bytes written straight to fd 1\n")
    os.system("echo a child process writing to its stdout")
    return text


def spin(seconds: float) -> float:
    """Busy-loop in Python bytecode (cancellable at any bytecode)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return seconds


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def echo(value):
    return value


def fail(message: str):
    raise ValueError(message)


def nested_fail(depth: int):
    if depth <= 0:
        raise KeyError("deep")
    return nested_fail(depth - 1)


def namespace(**kwargs) -> types.SimpleNamespace:
    return types.SimpleNamespace(**kwargs)


class Box:
    """An object that is not plain data."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value

    def add(self, other):
        return Box(self.value + (other.value if isinstance(other, Box) else other))


# --- Python calling Elixir tools (snakeport.context()) --------------------------------------


def tool(name, **kwargs):
    """Call the Elixir tool ``name`` from inside a call and return its value."""
    import snakeport

    return snakeport.context().call_elixir_tool(name, **kwargs)


def tool_error(name, **kwargs):
    """Call a tool; return ``[type, reason, message]`` of its ToolError instead of raising."""
    import snakeport

    try:
        return ["ok", snakeport.context().call_elixir_tool(name, **kwargs)]
    except snakeport.ToolError as exc:
        return [type(exc).__name__, exc.reason, exc.message]


def tool_then(name, seconds, **kwargs):
    """Call a tool, then sleep (the call stays in flight after the tool answered)."""
    value = tool(name, **kwargs)
    time.sleep(seconds)
    return value


def nested(depth):
    """Recurse through Elixir: ``depth`` levels of Python -> tool -> Python."""
    if depth <= 0:
        return [threading_ident()]
    import snakeport

    return snakeport.context().call_elixir_tool("descend", depth=depth - 1) + [threading_ident()]


def threading_ident():
    import threading

    return threading.get_ident()


def context_session():
    import snakeport

    return snakeport.context().session_id


def counter(by):
    """Session state reached from Python (the seed's get/set_session_state)."""
    import snakeport

    ctx = snakeport.context()
    count = ctx.call_elixir_tool("get_session_state", key="count", default=0)
    ctx.call_elixir_tool("set_session_state", key="count", value=count + by)
    return count + by


class SlowModel:
    """A real scikit-learn model whose ``fit`` takes ``seconds`` longer."""

    def __init__(self):
        from sklearn.linear_model import LinearRegression

        self.model = LinearRegression()

    def fit(self, X, y, seconds=0):
        time.sleep(seconds)
        self.model.fit(X, y)
        return self

    def predict(self, X):
        return self.model.predict(X)


def imported(name):
    """Whether the module ``name`` has been imported in this worker."""
    import sys

    return name in sys.modules


def regex_bomb(flag: str = "") -> bool:
    """Hold the GIL in C for ages: catastrophic backtracking in ``re`` (no bytecode runs, so
    no other thread of the worker runs either, its reader included). Creates ``flag`` first,
    when given, so that a test knows it started."""
    import re

    if flag:
        with open(flag, "w") as f:
            f.write("running")
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


# --- streams (Snakeport.stream/4) ------------------------------------------------------------

EVENTS: list = []


def record(*what):
    EVENTS.append(list(what))


def events():
    return list(EVENTS)


def counting(n, tag="g"):
    """``range(n)`` as a generator that records its start, its end and its ``finally``."""
    record(tag, "start")
    try:
        for i in range(n):
            record(tag, "yield", i)
            yield i
        record(tag, "exhausted")
    finally:
        record(tag, "finally")


def failing_after(n):
    yield from range(n)
    raise ValueError(f"failed after {n}")


def boxes_of(n):
    for i in range(n):
        yield Box(i)


class Rows:
    """An object whose method returns a generator, and that is iterable itself."""

    def __init__(self, n):
        self.n = n

    def rows(self, prefix="row"):
        for i in range(self.n):
            yield {"name": f"{prefix}-{i}", "i": i}

    def __iter__(self):
        return iter(range(self.n))


# --- async def (awaitable results) -----------------------------------------------------------

_ACTIVE = {"now": 0, "peak": 0}


async def nap(seconds, value=None):
    """Sleeps on the event loop; counts how many naps are asleep at once."""
    import asyncio

    _ACTIVE["now"] += 1
    _ACTIVE["peak"] = max(_ACTIVE["peak"], _ACTIVE["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        _ACTIVE["now"] -= 1
    return value


def nap_peak():
    peak = _ACTIVE["peak"]
    _ACTIVE["peak"] = 0
    return peak


async def guarded(tag, seconds):
    """Sleeps; records its cancellation and its ``finally``."""
    import asyncio

    record(tag, "start")
    try:
        await asyncio.sleep(seconds)
        return "slept"
    except asyncio.CancelledError:
        record(tag, "cancelled")
        raise
    finally:
        record(tag, "finally")


async def async_fail(message):
    raise ValueError(message)


async def async_block(seconds):
    """Blocks the event loop (time.sleep in a coroutine)."""
    time.sleep(seconds)
    return "blocked"


async def async_tool(name, **kwargs):
    """An Elixir tool called from a coroutine, without blocking the loop."""
    import snakeport

    return await snakeport.context().acall_elixir_tool(name, **kwargs)


def asyncio_imported():
    return "asyncio" in sys.modules


class Client:
    """An object whose method returns a coroutine."""

    async def fetch(self, key):
        import asyncio

        await asyncio.sleep(0.01)
        return {"key": key}


# --- Python's output (Logger) ----------------------------------------------------------------


def log(level, message, logger="myapp.model"):
    import logging

    logging.getLogger(logger).log(level, message)
    return "logged"


def log_exception(message):
    import logging

    try:
        raise KeyError("inner")
    except KeyError:
        logging.getLogger("myapp.model").exception(message)
    return "logged"


def warn(message):
    import warnings

    warnings.warn(message, UserWarning, stacklevel=1)
    return "warned"


def say(text):
    print(text)
    return text


def c_write(fd, text):
    """Write with libc's write(2), as C code does (no Python file object involved)."""
    import ctypes

    data = text.encode()
    return ctypes.CDLL(None).write(fd, data, len(data))


def child(text):
    """A child process writing to its stdout and its stderr."""
    import subprocess

    subprocess.run(["sh", "-c", f"echo '{text} out'; echo '{text} err' >&2"], check=True)
    return text


def print_many(n, text="spam"):
    for i in range(n):
        print(text, i)
    sys.stdout.flush()
    return n


_BARRIERS: dict = {}


async def barrier(key, parties, timeout=30.0):
    """Returns once ``parties`` coroutines wait here at the same time (or fails after
    ``timeout``): proof that they were all suspended at once."""
    import asyncio

    state = _BARRIERS.setdefault(key, {"n": 0, "event": asyncio.Event()})
    state["n"] += 1
    if state["n"] >= parties:
        state["event"].set()
    await asyncio.wait_for(state["event"].wait(), timeout)
    return state["n"]
