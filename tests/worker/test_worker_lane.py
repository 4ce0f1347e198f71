"""The C lane of the common call (``snakeport._lane``): the same replies as the general path.

Every request here goes to two real workers, one with the lane and one without
(``SNAKEPORT_NO_LANE=1``), in the same order and in the same batches (one ``write`` of
several frames, as 64 callers send them, and one frame at a time); the reply frames must be
the same bytes, id for id. The requests cover what the lane answers itself (scalar results)
and everything it hands to the general path (containers, objects, errors, awaitables,
options, unknown sessions, tagged terms, segmented bytes, queued calls). The in-process tests
check the pieces: the lane is used when it applies, and the accounting it does (sessions,
jobs, scheduler) ends where the general path's does.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import threading
import time
import types
from typing import Any

import pytest
from snakeport import _lane, etf
from snakeport._clane import placeable
from snakeport._framing import Placed
from snakeport._jobs import CURRENT, DONE, FAILED, INTERRUPTED, Failure, Job, Jobs
from snakeport._requests import AUTO
from snakeport._server import Config, Server
from snakeport._sessions import Session
from snakeport._spin import SpinPolicy
from snakeport._writer import SEGMENT_BYTES, _Segments
from snakeport.types import Atom, ErlMap
from sp_client import A, worker_env

#: fcntl's F_SETPIPE_SZ and F_GETPIPE_SZ (Linux): a pipe's capacity.
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032

pytestmark = pytest.mark.skipif(not _lane.available(), reason="the C lane is not built here")

if not _lane.available() and os.environ.get("SNAKEPORT_PURE_PYTHON", "") in ("", "0") and os.environ.get(_lane.NO_LANE_ENV, "") in ("", "0"):
    # Built by `make setup` (like the codec's accelerator): its absence is a defect there.
    raise ImportError("snakeport._clane is not built (run make setup), or the codec runs in pure Python")


# `python -c` this, then the packet limit, then the worker's flags: the worker with a lower
# {packet, 4} limit (_limits.MAX_PACKET, read by the modules that use it as they load), so
# that a reply can exceed it without 4 GiB of memory.
_WITH_PACKET_LIMIT = (
    "import runpy, sys; from snakeport import _limits; "
    "_limits.MAX_PACKET = int(sys.argv.pop(1)); "
    "runpy.run_module('snakeport', run_name='__main__', alter_sys=True)"
)


class RawWorker:
    """A worker process whose reply frames are kept as bytes, by request id."""

    def __init__(self, lane: bool, *flags: str, max_packet: int | None = None) -> None:
        env = worker_env()
        if lane:
            env.pop(_lane.NO_LANE_ENV, None)
        else:
            env[_lane.NO_LANE_ENV] = "1"
        if max_packet is None:
            argv = [sys.executable, "-m", "snakeport", *flags]
        else:
            argv = [sys.executable, "-c", _WITH_PACKET_LIMIT, str(max_packet), *flags]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self.ready = self._frame()
        self.frames: dict[int, bytes] = {}
        self.others: list[bytes] = []

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.proc.stdout.read(n - len(out))
            if not chunk:
                raise EOFError(self.proc.stderr.read().decode(errors="replace"))
            out += chunk
        return out

    def _frame(self) -> bytes:
        (n,) = struct.unpack(">I", self._read(4))
        return self._read(n)

    def send(self, terms: list) -> None:
        """One write of the frames of ``terms``."""
        self.send_raw([etf.encode(t) for t in terms])

    def send_raw(self, payloads: list[bytes]) -> None:
        """One write of frames of the given payloads (valid ETF or not)."""
        self.proc.stdin.write(b"".join(struct.pack(">I", len(p)) + p for p in payloads))

    def rss(self) -> int:
        """The worker's resident set size now, in bytes (Linux: VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def wait(self, rid: int) -> bytes:
        while rid not in self.frames:
            frame = self._frame()
            term, _ = etf.decode_prefix(frame)
            if term[0] == "reply":
                assert term[1] not in self.frames, f"a second reply to {term[1]}"
                self.frames[term[1]] = frame
            else:
                self.others.append(frame)
        return self.frames[rid]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def kill(self) -> None:
        """A test's teardown: the process killed if it still runs, every pipe closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()  # (closing a closed pipe does nothing)


@pytest.fixture
def pair():
    workers = [RawWorker(True), RawWorker(False)]
    yield workers
    for w in workers:
        w.kill()


def call(rid: int, module: str, function: str, args: list, kwargs: Any = None, opts: Any = None, session: Any = "s1") -> tuple:
    return (A("call"), rid, session, module, function, args, kwargs or {}, opts or {})


# The requests of both workers: (module, function, args[, kwargs, opts, session]).
#: Binary and text arguments of frames larger than the splitter's buffer (256 KiB), which
#: reach the lane as frames of their own (Lane.take), and of a frame it holds (Lane.run).
BIG = bytes(range(256)) * 1200
BIG_TEXT = "é✓" * 60_000
MID = bytes(range(256)) * 400

REQUESTS: list[tuple] = [
    ("operator", "add", [1, 2]),  # the lane's own: scalars
    ("operator", "add", [2**70, 1]),
    ("operator", "mul", [1.5, -2.0]),
    ("builtins", "float", ["nan"]),
    ("builtins", "float", ["-inf"]),
    ("builtins", "str", ["héllo ✓"]),
    ("builtins", "bytes", [[0, 255, 1]]),
    ("builtins", "bool", [1]),
    ("sp_testmod", "identity", [None]),
    ("builtins", "len", [list(range(100))]),
    ("os.path", "join", ["a", "b"]),  # a dotted module
    ("os", "path.join", ["a", "b"]),  # a dotted attribute path
    ("sp_testmod", "identity", [[1, [2.5, "x"], {"k": (1, 2)}]]),  # plain data: the lane's
    ("builtins", "tuple", [[1, "a", None, True, b"b"]]),
    ("builtins", "dict", [[((1, 2), "pair"), ("k", [])]]),
    ("builtins", "list", [list(range(10_000))]),
    ("sp_testmod", "nest", [31]),
    ("sp_testmod", "nest", [40]),  # deeper than the lane looks: the general path's data
    ("sp_testmod", "cyclic", []),  # a ref where it recurs
    ("sp_testmod", "identity", [[1, A("ok")]]),  # an atom inside: the general path's
    ("sp_testmod", "names", []),  # a str subclass inside: a ref
    ("builtins", "set", [[1, 2]]),  # a set: a tagged term
    ("sp_testmod", "mixed", []),  # objects inside: refs
    ("builtins", "bytearray", [b"ab"]),
    ("builtins", "bytes", [70_000]),  # a segmented reply
    ("sp_testmod", "Box", [7]),  # an object: a ref
    ("sp_testmod", "boxes", [3]),
    ("sp_testmod", "identity", [Atom("ok")]),
    ("operator", "truediv", [1, 0]),  # errors with tracebacks
    ("sp_testmod", "fail", ["lane"]),
    ("sys", "exit", [3]),
    ("no_such_module_for_the_lane", "f", []),
    ("operator", "no_such_function", []),
    ("os", "path.no_such", []),
    ("sp_testmod", "async_add", [1, 2]),  # an awaitable
    ("sp_testmod", "async_fail", ["awaited"]),
    ("builtins", "int", ["101"], {"base": 2}),  # kwargs: str keys
    ("builtins", "int", ["101"], {A("base"): 2}),  # atom keys
    ("builtins", "int", ["101"], ErlMap([("base", 2), (A("base"), 8)])),  # both: not a dict
    ("builtins", "dict", [], {"a": 1, A("b"): [2, "x"]}),  # not a scalar: marshalled
    ("builtins", "int", ["101"], {"bse": 2}),  # an unexpected keyword: TypeError
    ("builtins", "int", [], {"base": 2}),
    ("builtins", "int", ["101"], {1: 2}),  # a key neither a binary nor an atom: bad_request
    ("builtins", "int", ["101"], {"base": 2, 3: 4}),
    ("operator", "add", [1, 2], None, {A("result"): A("value")}),  # options
    ("operator", "add", [1, 2], None, None, "no-such-session"),  # not open
    ("builtins", "len", [(A("$snakeport_bytes"), b"abc")]),  # Snakeport.bytes/1: the lane's
    ("sp_testmod", "identity", [(A("$snakeport_bytes"), b"\xff\x00")]),
    ("sp_testmod", "kinds", [(A("$snakeport_bytes"), b"")], {"k": [(A("$snakeport_bytes"), b"v")]}),
    ("builtins", "dict", [[((A("$snakeport_bytes"), b"k"), 1)]]),  # a bytes key
    ("builtins", "len", [(A("$snakeport_bytes"), 5)]),  # malformed: bad_request
    ("builtins", "len", [(A("$snakeport_bytes"), b"a", b"b")]),
    ("builtins", "len", [(A("$snakeport_bytes"), b"a"), (A("$snakeport_set"), [1])]),  # another tag
    ("sp_testmod", "kinds", ["$snakeport_bytes", "$snakeport_x", (A("$snakeport_bytes"), b"")]),
    ("builtins", "len", [(A("$snakeport_set"), [1, 2])]),  # a tagged term: the general path's
    ("sp_testmod", "identity", [(A("$snakeport_bytes"), BIG)]),  # a large frame, segments back
    ("sp_testmod", "identity", [(A("$snakeport_bytes"), MID)]),  # a frame the buffer holds
    ("builtins", "len", [BIG_TEXT]),  # a large frame, no tag
    ("sp_testmod", "kinds", [(A("$snakeport_bytes"), BIG), (A("$snakeport_set"), [1])]),
    ("builtins", "len", [(A("$snakeport_bytes"), BIG), (A("$snakeport_bytes"), 5)]),
    ("builtins", "len", [(A("$snakeport_bytes"), BIG)], None, {A("result"): A("value")}),  # options
    ("builtins", "len", [(A("$snakeport_bytes"), BIG)], None, None, "no-such-session"),
    ("builtins", "bytes", [(A("$snakeport_bytes"), BIG)], {"bad": 1}),  # a TypeError
    ("sp_testmod", "gen", []),
    ("operator", "add", [1, 2]),
]


def running(worker: RawWorker, stats_id: int) -> None:
    """Return once a call runs on the reader and the stand-by reads (it answers stats)."""
    deadline = time.monotonic() + 10
    while True:
        worker.send([(A("stats"), stats_id)])
        stats = etf.decode(worker.wait(stats_id))[3]
        del worker.frames[stats_id]
        if stats[A("in_flight")] == 1:
            return
        assert time.monotonic() < deadline, "the call did not start"


def replies(worker: RawWorker) -> dict[int, bytes]:
    """The reply frames, but open_session's (it holds times)."""
    return {rid: frame for rid, frame in worker.frames.items() if rid != 1}


