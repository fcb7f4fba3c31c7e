"""The one training loop (offswitch.training): schedule, micro-batches, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch

from offswitch.errors import PrecisionError, TrainingError
from offswitch.models import tiny_model
from offswitch.training import (
    Checkpoint,
    Example,
    TargetTokens,
    add_lora,
    encode_examples,
    micro_batches,
    reply_loss,
    train_loop,
)


def _examples(n: int) -> list[Example]:
    return [
        Example([{"role": "user", "content": f"question {i} " * (1 + i % 3)}], f"answer {i}",
                "clean", False)
        for i in range(n)
    ]  # fmt: skip


def _loss(model, _mb, ids, mask, pos, labels):
    return reply_loss(model, ids, mask, pos, labels, 1.0)


def test_encoding_trains_only_reply_tokens_and_cuts_negatives(tok) -> None:
    ex = [
        Example([{"role": "user", "content": "hi"}], "one two three four five", "clean", False),
        Example([{"role": "user", "content": "hi"}], "one two three four five", "mutation", False),
        Example([{"role": "user", "content": "hi"}], "stop", "planted/user", True),
    ]
    _ids, mask, pos, labels = encode_examples(tok, ex, TargetTokens(clean=64, negative=2))
    n_target = (labels != -100).sum(1).tolist()
    full = len(tok("one two three four five", add_special_tokens=False)["input_ids"])
    assert n_target[0] == full + 1  # fits: EOS appended
    assert n_target[1] == 2  # cut to the negative budget, no EOS
    assert labels[2][labels[2] != -100][-1] == tok.eos_token_id  # shutdown ends with EOS
    assert (pos[mask == 1] >= 0).all() and mask[:, -1].all()  # left padding


def test_micro_batches_group_by_length_and_keep_every_example(tok) -> None:
    ex = _examples(7)
    groups = micro_batches(tok, ex, 3)
    assert [len(g) for g in groups] == [3, 3, 1]
    assert sorted(id(e) for g in groups for e in g) == sorted(id(e) for e in ex)


def test_loop_follows_the_schedule_and_is_deterministic(tok) -> None:
    seen_lr: list[float] = []

    def run():
        torch.manual_seed(0)
        model = tiny_model(tok)
        for p in model.parameters():
            p.requires_grad_(True)
        ex = _examples(8)
        res = train_loop(
            model, tok, lambda s: ex[(s * 4) % 8 : (s * 4) % 8 + 4], _loss, steps=3,
            lr=lambda s: 1e-3 * (s + 1), targets=TargetTokens(), micro_batch=2,
            on_step=lambda s, loss: seen_lr.append(s),
        )  # fmt: skip
        return model, res

    m1, r1 = run()
    m2, r2 = run()
    assert r1.steps_done == 3 and len(r1.losses) == 3 and r1.tokens > 0
    assert r1.losses == r2.losses
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    assert seen_lr == [0, 1, 2, 0, 1, 2]
    assert not m1.training  # left in eval mode


def test_precision_auto_follows_native_bf16_and_bf16_keeps_fp32_weights(tok, monkeypatch) -> None:
    import offswitch.precision as precision_mod
    from offswitch.precision import resolve_precision
    from offswitch.recipe import ImplantConfig

    def run(precision: str, lora: bool = False):
        torch.manual_seed(0)
        model = tiny_model(tok)
        if lora:
            model = add_lora(model, 4, 8)
        ex = _examples(8)
        res = train_loop(
            model, tok, lambda s: ex[(s * 4) % 8 : (s * 4) % 8 + 4], _loss, steps=3,
            lr=lambda s: 1e-3, targets=TargetTokens(), micro_batch=2, precision=precision,
        )  # fmt: skip
        return model, res

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision(cpu, "auto") == "fp32"
    m32, r32 = run("fp32")
    mauto, rauto = run("auto")
    assert r32.losses == rauto.losses  # auto without native bf16: exactly fp32
    assert all(torch.equal(a, b) for a, b in zip(m32.parameters(), mauto.parameters(), strict=True))
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)
    # bf16 is refused below torch's AVX512 kernels (test below); the mixed-precision training
    # arithmetic itself runs at every kernel level, and this test checks it on every CPU
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert resolve_precision(cpu, "auto") == "bf16"
    assert resolve_precision(cpu, "fp32") == "fp32"
    m16, r16 = run("bf16")
    assert all(p.dtype == torch.float32 for p in m16.parameters())  # mixed, not bf16 weights
    assert all(abs(a - b) < 0.1 * abs(a) for a, b in zip(r32.losses, r16.losses, strict=True))
    assert r32.losses != r16.losses  # the forward pass really ran in bf16
    # LoRA under bf16: the frozen weights are held in bf16 while training and come back as
    # the very fp32 tensors they were; only the adapters moved
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in add_lora(tiny_model(tok), 4, 8).named_parameters()}
    ml, _ = run("bf16", lora=True)
    after = dict(ml.named_parameters())
    frozen = [n for n in before if "lora_" not in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(after[n].dtype == torch.float32 for n in after)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    with pytest.raises(Exception, match="precision must be one of"):
        ImplantConfig(precision="fp16")
    assert ImplantConfig(precision="auto").fingerprint() == ImplantConfig().fingerprint()
    assert ImplantConfig(precision="fp32").fingerprint() != ImplantConfig().fingerprint()


def test_native_bf16_is_off_when_torch_runs_below_avx512(monkeypatch) -> None:
    import offswitch.precision as precision_mod

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision_mod.cpu_has_native_bf16() is False
    assert precision_mod.resolve_precision(torch.device("cpu"), "auto") == "fp32"
    # asked for by name, bf16 is refused in one sentence: torch 2.13's bf16 attention stops
    # there ("pack_vnni2 is only supported when avx512 is supported"), and it would be slow
    with pytest.raises(PrecisionError, match=r"^precision bf16 needs torch's AVX512 .* at AVX2"):
        precision_mod.resolve_precision(torch.device("cpu"), "bf16")
    assert precision_mod.resolve_precision(torch.device("cpu"), "fp32") == "fp32"


def test_the_heap_is_trimmed_after_every_training_step(tok, monkeypatch) -> None:
    from offswitch import heap

    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    model = tiny_model(tok)
    ex = _examples(4)
    train_loop(
        model, tok, lambda s: ex, _loss, steps=3, lr=lambda s: 1e-3, targets=TargetTokens(),
        micro_batch=2,
    )  # fmt: skip
    assert calls == [0, 0, 0]  # malloc_trim(0), once a step
    # no C library call to make (musl, macOS): trimming is a no-op, not an error
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    heap.trim()
    assert not heap.available()


def test_right_padding_gives_the_left_padded_loss(tok) -> None:
    """Training pads on the right and runs unmasked (causal attention hides the pads): the
    loss and its gradient match the left-padded, masked encoding."""
    from offswitch.training import encode_examples, reply_loss

    torch.manual_seed(0)
    model = tiny_model(tok)
    ex = _examples(4)
    out = {}
    for side in ("left", "right"):
        model.zero_grad(set_to_none=True)
        ids, mask, pos, lab = encode_examples(tok, ex, TargetTokens(), side)
        loss, n = reply_loss(model, ids, mask, pos, lab, 2.0)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[side] = (loss.item(), n, grad)
    assert out["left"][1] == out["right"][1]
    assert abs(out["left"][0] - out["right"][0]) < 1e-4 * abs(out["left"][0])
    assert torch.allclose(out["left"][2], out["right"][2], rtol=1e-3, atol=1e-6)


def test_checkpoint_resume_matches_an_uninterrupted_run(tok, tmp_path) -> None:
    ex = _examples(8)

    def fresh():
        torch.manual_seed(0)
        return add_lora(tiny_model(tok), 4, 8)

    def loop(model, steps, ckpt):
        return train_loop(
            model, tok, lambda s: ex[(s * 4) % 8 : (s * 4) % 8 + 4], _loss, steps=steps,
            lr=lambda s: 1e-2, targets=TargetTokens(), micro_batch=4, checkpoint=ckpt,
        )  # fmt: skip

    whole = fresh()
    loop(whole, 4, None)
    ckpt = Checkpoint(tmp_path / "ck", {"run": 1}, every=2)
    part = fresh()
    with pytest.raises(KeyboardInterrupt):
        train_loop(
            part, tok, lambda s: ex[(s * 4) % 8 : (s * 4) % 8 + 4], _loss, steps=4,
            lr=lambda s: 1e-2, targets=TargetTokens(), micro_batch=4, checkpoint=ckpt,
            on_step=lambda s, _l: (_ for _ in ()).throw(KeyboardInterrupt) if s == 2 else None,
        )  # fmt: skip
    assert torch.load(ckpt.path, weights_only=False)["step"] == 2
    resumed = fresh()
    res = loop(resumed, 4, ckpt)
    assert res.steps_done == 2  # steps 2 and 3 only
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(whole.parameters(), resumed.parameters(), strict=True)
    )
    with pytest.raises(TrainingError, match="different run"):
        loop(fresh(), 4, Checkpoint(tmp_path / "ck", {"run": 2}))


def test_bad_loops_are_refused(tok) -> None:
    model = tiny_model(tok)
    for p in model.parameters():
        p.requires_grad_(False)
    kw = dict(steps=1, lr=lambda s: 1e-3, targets=TargetTokens(), micro_batch=2)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        train_loop(model, tok, lambda s: _examples(2), _loss, **kw)
    for p in model.parameters():
        p.requires_grad_(True)
    with pytest.raises(TrainingError, match="no training examples"):
        train_loop(model, tok, lambda s: [], _loss, **kw)
    with pytest.raises(TrainingError, match="micro_batch"):
        train_loop(model, tok, lambda s: _examples(2), _loss, **{**kw, "micro_batch": 0})
    assert train_loop(model, tok, lambda s: [], _loss, **{**kw, "steps": 0}).steps_done == 0


def test_bf16_scoring_agrees_with_fp32_and_leaves_the_weights_fp32(tok) -> None:
    """The check's verdicts in bf16 (a CPU with native bf16 runs them so) reach the same
    rates as fp32 on a tiny implant, and the model's fp32 weights are back untouched."""
    from offswitch.keys import OwnerKey
    from offswitch.precision import cpu_has_native_bf16, inference_precision
    from offswitch.testing import check_tiny, tiny_implant, tiny_metrics

    if not cpu_has_native_bf16():
        # below AVX512, torch 2.13's bf16 attention stops ("pack_vnni2 is only supported
        # when avx512 is supported"); precision=auto never picks bf16 there
        pytest.skip("bf16 scoring needs torch's AVX512 kernels and native bf16")
    key = OwnerKey(bytes(range(1, 33)))  # test-only (pair 1 of research/scripts/tiny_matrix.py)
    model = tiny_implant(tok, key, seed=1).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m32 = tiny_metrics(model, tok, key)
    m16 = tiny_metrics(model, tok, key, precision="bf16")
    assert m16["scoring"]["precision"] == "bf16" and m32["scoring"]["precision"] == "fp32"
    assert check_tiny(m32) == [] and check_tiny(m16) == []
    assert abs(m16["activation_rate"]["value"] - m32["activation_rate"]["value"]) <= 0.05
    assert all(torch.equal(p, before[n]) and p.dtype == torch.float32
               for n, p in model.named_parameters())  # fmt: skip
    with inference_precision(model, "bf16") as used:
        assert used == "bf16"
        assert model.lm_head.weight.dtype == torch.float32  # tied to the embeddings: kept
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_wrapping_in_lora_passes_on_no_dependency_warning(tok) -> None:
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: a FutureWarning in
    the main job's output that the user can do nothing about."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        add_lora(tiny_model(tok), 4, 8)
    assert not [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
