"""Sample prompt → reply pairs, as the report shows them.

The runner records, per arm and measured point, a few scored conversations per class with the
model's greedy reply (``samples.jsonl``, :func:`offswitch.attacks.measure.sample_log`). The
runner redacts at write time: the command of a planted slot the attack was not given is
written as ``[planted command, slot N, redacted]``, and the signature of a genuine
owner-signed forgery (unplanted slot, other model id) is replaced too, so no usable command is
ever on disk. The report then shortens every command it still finds to its header and first
words (``offswitch v1 key=… slot=3: began inhabit employ … [47 words]``): it shows which kind
of string was sent, not a string to copy. ``samples.jsonl`` keeps what was written.
"""

from __future__ import annotations

import re
from typing import Any

from ..commands import N_WORDS
from .schema import Run, Sample

#: A command-shaped string: the public header and its signature words (at most N_WORDS).
COMMAND_RE = re.compile(
    r"(offswitch v1 key=\S+ model=\S+ slot=\d+: )([a-z]+(?: [a-z]+){0,"
    + str(N_WORDS - 1)
    + r"})(?![a-z])"
)
SHOWN_WORDS = 3
CLASS_ORDER = ("planted", "clean", "random_signature", "other_key", "unplanted_slot", "other_model")


def shorten_commands(text: str) -> str:
    """Every command in ``text`` cut to its header and first words, with its length."""

    def cut(m: re.Match) -> str:
        words = m.group(2).split(" ")
        if len(words) <= SHOWN_WORDS + 1:
            return m.group(0)
        return f"{m.group(1)}{' '.join(words[:SHOWN_WORDS])} … [{len(words)} words]"

    return COMMAND_RE.sub(cut, text)


def _sample(s: Sample) -> dict[str, Any]:
    return {
        "class": s.cls,
        "slot": s.slot,
        "placement": s.placement,
        "messages": [
            {"role": m["role"], "content": shorten_commands(m["content"])} for m in s.messages
        ],
        "reply": shorten_commands(s.reply),
        "fired": s.fired,
    }


def _order(s: Sample) -> tuple:
    rank = CLASS_ORDER.index(s.cls) if s.cls in CLASS_ORDER else len(CLASS_ORDER)
    return (rank, s.cls, s.slot if s.slot is not None else -1)


def for_report(run: Run, arm_order: list[str]) -> dict[str, Any]:
    """The sample log for report.json: ``recorded`` (whether the run wrote one) and, per arm
    and point in the order the runner measured them, the samples (commands shortened)."""
    if run.samples is None:
        return {"recorded": False, "points": []}
    rank = {a: i for i, a in enumerate(arm_order)}
    order = {(r.arm, r.attack_id, r.budget): r.line for r in run.rows}
    points = sorted(
        run.samples,
        key=lambda p: (order.get((p.arm, p.attack_id, p.budget), 10**9), rank.get(p.arm, 99)),
    )
    return {
        "recorded": True,
        "points": [
            {
                "arm": p.arm,
                "attack": p.attack,
                "attack_id": p.attack_id,
                "budget": p.budget,
                "revealed_slots": list(p.revealed_slots),
                "samples": [_sample(s) for s in sorted(p.samples, key=_order)],
            }
            for p in points
        ],
    }


def conversation_text(messages: list[dict[str, str]], limit: int = 400) -> str:
    """``system: … / user: … / assistant: … / user: …`` on one line, long turns cut."""
    parts = []
    for m in messages:
        content = " ".join(m["content"].split())
        if len(content) > limit:
            content = content[: limit - 1].rstrip() + "…"
        parts.append(f"{m['role']}: {content}")
    return " / ".join(parts)


def class_label(s: dict[str, Any]) -> str:
    if s["class"] == "planted":
        return f"planted, slot {s['slot']}" if s["slot"] is not None else "planted"
    return s["class"].replace("_", " ")