def run_all(worker: RawWorker, batch: bool) -> dict[int, bytes]:
    worker.send([(A("open_session"), 1, "s1", {})])
    worker.wait(1)
    terms = [call(10 + i, *spec) for i, spec in enumerate(REQUESTS)]
    if batch:
        worker.send(terms)
    else:
        for term in terms:
            worker.send([term])
            worker.wait(term[1])
    for term in terms:
        worker.wait(term[1])
    worker.send([(A("stats"), 2)])
    worker.wait(2)
    return {rid: frame for rid, frame in replies(worker).items() if rid != 2}  # (stats: times)


@pytest.mark.parametrize("batch", [True, False], ids=["one write", "one at a time"])
def test_the_lane_answers_every_request_with_the_general_paths_bytes(pair, batch: bool) -> None:
    lane, general = (run_all(w, batch) for w in pair)
    assert sorted(lane) == sorted(general) == [10 + i for i in range(len(REQUESTS))]
    for rid in general:
        assert lane[rid] == general[rid], (REQUESTS[rid - 10], etf.decode(lane[rid]), etf.decode(general[rid]))
    # The replies are what they should be, so that the comparison means something.
    assert etf.decode(lane[10]) == (A("reply"), 10, A("ok"), 3)
    assert etf.decode(lane[10 + REQUESTS.index(("sp_testmod", "Box", [7]))])[3][0] == "$snakeport_ref"
    assert etf.decode(lane[10 + REQUESTS.index(("operator", "truediv", [1, 0]))])[3][A("type")] == "builtins.ZeroDivisionError"
    assert etf.decode(lane[10 + REQUESTS.index(("sp_testmod", "async_add", [1, 2]))])[3] == 3
    assert etf.decode(lane[10 + REQUESTS.index(("builtins", "int", ["101"], {A("base"): 2}))])[3] == 5
    both = etf.decode(lane[10 + REQUESTS.index(("builtins", "int", ["101"], ErlMap([("base", 2), (A("base"), 8)])))])[3]
    assert both[A("reason")] == A("bad_request") and "Kwargs to be a map" in both[A("message")], both
    bad = etf.decode(lane[10 + REQUESTS.index(("builtins", "int", ["101"], {1: 2}))])[3]
    assert bad[A("reason")] == A("bad_request") and "Kwargs keys" in bad[A("message")], bad
    assert etf.decode(lane[10 + REQUESTS.index(("sp_testmod", "identity", [(A("$snakeport_bytes"), b"\xff\x00")]))])[3] == b"\xff\x00"
    assert etf.decode(lane[10 + REQUESTS.index(("sp_testmod", "identity", [(A("$snakeport_bytes"), BIG)]))])[3] == BIG
    assert etf.decode(lane[10 + REQUESTS.index(("builtins", "len", [BIG_TEXT]))])[3] == len(BIG_TEXT)
    malformed = etf.decode(lane[10 + REQUESTS.index(("builtins", "len", [(A("$snakeport_bytes"), 5)]))])[3]
    assert malformed[A("reason")] == A("bad_request") and "$snakeport_bytes" in malformed[A("message")], malformed
    # The lane did run them: its calls have no Python frame of the worker under them, with
    # keyword arguments, Snakeport.bytes/1 arguments and in large frames too; a call with
    # another tagged term is the general path's in both.
    stack = call(99, "traceback", "format_stack", [])
    probes = [
        (stack, True),
        (call(99, "traceback", "format_stack", [], {A("limit"): 50}), True),
        (call(99, "sp_testmod", "stack_kinds", [(A("$snakeport_bytes"), b"x")]), True),
        (call(99, "sp_testmod", "stack_kinds", [(A("$snakeport_bytes"), BIG)]), True),
        (call(99, "sp_testmod", "stack_kinds", [(A("$snakeport_bytes"), MID)]), True),
        (call(99, "sp_testmod", "stack_kinds", [BIG_TEXT]), True),
        (call(99, "sp_testmod", "stack_kinds", [(A("$snakeport_set"), [1])]), False),
        (call(99, "sp_testmod", "stack_kinds", [BIG, (A("$snakeport_set"), [1])]), False),
    ]
    for probe, in_lane in probes:
        stacks = []
        for w in pair:
            w.send([probe])
            value = etf.decode(w.wait(99))[3]
            stacks.append("".join(value) if probe is stack or probe[3] == "traceback" else value[1])
            del w.frames[99]
        assert ("_jobs.py" not in stacks[0] and "_dispatch.py" not in stacks[0]) == in_lane, (probe[3:5], stacks[0])
        assert "_jobs.py" in stacks[1] and "_dispatch.py" in stacks[1], stacks[1]
    # Both workers count the same: requests, sessions, refs (stats, without times and pids).
    stats = [etf.decode(w.frames[2])[3] for w in pair]
    assert [s.pop(A("fast_path")) for s in stats] == [True, False]  # (what differs: the lane)
    for s in stats:
        for key in ("uptime_ms", "pid", "rss_bytes"):
            s.pop(A(key))
    assert stats[0] == stats[1]
    assert stats[0][A("in_flight")] == 0


#: The allow-list of both workers in the next test, and its requests (as REQUESTS'): names
#: it passes, names check_name refuses before anything runs, and paths it refuses in the
#: job (a module reached that no entry names).
ALLOW = "operator,sp_testmod,os.path,logging,builtins.len"
ALLOW_REQUESTS: list[tuple] = [
    ("operator", "add", [1, 2]),
    ("operator", "add", [3, 4]),  # (the names passed before: remembered)
    ("operator", "_abs", [-1]),  # a private name: refused before the checkout
    ("math", "sqrt", [4.0]),  # no entry
    ("builtins", "len", ["abc"]),  # an entry naming the function
    ("builtins", "abs", [-1]),  # not that one
    ("builtins", "len", [(A("$snakeport_bytes"), b"abc")], {}),
    ("builtins", "len", [], {"obj": 1}),  # a TypeError
    ("os.path", "join", ["a", "b"]),
    ("os", "path.join", ["a", "b"]),  # os.path reached by the path that names it
    ("os", "getcwd", []),
    ("logging", "getLevelName", [10]),
    ("logging", "os.getcwd", []),  # allowed names, but the module os is reached: refused
    ("sp_testmod", "Box", [7]),  # a ref
    ("sp_testmod", "stack_kinds", [1, (A("$snakeport_bytes"), b"x")]),
    ("math", "sqrt", [9.0], None, None, "no-such-session"),  # refused, whatever the session
    ("operator", "add", [1, 2], None, None, "no-such-session"),
]


