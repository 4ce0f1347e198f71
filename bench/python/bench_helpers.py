"""Python side of the Snakeport benchmarks (put on the worker's PYTHONPATH)."""


def identity(value):
    """Return the argument unchanged (binary echo)."""
    return value


class Box:
    """A tiny object: not data, so it comes back to Elixir as a ref."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def make_objects(n):
    """A list of ``n`` fresh objects: ``n`` refs in the caller's session."""
    return [Box(i) for i in range(n)]


def numbers(n):
    """``list(range(n))``: the same items as a stream of ``range(n)``, as one list result."""
    return list(range(n))
