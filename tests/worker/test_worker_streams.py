"""Streams: a call's iterator pulled in batches (``batch_size`` on call/method, ``iter_next``,
``iter_close``), against the real worker; and the batch puller itself (``_streams``)."""

from __future__ import annotations

import itertools

import pytest
from sp_client import A

from snakeport._streams import Batch, close_iterator, estimate, first_batch, next_batch

REF = A("$snakeport_ref")


def opts(size, **more):
    return {A("batch_size"): size, **{A(k): v for k, v in more.items()}}


def log(worker, tag):
    return [what for t, what in worker.call("sp_testmod", "stream_log") if t == tag]


# ----------------------------------------------------------------- the puller


def test_next_batch_stops_at_the_count_and_at_the_end() -> None:
    it = iter(range(10))
    assert next_batch(it, 4, 1 << 20) == Batch(None, [0, 1, 2, 3], False, None)
    assert next_batch(it, 4, 1 << 20) == Batch(None, [4, 5, 6, 7], False, None)
    assert next_batch(it, 4, 1 << 20) == Batch(None, [8, 9], True, None)
    assert next_batch(it, 4, 1 << 20) == Batch(None, [], True, None)


def test_next_batch_keeps_the_items_before_an_exception() -> None:
    def gen():
        yield from range(20)
        raise KeyError("x")

    batch = next_batch(gen(), 100, 1 << 20)
    assert batch.items == list(range(20)) and batch.done and type(batch.error) is KeyError


def test_next_batch_stops_early_at_the_byte_budget() -> None:
    items = itertools.repeat("x" * 1000)
    batch = next_batch(items, 10_000, 10_000)
    # About 10 items of ~1 KB, never the whole count; at most one item over the budget.
    assert 9 <= len(batch.items) <= 11 and not batch.done
    # Small items: the count is the limit.
    assert len(next_batch(itertools.count(), 10_000, 1 << 20).items) == 10_000


def test_estimate_reads_built_in_types_only() -> None:
    class Loud:
        def __len__(self):  # never called
            raise AssertionError

    assert estimate(1) == estimate(None) == estimate(1.5) == 9
    assert estimate("abc") == 8 and estimate(b"ab") == 7
    assert estimate([1, "ab"]) == 5 + 9 + 7
    assert estimate({"a": 1}) == 5 + 6 + 9
    assert estimate(Loud()) == 60
    deep = [[[[[1, 2, 3]]]]]
    assert estimate(deep) < 100


def test_first_batch_takes_iter_and_keeps_a_running_iterator() -> None:
    batch = first_batch([1, 2, 3], 2, 1 << 20)
    assert batch.items == [1, 2] and not batch.done and batch.first and batch.iterator is not None
    batch = first_batch([1, 2], 5, 1 << 20)
    assert batch.items == [1, 2] and batch.done and batch.first and batch.iterator is None
    with pytest.raises(TypeError):
        first_batch(3, 5, 1 << 20)


def test_close_iterator_closes_generators_only_and_never_raises() -> None:
    seen = []

    def gen():
        try:
            yield 1
        finally:
            seen.append("finally")
            raise RuntimeError("cleanup failed")

    g = gen()
    next(g)
    assert close_iterator(g) is True and seen == ["finally"]
    assert close_iterator(iter([1])) is False


# ----------------------------------------------------------------- the worker


def test_a_stream_in_batches_then_done_and_released(worker) -> None:
    first = worker.call("sp_testmod", "counting", [5, "a"], opts=opts(2))
    assert first[A("items")] == [0, 1] and first[A("done")] is False
    ref = first[A("ref")]
    assert ref[0] == REF and ref[3] == "builtins.generator"
    assert worker.ok("iter_next", "s1", ref, opts(2)) == {A("items"): [2, 3], A("done"): False}
    assert worker.ok("iter_next", "s1", ref, opts(2)) == {A("items"): [4], A("done"): True}
    # Exhausted: the worker released the ref itself.
    assert log(worker, "a") == ["start", "exhausted", "finally"]
    assert worker.ok("session_info", "s1")[A("refs")] == 0
    assert worker.error("iter_next", "s1", ref, opts(2))[A("reason")] == "ref_released"


def test_a_stream_done_in_its_first_batch_keeps_no_ref(worker) -> None:
    value = worker.call("builtins", "range", [3], opts=opts(10))
    assert value == {A("items"): [0, 1, 2], A("done"): True, A("ref"): None}
    assert worker.ok("session_info", "s1")[A("refs")] == 0