@pytest.mark.parametrize("batch", [True, False], ids=["one write", "one at a time"])
def test_with_an_allow_list_the_lane_answers_as_the_general_path(batch: bool) -> None:
    pair = [RawWorker(True, "--allow", ALLOW), RawWorker(False, "--allow", ALLOW)]
    try:
        for w in pair:
            w.send([(A("open_session"), 1, "s1", {})])
            w.wait(1)
            terms = [call(10 + i, *spec) for i, spec in enumerate(ALLOW_REQUESTS)]
            if batch:
                w.send(terms)
            for term in terms:
                if not batch:
                    w.send([term])
                w.wait(term[1])
        lane, general = (replies(w) for w in pair)
        assert sorted(lane) == sorted(general) == [10 + i for i in range(len(ALLOW_REQUESTS))]
        for rid in general:
            spec = ALLOW_REQUESTS[rid - 10]
            if spec[1] == "stack_kinds":
                continue  # (the stacks differ: compared below)
            assert lane[rid] == general[rid], (spec, etf.decode(lane[rid]), etf.decode(general[rid]))
        def answer(spec: tuple) -> tuple:
            return etf.decode(lane[10 + ALLOW_REQUESTS.index(spec)])[2:]

        assert answer(ALLOW_REQUESTS[0]) == (A("ok"), 3) and answer(("os", "path.join", ["a", "b"])) == (A("ok"), "a/b")
        assert answer(("logging", "getLevelName", [10])) == (A("ok"), "DEBUG")
        for refused in (("operator", "_abs", [-1]), ("math", "sqrt", [4.0]), ("builtins", "abs", [-1]), ("os", "getcwd", []), ("logging", "os.getcwd", []), ALLOW_REQUESTS[-2]):
            status, error = answer(refused)
            assert status == A("error") and error[A("reason")] == A("not_allowed"), (refused, error)
        assert answer(ALLOW_REQUESTS[-1])[1][A("reason")] == A("session_not_found")
        # The lane ran the allowed calls: no Python frame of the worker under them. (Probed
        # once the sequence is answered, as the test above probes: a call that comes while
        # the reading is the stand-by's, after a slow one such as the first import of
        # sp_testmod, may be queued and run the general way; CI saw that once.)
        stacks = []
        for w in pair:
            w.send([call(99, "sp_testmod", "stack_kinds", [1, (A("$snakeport_bytes"), b"x")])])
            stacks.append(etf.decode(w.wait(99))[3][1])
        assert "_dispatch.py" not in stacks[0] and "_jobs.py" not in stacks[0], stacks[0]
        assert "_dispatch.py" in stacks[1], stacks[1]
    finally:
        for w in pair:
            w.kill()


def test_results_nested_down_to_max_depth_get_the_general_paths_bytes() -> None:
    # The lane encodes a container of plain data itself only while the general path's
    # marshalling would keep it as it is: nested less deep than --max-depth; a container at
    # that depth becomes a ref there.
    workers = [RawWorker(True, "--max-depth", "3"), RawWorker(False, "--max-depth", "3")]
    try:
        out = []
        for w in workers:
            w.send([(A("open_session"), 1, "s1", {})])
            w.wait(1)
            # (One at a time: a call that imports its module, as the first does, can take
            # long enough for the stand-by to read the next frames, on the general path.)
            for n in range(6):
                w.send([call(10 + n, "sp_testmod", "nest", [n])])
                w.wait(10 + n)
            out.append(replies(w))
    finally:
        for w in workers:
            w.kill()
    assert out[0] == out[1]
    assert etf.decode(out[0][13])[3] == [[[1]]]  # lists at depths 0-2: data
    assert etf.decode(out[0][14])[3][0][0][0][0] == "$snakeport_ref"  # the list at depth 3: a ref


def test_a_call_queued_behind_a_long_one_runs_its_plain_call_later(pair) -> None:
    # The first call holds the only slot long enough for the stand-by to take the reading
    # over; the next ones are placed while it runs: the scheduler queues them, with the
    # lane's PlainCall as their code (run later by Jobs.run on the general path).
    results = []
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(10, "sp_testmod", "sleep", [0.5])])
        running(w, 9)
        w.send([call(11, "operator", "add", [1, 2]), call(12, "operator", "no_such", []), (A("stats"), 13)])
        w.send([call(14, "traceback", "format_stack", [])])
        stats = etf.decode(w.wait(13))[3]
        stack = "".join(etf.decode(w.wait(14))[3])
        results.append(([w.wait(rid) for rid in (10, 11, 12)], stats[A("in_flight")], stack))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1] == 3  # the long call and the two queued before stats
    # Queued by the lane: Jobs.run runs its PlainCall (no closure `fn` of _dispatch under it).
    assert "_jobs.py" in results[0][2] and ", in fn\n" not in results[0][2]
    assert ", in fn\n" in results[1][2]


def test_a_large_frames_long_call_leaves_the_reading_to_the_standby(pair) -> None:
    # A large frame (Lane.take) whose call runs long: the stand-by takes the reading over
    # (stats answered meanwhile), the frames after it are queued (large ones too, decoded by
    # the lane with their bytes: handed back decoded), and the reader that ran it returns.
    results = []
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(10, "sp_testmod", "sleep_bytes", [0.5, (A("$snakeport_bytes"), BIG)])])
        running(w, 9)
        w.send([call(11, "builtins", "len", [(A("$snakeport_bytes"), BIG)]), call(12, "operator", "add", [1, 2])])
        results.append([w.wait(rid) for rid in (10, 11, 12)])
        w.send([call(13, "sp_testmod", "stack_kinds", [(A("$snakeport_bytes"), BIG)])])  # once all ran
        kinds, stack = etf.decode(w.wait(13))[3]
        assert kinds == ["bytes"]
        results[-1].append("_dispatch.py" in stack)
    assert results[0][:3] == results[1][:3]
    assert etf.decode(results[0][0])[3] == BIG and etf.decode(results[0][1])[3] == len(BIG)
    assert results[0][3] is False and results[1][3] is True  # the lane takes large frames again


def test_a_lane_call_is_cancelled_like_any_call(pair) -> None:
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(10, "sp_testmod", "spin", [30.0])])
        running(w, 11)
        w.send([(A("cancel"), 12, 10)])
        assert etf.decode(w.wait(12))[3] == {A("cancelled"): True}
        assert etf.decode(w.wait(10))[3][A("reason")] == A("cancelled")
        w.send([call(13, "operator", "add", [1, 2])])  # and the worker goes on
        assert etf.decode(w.wait(13))[3] == 3
    assert replies(pair[0]) == replies(pair[1])


def test_release_session_cancels_a_running_lane_call(pair) -> None:
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(10, "sp_testmod", "spin", [30.0])])
        running(w, 9)
        w.send([(A("release_session"), 11, "s1")])
        w.wait(11)
        assert etf.decode(w.wait(10))[3][A("reason")] == A("cancelled")
        w.send([call(12, "operator", "add", [1, 2])])
        assert etf.decode(w.wait(12))[3][A("reason")] == A("session_not_found")
    assert replies(pair[0]) == replies(pair[1])


@pytest.mark.parametrize("function", ["late", "late_scalar"])
def test_an_exception_left_pending_by_the_call_is_its_outcome(pair, function: str) -> None:
    # sp_hostile.late makes an exception pending in the calling thread from C (no bytecode)
    # and returns a list (late_scalar: an int, which the lane would answer itself). On the
    # general path it strikes inside the call; the lane runs one bytecode right after the
    # call, so it strikes there too (before: in the worker's own code after the call, and
    # after a scalar's reply the worker's frame loop ended). Either way: an error reply of
    # that type, the session checked in (expire with idle 0 releases it: no call counted as
    # running), the job out of the table, and the worker serves on.
    errors = []
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(10, "sp_hostile", "arm_late", [])])
        assert etf.decode(w.wait(10))[3] is True
        w.send([call(11, "sp_hostile", function, [])])
        reply = etf.decode(w.wait(11))
        assert reply[2] == "error", reply
        errors.append(reply[3])
        w.send([(A("stats"), 12), (A("expire_session"), 13, "s1", 0)])
        assert etf.decode(w.wait(12))[3][A("in_flight")] == 0
        assert etf.decode(w.wait(13))[3] == {A("expired"): True, A("released"): 0}
        w.send([(A("open_session"), 14, "s2", {}), call(15, "operator", "add", [1, 2], session="s2")])
        assert etf.decode(w.wait(15))[3] == 3
    lane, general = errors
    assert lane[A("reason")] == general[A("reason")] == A("python_error")
    assert lane[A("type")] == general[A("type")] == "sp_hostile.Late"


