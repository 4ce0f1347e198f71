"""Benchmark of the snakeport ETF codec against in-run baselines.

Run from the repository root:

    .venv/bin/python bench/bench_codec.py            # full run (about a minute)
    .venv/bin/python bench/bench_codec.py --quick    # fewer repeats

Baselines, measured in the same process on the same bytes when installed (they are bench-only
and not dependencies of the project: ``.venv/bin/pip install erlpack erlang-py``):

- ``erlpack`` (Discord's Cython/C++ ETF codec): ``erlpack.unpack`` / ``erlpack.pack``;
- ``erlang_py`` (pure-Python ETF codec, module ``erlang``): ``binary_to_term`` /
  ``term_to_binary``;
- ``pickle`` and ``marshal`` of the equivalent Python value (C, not ETF): a speed-of-light
  reference for what the interpreter can do.

Each figure is the best (minimum) mean time per call over several repeats, which is the most
stable statistic on a shared machine; the median is printed too.

The snakeport rows are timed twice: ``[C]`` with the C accelerator ``snakeport._cetf`` (when it
is built) and ``[Python]`` with the pure-Python codec, switched in-process with
``etf._set_accelerated``.
"""

from __future__ import annotations

import argparse
import marshal
import pickle
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

from snakeport import etf
from snakeport.etf import decode, encode
from snakeport.types import Atom

try:
    import erlpack
except ImportError:  # bench-only baseline
    erlpack = None
try:
    import erlang as erlang_py
except ImportError:  # bench-only baseline
    erlang_py = None


def map100() -> dict[str, list[Any]]:
    """A map of 100 binary keys -> lists of ints, floats, tuples and atoms (~1,500 values)."""
    term: dict[str, list[Any]] = {}
    for i in range(100):
        term[f"key_{i}"] = [
            i,
            i * 1000,
            1e6 + i,
            -i * 100_000,
            3.25 * i,
            (Atom("ok"), i),
            Atom("error"),
            True,
            (i, 2.5, Atom("x")),
            12_345_678_901_234,
            [i, i + 1, i + 2],
            (Atom("point"), float(i), float(-i)),
        ]
    return term


def request() -> tuple[Any, ...]:
    """A ``call`` request as the harness sends it."""
    return (
        Atom("call"),
        12345,
        "session-1",
        "math",
        "sqrt",
        [2.0],
        {},
        {Atom("result"): Atom("auto")},
    )


def reply() -> tuple[Any, ...]:
    """A small ``reply`` frame as the worker sends it."""
    return (Atom("reply"), 12345, Atom("ok"), 1.4142135623730951)


