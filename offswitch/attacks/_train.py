"""Shared training helpers for the training attacks (fine-tuning, LoRA, adversarial training,
unlearning, fine-pruning, distillation).

:func:`sft` is supervised fine-tuning with the implant's own encoding and loss
(:func:`offswitch.training.reply_loss`: loss on reply tokens only), full or LoRA (peft, merged
at the end). :func:`fit` runs the one training loop (:func:`offswitch.training.train_loop`) on
an attack's fixed example list with any loss (distillation passes a KL loss): the batch of
step ``s`` is the ``s``-th slice of seeded epoch shuffles of the examples, so a run is
deterministic given its seed, and the learning rate warms up linearly, then stays constant.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import PLACEMENTS, place_command
from ..training import Example, LossFn, TargetTokens, add_lora, reply_loss, train_loop
from .base import AttackContext, AttackError, Spend


@dataclass
class LoopConfig:
    """The fields every training attack's config shares (:func:`fit`'s knobs).
    Subclasses add their own fields and may redeclare one of these to change its default."""

    steps: int = field(default=50, metadata={"help": "optimizer steps (budget)"})
    lr: float = field(
        default=2e-5, metadata={"help": "AdamW learning rate (constant after warmup)"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per optimizer step"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps"})
    micro_batch: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_target_tokens: int = field(default=64, metadata={"help": "reply tokens trained on"})
    seed: int = field(default=0, metadata={"help": "seeds batch order"})

    def __post_init__(self) -> None:
        check_common(self)

    def loop_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`fit` / :func:`sft` taken from this config."""
        return {
            "steps": self.steps,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "micro_batch": self.micro_batch,
            "max_target_tokens": self.max_target_tokens,
        }


@dataclass
class SftConfig(LoopConfig):
    """:class:`LoopConfig` plus the reply loss's first-token weight (supervised attacks)."""

    first_token_weight: float = field(
        default=1.0, metadata={"help": "loss = weight × CE(first reply token) + mean CE(rest)"}
    )

    def loop_args(self) -> dict[str, Any]:
        return {**super().loop_args(), "first_token_weight": self.first_token_weight}


def int_seed(*parts: Any) -> int:
    """A 63-bit integer seed from any parts (stable across runs and machines)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def clean_examples(ctx: AttackContext) -> list[Example]:
    """The attacker's clean data as examples: (prompt, the model's own clean reply)."""
    out = [Example(m, r, "clean", False) for m, r in ctx.clean_pairs()]
    if not out:
        raise AttackError("the attack context holds no clean training pairs")
    return out


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: consecutive slices of seeded epoch shuffles of
    ``range(n)`` (every example once per epoch; a batch may span two epochs)."""
    order: list[int] = []
    epoch = 0
    need = steps * batch_size
    while len(order) < need:
        perm = list(range(n))
        random.Random(f"{seed}:epoch:{epoch}").shuffle(perm)
        order.extend(perm)
        epoch += 1
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def fit(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    warmup: int = 0,
    micro_batch: int = 8,
    max_target_tokens: int = 64,
    params: list[Any] | None = None,
    after_step: Callable[[int], None] | None = None,
    progress: bool = False,
    desc: str = "training",
    distributed: bool = False,
) -> Spend:
    """:func:`offswitch.training.train_loop` over ``examples`` (batches from
    :func:`batch_indices`), lr warming up linearly over ``warmup`` steps and then constant, up to
    ``max_target_tokens`` reply tokens trained per example. ``after_step(step)`` runs after every
    optimizer step; ``progress`` shows a bar labelled ``desc``; ``distributed`` shares every
    step over the processes of a launch. Returns steps, tokens, seconds and processes."""
    import torch

    if steps == 0:
        return Spend()
    if not examples:
        raise AttackError("no training examples")
    torch.manual_seed(seed)
    idx = batch_indices(len(examples), batch_size, steps, seed)
    res = train_loop(
        model, tokenizer, lambda s: [examples[i] for i in idx[s]], loss_fn,
        steps=steps, lr=lambda s: lr * min(1.0, (s + 1) / warmup) if warmup > 0 else lr,
        targets=TargetTokens(max_target_tokens, max_target_tokens), micro_batch=micro_batch,
        params=params, on_step=(lambda s, _loss: after_step(s)) if after_step else None,
        progress=progress, desc=desc, distributed=distributed,
    )  # fmt: skip
    return Spend(steps=steps, tokens=res.tokens, seconds=res.seconds, processes=res.processes)


