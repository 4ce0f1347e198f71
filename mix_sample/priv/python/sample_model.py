"""A tiny pure-Python model for the Snakeport mix sample.

``load()`` plays the part of an expensive model load (think: reading weights from disk).
The expensive part -- generating the training data and fitting -- runs once per worker and
is cached at module level, so it lives as long as the worker process. Every ``load()``
still returns a *new* ``TinyModel`` object, which the worker keeps as a ref in the caller's
session until that session releases it.
"""

from __future__ import annotations

import weakref

__all__ = ["TinyModel", "load", "load_count", "live_models"]

#: How many times the expensive fit actually ran in this worker.
_LOAD_COUNT = 0
#: Module-level cache: name -> (slope, intercept, n). Lives for the worker's lifetime.
_CACHE: dict[str, tuple[float, float, int]] = {}
#: Every TinyModel alive in this worker (weak: does not keep them alive).
_LIVE: "weakref.WeakSet[TinyModel]" = weakref.WeakSet()


class TinyModel:
    """One-feature linear regression, ``y = slope * x + intercept``, fit with plain lists."""

    def __init__(self, name: str = "tiny") -> None:
        self.name = name
        self.slope = 0.0
        self.intercept = 0.0
        self.n = 0
        _LIVE.add(self)

    def fit(self, xs: list[float], ys: list[float]) -> "TinyModel":
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError("fit needs two equally long lists of at least 2 points")
        n = len(xs)
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            raise ValueError("all x values are equal")
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        self.slope = sxy / sxx
        self.intercept = my - self.slope * mx
        self.n = n
        return self

    def predict(self, xs: list[float]) -> list[float]:
        return [round(self.slope * x + self.intercept, 6) for x in xs]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "slope": round(self.slope, 6),
            "intercept": round(self.intercept, 6),
            "n": self.n,
        }

    def __repr__(self) -> str:
        return f"TinyModel({self.name!r}, slope={self.slope:.3f}, intercept={self.intercept:.3f})"


def _expensive_fit(name: str) -> tuple[float, float, int]:
    # Stand-in for loading weights: fit y = 2x + 1 on a deterministic training set.
    xs = [i / 10 for i in range(1000)]
    ys = [2.0 * x + 1.0 for x in xs]
    m = TinyModel(name).fit(xs, ys)
    return (m.slope, m.intercept, m.n)


def load(name: str = "tiny") -> TinyModel:
    """Return a fitted TinyModel; the fit runs only on the first load of ``name``."""
    global _LOAD_COUNT
    if name not in _CACHE:
        _LOAD_COUNT += 1
        _CACHE[name] = _expensive_fit(name)
    slope, intercept, n = _CACHE[name]
    model = TinyModel(name)
    model.slope, model.intercept, model.n = slope, intercept, n
    return model


def load_count() -> int:
    """How many times the expensive fit ran in this worker (module-level cache misses)."""
    return _LOAD_COUNT


def live_models() -> int:
    """How many TinyModel objects are alive in this worker right now."""
    return len(_LIVE)
