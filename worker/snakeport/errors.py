"""The one exception hierarchy of the snakeport package.

Every error that snakeport raises on purpose derives from :class:`SnakeportError`, with one
exception by design: :class:`Cancelled`, which the worker raises inside a running call, is
a ``BaseException`` and not an ``Exception``, so that user code's ``except Exception:``
does not swallow it. The codec's rule: decoding arbitrary bytes raises only
:class:`DecodeError` (never ``IndexError``, ``struct.error``, ``RecursionError`` or
``MemoryError``). A frame over the size limit is not an exception: the frame splitter
reports it as an event (``_framing.Oversized``) and the worker answers ``frame_too_large``.
"""

from __future__ import annotations

__all__ = [
    "SnakeportError",
    "DecodeError",
    "EncodeError",
    "RequestError",
    "NotAllowed",
    "ToolError",
    "ToolTimeout",
    "NoCallContext",
    "Cancelled",
]


class SnakeportError(Exception):
    """Base class of every error raised by snakeport (:class:`Cancelled` aside)."""


class DecodeError(SnakeportError, ValueError):
    """The bytes are not a valid External Term Format term within the limits.

    Attributes:
        data: The offending input (possibly a prefix of it), or ``None``.
        offset: Byte offset at which decoding failed, or ``None``.
    """

    def __init__(self, message: str, *, data: bytes | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.offset = offset


class EncodeError(SnakeportError, TypeError):
    """A Python value cannot be encoded as an Erlang term.

    Attributes:
        value: The value that could not be encoded.
    """

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class RequestError(SnakeportError):
    """A request failed in a way that is reported to the VM as an error reply.

    Raised and caught inside the worker (the reasons are those of ``docs/PROTOCOL.md``);
    :class:`snakeport._jobs.Failure` adds the Python exception that caused it.

    Attributes:
        reason: The protocol reason atom text (``"ref_not_found"``, ``"bad_request"``, ...).
        details: Extra key/value data put in the error reply's ``details`` map.
    """

    def __init__(self, reason: str, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


class NotAllowed(RequestError):
    """A name or a module refused by the allow-list (reason ``not_allowed``).

    Here rather than in :mod:`snakeport._allow` (which re-exports it), so that the worker
    imports the allow-list only when it has one.
    """

    def __init__(self, message: str) -> None:
        super().__init__("not_allowed", message)


class ToolError(SnakeportError):
    """An Elixir tool called from Python (``CallContext.call_elixir_tool``) failed.

    Attributes:
        tool: The tool's name.
        reason: Why, as the harness says it (``"tool_error"``: the tool raised, threw,
            exited or returned ``{:error, reason}``; ``"tool_not_found"``; ``"timeout"``;
            ``"caller_exited"``; ``"bad_result"``), or the worker's own reason
            (``"max_refs_exceeded"``, ``"not_encodable"``, ``"too_many_waits"``, a ref error
            of the answer, ...).
        details: Extra data from the harness (a dict), ``{}`` when none.
    """

    def __init__(self, tool: str, reason: str, message: str, *, details: dict | None = None) -> None:
        super().__init__(f"Elixir tool {tool!r} failed ({reason}): {message}")
        self.tool = tool
        self.reason = reason
        self.message = message
        self.details = details or {}


class ToolTimeout(ToolError, TimeoutError):
    """An Elixir tool did not answer in time (the harness's ``:tool_timeout``)."""


class NoCallContext(SnakeportError, RuntimeError):
    """``snakeport.context()`` was used outside a call made by the VM, or after it ended."""


class Cancelled(BaseException):
    """Raised inside a running call when the VM cancels it (``{cancel, Id, TargetId}``).

    It derives from :class:`BaseException`, not :class:`Exception`, so that user code's
    ``except Exception:`` does not swallow it. The worker raises it asynchronously in the
    thread that runs the call, at the call's next bytecode; a call blocked in C code sees it
    when it returns to Python.
    """
