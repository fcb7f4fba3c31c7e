"""The attack suite: one module per attack, registered by name (see :mod:`.base`).

Every module in this package that does not start with ``_`` (and is not ``base``,
``measure`` or ``runner``) is imported on first use, so adding an attack is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, Arm, Attack, AttackContext, AttackError, AttackResult, Spend, register

_INFRA = {"base", "measure", "runner"}
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


__all__ = [
    "REGISTRY",
    "Arm",
    "Attack",
    "AttackContext",
    "AttackError",
    "AttackResult",
    "Spend",
    "get",
    "names",
    "register",
]
