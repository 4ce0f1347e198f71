"""Awaitable results on the worker's event loop (``_async``), against the real worker."""

from __future__ import annotations

import time

from sp_client import A


def reason(reply) -> str:
    return reply[3][A("reason")]


def test_asyncio_is_imported_only_by_the_first_awaitable(worker) -> None:
    assert worker.call("sp_testmod", "asyncio_imported") is False
    assert worker.call("operator", "add", [1, 2]) == 3
    assert worker.call("sp_testmod", "asyncio_imported") is False
    assert worker.call("asyncio", "sleep", [0.01, 5]) == 5
    assert worker.call("sp_testmod", "asyncio_imported") is True


def test_results_errors_and_refs(worker) -> None:
    assert worker.call("sp_testmod", "async_add", [1, 2, 0.01]) == 3
    box = worker.call("sp_testmod", "async_box", [7])
    assert box[3] == "sp_testmod.Box"
    assert worker.ok("method", "s1", box, "get", [], {}, {}) == 7
    err = worker.error("call", "s1", "sp_testmod", "async_fail", ["boom"], {}, {})
    assert err[A("reason")] == "python_error" and err[A("type")] == "builtins.ValueError"
    assert any("async_fail" in line for line in err[A("traceback")])
    ctx = worker.call("sp_testmod", "async_context")
    assert ctx[0] == "s1" and type(ctx[1]) is int


def test_many_awaits_at_once_hold_no_slot_or_thread(worker) -> None:
    # --threads 1: 500 calls each sleeping 0.5 s end in about one sleep, not 250 s.
    started = time.monotonic()
    ids = [worker.request("call", "s1", "sp_testmod", "async_add", [i, 1, 0.5], {}, {}) for i in range(500)]
    assert worker.ok("stats")[A("in_flight")] >= 1
    results = [worker.wait(rid)[3] for rid in ids]
    assert results == [i + 1 for i in range(500)]
    assert time.monotonic() - started < 30
    # A plain call runs while coroutines wait.
    ids = [worker.request("call", "s1", "sp_testmod", "async_add", [1, 1, 1.0], {}, {}) for _ in range(10)]
    assert worker.call("operator", "add", [2, 2]) == 4
    assert all(rid not in worker.replies for rid in ids)
    for rid in ids:
        worker.wait(rid)


def test_cancel_cancels_the_task_and_its_finally_runs(worker) -> None:
    rid = worker.request("call", "s1", "sp_testmod", "async_guarded", ["c", 30], {}, {})
    deadline = time.monotonic() + 10
    while ("c", "start") not in worker.call("sp_testmod", "async_log"):
        assert time.monotonic() < deadline
    assert worker.ok("cancel", rid) == {A("cancelled"): True}
    assert reason(worker.wait(rid)) == "cancelled"
    assert worker.call("sp_testmod", "async_log") == [("c", "start"), ("c", "cancelled"), ("c", "finally")]
    assert worker.ok("stats")[A("in_flight")] == 0
    assert worker.ok("session_info", "s1")[A("refs")] == 0


def test_a_coroutine_blocking_the_loop_does_not_block_control_requests(worker) -> None:
    rid = worker.request("call", "s1", "sp_testmod", "async_block", [3], {}, {})
    worker.call("sp_testmod", "sleep", [0.2])  # the coroutine is blocking the loop by now
    started = time.monotonic()
    for _ in range(5):
        assert worker.ok("ping") == "pong"
    assert worker.ok("cancel", rid) == {A("cancelled"): True}
    assert time.monotonic() - started < 2 and rid not in worker.replies
    # The cancel takes effect when the coroutine gives the loop back (here: it ends).
    # Meanwhile, 1 s after the cancel, the worker logs where the loop's thread is.
    report = worker.read_stderr_until("after it was cancelled", "async_block")
    assert f"request {rid} (session s1) still runs" in report
    assert "(an awaited coroutine: this is the event loop's thread)" in report
    assert reason(worker.wait(rid)) == "cancelled"


def test_tools_from_a_coroutine(worker) -> None:
    rid = worker.request("call", "s1", "sp_testmod", "async_tool", ["double"], {}, {})
    call = worker.wait_request()
    assert call[4] == "double" and call[5] == {"x": 1} and call[2] == rid
    worker.tool_reply(call[1], "ok", 2)
    assert worker.wait(rid)[3] == 2
    # The blocking call_elixir_tool would stop the loop: refused.
    err = worker.error("call", "s1", "sp_testmod", "async_sync_tool", ["double"], {}, {})
    assert err[A("type")] == "snakeport.errors.ToolError" and "blocks_event_loop" in err[A("message")]


def test_shutdown_cancels_awaiting_calls(worker) -> None:
    rid = worker.request("call", "s1", "sp_testmod", "async_guarded", ["s", 30], {}, {})
    deadline = time.monotonic() + 10
    while ("s", "start") not in worker.call("sp_testmod", "async_log"):
        assert time.monotonic() < deadline
    worker.ok("shutdown")
    assert reason(worker.wait(rid)) == "cancelled"
    assert worker.close() == 0


def test_systemexit_in_a_coroutine_fails_its_call_only(worker) -> None:
    err = worker.error("call", "s1", "sp_testmod", "async_exit", [], {}, {})
    assert err[A("reason")] == "python_error" and err[A("type")] == "builtins.SystemExit"
    assert worker.call("sp_testmod", "async_add", [1, 2, 0.01]) == 3
    assert worker.ok("ping") == "pong"


def test_an_awaitable_attribute_is_a_value_not_awaited(worker) -> None:
    # getattr reads; only calls (call, method, eval) await what they return.
    coro = worker.ok("getattr", "s1", (A("module"), "sp_testmod"), "PENDING_FUTURE", {})
    assert coro[3] == "_asyncio.Future"
