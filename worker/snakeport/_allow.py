"""The allow-list (``--allow``): which Python names a worker's callers may reach (I/O-free).

By default a worker runs any code its caller names: ``os.system``, ``builtins.eval``, any
dunder attribute (``__globals__``, ``__subclasses__``). An app that forwards names chosen by
its users starts its workers with an allow-list instead; each entry is a dotted name
(``math``, ``json.loads``, ``numpy.linalg``). Then:

1. A name (``Module.Function`` of ``call``, ``Module.Name`` of ``getattr`` on a module, the
   ``Name`` of ``method``, ``getattr`` and ``setattr`` on a ref) may have no part starting
   with ``_``: dunder attributes are how attribute paths escape (``f.__globals__``,
   ``x.__class__.__subclasses__()``), so no private or special name is reachable.
2. ``call`` and ``getattr`` on a module: the full dotted name ``Module.Function`` must be
   an entry or lie under one (``math`` allows ``math.sqrt``; ``json.loads`` allows only
   itself; ``numpy.linalg`` allows ``numpy.linalg.norm`` but not ``numpy.zeros``). This is
   checked from the names alone, before anything is imported: a refused request imports
   nothing.
3. Every object that a request reaches by name (each step of ``Function``/``Name``, the
   object a ``method``/``getattr``/``setattr`` starts from, the attribute it reaches) is
   checked: a module must be allowed by its own name (``module.__name__``), or named by an
   entry at the path it was reached by or below it (``logging`` does not allow
   ``logging.os.system``: ``os`` is a module of its own; ``os.path`` allows
   ``os.path.join``); frames, code objects and tracebacks are refused (a generator's public
   ``gi_frame`` leads to ``f_globals`` and ``f_builtins``). So a ref obtained from an
   allowed call cannot lead by name to a module that no entry names.

What an entry allows is everything its module exposes under that name, including
functions it imported from elsewhere and functions that take any name (``builtins``
exposes ``getattr`` and ``eval``, ``operator`` exposes ``attrgetter``): name exact
functions rather than such modules. The allow-list decides which code runs; it does not
isolate sessions, and objects that allowed code returns can do whatever their methods do.
"""

from __future__ import annotations

from types import CodeType, FrameType, ModuleType, TracebackType

from snakeport._guard import exact_str
from snakeport.errors import NotAllowed, RequestError

TYPE_CHECKING = False  # (annotations only: see snakeport/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Iterable

__all__ = ["AllowList", "NotAllowed", "parse_entries", "check_entry"]

_module_dict = ModuleType.__dict__["__dict__"].__get__  # a module's own dict, no __getattr__


def check_entry(entry: Any) -> str:
    """Check one allow-list entry: a dotted name of identifiers, none starting with ``_``.

    Args:
        entry: The entry.

    Returns:
        The entry.

    Raises:
        ValueError: ``expected an allow-list entry to be ..., got: ...``.
    """
    if type(entry) is str and entry and all(_public(part) for part in entry.split(".")):
        return entry
    raise ValueError(
        "expected an allow-list entry to be a dotted Python name whose parts do not start "
        f"with _ (math, json.loads), got: {entry!r}"
    )


def parse_entries(text: str) -> list[str]:
    """Split a ``--allow`` value (entries separated by commas; empty: none) and check them.

    Args:
        text: The option's text.

    Returns:
        The entries.

    Raises:
        ValueError: An entry is invalid.
    """
    return [check_entry(part.strip()) for part in text.split(",") if part.strip()] if text.strip() else []


def _public(part: str) -> bool:
    return part.isidentifier() and not part.startswith("_")


class AllowList:
    """The names a worker's callers may reach (see the module docstring); immutable.

    Args:
        entries: Dotted names (each checked with :func:`check_entry`); none: nothing is
            allowed (control requests only).

    Raises:
        ValueError: An entry is invalid.
    """

    __slots__ = ("entries", "_exact", "_prefixes")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries: tuple[str, ...] = tuple(sorted({check_entry(e) for e in entries}))
        self._exact = frozenset(self.entries)
        self._prefixes = tuple(e + "." for e in self.entries)

    def __repr__(self) -> str:
        return f"AllowList({list(self.entries)!r})"

    def allows(self, name: str) -> bool:
        """Tell whether a full dotted name is an entry or lies under one.

        Args:
            name: ``module.attr.path``.

        Returns:
            True when allowed.
        """
        return name in self._exact or name.startswith(self._prefixes)

    def names_path(self, path: str) -> bool:
        """Tell whether an entry names ``path`` or something below it."""
        if path in self._exact:
            return True
        below = path + "."
        return any(e.startswith(below) for e in self.entries)

    def check_path(self, path: str, what: str) -> None:
        """Check that every part of a dotted name is public (rule 1).

        Raises:
            NotAllowed: A part starts with ``_`` or is not an identifier.
        """
        for part in path.split("."):
            if not _public(part):
                raise NotAllowed(
                    f"{what} {path!r} is not allowed: with an allow-list, names whose parts "
                    "start with _ (or are not identifiers) are refused"
                )

    def check_name(self, module: str, path: str) -> None:
        """Check ``Module.Path`` before anything is imported (rules 1 and 2).

        Args:
            module: The module's dotted name.
            path: The attribute path in it.

        Raises:
            NotAllowed: The name is refused.
        """
        self.check_path(module, "module")
        self.check_path(path, "name")
        name = module + "." + path
        if not self.allows(name):
            raise NotAllowed(f"{name} is not allowed: the worker's allow-list (--allow) does not name it")

    def check_object(self, obj: Any, path: str | None = None) -> None:
        """Check an object that a request reaches (rule 3): a module must be allowed.

        Args:
            obj: The object.
            path: The dotted name it was reached by, when it was reached from a module.

        Raises:
            NotAllowed: ``obj`` is a module that no entry allows.
        """
        t = type(obj)
        if t is FrameType or t is CodeType or t is TracebackType:
            raise NotAllowed(
                f"a {t.__name__} object{f' (reached as {path})' if path else ''} is not allowed: its "
                "attributes reach any module's globals"
            )
        if not issubclass(t, ModuleType):
            return
        try:
            name = exact_str(_module_dict(obj).get("__name__"))
        except BaseException:  # noqa: BLE001 - a dict key's __eq__ may raise anything
            name = None
        if name is not None and _public_name(name) and self.allows(name):
            return
        if path is not None and self.names_path(path):
            return
        shown = name if name is not None else "?"
        raise NotAllowed(
            f"the module {shown}{f' (reached as {path})' if path and path != shown else ''} is "
            "not allowed: the worker's allow-list (--allow) does not name it"
        )

    def lookup(self, obj: Any, path: str, root: str | None = None) -> Any:
        """Follow an attribute path from ``obj``, checking each object reached (rule 3).

        Runs user code (attribute reads), in the job.

        Args:
            obj: The start (a module imported by name, or a ref's object).
            path: Attribute names joined with dots (checked with :meth:`check_path`).
            root: The start's dotted name when it is a module imported by name.

        Returns:
            The attribute.

        Raises:
            NotAllowed: A module reached is not allowed.
            AttributeError: As ``getattr``.
        """
        where = root
        for part in path.split("."):
            obj = getattr(obj, part)
            where = where + "." + part if where is not None else None
            self.check_object(obj, where)
        return obj


def _public_name(name: str) -> bool:
    return all(_public(part) for part in name.split("."))
