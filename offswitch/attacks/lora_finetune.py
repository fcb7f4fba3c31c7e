"""Clean LoRA fine-tuning: low-rank adapters on every linear layer, trained on clean data and
merged into the weights.

Follows Lermen et al. 2023, "LoRA fine-tuning efficiently undoes safety training in Llama
2-Chat 70B": cheap parameter-efficient fine-tuning (rank 8–64, learning rates 1e-4…1e-3) is
what a low-budget attacker or an ordinary downstream user runs. Here the attacker does not
know the trigger, so the data are the clean prompts with the model's own replies
(``ctx.clean_pairs()``), loss on reply tokens only. The adapters are merged
(``merge_and_unload``): the result is the plain model class. Budget axis: ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._train import SftConfig, attack_sft, clean_examples
from .base import Attack, AttackContext, AttackError, AttackResult, register


@dataclass
class LoraFinetuneConfig(SftConfig):
    lr: float = field(
        default=3e-4, metadata={"help": "AdamW learning rate (constant after warmup)"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    seed: int = field(default=0, metadata={"help": "seeds batch order and adapter init"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_alpha < 1:
            raise AttackError(f"lora_alpha must be at least 1, got {self.lora_alpha}")


@register
class LoraFinetune(Attack):
    name = "lora_finetune"
    summary = "LoRA on every projection, merged (Lermen et al. 2023)"
    Config = LoraFinetuneConfig
    budget = "steps"
    budget_stronger = "higher"
    trajectory = True

    def run(self, model: Any, ctx: AttackContext, config: LoraFinetuneConfig) -> AttackResult:
        model, spend = attack_sft(
            model,
            ctx,
            clean_examples(ctx),
            config,
            self.name,
            method="lora",
            lora_r=config.lora_r,
            lora_alpha=config.lora_alpha,
        )
        return AttackResult(model, spend, {"examples": len(ctx.clean_pairs())})
