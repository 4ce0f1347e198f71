"""Python calling Elixir tools, eval and expire_session through the real worker process.

The test plays the VM: it answers the worker's ``tool_call`` requests with ``tool_reply``
frames, and makes nested calls back into the worker while a call waits for its tool.
"""

from __future__ import annotations

import pytest
from sp_client import A

from snakeport import etf


def test_tool_call_round_trip(worker) -> None:
    rid = worker.request("call", "s1", "sp_testmod", "tool", ["echo"], {"x": 1, "y": "two"}, {})
    tag, call_id, request_id, session, name, kwargs = worker.wait_request()
    assert (tag, request_id, session, name, kwargs) == ("tool_call", rid, "s1", "echo", {"x": 1, "y": "two"})
    worker.tool_reply(call_id, "ok", {"echoed": kwargs})
    assert worker.wait(rid)[2:] == ("ok", {"echoed": {"x": 1, "y": "two"}})


@pytest.mark.parametrize("threads", ["1", "2"])
def test_nested_calls_do_not_deadlock(make_worker, threads) -> None:
    w = make_worker("--threads", threads)
    # call -> tool -> call -> tool -> call: each level waits for the next one's reply.
    outer = w.request("call", "s1", "sp_testmod", "tool", ["descend"], {}, {})
    first = w.wait_request()
    middle = w.request("call", "s1", "sp_testmod", "tool", ["descend"], {}, {})
    second = w.wait_request()
    inner = w.request("call", "s1", "operator", "add", [1, 2], {}, {})
    assert w.wait(inner)[3] == 3
    # Control requests are answered while two calls wait.
    assert w.ok("stats")["in_flight"] == 2
    w.tool_reply(second[1], "ok", 3)
    assert w.wait(middle)[3] == 3
    w.tool_reply(first[1], "ok", 4)
    assert w.wait(outer)[3] == 4
    assert w.ok("stats")["in_flight"] == 0


def test_cancel_during_a_tool_wait(make_worker) -> None:
    w = make_worker("--threads", "1")
    rid = w.request("call", "s1", "sp_testmod", "tool", ["never"], {}, {})
    call_id = w.wait_request()[1]
    assert w.ok("cancel", rid) == {"cancelled": True}
    assert w.wait(rid)[3]["reason"] == "cancelled"
    assert w.wait_request("tool_cancel") == ("tool_cancel", call_id)
    # The slot is free again; a late answer is dropped silently.
    w.tool_reply(call_id, "ok", 1)
    assert w.call("operator", "add", [1, 2]) == 3


def test_tool_errors_and_unusable_answers(make_worker) -> None:
    w = make_worker("--max-depth", "5")
    rid = w.request("call", "s1", "sp_testmod", "tool_error", ["t"], {}, {})
    w.tool_reply(w.wait_request()[1], "error", {A("reason"): A("tool_error"), A("message"): "it raised"})
    assert w.wait(rid)[3] == ["ToolError", "tool_error", "t", "Elixir tool 't' failed (tool_error): it raised"]

    # A malformed tool_reply: the waiting call gets bad_reply, the VM gets no reply frame.
    rid = w.request("call", "s1", "sp_testmod", "tool_error", ["t"], {}, {})
    call_id = w.wait_request()[1]
    w.send((A("tool_reply"), call_id, A("maybe"), 1))
    assert w.wait(rid)[3][1] == "bad_reply"

    # An answer nested deeper than --max-depth cannot be decoded: same, no reply frame.
    rid = w.request("call", "s1", "sp_testmod", "tool_error", ["t"], {}, {})
    call_id = w.wait_request()[1]
    deep: list = []
    for _ in range(10):
        deep = [deep]
    w.send_frame(etf.encode((A("tool_reply"), call_id, A("ok"), deep)))
    assert w.wait(rid)[3][1] == "decode_error"

    # A tool_reply nobody waits for is dropped; garbage ids give protocol_error events.
    w.tool_reply(999, "ok", 1)
    w.send((A("tool_reply"), 1000, A("maybe"), 1))
    assert w.wait_event("protocol_error")[3]["reason"] == "bad_request"
    ids_before = set(w.replies)
    assert w.ok("ping") == "pong"
    assert len(set(w.replies) - ids_before) == 1  # only the ping's reply


def test_eval_through_the_worker(worker) -> None:
    assert worker.ok("eval", "s1", "import math\nx = a + b\nmath.sqrt(x)", {"a": 9, "b": 7}, {}) == 4.0
    assert worker.error("eval", "s1", "1 +", {}, {})["type"] == "builtins.SyntaxError"
    # eval code may call tools too.
    rid = worker.request("eval", "s1", "import snakeport\nsnakeport.context().call_elixir_tool('t', v=v)", {"v": 5}, {})
    call_id = worker.wait_request()[1]
    worker.tool_reply(call_id, "ok", 6)
    assert worker.wait(rid)[3] == 6


def test_expire_session_releases_only_idle_sessions(make_worker) -> None:
    w = make_worker("--threads", "2")
    w.ok("open_session", "busy", {})
    box = w.call("sp_testmod", "Box", [1], session="busy")
    rid = w.request("call", "busy", "sp_testmod", "sleep", [0.5], {}, {})
    assert w.ok("expire_session", "busy", 0) == {"expired": False, "idle_ms": 0}
    assert w.wait(rid)[3] == "slept"
    idle = w.ok("expire_session", "busy", 60_000)
    assert idle["expired"] is False and 0 <= idle["idle_ms"] < 60_000
    assert w.ok("expire_session", "busy", 0) == {"expired": True, "released": 1}
    err = w.error("method", "busy", box, "get", [], {}, {})
    assert err["reason"] == "session_not_found" and err["details"]["cause"] == "session_released"