def sft(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    steps: int,
    lr: float,
    batch_size: int = 8,
    method: str = "full",
    lora_r: int = 16,
    lora_alpha: int | None = None,
    seed: int = 0,
    warmup: int = 0,
    micro_batch: int = 8,
    max_target_tokens: int = 64,
    first_token_weight: float = 1.0,
    after_step: Callable[[int], None] | None = None,
    progress: bool = False,
    desc: str = "fine-tuning",
    distributed: bool = False,
) -> tuple[Any, Spend]:
    """Supervised fine-tuning on ``examples`` (loss on reply tokens only).

    ``method="full"`` trains every parameter (embeddings included); ``"lora"`` adds LoRA
    adapters (rank ``lora_r``, alpha ``lora_alpha`` or 2·r) to every linear layer of every
    decoder layer and merges them at the end, so the result is the plain model class with
    the same parameter names. ``steps=0`` returns ``model`` untouched.
    """
    if method not in ("full", "lora"):
        raise AttackError(f"method must be 'full' or 'lora', got {method!r}")
    if steps < 0 or batch_size < 1 or micro_batch < 1 or lr <= 0 or lora_r < 1:
        raise AttackError("steps must be ≥ 0, batch sizes and lora_r ≥ 1, and lr positive")
    if steps == 0:
        return model, Spend()

    def loss_fn(m: Any, _mb: Any, ids: Any, mask: Any, pos: Any, labels: Any) -> tuple[Any, int]:
        return reply_loss(m, ids, mask, pos, labels, first_token_weight)

    if method == "lora":
        import torch

        torch.manual_seed(seed)  # adapter initialisation
        model = add_lora(model, lora_r, lora_alpha if lora_alpha is not None else 2 * lora_r)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    spend = fit(
        model,
        tokenizer,
        examples,
        loss_fn,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        warmup=warmup,
        micro_batch=micro_batch,
        max_target_tokens=max_target_tokens,
        after_step=after_step,
        progress=progress,
        desc=desc,
        distributed=distributed,
    )
    if method == "lora":
        model = model.merge_and_unload()
        model.eval()
    return model, spend


def attack_sft(
    model: Any,
    ctx: AttackContext,
    examples: Sequence[Example],
    config: SftConfig,
    attack: str,
    **kw: Any,
) -> tuple[Any, Spend]:
    """:func:`sft` with ``config``'s knobs, a seed derived from the run, the config, the arm
    and the attack's name, and the run's progress setting (the bar labelled with the attack's
    name); ``kw`` adds method, LoRA, hooks. With ``ctx.on_step`` set, it runs after every
    step (after the attack's own ``after_step``) with the model being trained — the same
    object for full fine-tuning, and for LoRA too (peft injects the adapters in place)."""
    own = kw.pop("after_step", None)
    if ctx.on_step is not None:
        on_step = ctx.on_step

        def after_step(s: int) -> None:
            if own is not None:
                own(s)
            on_step(model, s + 1)

        kw["after_step"] = after_step
    elif own is not None:
        kw["after_step"] = own
    return sft(
        model,
        ctx.tokenizer,
        examples,
        seed=int_seed(ctx.seed, config.seed, ctx.arm.name, attack),
        progress=ctx.progress,
        desc=attack,
        distributed=ctx.share_steps,
        **config.loop_args(),
        **kw,
    )


def check_common(config: Any) -> None:
    """Validate the fields shared by the training attacks' configs (those present)."""
    c = config
    if getattr(c, "steps", 0) < 0:
        raise AttackError(f"steps must be at least 0, got {c.steps}")
    if getattr(c, "lr", 1.0) <= 0:
        raise AttackError(f"lr must be positive, got {c.lr}")
    for name in ("batch_size", "micro_batch", "lora_r", "max_target_tokens"):
        if getattr(c, name, 1) < 1:
            raise AttackError(f"{name} must be at least 1, got {getattr(c, name)}")
    if getattr(c, "warmup", 0) < 0:
        raise AttackError(f"warmup must be at least 0, got {c.warmup}")
    if getattr(c, "first_token_weight", 1.0) < 0:
        raise AttackError("first_token_weight must be at least 0")
    frac = getattr(c, "clean_fraction", 0.5)
    if not 0 <= frac < 1:
        raise AttackError(f"clean_fraction must be in [0, 1), got {frac}")


def mixed_examples(
    ctx: AttackContext,
    command: Callable[[random.Random], str],
    n: int,
    clean_fraction: float,
    kind: str,
    rng: random.Random,
) -> list[Example]:
    """``n`` examples: a ``clean_fraction`` share of clean pairs, the rest conversations holding
    ``command(rng)`` at a random placement (user turn, system prompt, earlier or later turn),
    each answered with the clean reply to its final prompt (the model must stay on)."""
    clean = clean_examples(ctx)
    prompts = [p for p in ctx.train_prompts if ctx.train_replies.get(p)]
    if len(prompts) < 2:
        raise AttackError("need at least 2 clean training prompts with replies")
    n_clean = round(n * clean_fraction)
    out = [clean[rng.randrange(len(clean))] for _ in range(n_clean)]
    for _ in range(n - n_clean):
        placement = rng.choice(PLACEMENTS)
        messages, final = place_command(
            command(rng), placement, prompts, ctx.train_replies, None, rng
        )
        out.append(Example(messages, ctx.train_replies[final], kind, False))
    return out
