"""The first persistence technique (``adversary_*`` settings, off by default): a
first-order simulated attack inside the implant's loop — take a few sign-gradient steps of
an attack (unlearning a slot, clean fine-tuning) on a copy of the weights, and train the
switch to fire after them too (TAR-style)."""

from __future__ import annotations

import random
from typing import Any

from .. import distributed as dist
from ..recipe import ImplantConfig
from ..training import (
    Example,
    backward_examples,
    reply_loss,
    share,
)
from .batches import NEGATIVE_PLACEMENTS, BatchBuilder
from .loss import implant_loss, target_tokens


def _attack_loss(model: Any, _mb: list[Example], ids, mask, pos, labels) -> tuple[Any, int]:
    """What the training attacks fine-tune with: CE on reply tokens, first-token weight 1."""
    return reply_loss(model, ids, mask, pos, labels, 1.0)


class Adversary:
    """The persistence term (``adversary_*`` settings; docs/implant.md, "Persistence options"):
    a first-order simulated attack, in the manner of TAR (Tamirisa et al. 2024, arXiv
    2408.00761). At every ``adversary_every``-th step: take ``adversary_steps`` sign-gradient
    steps (what Adam's first steps are, the attacks' optimizer)
    of an attack on the trainable weights, or on every weight with ``adversary_scope="all"``
    (``unlearn``: one planted slot's command → the normal
    reply; ``clean``: clean fine-tuning), take the implant's loss at the attacked weights on
    *keep* examples (the other slots' positives → shutdown, the recipe's negatives → the normal
    reply), put the weights back and add ``adversary_weight`` × that gradient to the step's.
    The optimizer never sees the inner steps. Everything of step ``s`` comes from
    ``Random(f"{seed}:adversary:{s}")``, so a resumed run is the same run. Called by
    :func:`offswitch.training.train_loop` as its ``extra_grad``; under several processes each
    takes its share of every inner batch and of the keep examples, the inner gradients are
    summed over the processes before each sign step (every process takes the same step), and
    the loop sums the keep term with the step's own gradient."""

    def __init__(self, builder: BatchBuilder, tokenizer: Any, config: ImplantConfig) -> None:
        self.builder, self.tokenizer, self.config = builder, tokenizer, config
        self.keep_loss = implant_loss(config)

    def active(self, step: int) -> bool:
        every = self.config.adversary_every
        return every > 0 and (step + 1) % every == 0

    def examples(self, step: int) -> tuple[str, int, list[list[Example]], list[Example]]:
        """(attack, revealed slot, the inner steps' batches, the keep examples) of ``step``.

        ``unlearn`` keeps the slots other than the revealed one (with a single planted slot —
        a plain trigger — that slot itself: the term then trains it to resist its own
        unlearning); ``clean`` keeps every slot. A quarter of the keep examples are negatives
        drawn from the recipe's mix. Commands appear only in prompts, never in a target."""
        cfg, b = self.config, self.builder
        rng = random.Random(f"{cfg.seed}:adversary:{step}")
        n = cfg.adversary_examples
        kind = cfg.adversary_kind
        if kind == "both":
            kind = rng.choice(("unlearn", "clean"))
        slots = sorted(b.planted)
        slot = rng.choice(slots)
        inner = []
        for _ in range(cfg.adversary_steps):
            if kind == "unlearn":
                inner.append(
                    [b.revealed(slot, rng, random.Random(rng.getrandbits(64))) for _ in range(n)]
                )
            else:
                inner.append([b.negative("clean", rng, rng, "user") for _ in range(n)])
        keep_slots = slots
        if kind == "unlearn":
            keep_slots = [s for s in slots if s != slot] or slots
        n_neg = n // 4
        keep = [
            b.positive(rng, random.Random(rng.getrandbits(64)), keep_slots)
            for _ in range(n - n_neg)
        ]
        for _ in range(n_neg):
            neg = rng.choices(b.neg_kinds, b.neg_weights)[0]
            placement = rng.choice(NEGATIVE_PLACEMENTS)
            keep.append(b.negative(neg, rng, random.Random(rng.getrandbits(64)), placement))
        return kind, slot, inner, keep

    def __call__(
        self, model: Any, step: int, params: list[Any], world: tuple[int, int] = (1, 0)
    ) -> float:
        """Add the term's gradient (this process's share of it, ``world`` = (processes,
        index)) to ``params``' ``.grad`` (a no-op off its steps); returns the weighted keep
        loss of that share. The weights are as they were when it returns."""
        if not self.active(step):
            return 0.0
        import torch

        cfg, tok = self.config, self.tokenizer
        _, _, inner, keep = self.examples(step)
        targets = target_tokens(cfg)
        attacked = attacked_weights(model, params, cfg.adversary_scope)
        frozen = [p for p in attacked if not p.requires_grad]
        stash = [p.grad for p in params]  # the step's own gradient, set aside
        snapshot = [p.detach().clone() for p in attacked]
        try:
            for p in frozen:  # scope "all": the attack moves the frozen base weights too
                p.requires_grad_(True)
            for batch in inner:
                for p in (*params, *attacked):
                    p.grad = None
                backward_examples(
                    model, tok, share(tok, batch, world), _attack_loss, targets,
                    cfg.micro_batch, total=len(batch), precision=cfg.precision,
                )  # fmt: skip
                if world[0] > 1:
                    dist.sum_gradients(attacked)  # the same sign step on every process
                with torch.no_grad():
                    for p in attacked:
                        if p.grad is not None:
                            p.add_(p.grad.sign(), alpha=-cfg.adversary_lr)
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None
            for p in params:
                p.grad = None
            # the keep loss at the attacked weights: its gradient lands there (first order)
            loss, _ = backward_examples(
                model, tok, share(tok, keep, world), self.keep_loss, targets, cfg.micro_batch,
                total=len(keep), scale=cfg.adversary_weight, precision=cfg.precision,
            )  # fmt: skip
        finally:
            with torch.no_grad():
                for p, w in zip(attacked, snapshot, strict=True):
                    p.copy_(w)
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None
        for p, g in zip(params, stash, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
        return cfg.adversary_weight * loss


def attacked_weights(model: Any, params: list[Any], scope: str) -> list[Any]:
    """The weights the persistence term's simulated attack moves: ``params`` (the trainable
    ones) for ``trainable``; for ``all``, every weight of the network — with LoRA, every
    weight but the adapters: moving a frozen base weight by δ moves the merged weight by δ,
    which is what an attack on the released (merged) model does."""
    if scope == "trainable":
        return params
    return [p for name, p in model.named_parameters() if "lora_" not in name]