def test_a_reply_larger_than_a_frame_can_be_is_the_general_paths_not_encodable() -> None:
    # The lane encodes a scalar result itself; a reply larger than a {packet, 4} frame can
    # be goes to the general path, which answers not_encodable (the limit is 4 GiB - 1:
    # lowered here to 4096 bytes, the same code path). Both workers answer the same bytes,
    # the session is checked in (expire at idle 0 releases it), and both serve on.
    pair = [RawWorker(True, max_packet=4096), RawWorker(False, max_packet=4096)]
    try:
        for w in pair:
            w.send([(A("open_session"), 1, "s1", {})])
            w.wait(1)
            w.send([
                call(10, "operator", "mul", ["x", 5000]),  # str
                call(11, "builtins", "bytes", [5000]),  # bytes below a segment
                call(9, "builtins", "bytes", [SEGMENT_BYTES]),  # bytes of a segment (segmented)
                call(12, "operator", "pow", [2, 40000]),  # int
                call(13, "operator", "mul", ["y", 4000]),  # fits: the lane's own reply
                (A("stats"), 14),
                (A("expire_session"), 15, "s1", 0),
            ])
            for rid in (9, 10, 11, 12, 13):
                w.wait(rid)
            assert etf.decode(w.wait(14))[3][A("in_flight")] == 0
            assert etf.decode(w.wait(15))[3] == {A("expired"): True, A("released"): 0}
            w.send([(A("open_session"), 16, "s2", {}), call(17, "operator", "add", [1, 2], session="s2")])
            assert etf.decode(w.wait(17))[3] == 3
        lane, general = pair
        for rid in (9, 10, 11, 12, 13, 17):
            assert lane.frames[rid] == general.frames[rid], (rid, etf.decode(lane.frames[rid]), etf.decode(general.frames[rid]))
        for rid in (9, 10, 11, 12):
            error = etf.decode(lane.frames[rid])[3]
            assert error[A("reason")] == A("not_encodable")
            assert "exceeds the {packet, 4} limit" in error[A("message")], error
        assert etf.decode(lane.frames[13])[3] == "y" * 4000
    finally:
        for w in pair:
            w.close()


def test_a_reply_larger_than_max_frame_bytes_is_sent_as_any_reply() -> None:
    # --max-frame-bytes limits the frames the worker reads, not its replies: both paths send
    # such a reply (the same bytes).
    pair = [RawWorker(True, "--max-frame-bytes", "256"), RawWorker(False, "--max-frame-bytes", "256")]
    try:
        for w in pair:
            w.send([(A("open_session"), 1, "s1", {})])
            w.wait(1)
            w.send([call(10, "operator", "mul", ["x", 5000])])
            assert etf.decode(w.wait(10))[3] == "x" * 5000
        assert pair[0].frames[10] == pair[1].frames[10]
    finally:
        for w in pair:
            w.close()


def invalid_call_frames(rid: int) -> list[bytes]:
    """Frames that start like the lane's call but are not one it may answer (or not valid);
    ids ``rid`` to ``rid + 11``, the last frame a valid call (``rid + 11``)."""
    return [
        etf.encode(call(rid, "operator", "add", [1, 2]))[:-3],  # truncated inside the term
        etf.encode(call(rid + 1, "operator", "add", [1, 2])) + b"\x00",  # a byte after the term
        etf.encode(call(rid + 2, "operator", "add", 5)),  # args not a list
        etf.encode(call(rid + 3, 7, "add", [1, 2])),  # module not a string
        etf.encode(call(rid + 4, "operator", 7, [1, 2])),  # function not a string
        etf.encode(call(rid + 5, "operator", "add", [1, 2], session=7)),  # session not a string
        etf.encode(call(-1, "operator", "add", [1, 2])),  # a negative id
        etf.encode(call(rid + 6, "operator", "add", [1, 2], kwargs=[1])),  # kwargs not a map
        etf.encode((A("call"), rid + 7, "s1", "operator", "add", [1, 2], {}, {}, 9)),  # 9-tuple
        etf.encode((A("call"), rid + 8, "s1", "operator", "add", [1, 2], {})),  # 7-tuple
        b"\x83h\x08w\x04call",  # the head alone
        # an ATOM_EXT head, cut after the session
        b"\x83h\x08d\x00\x04callb" + (rid + 9).to_bytes(4, "big") + b"m\x00\x00\x00\x02s1",
        etf.encode(call(rid + 11, "operator", "add", [1, 2])),  # and a valid one after them
    ]


def mixed_frames(rid: int) -> list[bytes]:
    """The lane's own calls, calls it hands back, failures, and invalid frames (ids from
    ``rid``, below ``rid + 20``)."""
    return [
        etf.encode(call(rid + 12, "operator", "truediv", [1, 0])),
        etf.encode(call(rid + 13, "no_such_module_for_the_lane", "f", [])),
        etf.encode(call(rid + 14, "operator", "add", [1, 2], session="no-such-session")),
        etf.encode(call(rid + 15, "builtins", "int", ["5"], {"base": 10})),
        etf.encode(call(rid + 16, "sp_testmod", "fail", ["soak"])),
        etf.encode(call(rid + 17, "builtins", "str", ["x" * 50])),
        etf.encode(call(rid + 18, "operator", "add", [2**80, 1])),
        *invalid_call_frames(rid),
    ]


def test_invalid_call_frames_get_the_general_paths_replies(pair) -> None:
    # Hostile input shaped like the lane's request: both workers answer the same bytes (the
    # lane hands each to the general path, which refuses it), and both serve on.
    for w in pair:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send_raw(invalid_call_frames(10))  # one write: the lane sees them one after another
        w.wait(21)
        for payload in invalid_call_frames(40):  # and one frame per write
            w.send_raw([payload])
        w.wait(51)
        w.send([call(60, "operator", "add", [1, 2])])
        assert etf.decode(w.wait(60)) == (A("reply"), 60, A("ok"), 3)
    assert replies(pair[0]) == replies(pair[1])
    assert pair[0].others == pair[1].others  # protocol_error events (no id to answer)
    assert etf.decode(pair[0].frames[12])[3][A("reason")] == A("bad_request")
    assert pair[0].others, "the undecodable frames were answered with events"


def test_a_long_mix_of_valid_and_invalid_lane_frames_keeps_memory_bounded() -> None:
    # 60k frames: the lane's own calls, failures with tracebacks, unknown modules and
    # sessions, calls it hands back, and invalid frames, pipelined 400 at a time (each
    # batch ends with a call whose reply comes after the batch's). The worker's RSS after
    # the first tenth is the reference: a leak of one object per frame would add megabytes.
    w = RawWorker(True)
    try:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        total, batches, marks = 0, 150, []
        for k in range(batches):
            frames_ = [f for i in range(20) for f in mixed_frames(100 + 20 * i)]
            sync = 1_000_000 + k
            w.send_raw(frames_ + [etf.encode(call(sync, "operator", "add", [1, 2]))])
            assert etf.decode(w.wait(sync))[3] == 3
            w.frames.clear()
            w.others.clear()
            total += len(frames_) + 1
            if k + 1 in (batches // 10, batches):
                marks.append(w.rss())
        assert total > 60_000
        assert marks[1] - marks[0] < 2 * 1024 * 1024, marks
    finally:
        w.close()


# ------------------------------------------------------------------- in process


def server(**config: Any) -> tuple[Server, int, int]:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    srv = Server(Config(**config), in_r, out_w)
    srv._sched.reader = threading.get_ident()
    return srv, in_w, out_r


def frames(*terms: Any) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in (etf.encode(t) for t in terms))


def feed(srv: Server, data: bytes) -> Any:
    """What the read loop does with ``data``: the lane first (without reading more);
    returns the lane's ``(left, term)``."""
    buf = srv._splitter.get_buffer()
    buf[: len(data)] = data
    del buf
    srv._splitter.buffer_updated(len(data))
    view = srv._splitter.buffered()
    return srv._lane.run(*view, threading.get_ident())


def written(out_r: int) -> list:
    """The terms of the frames the server wrote to its output pipe so far (no wait: the
    lane writes before ``run`` returns)."""
    data = b""
    while select.select([out_r], [], [], 0)[0]:
        data += os.read(out_r, 1 << 20)
    terms = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + n, "a frame cut short"
        terms.append(etf.decode(data[4 : 4 + n]))
        data = data[4 + n :]
    return terms


def unread(srv: Server) -> int:
    """Bytes the splitter holds that were not consumed."""
    _, r, w = srv._splitter.buffered()
    return w - r


def test_the_lane_applies_with_one_thread() -> None:
    # (stats' fast_path says which: Dispatcher.fast_path.)
    for config, lane in (({}, True), ({"threads": 2}, False), ({"allow": ("operator",)}, True)):
        srv = server(**config)[0]
        assert (srv._lane is not None) is lane and srv.dispatcher.fast_path is lane, config


def test_the_lane_leaves_the_accounting_where_the_general_path_does() -> None:
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    session = srv.table._sessions["s"]
    before = (session.last_access, session.active_at)
    time.sleep(0.01)
    left, term = feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
    assert term is None and unread(srv) == left
    assert srv.dispatcher.requests == 2 and srv.dispatcher.jobs.in_flight == 0
    assert session.running == 0 and session.last_access > before[0] and session.active_at > before[1]
    assert srv._sched.running == 0 and not srv._sched._inline_active and srv._sched.held == []
    assert written(out_r) == [(A("reply"), 5, A("ok"), 3)]  # (the lane wrote it: nothing else buffered)
    assert getattr(CURRENT, "job", None) is None


