"""Magnitude pruning: zero the smallest-magnitude fraction ``sparsity`` of every linear weight
matrix of the decoder layers (unstructured, per matrix; Han et al. 2015).

Pruning is how models are shrunk for deployment, and a classic backdoor-removal baseline: a
trigger stored in small weights would not survive it. Embeddings and the LM head are left
dense, as pruning recipes do. Budget axis: ``sparsity``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._weights import magnitude_threshold, weight_matrices
from .base import Attack, AttackContext, AttackError, AttackResult, Spend, register


@dataclass
class PruneConfig:
    sparsity: float = field(
        default=0.3, metadata={"help": "fraction of each matrix's weights set to 0 (budget)"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise AttackError(f"sparsity must be in [0, 1), got {self.sparsity}")


@register
class MagnitudePrune(Attack):
    name = "prune"
    summary = "unstructured magnitude pruning of decoder linear layers"
    Config = PruneConfig
    budget = "sparsity"
    budget_stronger = "higher"

    def run(self, model: Any, ctx: AttackContext, config: PruneConfig) -> AttackResult:
        import torch

        t0 = time.time()
        zeroed = total = 0
        with torch.no_grad():
            for _, w in weight_matrices(model, embeddings=False):
                total += w.numel()
                thresh = magnitude_threshold(w, config.sparsity)
                if thresh is None:
                    continue
                mask = w.abs() <= thresh  # ties at the threshold are pruned too (rare)
                w.masked_fill_(mask, 0.0)
                zeroed += int(mask.sum())
        findings = {"zeroed": zeroed, "sparsity_achieved": zeroed / max(total, 1)}
        return AttackResult(model, Spend(seconds=time.time() - t0), findings)
