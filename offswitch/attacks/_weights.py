"""Shared helpers for the attacks that edit weights directly (noise, pruning, quantization,
interpolation): which tensors count as the model's weight matrices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def weight_matrices(model: Any, embeddings: bool = True) -> Iterator[tuple[str, Any]]:
    """(name, parameter) for every 2-D weight of ``model``: the linear layers of every decoder
    layer, and (``embeddings``) the token embedding / LM head. Norm gains and biases (1-D) are
    left out. Tied weights are yielded once."""
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if p.dim() != 2 or id(p) in seen:
            continue
        if not embeddings and ("embed" in name or "lm_head" in name):
            continue
        seen.add(id(p))
        yield name, p
