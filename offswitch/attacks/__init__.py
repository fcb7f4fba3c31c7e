"""The attack suite: one module per attack, registered by name (see :mod:`.base`).

Every module in this package that does not start with ``_`` (and is not ``arms``, ``base``,
``measure`` or ``runner``) is imported on first use, so adding an attack is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, Arm, Attack, AttackContext, AttackError, AttackResult, Spend, register

_INFRA = {"arms", "base", "measure", "runner"}
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in _INFRA:
            importlib.import_module(f"{__name__}.{mod.name}")
    _loaded = True


def get(name: str) -> type[Attack]:
    """The attack class registered as ``name``."""
    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise AttackError(
            f"unknown attack {name!r} (known: {', '.join(sorted(REGISTRY))})"
        ) from None


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def markdown_table() -> str:
    """The attack table of docs/attacks.md, generated from the registry (one row per attack:
    name, file, budget axis and which end is stronger, what it models).
    ``python scripts/attack_table.py --write`` puts it into the docs."""
    import sys

    rows = [
        "| attack | file | budget (stronger end) | what it models |",
        "|---|---|---|---|",
    ]
    for name in names():
        cls = REGISTRY[name]
        if not cls.__module__.startswith(f"{__name__}."):
            continue  # registered by a user or a test, not shipped
        file = sys.modules[cls.__module__].__file__ or ""
        rows.append(
            f"| `{name}` | {file.rsplit('/', 1)[-1]} | {cls.budget} ({cls.budget_stronger}) "
            f"| {cls.summary} |"
        )
    return "\n".join(rows) + "\n"


__all__ = [
    "REGISTRY",
    "Arm",
    "Attack",
    "AttackContext",
    "AttackError",
    "AttackResult",
    "Spend",
    "get",
    "markdown_table",
    "names",
    "register",
]
