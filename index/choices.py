"""The one check of a name chosen from a fixed set: ``unknown <kind> <name>; choose one of: a, b, c``.

Every named choice of the project (global, local and match configurations, index columns, dataset splits,
tunable parameters, ...) is checked here, so a wrong name always fails the same way, with the valid names in
the order the table lists them. It lives in ``index/`` because every other package imports ``index/`` and
``index/`` imports none of them; it knows nothing but names.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


def unknown_name(kind: str, name: Any, choices: Iterable[Any], extra: str = "") -> ValueError:
    """The error for ``name`` not among ``choices`` (``extra``: appended, e.g. how names combine)."""
    listed = ", ".join(str(c) for c in choices)
    return ValueError(f"unknown {kind} {name!r}; choose one of: {listed}{extra}")


def check_name(name: Any, choices: Iterable[Any], kind: str) -> Any:
    """``name`` when it is one of ``choices``, else :func:`unknown_name`'s ValueError."""
    choices = list(choices)
    if name not in choices:
        raise unknown_name(kind, name, choices)
    return name


def lookup(table: Mapping[str, T], name: Any, kind: str) -> T:
    """``table[name]``, or :func:`unknown_name`'s ValueError listing the table's keys."""
    if not isinstance(name, str) or name not in table:
        raise unknown_name(kind, name, table)
    return table[name]
