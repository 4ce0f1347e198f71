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