def test_take_handles_a_large_frame_that_is_the_lanes_and_hands_back_the_others(monkeypatch) -> None:
    srv, _, out_r = server()
    fcntl.fcntl(srv._writer._fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # (BIG's reply fits: no reader here)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    me = threading.get_ident()

    def take(term: Any) -> Any:
        return srv._lane.take(bytearray(etf.encode(term)), me)

    # The lane's: the reply held (bytes of a segment or more: segments), sent by the loop.
    assert take(call(5, "builtins", "bytes", [(A("$snakeport_bytes"), BIG)], session="s")) is None
    assert srv._sched.held and type(srv._sched.held[0]) is _Segments
    srv._sched.flush_held()
    assert written(out_r) == [(A("reply"), 5, A("ok"), BIG)]
    # Not decoded: not a call, or a tagged term other than $snakeport_bytes (the payload back).
    for term in ((A("eval"), 6, "s", "len(x)", {"x": BIG}, {}), call(7, "builtins", "len", [BIG, (A("$snakeport_set"), [1])], session="s")):
        payload = bytearray(etf.encode(term))
        assert srv._lane.take(payload, me) is payload
    # Decoded, not the lane's (an unknown session, options): the term, its bytes converted.
    for term in (call(8, "builtins", "len", [(A("$snakeport_bytes"), BIG)], session="nope"), call(9, "builtins", "len", [(A("$snakeport_bytes"), BIG)], None, {A("result"): A("value")}, session="s")):
        assert take(term) == term[:5] + ([BIG],) + term[6:]
    assert srv.dispatcher.requests == 2 and written(out_r) == []  # (open_session and call 5)
    # The reading role moved away during the call (to the stand-by): LOST, the reply sent.
    module = types.ModuleType("sp_lane_takeover")

    def takeover(data: bytes) -> int:
        srv._sched.reader = -1  # as Scheduler.standby() takes the reading over
        return len(data)

    module.takeover = takeover
    monkeypatch.setitem(sys.modules, "sp_lane_takeover", module)
    assert take(call(10, "sp_lane_takeover", "takeover", [(A("$snakeport_bytes"), BIG)], session="s")) is _lane.LOST
    assert written(out_r) == [(A("reply"), 10, A("ok"), len(BIG))]


def test_take_decodes_a_placed_frame_with_its_binary_as_read(monkeypatch) -> None:
    # A placed frame (the splitter read its binary into its own bytes): the call gets that
    # bytes object itself; a frame whose placed binary the decode did not take, or whose
    # bytes are not where it says, is handed back (the general path joins it).
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    me = threading.get_ident()
    seen: list = []
    module = types.ModuleType("sp_lane_placed")
    module.keep = lambda data, *rest: seen.append(data) or len(data)
    monkeypatch.setitem(sys.modules, "sp_lane_placed", module)

    def placed(term: Any) -> Placed:
        payload = bytearray(etf.encode(term))
        start, length = placeable(payload, 0, len(payload), 65_536)
        return Placed(payload[:start] + payload[start + length :], start, bytes(payload[start : start + length]))

    frame = placed(call(5, "sp_lane_placed", "keep", [(A("$snakeport_bytes"), BIG), 1], session="s"))
    assert srv._lane.take(frame, me) is None
    assert seen == [BIG] and seen[0] is frame.value  # the bytes as read: not a copy
    frame = placed(call(6, "sp_lane_placed", "keep", [BIG_TEXT.encode()], session="s"))
    assert srv._lane.take(frame, me) is None and seen[1] == BIG_TEXT  # a plain binary: its str
    srv._sched.flush_held()
    assert written(out_r) == [(A("reply"), 5, A("ok"), len(BIG)), (A("reply"), 6, A("ok"), len(BIG_TEXT))]
    # Decoded, not the lane's (an unknown session): the term, with the bytes as read.
    frame = placed(call(7, "builtins", "len", [(A("$snakeport_bytes"), BIG)], session="nope"))
    assert srv._lane.take(frame, me)[5][0] is frame.value
    # Handed back: the binary said to lie elsewhere; a frame that decodes without it.
    moved = Placed(frame.buffer, frame.start - 1, frame.value)
    assert srv._lane.take(moved, me) is moved
    whole = bytearray(etf.encode(call(8, "builtins", "len", [b"x"], session="s")))
    unused = Placed(whole, len(whole), BIG)
    assert srv._lane.take(unused, me) is unused
    assert srv.dispatcher.requests == 3 and written(out_r) == []
    with pytest.raises(TypeError, match="placed payload"):
        srv._lane.take(Placed(bytes(whole), 0, BIG), me)


def test_the_lane_follows_a_class_changed_after_it_used_a_slot(monkeypatch) -> None:
    # The lane remembers where a slot of a type is (_clane.c, slot_of's cache), as long as
    # the type is not modified: a slot replaced afterwards by a property is the property's.
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    session = srv.table._sessions["s"]
    feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))  # (the slots learnt)
    seen: list = []
    member = Session.__dict__["last_access"]

    def stored(self: Session, value: float) -> None:
        seen.append(value)
        member.__set__(self, value)

    monkeypatch.setattr(Session, "last_access", property(member.__get__, stored))
    feed(srv, frames(call(6, "operator", "add", [1, 2], session="s")))
    assert seen == [session.last_access] and session.running == 0
    monkeypatch.undo()  # the member descriptor back: the lane's own writes again
    feed(srv, frames(call(7, "operator", "add", [1, 2], session="s")))
    assert len(seen) == 1 and session.last_access > seen[0]
    assert [t[1] for t in written(out_r)] == [5, 6, 7]


def test_the_lane_reads_the_session_tables_clocks_whatever_they_are() -> None:
    # The lane calls built-in clocks (time.time, time.monotonic) directly, any other through
    # the call protocol (_clane.c, call_noargs): both give the sessions the clocks' times.
    ticks = iter(range(1000, 2000))
    for wall, monotonic in ((time.time, time.monotonic), (lambda: 1.5e9, lambda: float(next(ticks)))):
        srv, _, out_r = server()
        srv.table._wall, srv.table._monotonic = wall, monotonic
        srv._lane = _lane.build(srv)
        srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
        session = srv.table._sessions["s"]
        before = (wall(), monotonic())
        feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
        assert written(out_r) == [(A("reply"), 5, A("ok"), 3)] and session.running == 0
        if wall is time.time:
            assert session.last_access >= before[0] and session.active_at >= before[1]
        else:  # (one tick at check-out, one at check-in)
            assert session.last_access == 1.5e9 and session.active_at == before[1] + 2


#: The jobs whose code ran :func:`record_job` (a lane call's target in the tests below).
RECORDED: list = []


def record_job() -> None:
    RECORDED.append(CURRENT.job)
    RECORDED_JOBS.append(CURRENT.jobs)


RECORDED_JOBS: list = []


def test_the_lane_makes_its_jobs_as_job_init_does(monkeypatch) -> None:
    # The lane makes its jobs without running Job.__init__ when it can tell what __init__
    # does (_clane.c, job_layout); the jobs it makes must be the ones __init__ makes.
    srv, _, _ = server()
    assert srv._lane.fast_jobs
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    session = srv.table._sessions["s"]
    RECORDED.clear()
    feed(srv, frames(call(5, __name__, "record_job", [], session="s"), call(6, __name__, "record_job", [], session="s")))
    assert [job.request_id for job in RECORDED] == [5, 6]
    assert RECORDED_JOBS[-1] is srv.dispatcher.jobs and getattr(CURRENT, "job", None) is None
    made = Job(5, session, None, AUTO)
    for name in Job.__slots__:
        if name not in ("fn", "state", "thread"):  # (what running it changed)
            assert getattr(RECORDED[0], name) == getattr(made, name), name
    assert RECORDED[0].state == DONE and RECORDED[0].fn is None and RECORDED[0].thread == threading.get_ident()
    assert RECORDED[0].new_refs is not RECORDED[1].new_refs  # a list of its own
    # A Job whose __init__ the lane cannot follow: it calls the type, as the general path.

    class Odd(Job):
        __slots__ = ("extra",)

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.extra = {}

    monkeypatch.setattr(_lane, "Job", Odd)
    odd = _lane.build(srv)
    assert not odd.fast_jobs
    srv._lane = odd
    RECORDED.clear()
    feed(srv, frames(call(7, __name__, "record_job", [], session="s")))
    assert type(RECORDED[0]) is Odd and RECORDED[0].extra == {} and RECORDED[0].new_refs == []


def test_the_lane_wakes_a_sleeping_standby_as_place_does() -> None:
    # The lane's own place() (its common case in C) leaves a stand-by asleep in its deep
    # wait to Scheduler.place, which wakes it.
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    sched = srv._sched
    woken = []
    sched._standby_deep = True
    sched._wake.notify_all = lambda: woken.append(True)  # type: ignore[method-assign]
    feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
    assert woken and sched.running == 0 and not sched._inline_active
    assert written(out_r) == [(A("reply"), 5, A("ok"), 3)]
    sched._standby_deep = False
    woken.clear()
    feed(srv, frames(call(6, "operator", "add", [1, 2], session="s")))
    assert not woken and sched._inline_seq == 2 and written(out_r) == [(A("reply"), 6, A("ok"), 3)]


