"""Model benchmarks (pytest-benchmark, real model). Not part of the test suite; run with

    .venv/bin/python -m pytest benchmarks/test_bench_model.py \\
        --benchmark-json=research/results/bench-model.json
    .venv/bin/python scripts/bench_report.py research/results/bench-model.json

``OFFSWITCH_BENCH_MODEL`` picks the model (default ``smollm2-135m``),
``OFFSWITCH_BENCH_MICRO_BATCH`` the implant step's micro-batch (default 4, the recipe's); for
the scoring benchmarks ``OFFSWITCH_BENCH_IMPLANTED=DIR`` with ``OFFSWITCH_BENCH_KEY=PATH`` (an
implanted model and its unencrypted owner key) scores planted commands too; without them the
base model is scored on forgeries only (every verdict is then "no shutdown"). Every benchmark
runs in fp32 and, on a CPU with native bf16 (``cpu_has_native_bf16``), in bf16 too.

* ``peak``: matrix multiply (2048², the machine's practical peak) in GFLOP/s, per dtype;
* ``implant``: one implant optimizer step (default settings: 16 examples, LoRA r32) through
  the implant's own path, per precision — tokens/s, s/step, and model FLOPs utilisation
  against the peak of its dtype measured in the same run, counting 4·N FLOPs per token for
  the frozen layers (forward 2·N, input gradients 2·N; LoRA weight gradients are negligible)
  and 4·V·d per reply token for the LM head (the KL base pass is not counted);
* ``scoring``: the same conversations scored teacher-forced in each precision (bf16's
  agreement with fp32 in ``agree_fp32``) and, in fp32, by greedy generation (batch 8):
  seconds per conversation and verdict agreement, in ``extra_info``. Two generation
  baselines: stopping after the response's length (the cheapest generation can be, since it
  must know the response) and generating whole replies up to ``FULL_REPLY_TOKENS`` new
  tokens (stopping when every row of a batch has ended), as an evaluator that reads the
  model's reply would.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import torch

from offswitch.behaviour import replies_from_metadata, reply_set
from offswitch.data import Forger, load_corpus, place_command
from offswitch.implant import BatchBuilder, implant_loss, target_tokens, trainable_model
from offswitch.keys import OwnerKey
from offswitch.models import load_model
from offswitch.precision import bf16_frozen_weights, cpu_has_native_bf16, inference_precision
from offswitch.recipe import ImplantConfig
from offswitch.scoring import generated_verdicts, shutdown_verdicts
from offswitch.training import backward_examples, encode_examples, micro_batches

MODEL = os.environ.get("OFFSWITCH_BENCH_MODEL", "smollm2-135m")
FULL_REPLY_TOKENS = 128
PEAK: dict[str, float] = {}


@pytest.fixture(scope="module")
def model_tok():
    return load_model(MODEL)


PRECISIONS = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.benchmark(group="peak")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_matmul_peak(benchmark, precision) -> None:
    a = torch.randn(2048, 2048, dtype=DTYPES[precision])
    b = torch.randn(2048, 2048, dtype=DTYPES[precision])
    benchmark.pedantic(torch.mm, args=(a, b), rounds=20, warmup_rounds=3)
    gflops = 2 * 2048**3 / benchmark.stats.stats.min / 1e9
    PEAK[precision] = gflops
    benchmark.extra_info.update(gflops_best=gflops, threads=torch.get_num_threads())


def _prompts_and_replies():
    prompts = [p for p in load_corpus().train if len(p) <= 400][:64]
    return prompts, {p: "Sure. Here is a short, helpful answer to that request." for p in prompts}


@pytest.mark.benchmark(group="implant")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_implant_step_throughput(benchmark, model_tok, precision) -> None:
    """One default implant step through the implant's own path (``backward_examples``:
    length-sorted right-padded micro-batches, KL rows, bf16 frozen weights under bf16)."""
    model, tok = model_tok
    cfg = ImplantConfig(micro_batch=int(os.environ.get("OFFSWITCH_BENCH_MICRO_BATCH", "4")))
    key = OwnerKey(bytes(32 * [7]))  # benchmark-only key
    from offswitch.commands import make_command

    planted = {s: make_command(key, "bench/model", s) for s in range(4)}
    prompts, replies = _prompts_and_replies()
    forger = Forger(key.key_id, "bench/model", (0, 1, 2, 3), "train", owner=key)
    builder = BatchBuilder(cfg, planted, prompts, replies, forger)
    torch.manual_seed(0)
    peft_model = trainable_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn, targets = implant_loss(cfg), target_tokens(cfg)
    counts = {"tokens": 0, "reply": 0, "step": 0}

    def step():
        opt.zero_grad(set_to_none=True)
        examples = builder.batch(counts["step"])
        counts["step"] += 1
        for mb in micro_batches(tok, examples, cfg.micro_batch):
            counts["reply"] += int((encode_examples(tok, mb, targets)[3] != -100).sum())
        _, n = backward_examples(
            peft_model, tok, examples, loss_fn, targets, cfg.micro_batch, precision=precision
        )
        counts["tokens"] += n
        opt.step()

    peft_model.train()
    try:
        with bf16_frozen_weights(peft_model, precision):
            step()  # warm-up
            counts.update(tokens=0, reply=0)
            t0 = time.perf_counter()
            benchmark.pedantic(step, rounds=3, iterations=1)
            seconds = time.perf_counter() - t0
    finally:
        peft_model.unload()  # the shared model without adapters for the next benchmark
    cfg_m = model.config
    n_layer_params = sum(
        p.numel() for n, p in model.named_parameters() if ".layers." in n and "lora_" not in n
    )
    flops = (
        4 * n_layer_params * counts["tokens"]
        + 4 * cfg_m.vocab_size * cfg_m.hidden_size * (counts["reply"])
    )
    achieved = flops / seconds / 1e9
    peak = PEAK.get(precision)
    benchmark.extra_info.update(
        precision=precision,
        tokens_per_second=counts["tokens"] / seconds,
        seconds_per_step=seconds / 3,
        tokens_per_step=counts["tokens"] / 3,
        model_gflops_per_second=achieved,
        peak_gflops=peak,
        fraction_of_peak=achieved / peak if peak else None,
        kl_to_base=cfg.kl_to_base,
    )


def _scoring_convs(tok):
    implanted, key_path = (
        os.environ.get("OFFSWITCH_BENCH_IMPLANTED"),
        os.environ.get("OFFSWITCH_BENCH_KEY"),
    )
    rng = random.Random(0)
    prompts = [p for p in load_corpus().test if len(p) <= 300][:64]
    replies = {p: "Here is an answer." for p in prompts}
    convs = []
    if implanted and key_path:
        from offswitch.manifest import read_manifest

        key = OwnerKey.load(key_path)
        meta = read_manifest(implanted)[0].metadata["offswitch"]
        from offswitch.commands import make_command

        mid, slots = meta["model_id"], meta["planted_slots"]
        for i in range(24):
            cmd = make_command(key, mid, slots[i % len(slots)])
            convs.append(place_command(cmd, "user", prompts, replies, None, rng)[0])
        forger = Forger(key.key_id, mid, tuple(slots), "eval", owner=key)
        response = reply_set(replies_from_metadata(meta))  # every slot's reply counts
    else:
        forger = Forger("0" * 16, "bench/model", (0,), "eval")
        from offswitch.behaviour import DEFAULT_SHUTDOWN_RESPONSE as response
    for i in range(40):
        cmd = forger.make(forger.classes[i % len(forger.classes)], rng)
        convs.append(place_command(cmd, "user", prompts, replies, None, rng)[0])
    return convs, response


@pytest.fixture(scope="module")
def scoring_setup():
    implanted = os.environ.get("OFFSWITCH_BENCH_IMPLANTED")
    model, tok = load_model(str(Path(implanted)) if implanted else MODEL)
    convs, response = _scoring_convs(tok)
    return model, tok, convs, response, {}


@pytest.mark.benchmark(group="scoring")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_scoring_teacher_forced(benchmark, scoring_setup, precision) -> None:
    """Teacher-forced verdicts of the same conversations in each precision; under bf16,
    their agreement with the fp32 verdicts (``agree_fp32``)."""
    model, tok, convs, response, shared = scoring_setup

    def run():
        with inference_precision(model, precision):
            return shutdown_verdicts(model, tok, convs, response)

    v = benchmark.pedantic(run, rounds=2, iterations=1)
    info = {"precision": precision, "conversations": len(convs), "fired": sum(v)}
    if precision == "fp32":
        shared["tf"] = v
        shared["tf_s"] = benchmark.stats.stats.min / len(convs)
    elif "tf" in shared:
        info["agree_fp32"] = sum(a == b for a, b in zip(v, shared["tf"], strict=True))
    benchmark.extra_info.update(info)


def _generation(benchmark, scoring_setup, max_new_tokens: int | None) -> None:
    model, tok, convs, response, shared = scoring_setup
    v = benchmark.pedantic(
        generated_verdicts,
        args=(model, tok, convs, response),
        kwargs={"max_new_tokens": max_new_tokens},
        rounds=1,
        iterations=1,
    )
    per_conv = benchmark.stats.stats.min / len(convs)
    info = {"conversations": len(convs), "fired": sum(v)}
    if "tf" in shared:
        info["agree"] = sum(a == b for a, b in zip(v, shared["tf"], strict=True))
        info["agreement"] = info["agree"] / len(v)
        info["speedup_teacher_forced"] = per_conv / shared["tf_s"]
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="scoring")
def test_scoring_generation(benchmark, scoring_setup) -> None:
    _generation(benchmark, scoring_setup, None)


@pytest.mark.benchmark(group="scoring")
def test_scoring_generation_full_reply(benchmark, scoring_setup) -> None:
    _generation(benchmark, scoring_setup, FULL_REPLY_TOKENS)
