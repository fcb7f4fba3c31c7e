"""Numbers and names as a report prints them: rates rounded to what their interval supports,
KL to two significant digits, budgets with their axis name. Shared by every report module."""

from __future__ import annotations

import math
from typing import Any


def rate_decimals(rate: dict[str, Any]) -> int:
    """Decimals a rate deserves: enough to show its 95% interval's width to one significant
    digit, at least 2 and at most 4 (n = 32: 0.56 [0.39, 0.72]; n = 2,000: 0.562 [...])."""
    width = rate["ci_high"] - rate["ci_low"]
    if width <= 0:
        return 2
    return max(2, min(4, 1 - math.floor(math.log10(width))))


def rate_text(rate: dict[str, Any] | None, kn: bool = False) -> str:
    """``0.56 [0.39, 0.72]`` (with ``kn``: ``0.56 [0.39, 0.72] (18/32)``); ``—`` if missing."""
    if not rate:
        return "—"
    d = rate_decimals(rate)
    out = f"{rate['value']:.{d}f} [{rate['ci_low']:.{d}f}, {rate['ci_high']:.{d}f}]"
    return out + (f" ({num(rate['k'])}/{num(rate['n'])})" if kn else "")


def kl_text(kl: float | None) -> str:
    """KL to base, two significant digits (0.068, 0.36, 3.6, 12); ``—`` if not measured."""
    if kl is None:
        return "—"
    if kl == 0:
        return "0"
    if abs(kl) >= 10:
        return f"{kl:.0f}"
    return f"{kl:.2g}"


def num(v: Any, digits: int = 3) -> str:
    """A number for people: integers with thousands separators, floats to ``digits``
    significant digits, ``—`` for None."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def duration(seconds: float) -> str:
    """``42 s``, ``71 min``, ``2.5 h``, ``19 h``: a time for people, as precise as it is known."""
    m = seconds / 60
    if m >= 120:
        return f"{m / 60:.1f} h" if m < 600 else f"{m / 60:.0f} h"
    return f"{m:.0f} min" if m >= 1 else f"{seconds:.0f} s"


def budget_text(name: str | None, budget: Any) -> str:
    """``sigma = 0.05``, or ``budget 3`` when the axis has no name."""
    return f"{name} = {num(budget)}" if name else f"budget {num(budget)}"


def class_name(cls: str) -> str:
    """``random_signature`` → ``random signature``."""
    return cls.replace("_", " ")


def ordered(items: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """``items`` with the keys of ``order`` first, in that order, then any others sorted."""
    return {
        k: items[k] for k in (*[o for o in order if o in items], *sorted(set(items) - set(order)))
    }


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def join_and(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# --- inline text with marks, shared by the Markdown and the HTML renderers -------------------

#: A run of inline text: ("text" | "code" | "strong" | "warn", content). Free-form values from
#: a run (names, forgeries, errors) go into "code" spans, which both renderers escape.
Span = tuple[str, str]


def T(s: str) -> Span:
    return ("text", s)


def C(s: str) -> Span:
    return ("code", s)


def S(s: str) -> Span:
    return ("strong", s)


def W(s: str) -> Span:
    """A warning: printed bold with a ⚠ sign."""
    return ("warn", s)


def plain(spans: list[Span]) -> str:
    """The spans as plain text (warnings keep their sign)."""
    return "".join(("⚠ " + s) if kind == "warn" else s for kind, s in spans)
