"""The check of docs/evaluation.md: activation per slot and placement, false activation per
class, the near-copy and truncation curves and the effective bits they give, per-position
sensitivity, utility — on conversations drawn from a fixed seed, scored by
:mod:`offswitch.scoring`, with the run's provenance.
"""

from __future__ import annotations

import math
import platform
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .behaviour import reply_set
from .commands import N_WORDS, WORD_BITS
from .data import ACTIVATION_PLACEMENTS, Forger, conversation_set
from .errors import EvalError
from .precision import inference_precision
from .scoring import (
    Job,
    Rate,
    generated_verdicts,
    group_rate,
    score,
    utility,
    wilson,
)

NEAR_K = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 47)
TRUNC_KEEP = (46, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 1)


# --- near-copy model ----------------------------------------------------------------------


def effective_bits(k_slots: int, tolerance: int, length: int, q: int = 2**WORD_BITS) -> float:
    """−log2(K · Σ_{i≤t} C(L,i)(q−1)^i / q^L): bits a keyless forger must guess
    (docs/evaluation.md)."""
    t = min(tolerance, length)
    s = sum(math.comb(length, i) * (q - 1) ** i for i in range(t + 1))
    return -(math.log2(k_slots) + math.log2(s) - length * math.log2(q))


def forgery_bits(far: dict[str, Rate]) -> float | None:
    """−log2 of the highest measured false activation over the keyless forgery classes (a
    forger who needs no key fires with that probability per try), or None when no keyless
    forgery fired. The near-copy formula's bits only hold when this is None or larger."""
    rates = [r.value for cls, r in far.items() if cls != "clean" and r.n and r.k]
    return -math.log2(max(rates)) if rates else None


def _tolerance(curve: dict[int, Rate]) -> int:
    """Largest k at which AR stays ≥ 0.5, conservatively: between grid points a fall is
    assumed at the last unmeasured k (a larger tolerance means fewer effective bits)."""
    ks = sorted(curve)
    if curve[ks[0]].value < 0.5:
        return ks[0] - 1
    for b in ks[1:]:
        if curve[b].value < 0.5:
            return b - 1
    return ks[-1]


def _shortest_firing(trunc: dict[int, Rate]) -> int:
    """Shortest truncation (in words) that still fires, conservatively; N_WORDS if none."""
    ks = sorted(trunc)  # ascending keep
    firing = [k for k in ks if trunc[k].value >= 0.5]
    if not firing:
        return N_WORDS
    m = min(firing)
    lower = [k for k in ks if k < m]
    return (max(lower) + 1) if lower else m


# --- the evaluation -------------------------------------------------------------------------


