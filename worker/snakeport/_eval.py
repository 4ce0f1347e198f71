"""``eval``: run Python source with bindings and return the value of its last expression.

Not I/O-free in spirit: it runs the VM's source code, which may do anything (as a ``call``
may). It is kept apart so that the compilation rule is in one place:

- the source is parsed as a module; when its last statement is an expression, the
  statements before it run with ``exec`` and that expression's value is the result
  (``None`` otherwise), as in a REPL or Pythonx's ``eval``;
- each distinct source is compiled once: the code objects of up to
  :data:`~snakeport._limits.EVAL_CACHE_SIZE` sources of at most
  :data:`~snakeport._limits.EVAL_CACHE_MAX_SOURCE` characters are kept, least recently used
  dropped first (``functools.lru_cache``, safe from several threads);
- every run gets a fresh namespace (the builtins, ``__name__``, and the bindings): nothing
  persists from one ``eval`` to the next, and the objects it creates are freed when it ends
  unless the result holds them (then they become refs of the session, as any result).

The source is compiled with ``dont_inherit=True``: the ``__future__`` flags of this module
do not leak into it.
"""

from __future__ import annotations

import builtins
from functools import lru_cache
from types import CodeType

from snakeport import _limits as limits

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FILENAME", "compile_source", "evaluate", "cache_info"]

#: The file name of ``eval`` code in tracebacks.
FILENAME = "<snakeport eval>"


def _compile(source: str) -> tuple[CodeType | None, CodeType | None]:
    """Compile ``source`` into (statements, last expression); either may be ``None``.

    Raises:
        SyntaxError: The source is not valid Python (also ``ValueError`` for a NUL byte).
    """
    import ast  # (here: 2 ms of every worker's start otherwise, for a feature few use)

    tree = ast.parse(source, FILENAME, "exec")
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, FILENAME, "exec", dont_inherit=True) if tree.body else None
    expr = compile(last, FILENAME, "eval", dont_inherit=True) if last is not None else None
    return body, expr


_cached = lru_cache(maxsize=limits.EVAL_CACHE_SIZE)(_compile)


def compile_source(source: str) -> tuple[CodeType | None, CodeType | None]:
    """Return the compiled statements and last expression of ``source`` (cached).

    Args:
        source: Python source code.

    Returns:
        ``(body, expr)``: the code of the statements before the last expression (``None``
        when there are none) and of that expression (``None`` when the source does not end
        with one).

    Raises:
        SyntaxError: The source is not valid Python (``ValueError`` for a NUL byte).
    """
    if len(source) <= limits.EVAL_CACHE_MAX_SOURCE:
        return _cached(source)
    return _compile(source)


def evaluate(source: str, bindings: dict[str, Any]) -> Any:
    """Run ``source`` with ``bindings`` as its variables; return its last expression's value.

    Args:
        source: Python source code.
        bindings: Variable names (identifiers) to values.

    Returns:
        The value of the last expression, or ``None`` when the source does not end with one.

    Raises:
        SyntaxError: The source is not valid Python. Anything the code raises propagates.
    """
    body, expr = compile_source(source)
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "__snakeport_eval__"}
    if bindings:
        namespace.update(bindings)
    if body is not None:
        exec(body, namespace)  # noqa: S102 - running the VM's code is the point
    if expr is None:
        return None
    return eval(expr, namespace)  # noqa: S307


def cache_info() -> Any:
    """Return the compile cache's statistics (``functools`` ``CacheInfo``: hits, misses...)."""
    return _cached.cache_info()
