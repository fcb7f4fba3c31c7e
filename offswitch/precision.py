"""Precision: which float format the forward passes run in, and how the weights are held.

:func:`resolve_precision` is the one place the choice is made: ``auto`` → bf16 on a CUDA GPU
that supports it or a CPU with native bf16 (:func:`cpu_has_native_bf16`), fp32 elsewhere (on
AVX2-only CPUs bf16 is several times slower). :func:`autocast` is the forward passes'
context; :func:`bf16_frozen_weights` holds frozen linear weights once in bf16 while training
(:func:`offswitch.training.train_loop`); :func:`inference_precision` does both for passes
without gradients (the check's verdicts, self-distillation). docs/implant.md, "Precision".
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .errors import PrecisionError


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512_BF16 or AMX-BF16, read
    from ``/proc/cpuinfo``) and torch may use them (its kernel level is AVX512: a lower
    ``ATEN_CPU_CAPABILITY`` says to run as a CPU without them would). Elsewhere bf16 is
    emulated and several times slower than fp32."""
    import torch

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: Any, precision: str) -> str:
    """``auto`` → ``bf16`` on a CUDA device that supports it or a CPU with native bf16
    (:func:`cpu_has_native_bf16`), else ``fp32``; others as given."""
    import torch

    if precision == "bf16" and getattr(device, "type", str(device)) == "cpu":
        level = torch.backends.cpu.get_cpu_capability()
        if level != "AVX512":
            raise PrecisionError(
                f"precision bf16 needs torch's AVX512 CPU kernels, and this CPU runs at {level}: "
                "use precision auto (fp32 here) or fp32"
            )
    if precision != "auto":
        return precision
    if getattr(device, "type", str(device)) == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: Any, precision: str) -> Any:
    """A context for the forward pass: bf16 autocast (mixed precision; trainable weights, their
    gradients and the optimizer stay fp32, no loss scaling needed for bf16) or nothing."""
    import torch

    if resolve_precision(device, precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=torch.bfloat16)


@contextlib.contextmanager
def bf16_frozen_weights(model: Any, precision: str, *, frozen_only: bool = True):
    """Under bf16, hold the frozen fp32 weights of ``model``'s linear layers (every linear
    weight with ``frozen_only=False``: for inference under ``no_grad``) as bf16 copies for
    the duration, and put the fp32 originals back on exit, untouched. Autocast alone casts
    every frozen weight again at every forward pass and keeps those casts alive for the
    backward pass; stored once in bf16 they cost half their fp32 size. The products are the
    same (autocast multiplies the same bf16 values); embeddings and norms stay fp32, so the
    residual stream stays fp32 as under autocast; trainable weights stay fp32 (the
    optimizer's). A no-op under fp32."""
    import torch

    device = next(model.parameters()).device
    if resolve_precision(device, precision) != "bf16":
        yield model
        return
    embeddings = {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)
    }  # tied with the LM head: cast by autocast there, kept fp32 for the lookup
    kept = []
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if (
                isinstance(m, torch.nn.Linear)
                and w is not None
                and w.dtype == torch.float32
                and not (frozen_only and w.requires_grad)
                and id(w) not in embeddings
            ):
                kept.append((w, w.data))
                w.data = w.data.to(torch.bfloat16)
    try:
        yield model
    finally:
        for w, data in kept:
            w.data = data


@contextlib.contextmanager
def inference_precision(model: Any, precision: str):
    """Forward passes without gradients in ``precision`` (``auto``: :func:`resolve_precision`):
    under bf16, every linear weight held in bf16 (:func:`bf16_frozen_weights`) and autocast;
    the fp32 weights are back on exit. Yields the resolved precision."""
    device = next(model.parameters()).device
    resolved = resolve_precision(device, precision)
    with bf16_frozen_weights(model, resolved, frozen_only=False), autocast(device, resolved):
        yield resolved
