"""Bounded-time fuzzing of both codec paths: ``make fuzz`` (60 s); the test suite runs 2 s.

Usage: ``python tests/codec/fuzz_etf.py [--seconds S] [--seed N]`` (exit status 1 on a
finding; the offending inputs are written to ``fuzz-findings/`` under the current
directory).

Each round takes one input from a seeded generator: a random term (hostile shapes included:
runs of ``[]``, distinct atoms, unhashable or colliding map keys, wide text, tagged tuples),
its encoding (sometimes compressed), or a mutation of one (bytes flipped, lengths forged,
bytes inserted, deleted, truncated, spliced from another input). Then:

- decoding (with the default limits or random small ones: ``max_memory``, ``max_depth``,
  ``max_expansion``; with and without a ``tagged`` hook) raises only ``DecodeError``, and the
  C accelerator and the pure-Python codec give the same outcome: the same value (types
  included) or the same message and offset;
- ``decode_head`` raises only ``DecodeError`` and agrees on both paths;
- every 16th decode with a ``max_memory`` is traced: it allocates at most its budget (plus
  a few KiB of transient objects and the copy of the input that an error may carry);
- encoding the random term gives the same bytes or the same error on both paths, and what
  it gives decodes back to a term that encodes to the same bytes.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

from snakeport import etf
from snakeport.errors import DecodeError, EncodeError
from snakeport.types import Atom, BitBinary, ErlMap, Export, ImproperList, Pid

__all__ = ["Finding", "fuzz", "main"]


class Finding(AssertionError):
    """A difference between the paths, an unexpected exception, or memory over budget."""


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

_TEXTS = ["", "ok", "héllo", "\u0101\u0102", "\U0001f600x", "a" * 40, "\xff\xfe", "$snakeport_x"]
_ATOMS = [Atom(t) for t in ("ok", "true", "false", "nil", "$snakeport_set", "$snakeport_x", "é", "a" * 255)]


def random_leaf(rng: random.Random) -> Any:
    kind = rng.randrange(14)
    if kind == 0:
        return rng.randint(-300, 300)
    if kind == 1:
        return rng.randint(-(2**31) - 5, 2**31 + 5)
    if kind == 2:
        return rng.choice([2**63, -(2**64) - 1, 2**100, -(2**2100)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e300, -2.5e-300, float(rng.randint(-9, 9))])
    if kind == 4:
        return rng.choice(_ATOMS)
    if kind == 5:
        return Atom("".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 4))))
    if kind == 6:
        return rng.choice(_TEXTS) * rng.randint(0, 3)
    if kind == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
    if kind == 8:
        return rng.choice([True, False, None])
    if kind == 9:
        return rng.choice([BitBinary(b"\xe0", 3), Export("m", "f", 1), Pid(Atom("n@h"), 1, 2, 3)])
    if kind == 10:
        return []
    if kind == 11:
        return {}
    if kind == 12:
        return ()
    return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(1, 6)))


def random_key(rng: random.Random) -> Any:
    """A hashable random leaf (a dict key)."""
    while True:
        key = random_leaf(rng)
        if not isinstance(key, (list, dict)):
            return key


def random_term(rng: random.Random, depth: int = 0, room: list[int] | None = None) -> Any:
    """A random term of at most about 200 leaves, containers down to depth 5, some hostile runs."""
    if room is None:
        room = [200]
    if depth >= 5 or room[0] <= 0 or rng.random() < 0.35:
        room[0] -= 1
        return random_leaf(rng)
    kind = rng.randrange(9)
    n = min(rng.choice([0, 1, 2, 3, 5, 8, 30]), max(room[0], 0))
    children = [random_term(rng, depth + 1, room) for _ in range(n)]
    if kind == 0:
        return children
    if kind == 1:
        return tuple(children)
    if kind == 2:
        return (rng.choice(_ATOMS), *children[:3])  # tagged tuples too
    if kind == 3:
        return {random_key(rng): c for c in children}
    if kind == 4:
        return ErlMap([(random_term(rng, depth + 1, room), c) for c in children])
    if kind == 5 and children:
        tail = random_leaf(rng)
        return ImproperList(children, tail if not isinstance(tail, list) else 7)
    if kind == 6:
        return [[]] * rng.choice([10, 500, 3000])  # hostile: 1 byte per 64-byte list
    if kind == 7:
        return [Atom(f"z{rng.randrange(10**6)}") for _ in range(rng.choice([10, 300]))]
    return [ErlMap([([], i)]) for i in range(rng.choice([2, 50]))]


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(out) < 2:
            break
        op = rng.random()
        i = rng.randrange(1, len(out))
        if op < 0.35:
            out[i] = rng.randrange(256)
        elif op < 0.5:
            out[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00"])
        elif op < 0.65:
            del out[i]
        elif op < 0.75:
            out.insert(i, rng.choice([106, 104, 108, 116, 119, 109, 80, rng.randrange(256)]))
        elif op < 0.85:
            del out[i:]
        else:
            out[i:] = other[rng.randrange(1, max(2, len(other))) :]
    return bytes(out)


def compressed(data: bytes, rng: random.Random) -> bytes:
    body = data[1:]
    declared = len(body) if rng.random() < 0.8 else rng.choice([0, len(body) + 1, 2**31, len(body) // 2])
    return b"\x83P" + struct.pack(">I", declared) + zlib.compress(body, rng.choice([1, 9]))


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


#: Allocations a decode may make beyond its budget: small transient objects (the (value,
#: end) tuples of the leaf decoders, struct results, an exception and its message).
_SLACK = 8192


def tagged_hook(term: tuple) -> Any:
    if term[0] == "$snakeport_set":
        return set(map(repr, term[1:]))
    return ("seen", len(term))


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except (DecodeError, EncodeError) as exc:
        extra = (exc.offset, exc.data) if isinstance(exc, DecodeError) else ()
        return ("error", type(exc).__name__, str(exc), *extra)


def same(a: Any, b: Any) -> bool:
    """Identical values: same types all the way down (``-0.0`` is not ``0.0``)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if isinstance(a, ErlMap):
        return same(list(a.pairs), list(b.pairs))
    if isinstance(a, ImproperList):
        return same(a.elements, b.elements) and same(a.tail, b.tail)
    return bool(a == b)