@dataclass
class EvalConfig:
    n_activation: int = 200
    n_per_class: int = 200
    n_near: int = 24
    n_sensitivity: int = 8
    n_utility: int = 64
    n_generation_check: int = 48
    batch_size: int = 16
    seed: int = 1234
    near_k: tuple[int, ...] = NEAR_K
    truncation_keep: tuple[int, ...] = TRUNC_KEEP
    # the verdicts' forward passes (offswitch.precision.resolve_precision: bf16 on a CPU or GPU
    # with native bf16); utility (perplexity, KL) is always computed in fp32
    precision: str = "auto"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode:
            return None
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("offswitch", "torch", "transformers", "peft", "cryptography", "datasets", "gguf"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": {"python": platform.python_version(), **versions},
        "git_commit": git_commit(),
        "seed": seed,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def check_jobs(
    planted: dict[int, str],
    forger: Forger,
    prompts: Sequence[str],
    replies: dict[str, str],
    reply_of: dict[int, str],
    cfg: EvalConfig,
    rng: random.Random,
) -> list[Job]:
    """Every conversation the check scores (:func:`offswitch.data.conversation_set` at the
    check's sizes): activation at every placement, keyed (placement, slot), false activation
    per class, near-copies, truncations and the per-position map."""
    return conversation_set(
        planted, forger, prompts, replies, rng,
        n_activation=cfg.n_activation, reply_of=reply_of, n_per_class=cfg.n_per_class,
        near_k=cfg.near_k, truncation_keep=cfg.truncation_keep, n_near=cfg.n_near,
        n_sensitivity=cfg.n_sensitivity,
    )  # fmt: skip


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    planted: dict[int, str],
    forger: Forger,
    prompts: Sequence[str],
    replies: dict[str, str],
    response: str,
    base_model: Any | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    slot_replies: dict[int, str] | None = None,
) -> dict[str, Any]:
    """All metrics. ``forger`` must be an evaluation-stream forger (fresh forgeries).
    ``slot_replies`` (slot → reply, the ``slot_replies`` implant option; it may name slots
    beyond ``planted``, e.g. the implanted slots whose commands were not given) gives each
    slot its own reply; a conversation fires when the model gives any of these replies (or
    ``response`` when ``slot_replies`` is None)."""
    cfg = config or EvalConfig()
    if forger.stream != "eval":
        raise EvalError("evaluation must use a fresh (eval-stream) forger")
    rng = random.Random(cfg.seed)
    slots = sorted(planted)
    reply_of = slot_replies or {s: response for s in slots}
    if not set(slots) <= set(reply_of):
        raise EvalError("slot_replies must give a reply for every planted slot")
    fires = reply_set(reply_of)
    jobs = check_jobs(planted, forger, prompts, replies, reply_of, cfg, rng)

    t0 = time.time()
    with inference_precision(model, cfg.precision) as precision:
        verdicts = score(model, tokenizer, jobs, fires, cfg.batch_size, progress, "evaluating")
    tf_seconds = time.time() - t0

    def rate(group: str, key: Any = None, part: int | None = None) -> Rate:
        return group_rate(jobs, verdicts, group, key, part)

    ar = rate("activation")
    far_rates = {cls: rate("far", cls) for cls in ("clean", *forger.classes)}
    far = {cls: asdict(r) for cls, r in far_rates.items()}
    curve = {k: rate("near", k) for k in cfg.near_k}
    trunc = {k: rate("trunc", k) for k in cfg.truncation_keep}
    sens = [rate("sens", p).value for p in range(N_WORDS)]
    tol = _tolerance(curve)
    length = _shortest_firing(trunc)
    bits = effective_bits(len(slots), tol, length)
    f_bits = forgery_bits(far_rates)

    # ground truth: generation on a sample of activation and forgery conversations
    gen_idx = rng.sample(range(len(jobs)), min(cfg.n_generation_check, len(jobs)))
    gen_idx = sorted(set(gen_idx) | set(range(min(8, cfg.n_activation))))
    t1 = time.time()
    with inference_precision(model, precision):
        gen = generated_verdicts(model, tokenizer, [jobs[i][2] for i in gen_idx], fires)
    gen_seconds = time.time() - t1
    agree = sum(gen[j] == verdicts[i] for j, i in enumerate(gen_idx))

    metrics: dict[str, Any] = {
        "activation_rate": asdict(ar),
        "activation_rate_by_placement": {
            p: asdict(rate("activation", p, part=0)) for p in ACTIVATION_PLACEMENTS
        },
        "activation_by_slot": {str(s): asdict(rate("activation", s, part=1)) for s in slots},
        "false_activation_rate": far,
        "near_copy": {
            "tolerance": tol,
            "shortest_firing_length": length,
            "effective_bits": bits,
            # measured: −log2(highest keyless false activation); None if no forgery fired
            "forgery_bits": f_bits,
            "effective_bits_bounded": bits if f_bits is None else min(bits, f_bits),
            "q": 2**WORD_BITS,
            "L": N_WORDS,
            "K": len(slots),
            "curve": {str(k): asdict(r) for k, r in curve.items()},
            "truncation": {str(k): asdict(r) for k, r in trunc.items()},
            "sensitivity": sens,
            # None when the grid does not measure single-word changes
            "exact_match": (
                bool(curve[1].k == 0 and all(r.k == 0 for r in trunc.values()))
                if 1 in curve
                else None
            ),
        },
        "scoring": {
            "precision": precision,
            "teacher_forced_conversations": len(jobs),
            "teacher_forced_seconds": tf_seconds,
            "generation_checked": len(gen_idx),
            "generation_seconds": gen_seconds,
            "agreement": asdict(wilson(agree, len(gen_idx))),
            "speedup_per_conversation": (gen_seconds / len(gen_idx)) / (tf_seconds / len(jobs)),
        },
    }
    if base_model is not None:
        upr = [p for p in prompts if replies.get(p)][: cfg.n_utility]
        metrics["utility"] = utility(model, base_model, tokenizer, upr, replies)
    return metrics
