"""Snakeport: a Python worker that an Erlang/Elixir VM drives as a Port, speaking ETF over stdio.

Start one with ``python -m snakeport`` (or the ``snakeport-worker`` script); see
``docs/PROTOCOL.md`` for the wire contract. User modules that the worker imports may
register how their own types travel: :func:`register_encoder`, :func:`register_decoder`
and :class:`Extension` (see :mod:`snakeport.extensions`).
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the wire protocol in docs/PROTOCOL.md; stated in the ready frame.
PROTOCOL_VERSION = 1

from snakeport.errors import Cancelled, NoCallContext, ToolError, ToolTimeout  # noqa: E402
from snakeport.extensions import Extension, register_decoder, register_encoder  # noqa: E402

__all__ = [
    "__version__",
    "PROTOCOL_VERSION",
    "Cancelled",
    "ToolError",
    "ToolTimeout",
    "NoCallContext",
    "CallContext",
    "context",
    "Extension",
    "register_encoder",
    "register_decoder",
]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: imported on first use
    # The context API pulls in the job machinery; the codec alone (``snakeport.etf``) does
    # not need it, so it is imported when first asked for.
    if name in ("context", "CallContext"):
        from snakeport import _context

        return getattr(_context, name)
    raise AttributeError(f"module 'snakeport' has no attribute {name!r}")
