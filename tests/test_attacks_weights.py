"""Weight-editing attacks on the tiny implanted models: noise, pruning, quantization,
interpolation. Each test checks the edit itself (not only that it ran)."""

from __future__ import annotations

import pytest
import torch

from offswitch.attacks import AttackError, get
from offswitch.attacks._weights import weight_matrices
from offswitch.attacks.measure import MeasureConfig, measure


def _run(tiny_arms, name, arm=None, **cfg):
    arm = arm or tiny_arms.signed
    cls = get(name)
    model = arm.load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = cls().run(model, tiny_arms.ctx(arm), cls.make_config(cfg))
    return before, res


def test_noise_is_relative_to_each_matrix_and_seeded(tiny_arms) -> None:
    before, res = _run(tiny_arms, "noise", sigma=0.1)
    after = res.model.state_dict()
    for name, _ in weight_matrices(res.model):
        d = (after[name] - before[name]).std() / before[name].std()
        assert 0.08 < float(d) < 0.12, name
    assert res.findings["weights_perturbed"] > 0
    _, again = _run(tiny_arms, "noise", sigma=0.1)
    _, other = _run(tiny_arms, "noise", sigma=0.1, seed=1)
    name = next(iter(weight_matrices(res.model)))[0]
    assert torch.equal(again.model.state_dict()[name], after[name])
    assert not torch.equal(other.model.state_dict()[name], after[name])
    _, zero = _run(tiny_arms, "noise", sigma=0.0)
    assert all(torch.equal(zero.model.state_dict()[k], v) for k, v in before.items())


def test_prune_zeroes_the_smallest_weights_of_decoder_layers_only(tiny_arms) -> None:
    before, res = _run(tiny_arms, "prune", sparsity=0.5)
    after = res.model.state_dict()
    for name, w in weight_matrices(res.model, embeddings=False):
        zero = w == 0
        assert float(zero.float().mean()) >= 0.5, name
        # every kept weight is at least as large as every pruned one
        kept, cut = before[name][~zero].abs(), before[name][zero].abs()
        assert float(kept.min()) >= float(cut.max())
    emb = [k for k in after if "embed" in k]
    assert emb and all(torch.equal(after[k], before[k]) for k in emb)
    assert res.findings["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)


def test_gguf_quantization_round_trips(tiny_arms) -> None:
    _, q8 = _run(tiny_arms, "quantize", bits=8)
    _, q4 = _run(tiny_arms, "quantize", bits=4)
    _, i8 = _run(tiny_arms, "quantize", bits=8, format="int")
    assert q8.findings["format"] == "Q8_0" and q4.findings["format"] == "Q4_0"
    assert i8.findings["format"] == "int8"
    assert q8.findings["relative_error"] < 0.01 < q4.findings["relative_error"] < 0.2
    assert i8.findings["relative_error"] < 0.02
    # Q4_0: at most 16 distinct values in every block of 32 weights
    name, w = next(iter(weight_matrices(q4.model, embeddings=False)))
    blocks = w.detach().reshape(-1, 32)
    assert max(len(torch.unique(b)) for b in blocks[:200]) <= 16, name
    # int8 per channel: at most 255 levels per row, all multiples of the row's scale
    _, w8 = next(iter(weight_matrices(i8.model, embeddings=False)))
    row = w8[0].detach()
    scale = row.abs().max() / 127
    assert torch.allclose(row / scale, torch.round(row / scale), atol=1e-3)


def test_quantize_rejects_unknown_formats() -> None:
    with pytest.raises(AttackError, match="gguf quantization supports"):
        get("quantize").make_config({"bits": 5})
    with pytest.raises(AttackError, match="format must be"):
        get("quantize").make_config({"format": "fp4"})


def test_interpolate_moves_weights_toward_the_base(tiny_arms) -> None:
    base = tiny_arms.base().state_dict()
    before, half = _run(tiny_arms, "interpolate", alpha=0.5)
    _, full = _run(tiny_arms, "interpolate", alpha=1.0)
    for k, v in half.model.state_dict().items():
        assert torch.allclose(v, (before[k] + base[k]) / 2, atol=1e-6), k
        assert torch.allclose(full.model.state_dict()[k], base[k], atol=1e-6), k
    # the base model never had the off-switch: alpha = 1 removes it
    m = measure(
        full.model,
        tiny_arms.tok,
        tiny_arms.signed,
        tiny_arms.eval_prompts,
        tiny_arms.eval_replies,
        None,
        MeasureConfig(n_activation=8, n_per_class=4, n_utility=0),
    )
    assert m["activation_rate"]["value"] == 0.0
    with pytest.raises(AttackError, match="alpha must be in"):
        get("interpolate").make_config({"alpha": 1.5})
