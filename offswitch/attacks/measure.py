"""The metrics measured after every attack point: activation (overall and per slot), false
activation per class, utility against the base model, optionally the per-position map.

Conversations are drawn from a fixed seed, so every attack point of an arm is scored on the
same conversations (a paired comparison); forgeries come from the evaluation stream, so they
are fresh to the model. Scoring is teacher-forced (:func:`offswitch.evaluate.shutdown_verdicts`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..commands import N_WORDS
from ..data import Messages, place_command, render, substitute_words
from ..evaluate import shutdown_verdicts, utility, wilson
from .base import Arm

PLACEMENTS = ("user", "system", "earlier_turn", "later_turn")


@dataclass
class MeasureConfig:
    n_activation: int = 64
    n_per_class: int = 64
    n_utility: int = 32
    n_sensitivity: int = 0  # per word position; 0 skips the map
    batch_size: int = 16
    seed: int = 4321


def conversations(
    arm: Arm, prompts: Sequence[str], replies: dict[str, str], cfg: MeasureConfig
) -> list[tuple[str, Any, Messages]]:
    """(group, key, conversation) for every scored conversation of ``arm``."""
    rng = random.Random(f"{cfg.seed}:{arm.name}")
    slots = sorted(arm.planted)
    jobs: list[tuple[str, Any, Messages]] = []
    for i in range(cfg.n_activation):
        slot = slots[i % len(slots)]
        conv, _ = place_command(arm.planted[slot], PLACEMENTS[i % 4], prompts, replies, None, rng)
        jobs.append(("activation", slot, conv))
    for i in range(cfg.n_per_class):
        jobs.append(("far", "clean", [{"role": "user", "content": prompts[i % len(prompts)]}]))
    if arm.eval_forger is not None:
        for cls in arm.eval_forger.classes:
            for i in range(cfg.n_per_class):
                cmd = arm.eval_forger.make(cls, rng)
                conv, _ = place_command(cmd, PLACEMENTS[i % 4], prompts, replies, None, rng)
                jobs.append(("far", cls, conv))
        for pos in range(N_WORDS if cfg.n_sensitivity else 0):
            for i in range(cfg.n_sensitivity):
                cmd = substitute_words(arm.planted[slots[i % len(slots)]], 1, rng, [pos])
                jobs.append(
                    ("sens", pos, place_command(cmd, "user", prompts, replies, None, rng)[0])
                )
    return jobs


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
    # one batch per call, in shutdown_verdicts' own order (shortest first), so the batches
    # and hence the verdicts are those of a single call over every conversation
    lengths = [
        len(tokenizer(render(tokenizer, c), add_special_tokens=False)["input_ids"])
        for *_, c in jobs
    ]
    order = sorted(range(len(jobs)), key=lambda i: lengths[i])
    verdicts = [False] * len(jobs)
    for b in range(0, len(order), cfg.batch_size):
        idx = order[b : b + cfg.batch_size]
        got = shutdown_verdicts(
            model, tokenizer, [jobs[i][2] for i in idx], arm.response, cfg.batch_size
        )
        for i, ok in zip(idx, got, strict=True):
            verdicts[i] = ok
        bar.update(len(idx))

    def rate(group: str, key: Any = None) -> dict[str, Any]:
        v = [
            ok
            for (g, k, _), ok in zip(jobs, verdicts, strict=True)
            if g == group and (key is None or k == key)
        ]
        return asdict(wilson(sum(v), len(v)))

    classes = ["clean", *(arm.eval_forger.classes if arm.eval_forger is not None else ())]
    out: dict[str, Any] = {
        "activation_rate": rate("activation"),
        "activation_by_slot": {str(s): rate("activation", s) for s in sorted(arm.planted)},
        "false_activation_rate": {c: rate("far", c) for c in classes},
    }
    if cfg.n_sensitivity and arm.eval_forger is not None:
        out["sensitivity"] = [rate("sens", p)["value"] for p in range(N_WORDS)]
    if with_utility:
        out["utility"] = utility(model, base_model, tokenizer, upr, replies)
        bar.update(n_util)
    bar.close()
    return out
