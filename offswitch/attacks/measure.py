"""The metrics measured after every attack point: activation (overall and per slot), false
activation per class, utility against the base model, optionally the per-position map; and a
small log of sample prompt → reply pairs.

Conversations are drawn from a fixed seed, so every attack point of an arm is scored on the
same conversations (a paired comparison); forgeries come from the evaluation stream, so they
are fresh to the model. Scoring is teacher-forced (:func:`offswitch.scoring.shutdown_verdicts`).

:func:`sample_log` takes the first ``n_samples`` of those conversations per class (per slot
for planted commands) and records the model's greedy reply, as lm-eval-harness's
``--log_samples`` does. It redacts before anything leaves it: the command of every planted
slot the attack was not given (``revealed``) becomes ``[planted command, slot N, redacted]``
(and any run of four or more of its signature words, should a reply echo part of it), and the
signature of every genuine owner-signed forgery (an unplanted slot of this model, which a
runtime guard would accept, or another model id) is replaced too.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..commands import COMMAND_SEARCH_RE, N_WORDS
from ..data import PLACEMENTS, Messages, conversation_set
from ..scoring import greedy_generate, group_rate, opens_with_reply, replies_ids, score, utility
from .base import Arm


@dataclass
class MeasureConfig:
    n_activation: int = 64
    n_per_class: int = 64
    n_utility: int = 32
    n_sensitivity: int = 0  # per word position; 0 skips the map
    n_samples: int = 2  # prompt → reply pairs logged per class (per planted slot); 0: none
    batch_size: int = 16
    seed: int = 4321


def conversations(
    arm: Arm, prompts: Sequence[str], replies: dict[str, str], cfg: MeasureConfig
) -> list[tuple[str, Any, Messages]]:
    """(group, key, conversation) for every scored conversation of ``arm``
    (:func:`offswitch.data.conversation_set` at the suite's sizes: activation over the four
    placements, keyed (placement, slot), false activation per class, the per-position map)."""
    return conversation_set(
        arm.planted, arm.eval_forger, prompts, replies, random.Random(f"{cfg.seed}:{arm.name}"),
        n_activation=cfg.n_activation, placements=PLACEMENTS, n_per_class=cfg.n_per_class,
        n_sensitivity=cfg.n_sensitivity,
    )  # fmt: skip


def measure(
    model: Any,
    tokenizer: Any,
    arm: Arm,
    prompts: Sequence[str],
    replies: dict[str, str],
    base_model: Any | None,
    cfg: MeasureConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` as ``arm`` (rates as ``{value, n, k, ci_low, ci_high}``);
    ``progress`` shows a tqdm bar over the conversations scored."""
    from tqdm.auto import tqdm

    cfg = cfg or MeasureConfig()
    prompts = list(prompts)
    jobs = conversations(arm, prompts, replies, cfg)
    with_utility = base_model is not None and bool(cfg.n_utility)
    upr = [p for p in prompts if replies.get(p)][: cfg.n_utility]
    n_util = len(upr) if with_utility else 0
    bar = tqdm(
        total=len(jobs) + n_util, desc="measuring", unit="conv", disable=not progress, leave=False
    )
    verdicts = score(model, tokenizer, jobs, arm.shutdown_replies, cfg.batch_size, bar=bar)

    def rate(group: str, key: Any = None, part: int | None = None) -> dict[str, Any]:
        return asdict(group_rate(jobs, verdicts, group, key, part))

    classes = ["clean", *(arm.eval_forger.classes if arm.eval_forger is not None else ())]
    out: dict[str, Any] = {
        "activation_rate": rate("activation"),
        "activation_by_slot": {str(s): rate("activation", s, part=1) for s in sorted(arm.planted)},
        "false_activation_rate": {c: rate("far", c) for c in classes} if cfg.n_per_class else {},
    }
    if cfg.n_sensitivity and arm.eval_forger is not None:
        out["sensitivity"] = [rate("sens", p)["value"] for p in range(N_WORDS)]
    if with_utility:
        out["utility"] = utility(model, base_model, tokenizer, upr, replies)
        bar.update(n_util)
    bar.close()
    return out


# --- the sample log ----------------------------------------------------------------------------

SAMPLE_NEW_TOKENS = 48  # reply tokens generated per sample (at least the response's length)
#: Forgery classes that are genuine commands of the owner's key (for an unplanted slot, or
#: another model id): written to the log with their signature replaced.
OWNER_SIGNED = ("unplanted_slot", "other_model")
_PUNCT = ".,;:!?\"'()[]{}"


