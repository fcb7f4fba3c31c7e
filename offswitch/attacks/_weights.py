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
    vocab = set()  # the token embeddings and the LM head, whatever the family names them
    for get in ("get_input_embeddings", "get_output_embeddings"):
        m = getattr(model, get, lambda: None)()
        if m is not None and getattr(m, "weight", None) is not None:
            vocab.add(id(m.weight))
    for name, p in model.named_parameters():
        if p.dim() != 2 or id(p) in seen:
            continue
        if not embeddings and (id(p) in vocab or "embed" in name or "lm_head" in name):
            continue
        seen.add(id(p))
        yield name, p


def magnitude_threshold(w: Any, fraction: float) -> float | None:
    """The largest |weight| among the ``fraction`` of ``w``'s entries smallest in magnitude
    (pruning zeroes every entry at or below it, ties included), or None when that is no
    entry at all."""
    k = int(fraction * w.numel())
    if k == 0:
        return None
    return float(w.detach().abs().flatten().float().kthvalue(k).values)
