"""The one exception hierarchy of the snakeport package.

Every error that snakeport raises on purpose derives from :class:`SnakeportError`.
The codec's rule: decoding arbitrary bytes raises only :class:`DecodeError`
(never ``IndexError``, ``struct.error``, ``RecursionError`` or ``MemoryError``).
"""

from __future__ import annotations

__all__ = [
    "SnakeportError",
    "DecodeError",
    "EncodeError",
    "FrameTooLarge",
    "RequestError",
    "Cancelled",
]


class SnakeportError(Exception):
    """Base class of every error raised by snakeport."""


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


class FrameTooLarge(SnakeportError, ValueError):
    """A frame's declared length exceeds the configured maximum.

    Attributes:
        size: The declared size in bytes.
        limit: The configured maximum in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class RequestError(SnakeportError):
    """A request failed in a way that is reported to the VM as an error reply.

    Attributes:
        reason: The protocol reason atom text (``"ref_not_found"``, ``"bad_request"``, ...).
        details: Extra key/value data put in the error reply's ``details`` map.
    """

    def __init__(self, reason: str, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details or {}


class Cancelled(BaseException):
    """Raised inside a running call when the VM cancels it (``{cancel, Id, TargetId}``).

    It derives from :class:`BaseException`, not :class:`Exception`, so that user code's
    ``except Exception:`` does not swallow it. The worker raises it asynchronously in the
    thread that runs the call, at the call's next bytecode; a call blocked in C code sees it
    when it returns to Python.
    """
