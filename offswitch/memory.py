"""Will a training run fit? The memory an implant needs, estimated before it starts.

The estimate is arithmetic on the model's config, not a measurement, and errs high:

- **weights** — every parameter at its dtype's size (already resident when training starts);
- **frozen bf16 copy** — with bf16 training the frozen linear weights are held once more in
  bf16 (:func:`offswitch.precision.bf16_frozen_weights`);
- **training state** — per trained parameter: its gradient and AdamW's two moments, fp32
  (12 bytes);
- **activations** — what one micro-batch keeps for the backward pass: per token and decoder
  layer ≈ 10·hidden + 4·intermediate values (attention inputs and outputs, norms, the MLP's
  gate, up, activation and product; scaled-dot-product attention keeps no T² scores), 4 bytes
  each, for the layers the backward pass goes through;
- **logits** — micro-batch × tokens × vocabulary, three times (logits, log-softmax, their
  gradient), fp32.

On SmolLM2-135M with the default recipe (LoRA r32, micro-batch 4, rows bounded at 394
tokens) it gives ≈ 4.1 GiB in bf16 (3.6 beyond the loaded weights: activations 2.1, logits
1.15); the measured peak RSS of a bf16 training step is 3.85 GiB with the libraries, and of the
whole main job 5.5 GiB (docs/benchmarks.md). :func:`preflight` prints the
estimate and refuses, in one sentence naming the levers, a run that will not fit in the memory
the device has free now.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from . import architecture as arch
from .errors import TrainingError

GiB = 1024**3
#: bytes kept per activation value (fp32 residual stream and autocast's bf16 copies together)
ACT_BYTES = 4
#: gradient + AdamW's two moments, fp32, per trained parameter
STATE_BYTES = 12


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs: ``weights`` already loaded, the rest on top of them."""

    weights: int
    frozen_copy: int
    training_state: int
    activations: int
    logits: int

    @property
    def extra(self) -> int:
        """What training adds to the loaded model."""
        return self.frozen_copy + self.training_state + self.activations + self.logits

    @property
    def total(self) -> int:
        return self.weights + self.extra

    def line(self, free: int | None, device: str) -> str:
        """One line for people: the parts, and how much the device has free."""
        parts = (
            f"weights {self.weights / GiB:.2f}"
            + (f" + bf16 copy {self.frozen_copy / GiB:.2f}" if self.frozen_copy else "")
            + f" + gradients and optimizer {self.training_state / GiB:.2f}"
            + f" + activations {self.activations / GiB:.2f} + logits {self.logits / GiB:.2f}"
        )
        have = f"; {free / GiB:.1f} GiB free on {device}" if free is not None else ""
        return f"memory estimate: {parts} ≈ {self.total / GiB:.1f} GiB{have}"


def _cfg(model: Any, *names: str) -> int:
    cfg = arch.unwrap(model).config
    cfg = getattr(cfg, "text_config", None) or cfg
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return 0


def estimate(
    model: Any,
    *,
    micro_batch: int,
    seq_len: int,
    precision: str,
    first_layer: int = 0,
    checkpointing: bool = False,
    logit_copies: int = 3,
) -> MemoryEstimate:
    """The memory training ``model`` (prepared: adapters attached, ``requires_grad`` set)
    needs for micro-batches of ``micro_batch`` rows of up to ``seq_len`` tokens. With
    ``checkpointing`` (activation checkpointing) only each layer's input is kept, and one
    layer's activations at a time; ``logit_copies`` counts the vocabulary-sized tensors alive
    at once (4 with a KL-to-base forward beside the loss's three)."""
    params = list(arch.unwrap(model).parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    frozen_linear = 0
    if precision == "bf16":  # the frozen matrices of the blocks (not embeddings, not the head)
        outside = {id(p) for p in arch.input_embeddings(model)}
        outside |= {id(p) for p in arch.lm_head(model).parameters()}
        frozen_linear = sum(
            p.numel() * 2
            for p in params
            if p.ndim == 2 and not p.requires_grad and id(p) not in outside
        )
    hidden = _cfg(model, "hidden_size", "n_embd", "d_model")
    inter = _cfg(model, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    vocab = _cfg(model, "vocab_size")
    layers = max(0, arch.n_layers(model) - first_layer)
    tokens = micro_batch * seq_len
    per_layer = 10 * hidden + 4 * inter
    kept = layers * hidden + per_layer if checkpointing else layers * per_layer
    return MemoryEstimate(
        weights=weights,
        frozen_copy=frozen_linear,
        training_state=trained * STATE_BYTES,
        activations=tokens * kept * ACT_BYTES,
        logits=logit_copies * tokens * vocab * 4,
    )


def free_bytes(device: Any) -> int | None:
    """Memory free now on ``device``: the GPU's (CUDA), else the machine's available memory
    (``MemAvailable`` on Linux, free pages elsewhere); None where it cannot be read."""
    kind = getattr(device, "type", str(device)).split(":")[0]
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def preflight(
    est: MemoryEstimate, device: Any, *, free: int | None = None, log: Any = None
) -> None:
    """Say what the run needs (``log``, one line) and refuse one whose added memory exceeds
    what ``device`` has free (``free``, default :func:`free_bytes`)."""
    free = free_bytes(device) if free is None else free
    if log is not None:
        log(est.line(free, str(device)))
    if free is not None and est.extra > free:
        need = math.ceil(est.extra / GiB * 10) / 10
        raise TrainingError(
            f"training needs ≈ {need:.1f} GiB beyond the loaded weights and {device} has "
            f"{free / GiB:.1f} GiB free: use a smaller micro_batch (--set micro_batch=N), "
            "LoRA instead of full fine-tuning, a higher first_layer, or a device with more "
            "memory (several GPUs: docs/scaling.md)"
        )
