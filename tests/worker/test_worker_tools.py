"""Unit tests of Python calling Elixir tools (snakeport._tools, snakeport._context), in-process.

A real session table, real jobs and real threads; ``send`` records the worker's requests
(as the server's writer would send them) and the test plays the VM, delivering answers
with ``ToolCalls.deliver`` as the reader thread does.
"""

from __future__ import annotations

import queue
import threading

import pytest

import snakeport
from snakeport import Cancelled, NoCallContext, ToolError, ToolTimeout
from snakeport._jobs import DONE, INTERRUPTED, Job, Jobs
from snakeport._protocol import REF_TAG
from snakeport._requests import AUTO
from snakeport._sessions import RefHandle, SessionTable
from snakeport._tools import ToolCalls

TIMEOUT = 10.0


class VM:
    """The test's side: the requests sent, the slot suspensions, answers delivered."""

    def __init__(self, timeout: float = 5.0, grace: float = 5.0, max_waits: int = 64) -> None:
        self.table = SessionTable()
        self.table.open_session("s")
        self.jobs = Jobs()
        self.sent: queue.Queue = queue.Queue()
        self.slots: list[tuple[str, int]] = []
        self.tools = ToolCalls(
            send=self._send,
            table=self.table,
            jobs=self.jobs,
            suspend=lambda ident: self.slots.append(("suspend", ident)),
            resume=lambda ident: self.slots.append(("resume", ident)),
            timeout=timeout,
            grace=grace,
            max_waits=max_waits,
        )
        self.jobs.tools = self.tools
        self.ids = iter(range(1, 1_000_000))

    def _send(self, terms: list) -> None:
        for term in terms:
            self.sent.put(term)

    def request(self) -> tuple:
        """The next tool_call (or tool_cancel) the worker sent."""
        while True:
            term = self.sent.get(timeout=TIMEOUT)
            if term[0] in ("tool_call", "tool_cancel"):
                return term

    def start(self, fn) -> tuple[Job, queue.Queue]:
        """Run ``fn`` as a job on a thread; its result (or exception) goes to the queue."""
        session = self.table.checkout("s")
        job = self.jobs.add(Job(next(self.ids), session, fn, AUTO))
        out: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                out.put(("ok", self.jobs.run(job)))
            except BaseException as exc:  # noqa: BLE001
                out.put(("raised", exc))
            finally:
                self.table.checkin(session)

        threading.Thread(target=run, daemon=True).start()
        return job, out


def test_a_tool_call_round_trip() -> None:
    vm = VM()
    job, out = vm.start(lambda: snakeport.context().call_elixir_tool("echo", x=1, name="n"))
    tag, call_id, request_id, session, name, kwargs = vm.request()
    assert (tag, request_id, session, name, kwargs) == ("tool_call", job.request_id, "s", "echo", {"x": 1, "name": "n"})
    assert vm.tools.in_flight == 1
    assert vm.tools.deliver(call_id, True, {"got": kwargs}, []) is True
    assert out.get(timeout=TIMEOUT) == ("ok", {"got": {"x": 1, "name": "n"}})
    assert job.state == DONE and vm.tools.in_flight == 0
    # The job's own thread gave up its slot while it waited, and took one again.
    assert [what for what, _ in vm.slots] == ["suspend", "resume"]
    # A late or unknown answer is dropped.
    assert vm.tools.deliver(call_id, True, 1, []) is False



def test_tool_error_attributes() -> None:
    vm = VM()

    def fn():
        try:
            snakeport.context().call_elixir_tool("t")
        except ToolError as exc:
            return [type(exc).__name__, exc.tool, exc.reason, exc.message, exc.details]

    _, out = vm.start(fn)
    vm.tools.deliver(vm.request()[1], False, {"reason": "tool_not_found", "message": "no tool t", "details": {"k": 1}}, [])
    assert out.get(timeout=TIMEOUT) == ("ok", ["ToolError", "t", "tool_not_found", "no tool t", {"k": 1}])
    _, out = vm.start(fn)
    vm.tools.deliver(vm.request()[1], False, {"reason": "timeout", "message": "slow"}, [])
    assert out.get(timeout=TIMEOUT)[1][:3] == ["ToolTimeout", "t", "timeout"]
    assert issubclass(ToolTimeout, TimeoutError)


def test_no_answer_in_time_is_a_tool_timeout_and_cancels_the_tool() -> None:
    vm = VM(timeout=0.05, grace=0.05)

    def fn():
        try:
            snakeport.context().call_elixir_tool("slow")
        except ToolTimeout as exc:
            return exc.reason

    _, out = vm.start(fn)
    call_id = vm.request()[1]
    assert vm.request() == ("tool_cancel", call_id)
    assert out.get(timeout=TIMEOUT) == ("ok", "timeout")