def plain(value: Any) -> Any:
    """The value with atoms as plain ``str`` (marshal handles only built-in types)."""
    if isinstance(value, Atom):
        return str(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


class Bench:
    """Candidates timed round-robin, so that a slow spell of a shared machine hits all alike."""

    def __init__(self, repeat: int, target_seconds: float) -> None:
        self.repeat = repeat
        self.target = target_seconds
        self.rows: list[tuple[str, str, timeit.Timer, int, bool | None]] = []

    def add(self, group: str, name: str, fn: Callable[[], Any], accelerated: bool | None = None) -> None:
        """Add a candidate; ``accelerated`` selects the snakeport codec path it runs with."""
        if accelerated is not None:
            etf._set_accelerated(accelerated)
        timer = timeit.Timer(fn)
        number, elapsed = timer.autorange()
        number = max(1, int(number * self.target / max(elapsed, 1e-9)))
        self.rows.append((group, name, timer, number, accelerated))

    def add_snakeport(self, group: str, name: str, fn: Callable[[], Any]) -> None:
        """Add a snakeport candidate once per available codec path: ``[C]`` and ``[Python]``."""
        for accelerated, label in PATHS:
            self.add(group, f"{name} [{label}]", fn, accelerated)

    def run(self) -> dict[str, tuple[float, float]]:
        """Return name -> (best, median) seconds per call."""
        samples: dict[str, list[float]] = {name: [] for _, name, _, _, _ in self.rows}
        for _ in range(self.repeat):
            for _, name, timer, number, accelerated in self.rows:
                if accelerated is not None:
                    etf._set_accelerated(accelerated)
                samples[name].append(timer.timeit(number) / number)
        return {name: (min(times), statistics.median(times)) for name, times in samples.items()}


#: The snakeport codec paths to time: the C accelerator when built, and pure Python.
PATHS = ([(True, "C")] if etf._cetf is not None else []) + [(False, "Python")]


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.3f} ms"
    return f"{seconds * 1e6:8.3f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    args = parser.parse_args()
    repeat, target = (5, 0.05) if args.quick else (15, 0.2)

    print(f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}")
    print(f"erlpack: {'yes' if erlpack else 'not installed'}, erlang_py: {'yes' if erlang_py else 'not installed'}")
    print(f"snakeport._cetf: {'built' if etf._cetf is not None else 'not available (pure Python only)'}")
    bench = Bench(repeat, target)

    big = map100()
    big_bytes = encode(big)
    big_value = decode(big_bytes)
    group = f"map100: {len(big_bytes)} bytes of ETF"
    bench.add_snakeport(group, "snakeport decode", lambda: decode(big_bytes))
    if erlpack:
        bench.add(group, "erlpack unpack", lambda: erlpack.unpack(big_bytes))
    if erlang_py:
        bench.add(group, "erlang_py binary_to_term", lambda: erlang_py.binary_to_term(big_bytes))
    big_pickle = pickle.dumps(big_value, protocol=pickle.HIGHEST_PROTOCOL)
    bench.add(group, "pickle loads", lambda: pickle.loads(big_pickle))
    big_marshal = marshal.dumps(plain(big_value))
    bench.add(group, "marshal loads", lambda: marshal.loads(big_marshal))
    bench.add_snakeport(group, "snakeport encode", lambda: encode(big_value))
    if erlpack:
        erlpack_value = erlpack.unpack(big_bytes)
        bench.add(group, "erlpack pack", lambda: erlpack.pack(erlpack_value))
    if erlang_py:
        erlang_value = erlang_py.binary_to_term(big_bytes)
        bench.add(group, "erlang_py term_to_binary", lambda: erlang_py.term_to_binary(erlang_value))
    bench.add(group, "pickle dumps", lambda: pickle.dumps(big_value, protocol=pickle.HIGHEST_PROTOCOL))

    req_bytes = encode(request())
    rep = reply()
    group = f"request/reply: {len(req_bytes)}-byte call request, {len(encode(rep))}-byte reply"
    bench.add_snakeport(group, "snakeport decode request", lambda: decode(req_bytes))
    bench.add_snakeport(group, "snakeport encode reply", lambda: encode(rep))

    def round_trip() -> bytes:
        decode(req_bytes)
        return encode(rep)

    bench.add_snakeport(group, "snakeport decode request + encode reply", round_trip)
    if erlpack:
        bench.add(group, "erlpack unpack request", lambda: erlpack.unpack(req_bytes))
    if erlang_py:
        bench.add(group, "erlang_py binary_to_term request", lambda: erlang_py.binary_to_term(req_bytes))

    results = bench.run()
    etf._set_accelerated(PATHS[0][0])
    current = None
    for group, name, _, _, _ in bench.rows:
        if group != current:
            print(f"\n{group}")
            current = group
        best, median = results[name]
        print(f"  {name:51s} {fmt(best)}   (median {fmt(median)})")

    def ratio(label: str, theirs: str, ours: str) -> None:
        if theirs in results and ours in results:
            print(f"  {label:58s} {results[theirs][0] / results[ours][0]:7.2f}x")

    for _, label in PATHS:
        print(f"\nratios of best times, snakeport [{label}] (> 1: snakeport is faster)")
        ratio("map100 decode vs erlpack unpack (C)", "erlpack unpack", f"snakeport decode [{label}]")
        ratio("map100 decode vs erlang_py (pure Python)", "erlang_py binary_to_term", f"snakeport decode [{label}]")
        ratio("map100 decode vs pickle loads (C, not ETF)", "pickle loads", f"snakeport decode [{label}]")
        ratio("map100 encode vs erlpack pack (C)", "erlpack pack", f"snakeport encode [{label}]")
        ratio("map100 encode vs erlang_py (pure Python)", "erlang_py term_to_binary", f"snakeport encode [{label}]")
        ratio("map100 encode vs pickle dumps (C, not ETF)", "pickle dumps", f"snakeport encode [{label}]")
        ratio("request decode vs erlpack unpack (C)", "erlpack unpack request", f"snakeport decode request [{label}]")
        ratio(
            "request decode vs erlang_py (pure Python)",
            "erlang_py binary_to_term request",
            f"snakeport decode request [{label}]",
        )
    if len(PATHS) == 2:
        print("\nC accelerator vs pure Python (ratios of best times)")
        for name in (
            "snakeport decode",
            "snakeport encode",
            "snakeport decode request",
            "snakeport encode reply",
            "snakeport decode request + encode reply",
        ):
            ratio(name, f"{name} [Python]", f"{name} [C]")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
