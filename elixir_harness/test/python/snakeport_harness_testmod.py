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
