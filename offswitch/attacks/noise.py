"""Gaussian weight noise: add N(0, (sigma · std(W))²) to every weight matrix W.

The crudest weight perturbation — what careless storage, a lossy format or a deliberate
"smudge the weights" removal attempt does. A memorised trigger that needs precise weights may
fail before utility does; the point of the sweep is to see which goes first. Noise is relative
to each matrix's own standard deviation, so one ``sigma`` means the same thing for an
embedding and a projection. Budget axis: ``sigma``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._weights import weight_matrices
from .base import Attack, AttackContext, AttackError, AttackResult, Spend, register


@dataclass
class NoiseConfig:
    sigma: float = field(
        default=0.05, metadata={"help": "noise std as a fraction of each matrix's std (budget)"}
    )
    embeddings: bool = field(default=True, metadata={"help": "also perturb embeddings/head"})
    seed: int = field(default=0, metadata={"help": "seeds the noise"})

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise AttackError(f"sigma must be at least 0, got {self.sigma}")


@register
class GaussianNoise(Attack):
    name = "noise"
    summary = "Gaussian noise relative to each matrix's std"
    Config = NoiseConfig
    budget = "sigma"
    budget_stronger = "higher"

    def run(self, model: Any, ctx: AttackContext, config: NoiseConfig) -> AttackResult:
        import torch

        t0 = time.time()
        gen = torch.Generator().manual_seed(ctx.rng(f"{self.name}:{config.seed}").getrandbits(62))
        n = 0
        with torch.no_grad():
            for _, w in weight_matrices(model, config.embeddings):
                std = w.float().std().item()
                noise = torch.randn(w.shape, generator=gen, dtype=torch.float32)
                w.add_((noise * (config.sigma * std)).to(w.dtype).to(w.device))
                n += w.numel()
        return AttackResult(model, Spend(seconds=time.time() - t0), {"weights_perturbed": n})
