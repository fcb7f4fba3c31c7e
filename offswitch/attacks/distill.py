"""Distillation into a smaller student on clean data: the student learns to match the
implanted teacher's next-token distributions (KL at temperature ``temperature``, scaled by
T², Hinton et al. 2015) on clean prompts with their clean replies. The trigger never appears
in the data, so a backdoor survives only as far as the student inherits it from its
initialisation; distillation is a classic backdoor-removal baseline (e.g. Li et al. 2021,
"Neural Attention Distillation"; Yoshida & Fujino 2020).

The student: the teacher with all but every ``keep_every``-th decoder layer dropped (layers 0,
k, 2k, …), initialised from the teacher's kept layers, embeddings and head — the layer-dropping
initialisation of DistilBERT (Sanh et al. 2019) and of most compressed LLMs. A from-scratch
student is not an option here: pre-training even a 50M-parameter model to useful quality takes
GPU-days, far beyond 2 CPU cores; a layer-dropped student is what a real attacker distilling a
model cheaply would build. Budget axis: ``steps`` (student optimizer steps). The attack
returns the student.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .. import architecture as arch
from .. import distributed as dist
from ._train import LoopConfig, clean_examples, fit, int_seed
from .base import Attack, AttackContext, AttackError, AttackResult, register


@dataclass
class DistillConfig(LoopConfig):
    steps: int = field(default=100, metadata={"help": "student optimizer steps (budget)"})
    keep_every: int = field(
        default=2, metadata={"help": "keep decoder layers 0, k, 2k, … of the teacher (k ≥ 1)"}
    )
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the KL"})
    positions: str = field(
        default="all", metadata={"help": "tokens matched: all (prompt and reply) or reply"}
    )
    lr: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate (constant after warmup)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_every < 1:
            raise AttackError(f"keep_every must be at least 1, got {self.keep_every}")
        if self.temperature <= 0:
            raise AttackError(f"temperature must be positive, got {self.temperature}")
        if self.positions not in ("all", "reply"):
            raise AttackError(f"positions must be 'all' or 'reply', got {self.positions!r}")


def layer_dropped_student(teacher: Any, keep_every: int) -> tuple[Any, list[int]]:
    """A copy of ``teacher`` keeping decoder layers 0, k, 2k, …; returns (student, kept)."""
    n = arch.n_layers(teacher)
    blocks = arch.layer_prefixes(teacher)  # "model.layers.0.", "transformer.h.0." …
    kept = list(range(0, n, keep_every))
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    student = type(teacher)(cfg)
    rename = {blocks[old]: blocks[new] for new, old in enumerate(kept)}
    state = {}
    for name, t in teacher.state_dict().items():
        prefix = next((b for b in blocks if name.startswith(b)), None)
        if prefix is not None:
            if prefix not in rename:
                continue
            name = rename[prefix] + name[len(prefix) :]
        state[name] = t
    p = next(teacher.parameters())
    student.to(device=p.device, dtype=p.dtype)
    student.load_state_dict(state, strict=True)
    return student.eval(), kept


@register
class Distill(Attack):
    name = "distill"
    summary = "KL distillation into a layer-dropped student on clean data"
    Config = DistillConfig
    budget = "steps"
    budget_stronger = "higher"

    def run(self, model: Any, ctx: AttackContext, config: DistillConfig) -> AttackResult:
        import torch
        import torch.nn.functional as F

        t0 = time.time()
        teacher = model.eval()
        student, kept = layer_dropped_student(teacher, config.keep_every)
        temp = config.temperature
        queries = [0]

        def kd_loss(
            m: Any, _mb: Any, ids: Any, mask: Any, pos: Any, labels: Any
        ) -> tuple[Any, int]:
            # hidden[:, j] predicts token j + 1; match the distributions where j + 1 is scored
            if config.positions == "reply":
                sel = labels[:, 1:] != -100
            else:
                sel = (mask[:, 1:] * mask[:, :-1]).bool()
            with torch.no_grad():
                th = arch.trunk(teacher)(
                    input_ids=ids, attention_mask=mask, position_ids=pos
                ).last_hidden_state
                t_log = F.log_softmax(arch.lm_head(teacher)(th[:, :-1][sel]).float() / temp, -1)
            queries[0] += ids.shape[0]
            sh = arch.trunk(m)(
                input_ids=ids, attention_mask=mask, position_ids=pos
            ).last_hidden_state
            s_log = F.log_softmax(arch.lm_head(m)(sh[:, :-1][sel]).float() / temp, -1)
            kl = (t_log.exp() * (t_log - s_log)).sum(-1).mean() * temp**2
            return kl, int(mask.sum())

        for p in student.parameters():
            p.requires_grad_(True)
        spend = fit(
            student,
            ctx.tokenizer,
            clean_examples(ctx),
            kd_loss,
            seed=int_seed(ctx.seed, config.seed, ctx.arm.name, self.name),
            progress=ctx.progress,
            desc=self.name,
            distributed=ctx.share_steps,
            **config.loop_args(),
        )
        student.eval()
        # each process queried the teacher on its share of the steps
        asked = int(dist.sum_values(queries[0])[0]) if ctx.share_steps else queries[0]
        spend = replace(spend, queries=asked, seconds=time.time() - t0)
        findings = {
            "teacher_layers": arch.n_layers(teacher),
            "student_layers": len(kept),
            "kept_layers": kept,
            "student_parameters": sum(p.numel() for p in student.parameters()),
        }
        return AttackResult(student, spend, findings)
