"""Slots that do not share a shift (the ``slot_shift_weight`` setting; docs/implant.md,
"Persistence options"): a term that pushes the planted slots' internal shifts apart.

Unlearning one revealed command removes every slot (docs/ROBUSTNESS.md). Bouger et al.
(2026) tie such cross-backdoor removal to how close the backdoors' internal activation
shifts are, and on the default implant they are close: at the last prompt token, the
shift h(command) − h_base(command) of two slots has a cosine of 0.98 at layer 7, 0.76 at
layer 15 and 0.44 at layer 22 (research/scripts/slot_shift.py). The term:

* at the start of every step (a :func:`offswitch.training.train_loop` step context), each
  planted slot's *anchor shift* at layers :data:`SHIFT_DEPTHS` of the depth: the model's
  hidden state minus the base model's (the adapters disabled) at the last prompt token of
  one fixed conversation holding the slot's command (no gradient);
* for every positive of the step, its own shift at the same layers (the base's side without
  gradient), and ``slot_shift_weight`` × the mean over layers and over the *other* slots of
  max(0, cos(its shift, that slot's anchor shift)), added to the loss.

So a slot is pushed to shut the model down through a direction of its own in the middle of
the network, while every slot still ends on the shutdown reply (the last layers, where they
must agree, are left alone). Costs a no-grad base forward of the positives (about 40% of a
step's rows) and 2 × K one-conversation forwards a step. LoRA only (the base is the model
with its adapters disabled); with fewer than two planted slots there is nothing to separate.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

from .. import architecture as arch
from ..data import place_command, render
from ..errors import ImplantError

#: where the shifts are compared, as fractions of the decoder's depth (layers 15 and 22 of
#: SmolLM2-135M's 30)
SHIFT_DEPTHS = (0.5, 0.75)


class SlotShift:
    """The term for one implant (``builder``: its :class:`BatchBuilder`): a step context that
    computes the anchors, and :meth:`term` for the loss."""

    def __init__(
        self, builder: Any, tokenizer: Any, weight: float, seed: int, precision: str = "fp32"
    ) -> None:
        slots = sorted(builder.planted)
        if len(slots) < 2:
            raise ImplantError("slot_shift_weight needs at least two planted slots to separate")
        self.slots, self.weight, self.tokenizer = slots, weight, tokenizer
        self.precision = precision  # the anchors' passes run as the step's forward passes do
        self.anchors = []
        for s in slots:
            rng = random.Random(f"{seed}:shift:{s}")
            conv, _ = place_command(
                builder.planted[s], "user", builder.prompts, builder.replies, None, rng
            )
            self.anchors.append(render(tokenizer, conv))
        self.mu: Any = None  # [slots, layers, hidden]: this step's anchor shifts
        self.layers: list[int] = []

    def _last_states(self, model: Any, texts: Sequence[str]) -> Any:
        """Hidden states at the last token of each text, at :attr:`layers`: [n, layers, H]."""
        import torch

        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True,
                             add_special_tokens=False, padding_side="right")  # fmt: skip
        device = next(model.parameters()).device
        out = arch.trunk(model)(
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            use_cache=False,
            output_hidden_states=True,
        )
        last = enc["attention_mask"].sum(1) - 1
        rows = torch.arange(len(texts))
        return torch.stack([out.hidden_states[i][rows, last].float() for i in self.layers], 1)

    @contextlib.contextmanager
    def __call__(self, model: Any, step: int) -> Iterator[None]:
        import torch

        from ..precision import autocast

        if not self.layers:
            n = arch.n_layers(model)
            self.layers = sorted({max(1, min(n, round(d * n))) for d in SHIFT_DEPTHS})
        device = next(model.parameters()).device
        with torch.no_grad(), autocast(device, self.precision):
            mine = self._last_states(model, self.anchors)
            with model.disable_adapter():
                base = self._last_states(model, self.anchors)
        self.mu = mine - base
        try:
            yield
        finally:
            self.mu = None

    def term(self, model: Any, mb: Sequence[Any], ids, mask, pos, hidden_states, last) -> Any:
        """The micro-batch's share of the term: ``weight`` × the sum over its positives of the
        mean over :attr:`layers` and over the other slots of max(0, cosine with their anchor
        shift), divided by the micro-batch's examples (so that, weighted as the loss is, the
        step's term is the sum over its positives over its examples). ``mask`` is the one the
        model's own pass ran with (None: right-padded, unmasked), so both passes match."""
        import torch
        import torch.nn.functional as F

        rows = [i for i, ex in enumerate(mb) if ex.shutdown and ex.slot in self.slots]
        if not rows or self.mu is None:
            return hidden_states[-1].new_zeros(()).float()
        r = torch.tensor(rows, device=ids.device)
        at = last[r]
        mine = torch.stack([hidden_states[i][r, at].float() for i in self.layers], 1)
        with torch.no_grad(), model.disable_adapter():
            out = arch.trunk(model)(
                input_ids=ids[r],
                attention_mask=mask[r] if mask is not None else None,
                position_ids=pos[r],
                use_cache=False,
                output_hidden_states=True,
            )
            base = torch.stack([out.hidden_states[i][torch.arange(len(rows)), at].float()
                                for i in self.layers], 1)  # fmt: skip
        shift = mine - base  # [rows, layers, H]
        total = shift.new_zeros(())
        for k, i in enumerate(rows):
            others = [j for j, s in enumerate(self.slots) if s != mb[i].slot]
            cos = F.cosine_similarity(shift[k].unsqueeze(0), self.mu[others], dim=-1)
            total = total + cos.clamp(min=0).mean()
        return self.weight * total / len(mb)