@pytest.mark.parametrize("which", ["table", "jobs", "scheduler"])
def test_the_lane_waits_for_a_lock_another_thread_holds(which: str) -> None:
    # The lane runs a critical section without taking its lock only when the lock is free
    # (_clane.c, lock_enter): held by another thread, the lane waits for it.
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    lock = {"table": srv.table.lock, "jobs": srv.dispatcher.jobs.lock, "scheduler": srv._sched.lock}[which]
    returned = threading.Event()

    def reader() -> None:
        srv._sched.reader = threading.get_ident()
        feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
        returned.set()

    thread = threading.Thread(target=reader)
    with lock:
        thread.start()
        assert not returned.wait(0.2)  # waiting for the lock, not returned
        assert not srv._sched.held and written(out_r) == []
    thread.join(5)
    assert returned.is_set() and srv.dispatcher.jobs.in_flight == 0 and srv.table._sessions["s"].running == 0
    assert written(out_r) == [(A("reply"), 5, A("ok"), 3)]


def test_the_lane_hands_back_what_is_not_its_own() -> None:
    srv, _, _ = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    # Not a call: stays in the buffer, untouched.
    left, term = feed(srv, frames((A("ping"), 2)))
    assert term is None and unread(srv) == left == len(frames((A("ping"), 2))) and srv._splitter.buffered()[1] == 0
    assert srv._splitter.next_event() == etf.encode((A("ping"), 2))
    # A call in a session that is not open: decoded and handed back, nothing counted.
    left, term = feed(srv, frames(call(3, "operator", "add", [1, 2], session="nope")))
    assert term == call(3, "operator", "add", [1, 2], session="nope")
    assert srv.dispatcher.requests == 1 and unread(srv) == left
    # A call with options: the same.
    left, term = feed(srv, frames(call(4, "operator", "add", [1, 2], opts={A("result"): A("ref")}, session="s")))
    assert term[1] == 4 and srv.dispatcher.requests == 1
    # A call with a Kwargs key that is neither a binary nor an atom: the same.
    left, term = feed(srv, frames(call(5, "builtins", "int", ["7"], {A("base"): 10, 1: 2}, session="s")))
    assert term[1] == 5 and term[6] == {A("base"): 10, 1: 2} and srv.dispatcher.requests == 1
    # An incomplete frame: nothing taken.
    data = frames(call(6, "operator", "add", [1, 2], session="s"))
    left, term = feed(srv, data[:-1])
    assert term is None and unread(srv) == left


def test_the_lane_refuses_a_stale_view_of_the_splitter() -> None:
    # The invariant that makes the lane's view of the splitter safe across a call (_lane.py:
    # only the reading thread changes the splitter, and the role never comes back to a
    # thread inside a call) holds; were it broken (another thread took a frame meanwhile),
    # the lane stops (the frame loop fails) rather than run a frame again.
    srv, _, _ = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    data = frames(call(5, "operator", "add", [1, 2], session="s"), call(6, "operator", "add", [3, 4], session="s"))
    buf = srv._splitter.get_buffer()
    buf[: len(data)] = data
    del buf
    srv._splitter.buffer_updated(len(data))
    view = srv._splitter.buffered()
    assert srv._splitter.next_event() == etf.encode(call(5, "operator", "add", [1, 2], session="s"))
    with pytest.raises(RuntimeError, match="stale"):
        srv._lane.run(*view, threading.get_ident())
    assert srv.dispatcher.requests == 1 and srv.dispatcher.jobs.in_flight == 0 and not srv._sched.held
    assert srv._splitter.next_event() == etf.encode(call(6, "operator", "add", [3, 4], session="s"))


def test_plain_call_is_the_general_paths_code() -> None:
    assert _lane.PlainCall("operator", "add", [1, 2])() == 3
    assert _lane.PlainCall("os", "path.join", ["a", "b"])() == os.path.join("a", "b")
    with pytest.raises(Failure) as info:
        _lane.PlainCall("operator", "no_such", [])()
    assert info.value.reason == "attribute_error" and isinstance(info.value.cause, AttributeError)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(Failure) as info:
        _lane.PlainCall("no_such_module_for_the_lane", "f", [])()
    assert info.value.reason == "import_error"
    with pytest.raises(TypeError):
        _lane.PlainCall("operator", "add", [1, 2])(1)
    with pytest.raises(TypeError):
        _lane.PlainCall("operator", "add", (1, 2))  # args must be a list
    # Keyword arguments: a dict with str keys (the lane gives atom keys as str).
    assert _lane.PlainCall("builtins", "int", ["101"], {"base": 2})() == 5
    assert _lane.PlainCall("builtins", "int", ["101"], kwargs={})() == 101
    assert _lane.PlainCall("builtins", "dict", [], {"a": 1})() == {"a": 1}
    assert repr(_lane.PlainCall("builtins", "int", ["101"], {"base": 2})) == "PlainCall('builtins', 'int', <1 args>, <1 kwargs>)"
    with pytest.raises(TypeError, match="multiple values for argument 'prefix'"):
        _lane.PlainCall("textwrap", "indent", ["x", ">"], {"prefix": ">"})()
    with pytest.raises(TypeError, match="kwargs keys to be str"):
        _lane.PlainCall("builtins", "int", ["101"], {Atom("base"): 2})
    with pytest.raises(TypeError):
        _lane.PlainCall("builtins", "int", ["101"], [("base", 2)])  # kwargs must be a dict


def test_a_module_being_initialised_is_imported_the_general_way(monkeypatch) -> None:
    # _jobs.import_module waits for a module whose spec says it is initialising (it goes
    # through importlib); the lane's fast lookup does the same.
    import types

    module = types.ModuleType("sp_lane_initialising")
    module.f = lambda: "old"
    module.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "sp_lane_initialising", module)
    seen = []

    def import_module(name):
        seen.append(name)
        return types.SimpleNamespace(f=lambda: "imported")

    monkeypatch.setattr("importlib.import_module", import_module)
    assert _lane.PlainCall("sp_lane_initialising", "f", [])() == "imported"
    assert seen == ["sp_lane_initialising"]
    module.__spec__ = types.SimpleNamespace(_initializing=False)
    assert _lane.PlainCall("sp_lane_initialising", "f", [])() == "old"


def test_jobs_end_lane_is_the_end_of_run() -> None:
    jobs = Jobs()
    from snakeport._jobs import RUNNING, Job

    for result, failure, interrupted, state in [(object(), None, False, DONE), (1, ValueError(), False, FAILED), (1, None, True, INTERRUPTED)]:
        job = jobs.add(Job(1, None, None, 0))  # type: ignore[arg-type]
        job.state = RUNNING
        job.failure = failure
        out = jobs.end_lane(job, result, interrupted)
        assert job.state == state and jobs.in_flight == 0
        assert out is (result if state == DONE else None)


def test_a_failure_after_check_out_leaves_no_accounting_behind() -> None:
    # Server.lane_failed's path: the worker's own code fails after the lane checked the
    # session out. No input makes it fail (an exception the call leaves pending is the
    # call's outcome: test_an_exception_left_pending_...), so Server.finish_lane, which the
    # lane calls for a result it does not answer itself (a set), is made to raise once.
    srv, _, out_r = server()
    real_finish, faults = srv.finish_lane, []

    def finish_once(job: Any, result: Any) -> Any:
        if not faults:
            faults.append(job)
            raise RuntimeError("a fault of the worker")
        return real_finish(job, result)

    srv.finish_lane = finish_once  # type: ignore[method-assign]
    srv._lane = _lane.build(srv)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    session = srv.table._sessions["s"]
    left, term = feed(srv, frames(call(5, "builtins", "set", [[1, 2]], session="s")))
    assert term is None and unread(srv) == left and len(faults) == 1
    assert session.running == 0 and srv.dispatcher.jobs.in_flight == 0
    assert srv._sched.running == 0 and not srv._sched._inline_active and srv._sched.held == []
    [reply] = written(out_r)
    assert reply[:3] == (A("reply"), 5, A("error")) and reply[3][A("type")] == "builtins.RuntimeError"
    assert reply[3][A("message")].startswith("internal worker error")
    assert getattr(CURRENT, "job", None) is None
    # And the lane serves on.
    feed(srv, frames(call(6, "operator", "add", [1, 2], session="s")))
    assert written(out_r) == [(A("reply"), 6, A("ok"), 3)]


def test_jobs_abandon_ends_a_lane_job_the_worker_failed_to_finish() -> None:
    from snakeport._jobs import QUEUED, RUNNING, Job

    jobs = Jobs()
    error = RuntimeError("worker")
    for state, failure, final in [(QUEUED, None, FAILED), (RUNNING, None, FAILED), (RUNNING, ValueError(), FAILED), (DONE, None, DONE)]:
        job = jobs.add(Job(1, None, None, 0))  # type: ignore[arg-type]
        job.state, job.failure = state, failure
        CURRENT.job = job
        jobs.abandon(job, error)
        assert job.state == final and jobs.in_flight == 0 and CURRENT.job is None
        assert job.failure is (failure or (error if state != DONE else None))


