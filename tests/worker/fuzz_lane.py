"""Differential fuzzing of the C lane: ``make fuzz`` runs it after the codec's fuzzer.

Usage: ``python tests/worker/fuzz_lane.py [--seconds S] [--seed N] [--allow ENTRIES]`` (exit
status 1 on a finding; the offending batch is written to ``fuzz-findings/`` under the current
directory). With ``--allow``, both workers run with that allow-list (``--allow`` of the
worker), so that some calls are refused by name and the others run under its checks.

Two real workers, one with the lane and one without (``SNAKEPORT_NO_LANE=1``), get the same
batches of frames in the same writes: call requests shaped like the lane's own (plain
arguments of random types, ``$snakeport_bytes`` and other tagged tuples, large binaries
sometimes, sessions open or not, kwargs (binary, atom or other keys) and options
sometimes), and
mutations of them (bytes flipped, lengths forged, bytes inserted, deleted, truncated; the
``{packet, 4}`` length always matches the payload). A mutated frame that still decodes to a
call is sent only if it names one of a few harmless functions (a flipped byte must not
call ``os.system``). Each batch ends with a call, and a second one written after its reply
(see ``Worker.exchange``); then the two workers must have written the same frames, byte
for byte (in any order: a reply the general path holds until its batch is read may precede
one the lane wrote at once; the harness routes replies by id), and both must be alive.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from snakeport import etf  # noqa: E402
from snakeport.types import Atom  # noqa: E402
from sp_client import A, worker_env  # noqa: E402

__all__ = ["fuzz", "main"]

#: What a fuzzed call may run (module, function): cheap and without side effects.
SAFE = {
    ("operator", "add"),
    ("operator", "mul"),
    ("operator", "truediv"),
    ("operator", "getitem"),
    ("builtins", "len"),
    ("builtins", "str"),
    ("builtins", "repr"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bytes"),
    ("builtins", "sorted"),
    ("builtins", "dict"),
    ("builtins", "abs"),
    ("builtins", "divmod"),
}
SYNC = 4_000_000_000  # ids of the batch-ending calls (above any fuzzed id)


class Worker:
    """A real worker whose output frames are kept in order, as bytes."""

    def __init__(self, lane: bool, *flags: str) -> None:
        env = worker_env()
        env["PYTHONHASHSEED"] = "0"  # the same order of sets in both (repr, str, sorted)
        if lane:
            env.pop("SNAKEPORT_NO_LANE", None)
        else:
            env["SNAKEPORT_NO_LANE"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakeport", *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0
        )
        self.frame()  # ready

    def frame(self) -> bytes:
        head = self._read(4)
        return self._read(struct.unpack(">I", head)[0])

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.proc.stdout.read(n - len(out))  # type: ignore[union-attr]
            if not chunk:
                raise EOFError(f"the worker exited ({self.proc.poll()})")
            out += chunk
        return out

    def exchange(self, payloads: list[bytes], sync: int) -> list[bytes]:
        """Write the frames (and a sync call) at once; return every frame until a second sync.

        Replies may come in any order (PROTOCOL.md): a reply the general path holds until
        the end of the read turn (an error, a job's) may follow the sync call's when the
        sync was read in the same turn and ran inline. So a second sync call, written after
        the first one's reply, is read in a later turn: every reply held in earlier turns is
        out before its reply.
        """
        out = []
        for frames, sid in ((payloads, sync), ([], sync + 10**9)):
            sync_frame = etf.encode((A("call"), sid, "s1", "operator", "add", [1, 2], {}, {}))
            self.proc.stdin.write(b"".join(struct.pack(">I", len(p)) + p for p in [*frames, sync_frame]))  # type: ignore[union-attr]
            while True:
                frame = self.frame()
                term, _ = etf.decode_prefix(frame)
                if term[0] == "reply" and term[1] == sid:
                    break
                out.append(frame)
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 7)
    if kind == 0:
        return rng.randrange(-(2**70), 2**70) if rng.random() < 0.2 else rng.randrange(-300, 300)
    if kind == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e308, float("inf"), float("nan"), rng.random()])
    if kind == 2:
        return "".join(rng.choice("ab✓\x00é") for _ in range(rng.randrange(6)))
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return A(rng.choice(["ok", "x", "$snakeport_ref", "nil"]))
    if kind == 6:
        return rng.randrange(256)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    if kind == 9:
        return {rng.choice(["k", "l", 1]): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if kind == 10:
        tag = rng.choice(["$snakeport_bytes", "$snakeport_set", "$snakeport_tuple"])
        if tag == "$snakeport_set":  # elements whose hash is the same in both workers: None's
            # (and a tuple's holding it) is its address, so a set's order would differ
            return (A(tag), [rng.choice([rng.randrange(-5, 300), "a", "é", 1.5]) for _ in range(rng.randrange(4))])
        return (A(tag), random_value(rng, depth + 1))
    return []


def large_value(rng: random.Random) -> Any:
    """A binary of a frame the splitter's buffer may hold (70 KB) or not (300 KB), as
    Snakeport.bytes/1 sends it (a bytes reply of that size goes back in segments), or not."""
    data = rng.randbytes(rng.choice([70_000, 300_000]))
    return (A("$snakeport_bytes"), data) if rng.random() < 0.7 else data


def call_frame(rng: random.Random, rid: int) -> bytes:
    module, function = rng.choice(sorted(SAFE))
    args = [random_value(rng) for _ in range(rng.randrange(4))]
    if rng.random() < 0.05:  # a large frame: a copy of the binary back, or its length
        module, function = "builtins", rng.choice(["bytes", "len"])
        args = [large_value(rng)] + args[:1]
    session = rng.choice(["s1", "s1", "s1", "s2", "nope"])
    kwargs = {}
    if rng.random() >= 0.8:  # binary or atom keys (the lane's too), or keys of other types
        kwargs = {rng.choice(["base", A("base"), "bse", A("x"), 1]): rng.choice([2, 10, "x"]) for _ in range(rng.randrange(1, 3))}
    opts = {} if rng.random() < 0.9 else {A("result"): A(rng.choice(["value", "ref", "auto"]))}
    return etf.encode((A("call"), rid, session, module, function, args, kwargs, opts))


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        if not b:
            break
        i = rng.randrange(len(b))
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        elif op == 3:
            del b[i : i + rng.randrange(1, 4)]
        else:
            del b[i:]
    return bytes(b)


def safe(payload: bytes) -> bool:
    """Whether a frame may be sent: it does not decode to a call, or names a SAFE function."""
    try:
        term = etf.decode(payload)
    except Exception:  # noqa: BLE001 - undecodable: the worker refuses it
        return True
    if not (type(term) is tuple and len(term) >= 5 and term[0] == Atom("call")):
        return type(term) is not tuple or not term or term[0] not in (Atom("eval"), Atom("setattr"), Atom("getattr"))
    if not (type(term[3]) is str and type(term[4]) is str and (term[3], term[4]) in SAFE):
        return False
    # bytes(n) and sequence * n allocate n: a mutated int (bytes(2147483401), seed 7) made a
    # 2 GiB allocation that stalled the batch for seconds; sizes stay small.
    args = term[5] if len(term) > 5 and type(term[5]) is list else []
    return term[4] not in ("bytes", "mul") or all(type(a) is not int or abs(a) <= 1 << 16 for a in args)


def fuzz(seconds: float, seed: int, out_dir: Path = Path("fuzz-findings"), allow: str | None = None) -> int:
    """Runs the lane and the general path side by side (with the allow-list ``allow``, if
    given); returns the number of batches."""
    rng = random.Random(seed)
    flags = ("--allow", allow) if allow else ()
    workers = [Worker(True, *flags), Worker(False, *flags)]
    try:
        for w in workers:
            w.exchange([etf.encode((A("open_session"), 1, "s1", {}))], SYNC - 1)
        deadline = time.monotonic() + seconds
        batches = 0
        while time.monotonic() < deadline:
            payloads = []
            for i in range(rng.randrange(1, 40)):
                frame = call_frame(rng, rng.randrange(2, 1000) if rng.random() < 0.5 else 10_000 + i)
                if rng.random() < 0.5:
                    frame = mutate(rng, frame)
                if safe(frame):
                    payloads.append(frame)
            sync = SYNC + batches
            outs = [sorted(w.exchange(payloads, sync)) for w in workers]
            if outs[0] != outs[1]:
                out_dir.mkdir(exist_ok=True)
                path = out_dir / f"lane-{seed}-{batches}.bin"
                path.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in payloads))
                first = next(i for i, (a, b) in enumerate(zip(*outs)) if a != b) if min(map(len, outs)) else 0
                print(f"lane and general path differ (batch {batches}, frame {first}); saved {path}")
                for side, out in zip(("lane", "general"), outs):
                    print(f"  {side}: {len(out)} frames;", etf.decode(out[first]) if len(out) > first else None)
                raise SystemExit(1)
            batches += 1
        return batches
    finally:
        for w in workers:
            w.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--allow", default=None, help="both workers' allow-list (comma-separated entries)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    batches = fuzz(args.seconds, seed, allow=args.allow)
    with_allow = f", allow-list {args.allow}" if args.allow else ""
    print(f"lane fuzz: seed {seed}{with_allow}, {batches} batches in {args.seconds:g} s, no difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