def on_both(fn: Callable[[], Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    if etf._cetf is None:
        py = outcome(fn)
        return py, py
    previous = etf._set_accelerated(True)
    try:
        c = outcome(fn)
        etf._set_accelerated(False)
        py = outcome(fn)
    finally:
        etf._set_accelerated(previous)
    return c, py


def check_alike(what: str, c: tuple[Any, ...], py: tuple[Any, ...]) -> None:
    if c[0] != py[0] or (c[0] == "ok" and not same(c[1], py[1])) or (c[0] == "error" and c[1:4] != py[1:4]):
        raise Finding(f"{what}: the paths differ:\n  C:      {c!r:.500}\n  Python: {py!r:.500}")


def check_decode(data: bytes, rng: random.Random, traced: bool) -> None:
    roll = rng.random()
    if roll < 0.4:
        options: dict[str, Any] = {}
    elif roll < 0.8:
        options = {"max_memory": rng.randint(1, 40_000)}
    elif roll < 0.9:
        options = {"max_depth": rng.randint(1, 6)}
    else:
        options = {"max_expansion": rng.randint(1, 3), "max_memory": rng.randint(1000, 10**6)}
    if rng.random() < 0.5:
        options["tagged"] = tagged_hook
    buffer: Any = data if rng.random() < 0.7 else bytearray(data)
    check_alike(f"decode({data!r:.300}, {options})", *on_both(lambda: etf.decode(buffer, **options)))
    check_alike(f"decode_head({data!r:.300})", *on_both(lambda: etf.decode_head(data, 2)))
    if traced and "max_memory" in options:
        budget = min(options["max_memory"], options.get("max_expansion", 32) * len(data) + etf._BUDGET_FLOOR)
        tracemalloc.start()
        try:
            outcome(lambda: etf.decode(data, **options))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # (Plus constant transients, and the copy of the input an error may carry.)
        if peak > budget + len(data) + _SLACK:
            raise Finding(f"decode({data!r:.300}, {options}) allocated {peak} bytes, budget {budget}")


def check_encode(term: Any) -> bytes | None:
    c, py = on_both(lambda: etf.encode(term))
    check_alike(f"encode({term!r:.300})", c, py)
    if c[0] != "ok":
        return None
    data = c[1]
    again = outcome(lambda: etf.encode(etf.decode(data, max_expansion=2**20, max_memory=2**40)))
    if again != ("ok", data):
        raise Finding(f"encode(decode(encode({term!r:.300}))) is not the same bytes: {again!r:.300}")
    return data


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def fuzz(seconds: float, seed: int, findings_dir: str | None = None) -> int:
    """Fuzz for ``seconds``; return the number of inputs checked.

    Raises:
        Finding: The first finding (its input saved under ``findings_dir`` when given).
    """
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    pool: list[bytes] = [etf.encode(random_term(rng)) for _ in range(20)]
    count = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        data = b""
        try:
            if roll < 0.3:
                encoded = check_encode(random_term(rng))
                if encoded is None:
                    continue
                data = encoded
                pool[rng.randrange(len(pool))] = data
            elif roll < 0.4:
                data = compressed(rng.choice(pool), rng)
            else:
                data = mutate(rng, rng.choice(pool), rng.choice(pool))
            check_decode(data, rng, traced=count % 16 == 0)
        except Finding:
            if findings_dir is not None:
                os.makedirs(findings_dir, exist_ok=True)
                path = os.path.join(findings_dir, f"finding-{seed}-{count}.etf")
                with open(path, "wb") as f:
                    f.write(data)
                print(f"input saved to {path}", file=sys.stderr)
            raise
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    paths = "C accelerator and pure Python" if etf._cetf is not None else "pure Python only (no C accelerator)"
    print(f"fuzzing the codec ({paths}) for {args.seconds:g} s, seed {seed}", flush=True)
    try:
        count = fuzz(args.seconds, seed, findings_dir="fuzz-findings")
    except Finding as finding:
        print(f"FINDING (seed {seed}): {finding}", file=sys.stderr)
        return 1
    print(f"ok: {count} inputs, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