def test_iter_close_closes_the_generator_and_releases_it(worker) -> None:
    ref = worker.call("sp_testmod", "held_counting", [100, "c"], opts=opts(3))[A("ref")]
    assert worker.ok("iter_close", "s1", ref) == {A("released"): True}
    assert log(worker, "c") == ["start", "finally"]
    assert worker.ok("session_info", "s1")[A("refs")] == 0
    # Idempotent.
    assert worker.ok("iter_close", "s1", ref) == {A("released"): False}


def test_dropped_generators_are_closed(worker) -> None:
    # release_session, release_ref and the TTL sweep close the generators they drop, even
    # those that something else still holds (held_counting keeps a reference).
    worker.ok("open_session", "r", {})
    worker.call("sp_testmod", "held_counting", [100, "sess"], opts=opts(3), session="r")
    assert worker.ok("release_session", "r") == {A("released"): 1}
    assert log(worker, "sess")[-1] == "finally"

    ref = worker.call("sp_testmod", "held_counting", [100, "ref"], opts=opts(3))[A("ref")]
    assert worker.ok("release_ref", "s1", ref) == {A("released"): True}
    assert log(worker, "ref")[-1] == "finally"

    worker.ok("open_session", "t", {A("ttl_seconds"): 0.2})
    worker.call("sp_testmod", "held_counting", [100, "ttl"], opts=opts(3), session="t")
    worker.wait_event("refs_pruned", pred=lambda ev: ev[3][A("session")] == "t")
    assert log(worker, "ttl")[-1] == "finally"


def test_the_items_before_an_exception_then_its_error(worker) -> None:
    value = worker.call("sp_testmod", "failing_after", [4], opts=opts(10))
    assert value[A("items")] == [0, 1, 2, 3] and value[A("done")] is True and value[A("ref")] is None
    error = value[A("error")]
    assert error[A("reason")] == "python_error" and error[A("type")] == "builtins.ValueError"
    assert "failed after 4" in error[A("message")]
    # Also in a later batch: the iterator's ref is released then.
    ref = worker.call("sp_testmod", "failing_after", [4], opts=opts(3))[A("ref")]
    value = worker.ok("iter_next", "s1", ref, opts(10))
    assert value[A("items")] == [3] and value[A("done")] and A("error") in value
    assert worker.ok("session_info", "s1")[A("refs")] == 0


def test_items_are_marshalled_like_results(worker) -> None:
    counter = worker.call("sp_testmod", "Counter", [3])
    value = worker.ok("method", "s1", counter, "items", [], {}, opts(2))
    boxes = value[A("items")]
    assert all(b[0] == REF and b[3] == "sp_testmod.Box" for b in boxes)
    assert worker.ok("method", "s1", boxes[1], "get", [], {}, {}) == 1
    rest = worker.ok("iter_next", "s1", value[A("ref")], opts(2))
    assert len(rest[A("items")]) == 1 and rest[A("done")]
    # result => value refuses objects; result => ref makes each item a ref.
    err = worker.error("call", "s1", "sp_testmod", "boxes", [2], {}, opts(5, result=A("value")))
    assert err[A("reason")] == "not_encodable"
    value = worker.call("builtins", "range", [2], opts=opts(5, result=A("ref")))
    assert [i[3] for i in value[A("items")]] == ["builtins.int", "builtins.int"]


def test_bad_requests(worker) -> None:
    box = worker.call("sp_testmod", "Box", [1])
    err = worker.error("iter_next", "s1", box, opts(2))
    assert err[A("reason")] == "python_error" and "not iterable" in err[A("message")]
    lst = worker.call("sp_testmod", "identity", [[1, 2]], opts={A("result"): A("ref")})
    assert "not an iterator" in worker.error("iter_next", "s1", lst, opts(2))[A("message")]
    err = worker.error("call", "s1", "builtins", "range", [3], {}, opts(0))
    assert err[A("reason")] == "bad_request" and "batch_size" in err[A("message")]
    err = worker.error("call", "s1", "builtins", "range", [3], {}, opts(2, batch_bytes=-1))
    assert err[A("reason")] == "bad_request" and "batch_bytes" in err[A("message")]
    assert worker.error("iter_next", "s1", "nope", {})[A("reason")] == "bad_request"
    assert worker.error("iter_close", "s1", 1)[A("reason")] == "bad_request"
    assert worker.error("call", "s1", "operator", "add", [1, 2], {}, opts(2))[A("type")] == "builtins.TypeError"


def test_a_batch_is_cancelled_like_a_call(worker) -> None:
    ref = worker.call("sp_testmod", "slow_gen", [30], opts=opts(1))[A("ref")]
    rid = worker.request("iter_next", "s1", ref, opts(5))
    assert worker.ok("ping") == "pong"
    worker.ok("cancel", rid)
    assert worker.wait(rid)[3][A("reason")] == "cancelled"
