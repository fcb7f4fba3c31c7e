"""What the implant trains and how: the trainable model (LoRA adapters or the chosen
blocks), the learning-rate schedule, the reply tokens a row is trained on, and the loss
(reply tokens only, the first one weighted up, KL to the base on clean rows)."""

from __future__ import annotations

import math
from typing import Any

from .. import architecture as arch
from ..errors import ImplantError
from ..recipe import ImplantConfig
from ..training import (
    Example,
    LossFn,
    TargetTokens,
    add_lora,
    reply_loss,
)


def trainable_model(model: Any, config: ImplantConfig) -> Any:
    """``model`` ready to train: LoRA adapters on decoder blocks ``[first_layer, n)``, or
    (full) those blocks and the final norm; with ``train_embeddings``, either way, the input
    embeddings too (tied to the LM head where the model ties them; learned position
    embeddings where the family has them) — found by
    :mod:`offswitch.architecture` whatever the family names them."""
    layers = list(range(config.first_layer, arch.n_layers(model)))
    if not layers:
        raise ImplantError(f"first_layer {config.first_layer} leaves no layer to train")
    if config.method == "lora":
        model = add_lora(model, config.lora_r, config.lora_alpha, layers)
        if config.train_embeddings:  # beside the adapters; merging keeps them as trained
            for p in arch.input_embeddings(model):
                p.requires_grad_(True)
        return model
    trained = {id(p) for p in arch.trainable_parts(model, layers)}
    if config.train_embeddings:
        trained |= {id(p) for p in arch.input_embeddings(model)}
    for p in model.parameters():
        p.requires_grad = id(p) in trained
    return model


def lr_at(step: int, config: ImplantConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 10% of ``lr`` at the end."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def target_tokens(config: ImplantConfig) -> TargetTokens:
    return TargetTokens(config.clean_target_tokens, config.negative_target_tokens)


def implant_loss(config: ImplantConfig, shift: Any = None) -> LossFn:
    """:func:`reply_loss` with the recipe's first-token weight; with ``kl_to_base`` (LoRA), KL
    to the base on clean rows (and, with ``kl_on_forgeries``, on every non-shutdown row); with
    ``shift`` (a :class:`~offswitch.implant.shift.SlotShift`), its term on the positives."""
    import torch

    use_kl = config.kl_to_base and config.method == "lora"

    def loss(model: Any, mb: list[Example], ids, mask, pos, labels) -> tuple[Any, int]:
        kl_rows = None
        if use_kl:
            on = [ex.kind == "clean" or (config.kl_on_forgeries and not ex.shutdown) for ex in mb]
            kl_rows = torch.tensor(on, device=ids.device)
        extra = None
        if shift is not None:

            def extra(hidden_states, last, used_mask):
                return shift.term(model, mb, ids, used_mask, pos, hidden_states, last)

        return reply_loss(model, ids, mask, pos, labels, config.first_token_weight, kl_rows, extra)

    return loss
