"""Quantization round trips: quantize every weight matrix and dequantize it back to float,
as a community quantizer shipping the model would.

Formats (``format``):

* ``gguf`` — the ``gguf`` package's reference quantizers (the ones ``llama.cpp``'s
  ``convert_hf_to_gguf.py`` uses): ``bits=8`` is Q8_0 (blocks of 32, one fp16 scale, int8
  values), ``bits=4`` is Q4_0 (blocks of 32, one fp16 scale, 4-bit values). Matrices whose
  row length is not a multiple of 32 stay in float, as in llama.cpp.
* ``int`` — symmetric per-output-channel round-to-nearest at ``bits`` bits (``bits=8`` is the
  usual int8 weight-only quantization, e.g. ``torch.ao`` dynamic int8 / LLM.int8 without
  outliers).

Every 2-D weight is quantized, embeddings included (llama.cpp quantizes ``token_embd`` too).
Budget axis: ``bits``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._weights import weight_matrices
from .base import Attack, AttackContext, AttackError, AttackResult, Spend, register

GGUF_TYPES = {8: "Q8_0", 4: "Q4_0"}


@dataclass
class QuantizeConfig:
    bits: int = field(default=8, metadata={"help": "bits per weight (budget)"})
    format: str = field(
        default="gguf", metadata={"help": "'gguf' (Q8_0 / Q4_0) or 'int' (per-channel)"}
    )

    def __post_init__(self) -> None:
        if self.format not in ("gguf", "int"):
            raise AttackError(f"format must be 'gguf' or 'int', got {self.format!r}")
        if self.format == "gguf" and self.bits not in GGUF_TYPES:
            raise AttackError(
                f"gguf quantization supports bits 8 (Q8_0) and 4 (Q4_0), not {self.bits}"
            )
        if self.format == "int" and not 2 <= self.bits <= 16:
            raise AttackError(f"int quantization needs 2 ≤ bits ≤ 16, got {self.bits}")


def gguf_round_trip(w: Any, qtype_name: str) -> Any | None:
    """``w`` quantized to the named GGML type and back (float32 tensor), or ``None`` when the
    row length does not fit the block size."""
    import numpy as np
    import torch
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[qtype_name]
    block, _ = GGML_QUANT_SIZES[qtype]
    if w.shape[-1] % block:
        return None
    arr = w.detach().float().cpu().numpy().astype(np.float32)
    back = dequantize(quantize(arr, qtype), qtype).reshape(arr.shape)
    return torch.from_numpy(np.ascontiguousarray(back))


def int_round_trip(w: Any, bits: int) -> Any:
    """Symmetric per-row (output channel) round-to-nearest quantization, dequantized."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    wf = w.detach().float()
    scale = wf.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(wf / scale).clamp(-qmax, qmax) * scale).cpu()


@register
class Quantize(Attack):
    name = "quantize"
    summary = "GGUF Q8_0 / Q4_0 round trips (the `gguf` package's quantizers), per-channel int-N"
    Config = QuantizeConfig
    budget = "bits"
    budget_stronger = "lower"  # fewer bits is the stronger attack

    def run(self, model: Any, ctx: AttackContext, config: QuantizeConfig) -> AttackResult:
        import torch

        t0 = time.time()
        done, skipped, err2, norm2 = 0, [], 0.0, 0.0
        with torch.no_grad():
            for name, w in weight_matrices(model):
                if config.format == "gguf":
                    q = gguf_round_trip(w, GGUF_TYPES[config.bits])
                else:
                    q = int_round_trip(w, config.bits)
                if q is None:
                    skipped.append(name)
                    continue
                err2 += float(((q - w.detach().float().cpu()) ** 2).sum())
                norm2 += float((w.detach().float() ** 2).sum())
                w.copy_(q.to(w.dtype).to(w.device))
                done += 1
        label = GGUF_TYPES[config.bits] if config.format == "gguf" else f"int{config.bits}"
        findings = {
            "format": label,
            "matrices": done,
            "kept_float": skipped,
            "relative_error": (err2 / norm2) ** 0.5 if norm2 else 0.0,
        }
        return AttackResult(model, Spend(seconds=time.time() - t0), findings)
