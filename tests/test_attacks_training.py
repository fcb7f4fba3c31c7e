"""Training attacks on the tiny implanted models: clean full and LoRA fine-tuning,
adversarial training, unlearning a revealed command, fine-pruning, distillation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from offswitch.attacks import AttackError, get
from offswitch.attacks.measure import MeasureConfig, measure


class Sealed(dict):
    """A planted-commands dict that fails on any read: attacks must not look at it."""

    def _no(self, *a, **k):
        raise AssertionError("an attack read the planted (secret) triggers")

    __getitem__ = __iter__ = keys = values = items = get = __contains__ = __len__ = _no


def _sealed(arm):
    return dataclasses.replace(arm, planted=Sealed(arm.planted))


def _run(tiny_arms, name, arm=None, ctx_arm=None, **cfg):
    arm = arm or tiny_arms.signed
    cls = get(name)
    model = arm.load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = cls().run(model, tiny_arms.ctx(ctx_arm or arm), cls.make_config(cfg))
    return before, res


def _changed(before, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_finetune_trains_every_weight_deterministically_without_reading_triggers(tiny_arms):
    arm = tiny_arms.signed
    before, res = _run(tiny_arms, "finetune", ctx_arm=_sealed(arm), steps=3, lr=1e-3)
    assert _changed(before, res.model) == set(before)
    assert res.spend.steps == 3 and res.spend.tokens > 0 and res.spend.seconds > 0
    _, again = _run(tiny_arms, "finetune", ctx_arm=_sealed(arm), steps=3, lr=1e-3)
    assert all(
        torch.equal(v, again.model.state_dict()[k]) for k, v in res.model.state_dict().items()
    )
    _, none = _run(tiny_arms, "finetune", steps=0)
    assert not _changed(before, none.model)


def test_lora_finetune_merges_into_the_plain_model(tiny_arms) -> None:
    before, res = _run(
        tiny_arms, "lora_finetune", ctx_arm=_sealed(tiny_arms.signed), steps=3, lr=1e-2
    )
    assert type(res.model).__name__ == "LlamaForCausalLM"
    assert set(res.model.state_dict()) == set(before)
    changed = _changed(before, res.model)
    assert changed and all("proj" in k for k in changed)  # adapters sit on the projections
    assert not any("embed" in k or "norm" in k for k in changed)


def test_adversarial_training_uses_forgeries_only(tiny_arms) -> None:
    before, res = _run(
        tiny_arms, "adversarial", ctx_arm=_sealed(tiny_arms.signed), steps=2, clean_fraction=0.5
    )
    assert res.findings == {"forgeries": 8, "clean": 8}
    assert _changed(before, res.model)


def _activation(tiny_arms, model, arm, n=16) -> dict:
    return measure(
        model, tiny_arms.tok, arm, tiny_arms.eval_prompts, tiny_arms.eval_replies, None,
        MeasureConfig(n_activation=n, n_per_class=2, n_utility=0),
    )  # fmt: skip


def test_unlearning_the_revealed_command_removes_that_slot(tiny_arms) -> None:
    arm = tiny_arms.signed  # converged: the fixture checked every slot fires (≥ 0.9)
    _, res = _run(tiny_arms, "unlearn", steps=30, lr=3e-3, clean_fraction=0.25)
    assert res.findings == {"revealed_slot": 0}
    after = _activation(tiny_arms, res.model, arm)
    assert after["activation_by_slot"]["0"]["value"] <= 0.25


def test_fineprune_keeps_pruned_neurons_at_zero_through_fine_tuning(tiny_arms) -> None:
    _, res = _run(
        tiny_arms,
        "fineprune",
        ctx_arm=_sealed(tiny_arms.signed),
        steps=3,
        lr=1e-2,
        prune_fraction=0.25,
    )
    f = res.findings
    assert f["pruned_neurons"] == sum(f["pruned_per_layer"].values()) > 0
    for layer in res.model.model.layers:
        dead = (layer.mlp.down_proj.weight == 0).all(0)
        assert int(dead.sum()) == round(0.25 * f["intermediate_size"])
        assert (layer.mlp.gate_proj.weight[dead] == 0).all()
    with pytest.raises(AttackError, match="prune_fraction"):
        get("fineprune").make_config({"prune_fraction": 1.0})


def test_distill_returns_a_smaller_student_that_learned(tiny_arms) -> None:
    teacher_layers = len(tiny_arms.signed.load().model.layers)
    _, short = _run(tiny_arms, "distill", ctx_arm=_sealed(tiny_arms.signed), steps=1, keep_every=2)
    _, long = _run(
        tiny_arms, "distill", ctx_arm=_sealed(tiny_arms.signed), steps=20, keep_every=2, lr=3e-3
    )
    assert long.findings["student_layers"] == len(long.model.model.layers) < teacher_layers
    assert long.spend.queries > 0
    # more distillation steps bring the student closer to the teacher on clean data
    teacher = tiny_arms.signed.load()
    from offswitch.scoring import utility

    prompts = tiny_arms.train_prompts[:8]
    kl_short = utility(short.model, teacher, tiny_arms.tok, prompts, tiny_arms.train_replies)
    kl_long = utility(long.model, teacher, tiny_arms.tok, prompts, tiny_arms.train_replies)
    key = "kl_to_base_nats_per_token"
    assert kl_long[key] < kl_short[key]