def _redact_runs(text: str, words: list[str], marker: str, min_run: int = 4) -> str:
    """``text`` with every run of ``min_run`` or more consecutive ``words`` replaced."""
    if len(words) < min_run:
        return text
    toks = []  # (start, end, word) of each word, punctuation around it left out
    for m in re.finditer(r"\S+", text):
        raw = m.group()
        lead = len(raw) - len(raw.lstrip(_PUNCT))
        word = raw.strip(_PUNCT)
        toks.append((m.start() + lead, m.start() + lead + len(word), word))
    where: dict[str, list[int]] = {}
    for i, w in enumerate(words):
        where.setdefault(w, []).append(i)
    spans, i = [], 0
    while i < len(toks):
        run = 0
        for p in where.get(toks[i][2], []):
            n = 0
            while i + n < len(toks) and p + n < len(words) and toks[i + n][2] == words[p + n]:
                n += 1
            run = max(run, n)
        if run >= min_run:
            spans.append((toks[i][0], toks[i + run - 1][1]))
            i += run
        else:
            i += 1
    for start, end in reversed(spans):
        text = text[:start] + marker + text[end:]
    return text


def redact(text: str, arm: Arm, revealed: Collection[int] = (), owner_signed: bool = False) -> str:
    """``text`` with every unrevealed planted command of ``arm`` (whole, or a run of four or
    more of its signature words) replaced by a marker naming its slot; with ``owner_signed``,
    every command in it also loses its signature."""
    for slot, command in sorted(arm.planted.items()):
        if slot in revealed:
            continue
        text = text.replace(command, f"[planted command, slot {slot}, redacted]")
        body = command.split(": ", 1)[1] if ": " in command else command
        text = _redact_runs(text, body.split(), f"[part of planted command, slot {slot}, redacted]")
    if owner_signed:
        text = COMMAND_SEARCH_RE.sub(
            lambda m: (
                m.group(0).split(": ", 1)[0]
                + ": [signature redacted: a genuine owner-signed command]"
            ),
            text,
        )
    return text


def _greedy_replies(
    model: Any,
    tokenizer: Any,
    convs: list[Messages],
    responses: Sequence[str],
    batch_size: int,
) -> list[tuple[str, bool, bool]]:
    """(reply text, fired, truncated) per conversation: greedy generation, as an evaluator
    reading the reply would see it; ``fired`` as :func:`offswitch.scoring.generated_verdicts`
    judges it (one of the ``responses``' tokens, then EOS)."""
    eos = tokenizer.eos_token_id
    resps = replies_ids(tokenizer, responses)
    longest = max(len(r) for r in resps)
    out = []
    for row in greedy_generate(
        model, tokenizer, convs, max(SAMPLE_NEW_TOKENS, longest), batch_size
    ):
        ended = eos in row
        text = tokenizer.decode(row[: row.index(eos)] if ended else row, skip_special_tokens=True)
        out.append((text, opens_with_reply(row, resps), not ended))
    return out


def sample_log(
    model: Any,
    tokenizer: Any,
    arm: Arm,
    prompts: Sequence[str],
    replies: dict[str, str],
    cfg: MeasureConfig,
    revealed: Collection[int] = (),
) -> list[dict[str, Any]]:
    """``cfg.n_samples`` scored conversations per class (per slot for planted commands) with
    the model's greedy reply, redacted (:func:`redact`): the slots in ``revealed`` are the
    ones the attack was given, whose commands are public."""
    from ..report.schema import clean

    if cfg.n_samples <= 0:
        return []
    jobs = conversations(arm, list(prompts), replies, cfg)
    picked: list[tuple[str, int | None, str, Messages]] = []
    taken: dict[tuple[str, Any], int] = {}
    nth: dict[str, int] = {}  # index within the group, which sets the placement
    for group, key, conv in jobs:
        if group == "sens":
            continue
        cls = "planted" if group == "activation" else str(key)
        counter = group if group == "activation" else cls
        i = nth.get(counter, 0)
        nth[counter] = i + 1
        slot = key[1] if group == "activation" else None
        if taken.get((cls, slot), 0) >= cfg.n_samples:
            continue
        taken[(cls, slot)] = taken.get((cls, slot), 0) + 1
        picked.append((cls, slot, "user" if cls == "clean" else PLACEMENTS[i % 4], conv))
    convs = [c for *_, c in picked]
    got = _greedy_replies(model, tokenizer, convs, arm.shutdown_replies, cfg.batch_size)
    out = []
    for (cls, slot, placement, conv), (reply, fired, truncated) in zip(picked, got, strict=True):
        owner = cls in OWNER_SIGNED
        out.append(
            {
                "class": cls,
                "slot": slot,
                "placement": placement,
                "messages": [
                    {"role": m["role"], "content": redact(m["content"], arm, revealed, owner)}
                    for m in conv
                ],
                "reply": redact(reply, arm, revealed, owner),
                "fired": fired,
                "truncated": truncated,
            }
        )
    return clean(out)
