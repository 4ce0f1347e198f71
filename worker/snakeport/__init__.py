"""Snakeport: a Python worker that an Erlang/Elixir VM drives as a Port, speaking ETF over stdio.

Start one with ``python -m snakeport`` (or the ``snakeport-worker`` script); see
``docs/PROTOCOL.md`` for the wire contract. User modules that the worker imports may
register how their own types travel: :func:`register_encoder`, :func:`register_decoder`
and :class:`Extension` (see :mod:`snakeport.extensions`).
"""

from __future__ import annotations

# The worker's start (issue 8): modules imported before the ready frame keep their
# import-time work small. Their annotations are never evaluated (``from __future__ import
# annotations``), so they import ``typing`` only for type checkers, under
# ``TYPE_CHECKING = False; if TYPE_CHECKING:`` (``typing`` itself costs ~3 ms of a start; the
# name is what type checkers look for); named tuples are ``collections.namedtuple``; regular
# expressions that few paths use are compiled on first use. ``bench/profile/cold_start.py``
# measures a start against another checkout.

__version__ = "0.1.0"

#: Version of the wire protocol in docs/PROTOCOL.md; stated in the ready frame.
PROTOCOL_VERSION = 1

from snakeport.errors import Cancelled, NoCallContext, ToolError, ToolTimeout  # noqa: E402

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
    # Imported on first use. The context API pulls in the job machinery; the codec alone
    # (``snakeport.etf``) does not need it.
    if name in ("context", "CallContext"):
        from snakeport import _context

        return getattr(_context, name)
    # The extension API imports the conversion machinery: `import snakeport` alone (the
    # harness's diagnosis of a worker that failed to start reads PROTOCOL_VERSION) stays cheap.
    if name in ("Extension", "register_encoder", "register_decoder"):
        from snakeport import extensions

        return getattr(extensions, name)
    raise AttributeError(f"module 'snakeport' has no attribute {name!r}")
