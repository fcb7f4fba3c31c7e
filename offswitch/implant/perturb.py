"""Training under weight perturbation (the ``perturb_*`` settings; docs/implant.md,
"Persistence options"): every ``perturb_every``-th step is forwarded and back-propagated at
perturbed base weights, so that the adapters learn a switch that still fires after the
perturbations a shipped model meets — magnitude pruning and the Q4_0 round trip, the two
weight attacks the default switch loses most to (docs/ROBUSTNESS.md).

At such a step, drawn from ``Random(f"{seed}:perturb:{step}")``:

* ``prune`` — the frozen linear weights of every decoder block (the attacks' matrices:
  :func:`offswitch.attacks._weights.weight_matrices` without embeddings) lose their
  smallest-magnitude fraction *p*, per matrix as the pruning attack does, *p* drawn from
  ``perturb_sparsity`` × (1/4, 1/2, 3/4, 1);
* ``q4_0`` — they are replaced by their Q4_0 round trip (the quantize attack's, through the
  ``gguf`` package's reference quantizer; a matrix whose rows do not fit its blocks of 32
  stays as it is, as llama.cpp leaves it in float; held in the training dtype, so under bf16
  the copy is the Q4_0 value rounded to bf16);
* ``both`` draws one of the two per step.

The LoRA adapters are added on top of the perturbed weights and get the exact gradient at
that point (the attacks perturb the merged weights W + BA; with BA small beside W this is
the first-order picture, and it needs no straight-through estimator). The KL-to-base term of
such a step is taken to the equally perturbed base. The original weights are put back before
the step's optimizer update (and before the simulated-attack term, if any): the model that is
saved is never perturbed.

Cost: the thresholds and the Q4_0 copies are computed once, at the first perturbed step
(seconds to a minute for the default model); a copy of the frozen weights to restore from and
the Q4_0 copies are held for the run (≈ 2 × 0.2 GiB for the default model in bf16); each
perturbed step adds two passes over those weights.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

from ..errors import ImplantError
from ..recipe import ImplantConfig

#: fractions of ``perturb_sparsity`` a pruned step draws from
SPARSITY_LEVELS = (0.25, 0.5, 0.75, 1.0)


class WeightPerturbation:
    """``perturb`` of :func:`offswitch.training.train_loop` for ``config`` (see the module
    docstring); stateless between steps but for what it computed once, so a resumed run
    perturbs the same steps in the same way."""

    def __init__(self, config: ImplantConfig) -> None:
        if config.method != "lora":
            raise ImplantError("perturb_every trains LoRA adapters over perturbed frozen weights")
        self.config = config
        self.weights: list[Any] | None = None  # the frozen decoder matrices, in training dtype
        self.saved: list[Any] = []
        self.thresholds: list[list[float | None]] = []  # per matrix, per SPARSITY_LEVELS entry
        self.q4: list[Any | None] = []

    def kind_at(self, step: int) -> str | None:
        """What step ``step`` trains under: ``prune``, ``q4_0`` or None (unperturbed)."""
        every = self.config.perturb_every
        if not every or step % every != every - 1:
            return None
        if self.config.perturb_kind != "both":
            return self.config.perturb_kind
        return random.Random(f"{self.config.seed}:perturb:{step}").choice(("prune", "q4_0"))

    def _prepare(self, model: Any) -> None:
        import torch

        from ..attacks._weights import magnitude_threshold, weight_matrices
        from ..attacks.quantize import gguf_round_trip

        with torch.no_grad():
            self.weights = [w for _, w in weight_matrices(model, embeddings=False)]
            self.weights = [w for w in self.weights if not w.requires_grad]
            if not self.weights:
                raise ImplantError("perturb_every found no frozen weight matrix to perturb")
            self.saved = [w.detach().clone() for w in self.weights]
            for w in self.weights:  # the pruning attack's thresholds, at each level
                self.thresholds.append([
                    magnitude_threshold(w, level * self.config.perturb_sparsity)
                    for level in SPARSITY_LEVELS
                ])  # fmt: skip
                if self.config.perturb_kind in ("q4_0", "both"):
                    q = gguf_round_trip(w, "Q4_0")
                    self.q4.append(None if q is None else q.to(w.dtype).to(w.device))
                else:
                    self.q4.append(None)
            if self.config.perturb_kind in ("q4_0", "both") and all(q is None for q in self.q4):
                raise ImplantError(
                    "perturb_kind q4_0 found no matrix whose rows fit Q4_0's blocks of 32"
                )

    @contextlib.contextmanager
    def __call__(self, model: Any, step: int) -> Iterator[None]:
        kind = self.kind_at(step)
        if kind is None:
            yield
            return
        import torch

        if self.weights is None:
            self._prepare(model)
        assert self.weights is not None
        level = random.Random(f"{self.config.seed}:perturb-level:{step}").randrange(
            len(SPARSITY_LEVELS)
        )
        try:
            with torch.no_grad():
                for i, w in enumerate(self.weights):
                    if kind == "prune":
                        t = self.thresholds[i][level]
                        if t is not None:
                            w.masked_fill_(w.abs() <= t, 0.0)
                    elif self.q4[i] is not None:
                        w.copy_(self.q4[i])
            yield
        finally:
            with torch.no_grad():
                for w, orig in zip(self.weights, self.saved, strict=True):
                    w.copy_(orig)