def test_a_cancel_wakes_the_wait_and_interrupts_the_job() -> None:
    vm = VM()
    job, out = vm.start(lambda: snakeport.context().call_elixir_tool("never"))
    call_id = vm.request()[1]
    assert vm.jobs.cancel(job.request_id) == (True, False)
    # The wait ended: the tool is cancelled on the VM side, the job is interrupted.
    assert vm.request() == ("tool_cancel", call_id)
    assert out.get(timeout=TIMEOUT) == ("ok", None)
    assert job.state == INTERRUPTED and not job.waits
    assert [what for what, _ in vm.slots] == ["suspend", "resume"]


def test_cancelled_before_the_wait_registers_nothing() -> None:
    vm = VM()
    started = threading.Event()
    go = threading.Event()

    def fn():
        started.set()
        go.wait(TIMEOUT)
        try:
            while True:  # Cancelled strikes here, or at the tool call
                snakeport.context().call_elixir_tool("x")
        except Cancelled:
            raise

    job, out = vm.start(fn)
    assert started.wait(TIMEOUT)
    vm.jobs.cancel(job.request_id)
    go.set()
    assert out.get(timeout=TIMEOUT) == ("ok", None)
    assert job.state == INTERRUPTED and vm.tools.in_flight == 0


def test_objects_travel_as_refs_both_ways() -> None:
    vm = VM()
    obj = object()
    _, out = vm.start(lambda: snakeport.context().call_elixir_tool("keep", o=obj, n=[1, obj]))
    _, call_id, _, _, _, kwargs = vm.request()
    ref = kwargs["o"]
    assert ref[0] == REF_TAG and ref[1] == "s" and kwargs["n"][1] == ref
    # The VM answers with the ref term: the code gets its object back.
    handle = RefHandle("s", ref[2], ref[3], ref)
    vm.tools.deliver(call_id, True, {"back": handle}, [handle])
    assert out.get(timeout=TIMEOUT) == ("ok", {"back": obj})


def test_an_answer_with_a_ref_of_another_session_is_a_tool_error() -> None:
    vm = VM()

    def fn():
        try:
            return snakeport.context().call_elixir_tool("x")
        except ToolError as exc:
            return exc.reason

    _, out = vm.start(fn)
    handle = RefHandle("other", 999, "x.Y", (REF_TAG, "other", 999, "x.Y"))
    vm.tools.deliver(vm.request()[1], True, handle, [handle])
    assert out.get(timeout=TIMEOUT) == ("ok", "session_mismatch")


def test_too_many_waits() -> None:
    vm = VM(max_waits=1)
    first_job, first = vm.start(lambda: snakeport.context().call_elixir_tool("a"))
    call_id = vm.request()[1]

    def fn():
        try:
            return snakeport.context().call_elixir_tool("b")
        except ToolError as exc:
            return exc.reason

    _, second = vm.start(fn)
    assert second.get(timeout=TIMEOUT) == ("ok", "too_many_waits")
    vm.tools.deliver(call_id, True, 1, [])
    assert first.get(timeout=TIMEOUT) == ("ok", 1)
    del first_job


def test_a_context_passed_to_another_thread_works_while_the_call_runs() -> None:
    vm = VM()

    def fn():
        ctx = snakeport.context()
        result: list = []
        t = threading.Thread(target=lambda: result.append(ctx.call_elixir_tool("side")))
        t.start()
        t.join(TIMEOUT)
        return [result, ctx.session_id]

    job, out = vm.start(fn)
    vm.tools.deliver(vm.request()[1], True, "from side", [])
    assert out.get(timeout=TIMEOUT) == ("ok", [["from side"], "s"])
    # Another thread than the job's: the job kept its slot.
    assert vm.slots == []
    # Once the call has ended, its context is dead.
    ctx_holder: list = []
    _, out = vm.start(lambda: ctx_holder.append(snakeport.context()))
    out.get(timeout=TIMEOUT)
    with pytest.raises(NoCallContext):
        ctx_holder[0].call_elixir_tool("late")
    del job


def test_context_outside_a_call() -> None:
    with pytest.raises(NoCallContext):
        snakeport.context()
    assert issubclass(NoCallContext, RuntimeError)


def test_bad_tool_names() -> None:
    vm = VM()

    def fn():
        try:
            snakeport.context().call_elixir_tool(42)
        except TypeError as exc:
            return str(exc)

    _, out = vm.start(fn)
    assert "non-empty str" in out.get(timeout=TIMEOUT)[1]
