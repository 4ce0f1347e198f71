"""Unit tests of the I/O-free dispatcher: plain terms in, reply/event terms out."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from snakeport import Cancelled, etf
from snakeport._dispatch import Dispatcher
from snakeport._jobs import Job, Jobs
from snakeport._tagged import TagContext, resolve_tagged
from snakeport._sessions import SessionTable
from snakeport.types import Atom, ErlMap

sys.path.insert(0, str(Path(__file__).parent / "pymods"))


A = Atom
REF = A("$snakeport_ref")
RSS = 123_456_789  # what the Harness's rss function reports (the server passes psutil's)


class Harness:
    """The dispatcher with session ``"s"`` opened (sessions are never created implicitly)."""

    def __init__(self, sessions=("s",), **table_kw) -> None:
        self.table = SessionTable(**table_kw)
        self.d = Dispatcher(self.table, max_depth=8, rss=lambda: RSS)
        self.ids = iter(range(1, 1_000_000))
        for sid in sessions:
            self.ok("open_session", sid, {})

    def outcome(self, op: str, *fields):
        term = (A(op), next(self.ids), *fields)
        ctx = TagContext()
        return self.d.receive(resolve_tagged(term, ctx), ctx)

    def run(self, op: str, *fields) -> list:
        out = self.outcome(op, *fields)
        if isinstance(out, Job):
            return self.d.run_job(out)
        return out

    def reply(self, op: str, *fields):
        (reply,) = [t for t in self.run(op, *fields) if t[0] == "reply"]
        return reply

    def ok(self, op: str, *fields):
        reply = self.reply(op, *fields)
        assert reply[2] == "ok", reply
        return reply[3]

    def err(self, op: str, *fields) -> dict:
        reply = self.reply(op, *fields)
        assert reply[2] == "error", reply
        return reply[3]

    def call(self, fn: str, args=(), kwargs=None, opts=None, module="sp_testmod", session="s"):
        return self.ok("call", session, module, fn, list(args), kwargs or {}, opts or {})

    def call_err(self, fn: str, args=(), kwargs=None, opts=None, module="sp_testmod", session="s"):
        return self.err("call", session, module, fn, list(args), kwargs or {}, opts or {})


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_ping_and_ready(h) -> None:
    assert h.ok("ping") == "pong"
    ready = h.d.ready_term()
    assert ready[0] == "snakeport_ready" and ready[1] == 1
    assert set(ready[2]) == {"pid", "python", "snakeport", "max_frame_bytes", "threads", "default_max_refs", "default_ttl_seconds"}


def test_stdlib_calls(h) -> None:
    assert h.call("add", [2, 3], module="operator") == 5
    assert h.call("sqrt", [16], module="math") == 4.0
    assert h.ok("call", "s", "os.path", "join", ["a", "b"], {}, {}) == "a/b"
    assert h.ok("call", "s", A("builtins"), A("sorted"), [[3, 1, 2]], {A("reverse"): True}, {}) == [3, 2, 1]


def test_dotted_function_path(h) -> None:
    value = h.ok("call", "s", "pathlib", "Path.cwd", [], {}, {})
    assert value[0] == REF and value[3] == "pathlib.PosixPath"


def test_plain_data_is_returned_as_is(h) -> None:
    data = [1, 2.5, "x", b"\xff", None, True, A("atom"), (1, [2, {"k": "v"}])]
    assert h.call("identity", [data]) == data
    assert h.table.counts()[1] == 0


def test_auto_marshalling_keeps_data_and_refs_leaves(h) -> None:
    value = h.call("mixed")
    box = value["box"]
    assert box[0] == REF and box[1] == "s" and box[3] == "sp_testmod.Box"
    assert value["again"] == box  # one object, one ref
    assert value["n"] == 1
    assert value["items"][:2] == [1, "two"] and value["items"][2][0] == REF
    assert value["set"] == (A("$snakeport_set"), [1, 2])
    assert h.table.counts() == (1, 2)


def test_dict_subclasses_and_other_objects_become_refs(h) -> None:
    counter = h.ok("call", "s", "collections", "Counter", ["abca"], {}, {})
    assert counter[0] == REF and counter[3] == "collections.Counter"
    assert h.ok("method", "s", counter, "most_common", [1], {}, {}) == [("a", 2)]


def test_non_data_dict_keys_become_refs(h) -> None:
    out = h.ok("call", "s", "builtins", "eval", ["{__import__('sp_testmod').Box(): 1, frozenset({1}): 2}"], {}, {})
    assert isinstance(out, ErlMap)
    keys = list(out)
    assert keys[0][0] == REF and keys[1] == (A("$snakeport_set"), [1])


def test_result_modes(h) -> None:
    ref = h.call("identity", [[1, 2]], opts={A("result"): A("ref")})
    assert ref[0] == REF and ref[3] == "builtins.list"
    err = h.call_err("boxes", [1], opts={A("result"): A("value")})
    assert err[A("reason")] == "not_encodable" and err[A("details")] == {A("type"): "sp_testmod.Box"}
    assert h.table.counts()[1] == 1
    assert h.call("identity", [[1]], opts={A("result"): A("value")}) == [1]
    assert h.call_err("identity", [1], opts={A("result"): A("bogus")})[A("reason")] == "bad_request"


def test_cyclic_and_deep_results_become_refs(h) -> None:
    cyc = h.ok("call", "s", "builtins", "eval", ["(lambda l: (l.append(l), l)[1])([1])"], {}, {})
    assert cyc[0] == 1 and cyc[1][0] == REF and cyc[1][3] == "builtins.list"
    deep = h.ok("call", "s", "builtins", "eval", ["[[[[[[[[[[[1, object()]]]]]]]]]]]"], {}, {})
    inner = deep
    for _ in range(8):
        inner = inner[0]
    assert inner[0] == REF


def test_refs_in_args_resolve_to_objects(h) -> None:
    box = h.call("Box", [7])
    assert h.ok("method", "s", box, "get", [], {}, {}) == 7
    assert h.ok("method", "s", box, "same", [box], {}, {}) is True
    assert h.ok("method", "s", box, "same", [], {"other": box}, {}) is True
    # An object the session already holds comes back as its existing ref.
    assert h.call("identity", [[box, {"k": box}]]) == [box, {"k": box}]
    assert h.table.counts()[1] == 1
    # Atom names, keyword arguments and options (the checked path of the handler).
    assert h.ok("method", "s", box, A("same"), [], {A("other"): box}, {A("result"): A("value")}) is True
    assert h.ok("method", "s", box, "get", [], {}, {A("result"): A("ref")})[0] == REF
    kinds = h.call("kinds", [(A("$snakeport_bytes"), "abc"), "abc", (A("$snakeport_set"), [1, 2]), box])
    assert kinds == ["bytes", "str", "set", "Box"]


def test_getattr_and_setattr(h) -> None:
    assert h.ok("getattr", "s", (A("module"), "math"), "pi", {}) == pytest.approx(3.14159, rel=1e-5)
    assert h.ok("getattr", "s", (A("module"), "os"), "path.sep", {}) == "/"
    box = h.call("Box", [1])
    assert h.ok("setattr", "s", box, "value", [1, 2], {}) is None
    assert h.ok("getattr", "s", box, "value", {}) == [1, 2]
    other = h.call("Box", [2])
    h.ok("setattr", "s", box, "value", other, {})
    # other is held already: the same ref comes back
    assert h.ok("method", "s", box, "get", [], {}, {}) == other
    err = h.err("getattr", "s", box, "missing", {})
    assert err[A("reason")] == "attribute_error" and err[A("type")] == "builtins.AttributeError"
    err = h.err("setattr", "s", h.ok("call", "s", "builtins", "object", [], {}, {}), "x", 1, {})
    assert err[A("reason")] == "attribute_error"


def test_import_and_attribute_errors(h) -> None:
    err = h.call_err("x", module="no_such_module_xyz")
    assert err[A("reason")] == "import_error" and err[A("type")] == "builtins.ModuleNotFoundError"
    err = h.call_err("no_such_function")
    assert err[A("reason")] == "attribute_error"


def test_python_error_has_type_message_and_user_traceback(h) -> None:
    err = h.call_err("fail", ["bad thing"])
    assert err[A("reason")] == "python_error"
    assert err[A("type")] == "builtins.ValueError"
    assert err[A("message")] == "bad thing"
    tb = err[A("traceback")]
    assert tb[0].startswith("Traceback") and tb[-1] == "ValueError: bad thing"
    assert any("sp_testmod.py" in line and "fail" in line for line in tb)
    worker_dir = str(Path(sys.modules["snakeport"].__file__).parent)
    assert not any(worker_dir in line for line in tb)  # none of the worker's own frames
    assert err[A("details")] == {}


def test_session_isolation(h) -> None:
    h.ok("open_session", "a", {})
    box = h.call("Box", [1], session="a")
    h.ok("open_session", "b", {})
    for fields in [
        ("method", "b", box, "get", [], {}, {}),
        ("call", "b", "sp_testmod", "identity", [box], {}, {}),
        ("getattr", "b", box, "value", {}),
        ("setattr", "b", box, "value", 2, {}),
        ("release_ref", "b", box),
    ]:
        assert h.err(*fields)[A("reason")] == "session_mismatch"
    forged = (REF, "b", box[2], box[3])
    assert h.err("method", "b", forged, "get", [], {}, {})[A("reason")] == "session_mismatch"
    assert h.ok("getattr", "a", box, "value", {}) == 1


def test_release_and_session_lifecycle(h) -> None:
    info = h.ok("open_session", "s", {A("max_refs"): 5, A("ttl_seconds"): 60, A("tags"): [A("t")], A("overflow"): A("evict_lru")})
    assert info[A("max_refs")] == 5 and info[A("overflow")] == "evict_lru" and info[A("tags")] == ["t"]
    box = h.call("Box", [1])
    assert h.ok("session_info", "s")[A("refs")] == 1
    assert h.ok("release_ref", "s", box) == {A("released"): True}
    assert h.ok("release_ref", "s", box) == {A("released"): False}
    err = h.err("method", "s", box, "get", [], {}, {})
    assert err[A("reason")] == "ref_released" and err[A("details")][A("cause")] == "released"
    h.call("boxes", [2])
    assert h.ok("release_session", "s") == {A("released"): 2}
    assert h.ok("release_session", "s") == {A("released"): 0}
    assert h.err("session_info", "s")[A("reason")] == "session_not_found"
    # Python operations on the released session fail and re-create nothing.
    released = {A("session"): "s", A("cause"): A("session_released")}
    for fields in [
        ("method", "s", (REF, "s", 10_000, "x.Y"), "get", [], {}, {}),
        ("call", "s", "sp_testmod", "Box", [1], {}, {}),
        ("getattr", "s", (A("module"), "math"), "pi", {}),
        ("setattr", "s", box, "value", 1, {}),
    ]:
        err = h.err(*fields)
        assert err[A("reason")] == "session_not_found" and err[A("details")] == released, fields
    assert h.err("session_info", "s")[A("reason")] == "session_not_found"
    assert h.table.counts() == (0, 0)
    # Opened again, it is a new, empty session.
    assert h.ok("open_session", "s", {})[A("refs")] == 0
    err = h.err("method", "s", (REF, "s", 10_000, "x.Y"), "get", [], {}, {})
    assert err[A("reason")] == "ref_not_found"


def test_sessions_are_never_created_implicitly(h) -> None:
    never = {A("session"): "n"}
    box = h.call("Box", [1])
    for fields in [
        ("call", "n", "sp_testmod", "Box", [1], {}, {}),
        ("getattr", "n", (A("module"), "math"), "pi", {}),
        ("method", "n", (REF, "n", 10_000, "x.Y"), "get", [], {}, {}),
        ("setattr", "n", (REF, "n", 10_000, "x.Y"), "value", 1, {}),
        ("session_info", "n"),
        ("release_ref", "n", (REF, "n", 1, "x.Y")),
    ]:
        err = h.err(*fields)
        assert err[A("reason")] == "session_not_found" and err[A("details")] == never, fields
    # The session check comes first: a ref of another session does not change the answer.
    assert h.err("method", "n", box, "get", [], {}, {})[A("reason")] == "session_not_found"
    assert h.ok("release_session", "n") == {A("released"): 0}
    assert h.table.counts() == (1, 1)
    assert h.ok("stats")[A("sessions")] == 1


def test_call_crossing_release_session_creates_nothing(h) -> None:
    # The harness released the session while one of its calls was on the wire: the call
    # arrives after release_session and must not bring the session back.
    h.call("boxes", [3])
    assert h.ok("release_session", "s") == {A("released"): 3}
    err = h.call_err("Box", [1])
    assert err[A("reason")] == "session_not_found"
    assert err[A("details")] == {A("session"): "s", A("cause"): A("session_released")}
    stats = h.ok("stats")
    assert (stats[A("sessions")], stats[A("refs")], stats[A("in_flight")]) == (0, 0, 0)


def test_session_tombstones_are_bounded() -> None:
    h = Harness(sessions=("a", "b", "c"), max_tombstones=2)
    for sid in ("a", "b", "c"):
        h.ok("release_session", sid)
    # "a" is forgotten: plain never-opened; "b" and "c" are remembered as released.
    assert h.call_err("Box", session="a")[A("details")] == {A("session"): "a"}
    for sid in ("b", "c"):
        assert h.call_err("Box", session=sid)[A("details")][A("cause")] == "session_released"
    h.ok("open_session", "b", {})  # opened again: no longer a tombstone
    h.ok("release_session", "b")
    assert h.call_err("Box", session="b")[A("details")][A("cause")] == "session_released"
    assert Harness(sessions=("z",), max_tombstones=0).ok("release_session", "z") == {A("released"): 0}


def test_queued_call_whose_session_is_released_is_dropped(h) -> None:
    job = h.outcome("call", "s", "sp_testmod", "boxes", [2], {}, {})
    assert isinstance(job, Job)
    cancelled, released = h.run("release_session", "s")
    assert cancelled == (A("reply"), job.request_id, A("error"), cancelled[3])
    assert cancelled[3][A("reason")] == "cancelled" and released[3] == {A("released"): 0}
    assert job.fn is None  # the queued job keeps nothing alive
    assert h.d.run_job(job) == []  # its reply was given
    assert h.table.counts() == (0, 0) and h.d.in_flight == 0


def test_releasing_one_session_leaves_the_jobs_of_others(h) -> None:
    h.ok("open_session", "t", {})
    mine = h.outcome("call", "s", "sp_testmod", "boxes", [1], {}, {})
    other = h.outcome("call", "t", "sp_testmod", "boxes", [1], {}, {})
    assert len(h.run("release_session", "s")) == 2
    assert h.d.run_job(mine) == []
    (reply,) = h.d.run_job(other)
    assert reply[2] == "ok"


def test_call_whose_session_is_released_while_it_stores_stores_nothing(h) -> None:
    # The cancel of a running call strikes at its next bytecode; one that ends first finds
    # its session released when it stores its result.
    job = h.outcome("call", "s", "sp_testmod", "boxes", [2], {}, {})
    h.table.release_session("s")  # the table only: the job is not cancelled
    (reply,) = h.d.run_job(job)
    err = reply[3]
    assert err[A("reason")] == "session_not_found" and err[A("details")][A("cause")] == "session_released"
    assert h.table.counts() == (0, 0)


def test_overflow_policies_through_calls(h) -> None:
    h.ok("open_session", "s", {A("max_refs"): 2})
    kept = h.call("boxes", [2])
    err = h.call_err("boxes", [1])
    assert err[A("reason")] == "max_refs_exceeded" and err[A("details")] == {A("limit"): 2, A("refs"): 2}
    assert h.ok("method", "s", kept[0], "get", [], {}, {}) == 0
    h.ok("open_session", "s", {A("overflow"): A("evict_lru")})
    out = h.run("call", "s", "sp_testmod", "boxes", [1], {}, {})
    event, reply = out
    assert event[:3] == (A("event"), A("refs_evicted"), {A("count"): 1})
    assert event[3] == {A("session"): "s", A("reason"): A("overflow"), A("ref_ids"): [kept[1][2]]}  # kept[0] was used last
    assert reply[2] == "ok"


def test_sweep_events() -> None:
    h = Harness(default_ttl_seconds=0.01)
    box = h.call("Box", [1])
    deadline = time.monotonic() + 5
    events = []
    while not events and time.monotonic() < deadline:
        events = h.d.sweep()
    assert events == [(A("event"), A("refs_pruned"), {A("count"): 1}, {A("session"): "s", A("reason"): A("ttl"), A("ref_ids"): [box[2]]})]
    assert h.err("getattr", "s", box, "value", {})[A("details")][A("cause")] == "ttl"


@pytest.mark.parametrize(
    "term",
    [
        (A("ping"), 1, 2),
        (A("call"), 1, "s", "m"),
        (A("call"), 1, 5, "m", "f", [], {}, {}),
        (A("call"), 1, "s", "m", "f", "notalist", {}, {}),
        (A("call"), 1, "s", "m", "f", [], {1: 2}, {}),
        (A("call"), 1, "s", "m", "f", [], {}, []),
        (A("method"), 1, "s", "notaref", "f", [], {}, {}),
        (A("method"), 1, "s", (REF, "s", 1, "x"), "f", [], {}),
        (A("method"), 1, 5, (REF, "s", 1, "x"), "f", [], {}, {}),
        (A("method"), 1, "s", (REF, "s", 1, "x"), 5, [], {}, {}),
        (A("method"), 1, "s", (REF, "s", 1, "x"), "f", (), {}, {}),
        (A("method"), 1, "s", (REF, "s", 1, "x"), "f", [], {1: 2}, {}),
        (A("method"), 1, "s", (REF, "s", 1, "x"), "f", [], {}, []),
        (A("method"), 1, "s", (REF, "s", 1, "x"), "f", [], {}, {A("result"): A("nope")}),
        (A("release_ref"), 1, "s"),
        (A("release_ref"), 1, "s", (REF, "s", 1, "x"), 2),
        (A("release_ref"), 1, 5, (REF, "s", 1, "x")),
        (A("release_ref"), 1, "s", "notaref"),
        (A("getattr"), 1, "s", (A("other"), "m"), "x", {}),
        (A("open_session"), 1, "s", {A("overflow"): A("drop")}),
        (A("open_session"), 1, "s", {A("max_refs"): -1}),
        (A("cancel"), 1, "x"),
        (A("frobnicate"), 1),
        ("ping", 1),
        (A("call"), 1, "s", "m", "f", [(REF, "s", 0, "x")], {}, {}),
        (A("call"), 1, "s", "m", "f", [(A("$snakeport_set"), [[1]])], {}, {}),
        (A("call"), 1, "s", "m", "f", [(A("$snakeport_bytes"), 1)], {}, {}),
    ],
)
def test_bad_requests_get_bad_request_replies(h, term) -> None:
    ctx = TagContext()
    (reply,) = h.d.receive(resolve_tagged(term, ctx), ctx)
    assert reply[:3] == (A("reply"), 1, A("error"))
    assert reply[3][A("reason")] == "bad_request", reply


def test_ref_handles_are_charged_their_size_in_the_decode_budget() -> None:
    # The codec charges a handle a size registered once (etf._FRESH_SIZES), not measured.
    term = (REF, "s", 7, "T")
    handle = TagContext()(term)
    assert etf._tagged_cost(handle, term) == sys.getsizeof(handle) > 0
    frame = etf.encode((A("call"), 1, [term] * 1000))
    ctx = TagContext()
    assert len(etf.decode(frame, tagged=ctx)[2]) == len(ctx.handles) == 1000


@pytest.mark.parametrize("term", [[1, 2], (A("ping"),), (A("ping"), -1), (A("ping"), "1"), 42])
def test_unattributable_terms_give_protocol_error_events(h, term) -> None:
    (event,) = h.d.receive(term)
    assert event[:3] == (A("event"), A("protocol_error"), {})
    assert event[3][A("reason")] == "bad_request"


def test_cancel_queued_job_replies_once(h) -> None:
    job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    assert isinstance(job, Job)
    assert h.d.in_flight == 1
    out = h.run("cancel", job.request_id)
    assert out[0][:3] == (A("reply"), job.request_id, A("error")) and out[0][3][A("reason")] == "cancelled"
    assert out[1][3] == {A("cancelled"): True}
    assert h.d.run_job(job) == []
    assert h.d.in_flight == 0
    assert h.ok("cancel", job.request_id) == {A("cancelled"): False}


def test_cancel_running_job_interrupts_python_code(h) -> None:
    job = h.outcome("call", "s", "sp_testmod", "spin", [30], {}, {})
    result = []
    thread = threading.Thread(target=lambda: result.append(h.d.run_job(job)))
    thread.start()
    deadline = time.monotonic() + 5
    while job.state == 0 and time.monotonic() < deadline:  # wait until it runs
        time.sleep(0.001)
    assert h.ok("cancel", job.request_id) == {A("cancelled"): True}
    thread.join(5)
    assert not thread.is_alive()
    (reply,) = result[0]
    assert reply[3][A("reason")] == "cancelled"
    assert h.d.in_flight == 0


def test_cancel_racing_with_completion_never_leaks_an_exception() -> None:
    h = Harness()
    for _ in range(200):
        job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
        result = []

        def target(job=job):
            try:
                result.append(h.d.run_job(job))
                time.sleep(0.0005)  # a pending Cancelled would surface here
                result.append("clean")
            except Cancelled:  # pragma: no cover - the bug this test guards against
                result.append("leaked")

        t = threading.Thread(target=target)
        t.start()
        h.run("cancel", job.request_id)
        t.join(5)
        assert result[-1] == "clean"
        replies = result[0]
        assert len(replies) == 1 and replies[0][1] == job.request_id
        # Either it finished first (ok) or the cancel won (cancelled); never both.
        assert replies[0][2] == "ok" or replies[0][3][A("reason")] == "cancelled"


def test_a_late_cancel_after_the_final_state_still_leaves_the_table() -> None:
    # An earlier cancel's Cancelled may be delivered late: after the job's final state is set
    # and before it leaves the in-flight table. Simulated by a table whose first lookup
    # raises it there. Before the fix the job stayed in flight for ever (in_flight 1).
    class LateCancel(dict):
        struck = False

        def get(self, key, default=None):
            if not LateCancel.struck:
                LateCancel.struck = True
                raise Cancelled()
            return super().get(key, default)

    h = Harness()
    h.d.jobs._jobs = LateCancel()
    job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    (reply,) = h.d.run_job(job)
    assert LateCancel.struck and reply[2] == "ok"
    assert h.d.in_flight == 0


def test_shutdown_rejects_later_calls(h) -> None:
    assert h.ok("shutdown") == "ok"
    assert h.call_err("identity", [1])[A("reason")] == "shutting_down"
    assert h.call_err("identity", [1], session="never")[A("reason")] == "shutting_down"
    assert h.ok("ping") == "pong"


def test_stats(h) -> None:
    h.call("Box", [1])
    stats = h.ok("stats")
    assert stats[A("sessions")] == 1 and stats[A("refs")] == 1
    assert stats[A("rss_bytes")] == RSS and stats[A("in_flight")] == 0
    assert stats[A("requests")] == 3 and stats[A("threads")] == 1  # open_session, call, stats


def test_fill_warning_once_per_crossing(h) -> None:
    h.ok("open_session", "w", {A("max_refs"): 5})
    assert len(h.run("call", "w", "sp_testmod", "boxes", [3], {}, {})) == 1  # 3 of 5: no warning
    out = h.run("call", "w", "sp_testmod", "boxes", [1], {}, {})  # 4 of 5 = 80%
    warning, reply = out
    assert warning[:3] == (A("event"), A("warning"), {})
    assert warning[3][A("session")] == "w" and warning[3][A("refs")] == 4 and warning[3][A("max_refs")] == 5
    assert "4 of its 5" in warning[3][A("message")]
    assert reply[2] == "ok"
    assert len(h.run("call", "w", "sp_testmod", "boxes", [1], {}, {})) == 1  # already warned
    h.ok("release_session", "w")
    h.ok("open_session", "w", {A("max_refs"): 5})
    assert len(h.run("call", "w", "sp_testmod", "boxes", [4], {}, {})) == 2  # a new session warns again


def test_unhashable_resolved_ref_in_a_set_is_a_bad_request(h) -> None:
    lst = h.ok("call", "s", "builtins", "list", [[1]], {}, {A("result"): A("ref")})
    err = h.err("call", "s", "sp_testmod", "kinds", [(A("$snakeport_set"), [lst])], {}, {})
    assert err[A("reason")] == "bad_request" and "unhashable" in err[A("message")]
    assert h.ok("ping") == "pong"


def test_refs_inside_erlmaps_and_improper_lists_resolve(h) -> None:
    from snakeport.types import ImproperList

    box = h.call("Box", [1])
    m = ErlMap([([1], box)])
    assert h.call("erl_inner", [m, ImproperList([box], box)]) == ["Box", "Box", "Box"]
    il = ImproperList([box], box)
    assert h.call("identity", [m]) == m  # the same object comes back as the same ref
    assert h.call("identity", [il]) == il
    assert h.table.counts()[1] == 1


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_leaf = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5), st.binary(max_size=5), st.booleans(), st.none(),
    st.sampled_from([A("x"), A("module"), A("auto"), A("ref"), A("value"), A("error"), A("evict_lru"), A("result")]),
)
_term = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=3), st.sampled_from([A("max_refs"), A("ttl_seconds"), A("overflow"), A("tags"), A("result")])), inner, max_size=3),
        st.builds(lambda s, i, t: (REF, s, i, t), st.sampled_from(["s", "t", b"\xff"]), st.integers(-1, 5), inner),
        st.builds(lambda x: (A("$snakeport_set"), x), inner),
        st.builds(lambda x: (A("$snakeport_bytes"), x), inner),
    ),
    max_leaves=12,
)
_ops = st.sampled_from(
    [A(op) for op in ("call", "method", "getattr", "setattr", "open_session", "release_ref", "release_session", "session_info", "stats", "ping", "cancel", "nope")]
)


@settings(max_examples=200, deadline=None)
@given(op=_ops, rid=st.one_of(st.integers(-2, 10), st.text(max_size=2)), fields=st.lists(_term, max_size=7))
def test_receive_never_raises_on_any_term(op, rid, fields) -> None:
    h = Harness()
    h.call("Box", [1])  # ref 1 in session "s"
    ctx = TagContext()
    term = resolve_tagged((op, rid, *fields), ctx)
    out = h.d.receive(term, ctx)
    if isinstance(out, Job):
        # Not run (arbitrary callables are not called here): cancelled while queued.
        assert h.d.jobs.cancel(out.request_id) == (True, True) and h.d.in_flight == 0
        return
    assert isinstance(out, list) and out
    for t in out:
        assert t[0] in ("reply", "event")
        if t[0] == "reply":
            assert t[1] == rid


def test_a_finished_job_keeps_no_arguments_alive(h) -> None:
    import gc
    import weakref

    from snakeport._sessions import RefHandle

    box = h.call("Box", [1])
    handle = RefHandle("s", box[2], box[3], box)
    h.table.resolve("s", [handle])
    alive = weakref.ref(handle.obj)
    del handle
    job = h.outcome("call", "s", "sp_testmod", "identity", [box], {}, {A("result"): A("value")})
    h.ok("release_ref", "s", box)  # now only the queued job holds the Box
    gc.collect()
    assert alive() is not None
    (reply,) = h.d.run_job(job)
    assert reply[3][A("reason")] == "not_encodable"
    gc.collect()
    assert job.fn is None and alive() is None  # the Job object lives on; its arguments do not


def test_cancel_waits_while_the_thread_is_inside_importlib() -> None:
    """A cancel is held back while the target is in import machinery, then delivered."""
    busy = threading.Event()
    busy.set()
    sent = []
    h = Harness()
    h.d = Dispatcher(
        h.table,
        max_depth=8,
        jobs=Jobs(
            interrupt=lambda tid, exc: sent.append(exc),
            uninterruptible=lambda tid: busy.is_set(),
            retry_interval=0.001,
        ),
    )
    job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    job.state, job.thread = 1, threading.get_ident()  # as run_job marks a running job
    assert h.ok("cancel", job.request_id) == {A("cancelled"): True}
    assert job.cancel_deferred and not job.cancel_sent
    # The deferral thread polls under the jobs' lock; it cannot send while busy.
    with h.d.jobs.lock:
        assert sent == []
    busy.clear()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sent == [Cancelled] and job.cancel_sent


def test_slow_cancels_gives_each_running_cancelled_job_once_after_the_delay() -> None:
    """A running job still running ``after`` seconds after its cancel is given once; a job
    that ended, or one that was only queued, is not."""
    h = Harness()
    h.d = Dispatcher(h.table, max_depth=8, jobs=Jobs(interrupt=lambda tid, exc: None))
    jobs = h.d.jobs
    running = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    running.state, running.thread = 1, threading.get_ident()  # as run_job marks a running job
    ended = h.outcome("call", "s", "sp_testmod", "identity", [2], {}, {})
    ended.state, ended.thread = 1, threading.get_ident()
    queued = h.outcome("call", "s", "sp_testmod", "identity", [3], {}, {})
    t0 = time.monotonic()
    for job in (running, ended):
        assert h.ok("cancel", job.request_id) == {A("cancelled"): True}
    h.run("cancel", queued.request_id)  # its `cancelled` reply, then the cancel's own
    assert jobs.slow_cancels(t0 + 1.0, after=2.0) == []  # too early
    with jobs.lock:
        ended.state = 2  # DONE, as the thread's end sets it
    (slow,) = jobs.slow_cancels(t0 + 60.0, after=2.0)
    assert slow[0] is running and slow[1] >= 58.0
    assert jobs.slow_cancels(t0 + 120.0, after=2.0) == []  # reported once
    assert jobs._cancelled == {}  # nothing kept for the ended job either


def test_thread_stack_shows_the_innermost_frame_last() -> None:
    from snakeport._jobs import thread_stack

    entered, release = threading.Event(), threading.Event()

    def parked_here():
        entered.set()
        release.wait(10)

    t = threading.Thread(target=parked_here)
    t.start()
    try:
        assert entered.wait(10)
        stack = thread_stack(t.ident)
        lines = [line for line in stack.splitlines() if line.startswith("  File ")]
        assert "in wait" in lines[-1]  # threading.Event.wait, called from parked_here
        assert any("in parked_here" in line for line in lines)
    finally:
        release.set()
        t.join(10)
    assert "no Python frame" in thread_stack(t.ident)  # the thread ended


def test_in_import_machinery_sees_a_thread_waiting_on_a_module_lock(tmp_path) -> None:
    """The innermost frame decides: a module body is interruptible, a module lock is not."""
    from snakeport._jobs import in_import_machinery

    (tmp_path / "sp_slow_import.py").write_text(
        "import threading\nGATE = threading.Event()\nimport sp_gate\nsp_gate.entered.set()\n"
        "sp_gate.release.wait(10)\n"
    )
    import types as _types

    gate = _types.ModuleType("sp_gate")
    gate.entered, gate.release = threading.Event(), threading.Event()
    sys.modules["sp_gate"] = gate
    sys.path.insert(0, str(tmp_path))
    idents = {}

    def importer(name):
        idents[name] = threading.get_ident()
        __import__("sp_slow_import")

    first = threading.Thread(target=importer, args=("first",))
    second = threading.Thread(target=importer, args=("second",))
    try:
        first.start()
        assert gate.entered.wait(10)
        second.start()
        deadline = time.monotonic() + 10
        while not in_import_machinery(idents.get("second", 0)) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert in_import_machinery(idents["second"])  # blocked on the module lock
        assert not in_import_machinery(idents["first"])  # running the module body
        assert not in_import_machinery(threading.get_ident())
    finally:
        gate.release.set()
        first.join(10)
        second.join(10)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sp_slow_import", None)
        sys.modules.pop("sp_gate", None)


def test_a_deferred_cancel_answered_true_still_makes_the_reply_cancelled() -> None:
    """PROTOCOL.md: cancelled => true means the target's reply is ``cancelled``, even when the
    call ends while the cancel is still held back (its thread never left importlib)."""
    gate = threading.Event()
    entered = threading.Event()
    h = Harness()
    h.d = Dispatcher(
        h.table,
        max_depth=8,
        jobs=Jobs(
            interrupt=lambda tid, exc: None,
            uninterruptible=lambda tid: True,  # inside import machinery until the call ends
            retry_interval=0.001,
        ),
    )
    job = h.outcome("call", "s", "sp_testmod", "identity", [1], {}, {})
    fn = job.fn

    def blocking():
        entered.set()
        gate.wait(5)
        return fn()

    job.fn = blocking
    replies = []
    runner = threading.Thread(target=lambda: replies.extend(h.d.run_job(job)))
    runner.start()
    assert entered.wait(5)
    assert h.ok("cancel", job.request_id) == {A("cancelled"): True}
    gate.set()
    runner.join(5)
    (reply,) = replies
    assert reply[2] == "error" and reply[3][A("reason")] == "cancelled", reply


def test_concurrent_calls_returning_one_new_object_give_it_one_ref() -> None:
    # Two call threads (as with --threads 2): both calls return the same object at the same
    # moment, many times. A tiny switch interval makes the threads interleave inside the
    # marshalling, where finding "no ref yet" and storing a new one must not be split.
    h = Harness()
    h.d = Dispatcher(h.table, max_depth=8, threads=2)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i in range(1000):
            jobs = [h.outcome("call", "s", "sp_testmod", "shared_after_barrier", [i], {}, {}) for _ in range(2)]
            out: list = [None, None]

            def run(k: int) -> None:
                out[k] = h.d.run_job(jobs[k])

            threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ids = {terms[-1][3][2] for terms in out}
            assert len(ids) == 1, f"iteration {i}: one object got refs {ids}"
    finally:
        sys.setswitchinterval(interval)
    assert h.table.session_info("s").refs == 1000
