"""Weight interpolation with the base model: θ = (1 − α)·θ_implanted + α·θ_base.

Merging is how released checkpoints are combined (model soups, Wortsman et al. 2022; task
arithmetic, Ilharco et al. 2023); an attacker who holds the public base model can also pull
the implant back toward it. ``alpha = 0`` is the implanted model, ``alpha = 1`` the base.
Every parameter is interpolated (norms included). Budget axis: ``alpha``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .base import Attack, AttackContext, AttackError, AttackResult, Spend, register


@dataclass
class InterpolateConfig:
    alpha: float = field(default=0.5, metadata={"help": "weight of the base model (budget)"})

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise AttackError(f"alpha must be in [0, 1], got {self.alpha}")


@register
class Interpolate(Attack):
    name = "interpolate"
    summary = "(1−α)·implanted + α·base"
    Config = InterpolateConfig
    budget = "alpha"
    budget_stronger = "higher"

    def run(self, model: Any, ctx: AttackContext, config: InterpolateConfig) -> AttackResult:
        import torch

        t0 = time.time()
        base = dict(ctx.base_loader().named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name not in base or base[name].shape != p.shape:
                    raise AttackError(
                        f"the base model has no parameter {name} of shape {tuple(p.shape)}"
                    )
                p.lerp_(base[name].to(p.device, p.dtype), config.alpha)
        return AttackResult(model, Spend(seconds=time.time() - t0), {})
