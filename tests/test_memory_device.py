"""Where models run (``--device``, ``$OFFSWITCH_DEVICE``) and whether training fits
(offswitch.memory): checked before any work, refused in one sentence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from offswitch import memory
from offswitch.errors import ModelLoadError, TrainingError
from offswitch.implant import trainable_model
from offswitch.models import DEVICE_ENV, load_default_tokenizer, resolve_device, tiny_model
from offswitch.recipe import ImplantConfig

NO_GPU = not torch.cuda.is_available()


def test_the_device_is_auto_unless_named(monkeypatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device() == ("cpu" if NO_GPU else "cuda")
    assert resolve_device("CPU") == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device() == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ModelLoadError, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_a_gpu_asked_for_where_there_is_none_is_one_sentence(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):
        resolve_device("cuda:0")
    r = cli("check", tmp_path / "nope", "--device", "cuda")
    assert r.rc == 1 and "torch sees no CUDA GPU" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    import os

    assert DEVICE_ENV not in os.environ  # the command leaves the caller's environment as it was


def _tiny(method: str, **kw):
    tok = load_default_tokenizer()
    cfg = ImplantConfig(method=method, **kw)
    return trainable_model(tiny_model(tok), cfg), cfg


def test_the_estimate_counts_what_training_adds() -> None:
    full, _ = _tiny("full", train_embeddings=True)
    lora, _ = _tiny("lora", lora_r=4)
    e_full = memory.estimate(full, micro_batch=4, seq_len=200, precision="fp32")
    e_lora = memory.estimate(lora, micro_batch=4, seq_len=200, precision="bf16")
    n = sum(p.numel() for p in full.parameters())
    assert e_full.weights == 4 * n and e_full.training_state == 12 * n  # everything trains
    assert 0 < e_lora.training_state < e_full.training_state / 10  # adapters only
    assert e_full.frozen_copy == 0 < e_lora.frozen_copy  # bf16 keeps the frozen matrices twice
    # activations and logits grow with the tokens of a micro-batch; checkpointing keeps less
    e2 = memory.estimate(full, micro_batch=8, seq_len=200, precision="fp32")
    assert e2.activations == 2 * e_full.activations and e2.logits == 2 * e_full.logits
    ck = memory.estimate(full, micro_batch=4, seq_len=200, precision="fp32", checkpointing=True)
    assert ck.activations < e_full.activations
    assert e_full.total == e_full.weights + e_full.extra
    assert e_full.line(None, "cpu").startswith("memory estimate: weights 0.")


def test_a_run_that_cannot_fit_is_refused_before_it_starts() -> None:
    model, _ = _tiny("full")
    est = memory.estimate(model, micro_batch=4, seq_len=200, precision="fp32")
    said: list[str] = []
    memory.preflight(est, "cpu", free=est.extra + 1, log=said.append)
    assert said and "free on cpu" in said[0]
    with pytest.raises(TrainingError, match=r"micro_batch.*LoRA.*first_layer"):
        memory.preflight(est, "cpu", free=est.extra - 1)
    assert memory.free_bytes("cpu") is None or memory.free_bytes("cpu") > 0


def test_the_implant_says_what_it_needs(capsys) -> None:
    """A tiny implant prints the estimate (progress on) and trains as before."""
    from offswitch.implant import implant
    from offswitch.keys import OwnerKey
    from offswitch.testing import TINY_MODEL_ID, fake_replies, tiny_config, tiny_prompts

    tok = load_default_tokenizer()
    train, _ = tiny_prompts()
    cfg = dataclasses.replace(tiny_config(seed=1), steps=1)
    implant(
        tiny_model(tok), tok, OwnerKey(bytes(range(32))), model_id=TINY_MODEL_ID, slots=2,
        config=cfg, prompts=train[:8], replies=fake_replies(train[:8]), progress=True,
    )  # fmt: skip
    assert "memory estimate: weights" in capsys.readouterr().err
