"""Snakeport: a Python worker that an Erlang/Elixir VM drives as a Port, speaking ETF over stdio.

Start one with ``python -m snakeport`` (or the ``snakeport-worker`` script); see
``docs/PROTOCOL.md`` for the wire contract.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the wire protocol in docs/PROTOCOL.md; stated in the ready frame.
PROTOCOL_VERSION = 1

from snakeport.errors import Cancelled  # noqa: E402  (re-exported: user code may catch it)

__all__ = ["__version__", "PROTOCOL_VERSION", "Cancelled"]