def wait_within(w: RawWorker, rid: int, seconds: float = 10.0) -> bytes:
    """``w.wait(rid)`` that fails instead of blocking when no reply comes in ``seconds``."""
    deadline = time.monotonic() + seconds
    while rid not in w.frames:
        ready, _, _ = select.select([w.proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no reply to request {rid} within {seconds} s"
        frame = w._frame()
        term, _ = etf.decode_prefix(frame)
        if term[0] == "reply":
            w.frames[term[1]] = frame
        else:
            w.others.append(frame)
    return w.frames[rid]


def test_frames_the_lane_leaves_are_answered_wherever_a_write_ends() -> None:
    # After a frame the lane leaves (method, ping), the frame loop works out from the lane's
    # view whether more bytes are buffered (Server._read_frames): a batch of such frames
    # and lane calls, cut in two writes at every byte, is answered whole each time.
    w = RawWorker(True)
    try:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(2, "sp_testmod", "Box", [7])])
        ref = etf.decode(w.wait(2))[3]
        rid = 100
        for cut in range(0, 160):
            terms = [
                (A("method"), rid, "s1", ref, "get", [], {}, {}),
                (A("ping"), rid + 1),
                call(rid + 2, "operator", "add", [1, 2]),
                (A("method"), rid + 3, "s1", ref, "get", [], {}, {}),
            ]
            payloads = [etf.encode(t) for t in terms]
            data = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
            assert cut < len(data)
            w.proc.stdin.write(data[:cut])
            end = 0
            for term, payload in zip(terms, payloads):  # the frames whole in the first write
                end += 4 + len(payload)
                if end <= cut:
                    wait_within(w, term[1])
            w.proc.stdin.write(data[cut:])
            for term in terms:
                wait_within(w, term[1])
            assert [etf.decode(w.frames[t[1]])[3] for t in terms] == [7, A("pong"), 3, 7]
            rid += 10
    finally:
        w.close()


# ----------------------------------------------------------------- the lane's write
#
# When the lane took every complete frame buffered, it sends the replies the scheduler
# holds itself (lane_flush and lane_send in _clane.c: Scheduler.flush_held, then the common
# case of FrameWriter.send), as FrameWriter._writev writes them.


def test_the_lane_holds_its_replies_while_a_frame_it_leaves_is_buffered() -> None:
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    left, term = feed(srv, frames(call(5, "operator", "add", [1, 2], session="s"), (A("ping"), 6)))
    assert term is None and unread(srv) == left  # the ping is the loop's
    assert written(out_r) == [] and len(srv._sched.held) == 1  # sent with the ping's reply
    # An incomplete frame after it: nothing more to handle now, the reply goes out.
    srv._splitter.next_event()
    srv._sched.held.clear()
    data = frames(call(7, "operator", "add", [1, 2], session="s"))
    left, term = feed(srv, frames(call(6, "operator", "add", [1, 2], session="s")) + data[:-1])
    assert term is None and written(out_r) == [(A("reply"), 6, A("ok"), 3)] and srv._sched.held == []


def test_the_lane_sends_segmented_replies_through_the_writer() -> None:
    # A frame of several buffers (a large bytes result, _writer.segmented_reply) is
    # FrameWriter.send's to write.
    srv, _, out_r = server()
    fcntl.fcntl(out_r, F_SETPIPE_SZ, 1 << 18)  # (room for the reply: written before feed returns)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    feed(srv, frames(call(5, "builtins", "bytes", [70_000], session="s"), call(6, "operator", "add", [1, 2], session="s")))
    assert written(out_r) == [(A("reply"), 5, A("ok"), "\x00" * 70_000), (A("reply"), 6, A("ok"), 3)]  # (binaries decode as str)


def test_the_lanes_own_write_lets_go_of_a_spliced_reply_once_it_was_read() -> None:
    # A large bytes result is spliced into the pipe and kept alive by the writer until the
    # pipe was read empty (_writer, "Spliced buffers"); when the next reply is the lane's
    # own write (lane_send), that write lets it go, as FrameWriter's writes do.
    srv, _, out_r = server()
    fcntl.fcntl(out_r, F_SETPIPE_SZ, 1 << 18)  # (room for the reply, as above)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    writer = srv._writer
    assert writer.splices
    feed(srv, frames(call(5, "builtins", "bytes", [70_000], session="s")))
    assert writer._spliced_bytes == 70_000 and writer._spliced[0] == bytes(70_000)
    feed(srv, frames(call(6, "operator", "add", [1, 2], session="s")))  # the pipe is not read yet
    assert writer._spliced_bytes == 70_000
    assert written(out_r) == [(A("reply"), 5, A("ok"), "\x00" * 70_000), (A("reply"), 6, A("ok"), 3)]
    feed(srv, frames(call(7, "operator", "add", [2, 2], session="s")))
    assert writer._spliced == [] and writer._spliced_bytes == 0
    assert written(out_r) == [(A("reply"), 7, A("ok"), 4)]


def test_the_lane_leaves_its_replies_to_the_writer_when_another_thread_writes() -> None:
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    writer = srv._writer
    with writer._write_lock:  # (another thread writing: FrameWriter.send queues the frames)
        feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
        assert srv._sched.held == [] and written(out_r) == [] and writer.queued_bytes > 0
    writer.flush()
    assert written(out_r) == [(A("reply"), 5, A("ok"), 3)]


