"""``snakeport.context()``: what Python code running in a call knows about that call.

The worker runs each ``call``, ``method``, ``getattr``, ``setattr`` and ``eval`` as a job
(:mod:`snakeport._jobs`), which names itself in a thread-local while its code runs.
:func:`context` reads it and returns a :class:`CallContext`: the call's session and request
id, and :meth:`CallContext.call_elixir_tool`, which runs an Elixir function registered in
the harness (``tools: [...]`` or ``Snakeport.register_tool/3``) and returns its value.

Example (the module of a call made from Elixir)::

    import snakeport

    def bump(by):
        ctx = snakeport.context()
        count = ctx.call_elixir_tool("get_session_state", key="count") or 0
        ctx.call_elixir_tool("set_session_state", key="count", value=count + by)
        return count + by
"""

from __future__ import annotations


from snakeport._async import CURRENT_JOB
from snakeport._jobs import CURRENT
from snakeport.errors import NoCallContext

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["CallContext", "context"]


class CallContext:
    """The context of one running call (see :func:`context`).

    Valid while the call runs, from any thread (pass it to your own threads: ``context()``
    works only on the thread that runs the call). Once the call has ended, its methods raise
    :class:`~snakeport.errors.NoCallContext`.

    Attributes:
        session_id: The call's session id (``str``, or ``bytes`` when not UTF-8).
        request_id: The call's request id (the VM's).
    """

    __slots__ = ("_job", "_tools", "session_id", "request_id")

    def __init__(self, job: Any, tools: Any) -> None:
        self._job = job
        self._tools = tools
        self.session_id = job.session.session_id
        self.request_id = job.request_id

    def call_elixir_tool(self, name: str, /, **kwargs: Any) -> Any:
        """Run the Elixir tool ``name`` with ``kwargs`` and return its value (synchronous).

        The tool runs in an Elixir process of the harness, bounded by its ``:tool_timeout``;
        its value comes back as data (refs of this session become their objects again).
        Arguments that are not plain data travel as refs of this call's session. While it
        waits, the call gives up its place among the worker's ``--threads`` running calls,
        so that the tool may call back into Python (even with ``threads: 1``).

        Built in: ``get_session_state(key=..., default=None)`` and
        ``set_session_state(key=..., value=...)``, state kept by the harness for this
        session and dropped with it.

        Args:
            name: The tool's name.
            **kwargs: Its keyword arguments (the tool gets a map with string keys).

        Returns:
            The tool's value.

        Raises:
            ToolError: The tool raised, threw, exited or returned ``{:error, reason}``, is not
                registered, or its answer cannot be used (``reason`` says which).
            ToolTimeout: It did not answer within the harness's ``:tool_timeout``.
            NoCallContext: The call has ended.
        """
        tools = self._tools
        if tools is None:
            raise NoCallContext("this worker cannot call Elixir tools (no VM connection)")
        return tools.call(self._job, name, kwargs)

    async def acall_elixir_tool(self, name: str, /, **kwargs: Any) -> Any:
        """Run the Elixir tool ``name`` from a coroutine, without blocking the event loop.

        As :meth:`call_elixir_tool` (same arguments, value and errors), but awaitable: the
        wait happens on a thread of the event loop's default executor, so the worker's other
        coroutines run meanwhile. Use it in ``async def`` calls (``call_elixir_tool`` is
        refused on the event loop's thread, with ``ToolError`` ``blocks_event_loop``).

        Args:
            name: The tool's name.
            **kwargs: Its keyword arguments.

        Returns:
            The tool's value.
        """
        import asyncio
        import functools

        tools = self._tools
        if tools is None:
            raise NoCallContext("this worker cannot call Elixir tools (no VM connection)")
        call = functools.partial(tools.call, self._job, name, kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def __repr__(self) -> str:
        return f"CallContext(session_id={self.session_id!r}, request_id={self.request_id!r})"


def context() -> CallContext:
    """Return the context of the call running on this thread.

    Inside a coroutine that a call returned (see :mod:`snakeport._async`), it is that call's
    context (and that of the tasks the coroutine creates).

    Returns:
        The :class:`CallContext`.

    Raises:
        NoCallContext: No call made by the VM runs on this thread (e.g. at import time of a
            module, or in a thread the call started: pass it the context instead).
    """
    job = getattr(CURRENT, "job", None)
    if job is not None:
        return CallContext(job, CURRENT.jobs.tools)
    running = CURRENT_JOB.get()
    if running is None:
        raise NoCallContext(
            "snakeport.context() is only available on the thread that runs a call made by the VM"
        )
    return CallContext(*running)
