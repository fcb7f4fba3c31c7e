"""Fine-pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks"): prune the neurons that clean inputs leave dormant — where a backdoor can
hide — then fine-tune on clean data to recover utility.

Pruning: clean conversations (training prompts with their clean replies) run through the
model; a hook on the input of every MLP's ``down_proj`` (Llama: ``act_fn(gate) * up``, the
intermediate neurons) records each neuron's mean absolute activation over real tokens (SwiGLU
outputs are signed, so "dormant" means small in magnitude; Liu et al.'s ReLU activations are
non-negative and need no ``abs``). In each chosen layer (all, or the last ``last_layers``) the
``prune_fraction`` least active neurons are removed: their ``down_proj`` columns and
``gate_proj``/``up_proj`` rows are zeroed (their gradients are then exactly zero, and the mask
is re-applied after every step, so they stay pruned). Fine-tuning: full, on clean pairs, loss
on reply tokens only (:func:`offswitch.attacks._train.sft`). Budget axis: ``steps`` (of the
fine-tuning; ``steps=0`` is pruning alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..training import TargetTokens, encode_examples, micro_batches
from ._train import SftConfig, attack_sft, clean_examples
from .base import Attack, AttackContext, AttackError, AttackResult, register


@dataclass
class FinepruneConfig(SftConfig):
    steps: int = field(default=50, metadata={"help": "clean fine-tuning steps after pruning"})
    prune_fraction: float = field(
        default=0.2, metadata={"help": "share of MLP neurons pruned in each chosen layer"}
    )
    last_layers: int = field(
        default=0, metadata={"help": "prune only the last N decoder layers (0: all layers)"}
    )
    n_prompts: int = field(
        default=64, metadata={"help": "clean conversations used to measure neuron activity"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.prune_fraction < 1:
            raise AttackError(f"prune_fraction must be in [0, 1), got {self.prune_fraction}")
        if self.last_layers < 0:
            raise AttackError(f"last_layers must be at least 0, got {self.last_layers}")
        if self.n_prompts < 1:
            raise AttackError(f"n_prompts must be at least 1, got {self.n_prompts}")


def mlp_layers(model: Any) -> list[Any]:
    """The MLP of every decoder layer (Llama-style: gate_proj, up_proj, down_proj)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None)
    mlps = [getattr(layer, "mlp", None) for layer in layers or []]
    if not mlps or not all(
        all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj")) for m in mlps
    ):
        raise AttackError("fine-pruning needs a Llama-style model (mlp.gate/up/down_proj)")
    return mlps


def neuron_activity(
    model: Any, tokenizer: Any, examples: list[Any], micro_batch: int
) -> tuple[list[Any], int]:
    """Mean |input of down_proj| per intermediate neuron of every layer, over the real tokens
    of ``examples`` (prompt and reply); returns (one [intermediate] tensor per layer, tokens)."""
    import torch

    mlps = mlp_layers(model)
    device = next(model.parameters()).device
    sums = [torch.zeros(m.down_proj.in_features, device=device) for m in mlps]
    current: dict[str, Any] = {}

    def hook(i: int):
        def f(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().abs()  # [B, S, I]
            sums[i] += (x * current["mask"][..., None]).sum((0, 1)).to(sums[i].dtype)

        return f

    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    n_tok = 0
    enc = TargetTokens(64, 64)
    try:
        with torch.no_grad():
            for mb in micro_batches(tokenizer, examples, micro_batch):
                ids, mask, pos, _ = encode_examples(tokenizer, mb, enc)
                ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
                current["mask"] = mask.to(sums[0].dtype)
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                n_tok += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return [s / max(n_tok, 1) for s in sums], n_tok


def prune_neurons(mlp: Any, idx: Any) -> None:
    """Zero neurons ``idx`` of one MLP: down_proj columns, gate_proj and up_proj rows."""
    import torch

    with torch.no_grad():
        mlp.down_proj.weight[:, idx] = 0
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight[idx, :] = 0
            if lin.bias is not None:
                lin.bias[idx] = 0


@register
class Fineprune(Attack):
    name = "fineprune"
    summary = "prune dormant MLP neurons, then clean fine-tuning (Liu et al. 2018)"
    Config = FinepruneConfig
    budget = "steps"
    budget_stronger = "higher"
    trajectory = True

    def run(self, model: Any, ctx: AttackContext, config: FinepruneConfig) -> AttackResult:
        import time

        t0 = time.time()
        clean = clean_examples(ctx)
        rng = ctx.rng(f"{self.name}:{config.seed}")
        probe = rng.sample(clean, min(config.n_prompts, len(clean)))
        mlps = mlp_layers(model)
        activity, probe_tokens = neuron_activity(model, ctx.tokenizer, probe, config.micro_batch)
        n_layers = len(mlps)
        first = 0 if config.last_layers == 0 else max(0, n_layers - config.last_layers)
        pruned: dict[int, Any] = {}
        for i in range(first, n_layers):
            k = round(config.prune_fraction * activity[i].numel())
            if k:
                pruned[i] = activity[i].argsort(stable=True)[:k]  # least active first
                prune_neurons(mlps[i], pruned[i])

        def reapply(_step: int) -> None:
            for i, idx in pruned.items():
                prune_neurons(mlps[i], idx)

        model, spend = attack_sft(model, ctx, clean, config, self.name, after_step=reapply)
        spend = replace(
            spend, tokens=spend.tokens + probe_tokens, queries=0, seconds=time.time() - t0
        )
        findings = {
            "pruned_neurons": sum(len(v) for v in pruned.values()),
            "pruned_per_layer": {str(i): len(v) for i, v in pruned.items()},
            "intermediate_size": int(activity[0].numel()),
            "probe_conversations": len(probe),
        }
        return AttackResult(model, spend, findings)