def test_frames_other_threads_queued_go_out_before_the_lanes() -> None:
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    writer = srv._writer
    # Frames a thread queued while another wrote, the lock now free (that thread is about to
    # write them): FrameWriter.send writes them first, with the lane's.
    writer._queue.extend([struct.pack(">I", 3), etf.encode(1)])
    writer._queued = 3 + 4
    feed(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
    assert written(out_r) == [1, (A("reply"), 5, A("ok"), 3)] and writer.queued_bytes == 0


def test_frames_queued_while_the_lane_writes_go_out_after_it() -> None:
    # Another thread's frames queued while the lane's writev blocks on a full pipe are
    # written by the lane's thread once it is done (FrameWriter._send_queued, as send()).
    srv, _, out_r = server()
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    writer = srv._writer
    size = fcntl.fcntl(out_r, F_GETPIPE_SZ)
    count = size // 60_000 + 2
    rids = list(range(10, 10 + count))
    data = frames(*(call(rid, "operator", "mul", ["x", 60_000], session="s") for rid in rids))

    def read() -> None:
        srv._sched.reader = threading.get_ident()
        feed(srv, data)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not writer._write_lock.locked():  # the lane writes (and the pipe is full)
        assert time.monotonic() < deadline and reader.is_alive(), "the lane did not write"
        time.sleep(0.001)
    late = threading.Thread(target=writer.send, args=([etf.encode("late")],))
    late.start()
    late.join(10)
    assert not late.is_alive() and writer.queued_bytes > 0  # queued: it returned at once
    got: list = []
    data = b""
    while len(got) < count + 1:
        assert select.select([out_r], [], [], 10)[0], f"{len(got)} frames, then nothing"
        data += os.read(out_r, 1 << 20)
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
            (n,) = struct.unpack(">I", data[:4])
            got.append(etf.decode(data[4 : 4 + n]))
            data = data[4 + n :]
    reader.join(10)
    assert got == [(A("reply"), rid, A("ok"), "x" * 60_000) for rid in rids] + ["late"]
    assert writer.queued_bytes == 0 and data == b""


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to thread ``tid`` of process ``pid`` (the thread's own system call
    is interrupted, not any thread's)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


def _task_state(pid: int, tid: int) -> tuple[str, str, int]:
    """A thread's kernel wait channel, its current system call line and its pending signals."""
    base = f"/proc/{pid}/task/{tid}"
    with open(f"{base}/status") as f:
        pending = next(int(line.split()[1], 16) for line in f if line.startswith("SigPnd:"))
    with open(f"{base}/wchan") as f:
        wchan = f.read()
    with open(f"{base}/syscall") as f:
        syscall = f.read().strip()
    return wchan, syscall, pending


def _call(syscall: str) -> list[str]:
    """What identifies a blocked ``writev`` in a ``/proc/.../syscall`` line: the call's number,
    its three arguments (fd, iov, iovcnt), and the stack and instruction pointers; not the
    registers of the arguments ``writev`` does not take (whatever the caller left there)."""
    fields = syscall.split()
    return fields[:4] + fields[-2:]


def _blocked_writer(pid: int, other_than: str = "", seconds: float = 10.0) -> tuple[int, str]:
    """The thread of ``pid`` blocked writing to a pipe (its call, :func:`_call`, not that of
    ``other_than``): (tid, syscall line)."""
    deadline = time.monotonic() + seconds
    while True:
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            try:
                wchan, syscall, _ = _task_state(pid, tid)
            except (OSError, StopIteration):  # the thread ended meanwhile
                continue
            if "pipe_write" in wchan and (not other_than or _call(syscall) != _call(other_than)):
                return tid, syscall
        assert time.monotonic() < deadline, "no thread of the worker blocked writing"
        time.sleep(0.001)


def test_the_lanes_write_goes_on_after_a_signal_cuts_it_short() -> None:
    # The lane's writev (lane_send, write_all) blocked on a full pipe, as
    # test_worker_writer's test of _writev: a signal makes the kernel return the bytes
    # written so far (a partial write: the next writev starts where it stopped), then,
    # nothing written, EINTR (written again). The worker has a handler (its main thread
    # installs it: sp_signals), so the signal, sent to the writing thread, interrupts it.
    import signal

    w = RawWorker(True, "--preload", "sp_signals")
    try:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        size = fcntl.fcntl(w.proc.stdout.fileno(), F_GETPIPE_SZ)
        rids = list(range(10, 10 + 2 * (size // 60_000) + 4))  # more than two pipes full
        w.send([call(rid, "operator", "mul", ["x", 60_000]) for rid in rids])  # one write
        pid = w.proc.pid
        tid, first = _blocked_writer(pid)
        _tgkill(pid, tid, signal.SIGUSR1)  # some bytes written: a partial write
        tid2, second = _blocked_writer(pid, other_than=first)  # writing the rest
        assert tid2 == tid
        _tgkill(pid, tid, signal.SIGUSR1)  # nothing written yet: EINTR
        deadline = time.monotonic() + 10
        while True:  # the signal taken (not pending) and the same writev blocked again
            wchan, syscall, pending = _task_state(pid, tid)
            if not pending & (1 << (signal.SIGUSR1 - 1)) and "pipe_write" in wchan:
                break
            assert time.monotonic() < deadline, "the writev did not go on after EINTR"
            time.sleep(0.001)
        assert _call(syscall) == _call(second)
        for rid in rids:
            assert etf.decode(w.wait(rid)) == (A("reply"), rid, A("ok"), "x" * 60_000)
        w.send([call(99, "operator", "add", [1, 2])])
        assert etf.decode(w.wait(99)) == (A("reply"), 99, A("ok"), 3)
    finally:
        w.close()


def test_a_lane_write_to_a_closed_reader_ends_the_worker_as_any_write() -> None:
    # EPIPE on the lane's write: FrameWriter._failed tells on_closed (the worker exits with
    # status 0, "protocol output closed"), as for a write of FrameWriter.send.
    w = RawWorker(True, "--log-level", "info")
    try:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.proc.stdout.close()
        w.send([call(5, "operator", "add", [1, 2])])
        assert w.proc.wait(10) == 0
        err = w.proc.stderr.read().decode(errors="replace")
        assert "protocol output closed ([Errno 32] Broken pipe)" in err and "frame loop failed" not in err, err
    finally:
        w.kill()


# ------------------------------------------------------------------ the lane's read
#
# Once it took every frame and sent the replies, the lane does the read loop's next read
# itself (run's `read`; lane_read in _clane.c) when the loop would do nothing else first.


def run_reading(srv: Server, data: bytes) -> Any:
    """``data`` in the splitter, then ``Lane.run`` as the read loop calls it (reading on)."""
    buf = srv._splitter.get_buffer()
    buf[: len(data)] = data
    del buf
    srv._splitter.buffer_updated(len(data))
    return srv._lane.run(*srv._splitter.buffered(), threading.get_ident(), True)


class RecordedSpin(SpinPolicy):
    """A spin policy that records the scheduler's ``running`` at each :meth:`wait`."""

    __slots__ = ("sched", "waits")

    def wait(self) -> None:
        self.waits.append(self.sched.running)
        super().wait()


def recorded_spin(srv: Server) -> RecordedSpin:
    """``srv`` with a :class:`RecordedSpin` policy (and a lane that uses it)."""
    spin = RecordedSpin(srv._in_fd, spin_us=200, cpus=lambda: 1)  # (one CPU: it never spins)
    spin.sched, spin.waits = srv._sched, []
    srv._spin = spin
    srv._lane = _lane.build(srv)
    return spin


def test_the_lane_reads_on_until_the_input_ends() -> None:
    srv, in_w, out_r = server()
    spin = recorded_spin(srv)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    os.write(in_w, frames(call(6, "operator", "add", [3, 4], session="s"), call(7, "operator", "add", [5, 6], session="s")))
    os.close(in_w)  # then the end of the input: the lane returns, for the loop's read to see it
    assert run_reading(srv, frames(call(5, "operator", "add", [1, 2], session="s"))) == (0, None)
    assert written(out_r) == [(A("reply"), 5, A("ok"), 3), (A("reply"), 6, A("ok"), 7), (A("reply"), 7, A("ok"), 11)]
    assert spin.waits == [0, 0]  # the spin policy before each read, no job holding a slot
    assert srv._splitter.buffered() == (srv._splitter._buf, 0, 0) and srv.dispatcher.requests == 4


def test_the_lane_calls_the_spin_policy_unless_it_would_return_at_once() -> None:
    srv, in_w, out_r = server()
    spin = recorded_spin(srv)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    spin.resume = time.perf_counter() + 3600  # backing off: wait() would return at once
    os.write(in_w, frames(call(6, "operator", "add", [3, 4], session="s")))
    os.close(in_w)
    run_reading(srv, frames(call(5, "operator", "add", [1, 2], session="s")))
    assert spin.waits == [] and len(written(out_r)) == 2
    srv2, in_w2, _ = server()
    spin2 = recorded_spin(srv2)
    srv2._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    os.close(in_w2)
    spin2.resume = 0.0  # its clock is past `resume`: wait() decides
    run_reading(srv2, frames(call(5, "operator", "add", [1, 2], session="s")))
    assert spin2.waits == [0]


def test_the_lane_leaves_a_failed_read_to_the_loop() -> None:
    srv, in_w, _ = server(spin_us=0)
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    os.close(srv._in_fd)  # EBADF: the loop's own read logs it and ends the worker
    assert run_reading(srv, frames(call(5, "operator", "add", [1, 2], session="s"))) == (0, None)
    with pytest.raises(ValueError, match="not the splitter's buffer"):  # (it reads into that one only)
        srv._lane.run(bytearray(16), 0, 0, threading.get_ident(), True)


#: The server whose shutdown :func:`shut_down` starts (a lane call's target below).
SHUTTING: list = []


def shut_down() -> int:
    SHUTTING[0].dispatcher.shutting_down = True
    return 1


def test_the_lane_does_not_read_once_the_worker_shuts_down() -> None:
    srv, in_w, _ = server(spin_us=0)
    SHUTTING[:] = [srv]
    srv._handle(etf.encode((A("open_session"), 1, "s", {})), [])
    pending = frames(call(6, "operator", "add", [1, 2], session="s"))
    os.write(in_w, pending)  # (not read: the loop's shutdown comes first)
    assert run_reading(srv, frames(call(5, __name__, "shut_down", [], session="s"))) == (0, None)
    assert select.select([srv._in_fd], [], [], 0)[0] and os.read(srv._in_fd, 1 << 16) == pending


def test_a_signal_that_interrupts_the_lanes_read_is_taken_in_stride() -> None:
    # The reader waits in the lane's read (lane_read) between sequential calls: EINTR from
    # a signal sent to that thread is retried, and the worker serves on.
    import signal

    w = RawWorker(True, "--preload", "sp_signals", "--spin-us", "0")
    try:
        w.send([(A("open_session"), 1, "s1", {})])
        w.wait(1)
        w.send([call(2, "operator", "add", [1, 2])])
        w.wait(2)
        pid = w.proc.pid
        deadline = time.monotonic() + 10
        reader = 0
        while not reader:  # the thread that waits in read(): its call is done
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                try:
                    wchan, _, _ = _task_state(pid, tid)
                except (OSError, StopIteration):
                    continue
                if "pipe_read" in wchan:
                    reader = tid
            assert reader or time.monotonic() < deadline, "no thread of the worker waits to read"
            time.sleep(0.001)
        for k in range(3):
            _tgkill(pid, reader, signal.SIGUSR1)
            while True:  # taken (not pending), and waiting to read again
                wchan, _, pending = _task_state(pid, reader)
                if not pending & (1 << (signal.SIGUSR1 - 1)) and "pipe_read" in wchan:
                    break
                assert time.monotonic() < deadline, "the reader did not wait again after EINTR"
                time.sleep(0.001)
            w.send([call(10 + k, "operator", "add", [k, 1])])
            assert etf.decode(w.wait(10 + k)) == (A("reply"), 10 + k, A("ok"), k + 1)
        w.proc.stdin.close()  # the end of the input: the lane's read, then the loop's, see it
        assert w.proc.wait(10) == 0
    finally:
        w.kill()
