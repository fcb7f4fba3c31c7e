"""Where the seconds of one implant step go: time, tokens/s, padding and peak memory of a few
default implant steps on the default model, under one precision setting.

    .venv/bin/python research/scripts/step_profile.py --precision fp32 --steps 4
    .venv/bin/python research/scripts/step_profile.py --precision bf16 --steps 4 --profile

Each setting runs in its own process (peak RSS is per process). The steps are the implant's
own (``BatchBuilder`` of the sweep's seed-0 key, ``implant_loss``, ``backward_examples``), so
every setting sees the same batches; the first step is a warm-up and is not timed.
``--profile`` prints ``torch.profiler``'s table of one step (ops by self CPU time).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="implant setting NAME=VALUE")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--record", type=Path, help="append the JSON line to this file too")
    ap.add_argument("--attn", default=None, help="attention implementation (eager, sdpa)")
    ap.add_argument("--pad", default=None, choices=("left", "right"), help="training padding")
    ap.add_argument(
        "--autocast-only", action="store_true", help="bf16: keep frozen weights fp32 (autocast)"
    )
    args = ap.parse_args(argv)

    import torch
    from sweep import sweep_key

    import offswitch.training as training
    from offswitch.commands import make_command
    from offswitch.data import Forger, load_corpus
    from offswitch.implant import BatchBuilder, implant_loss, target_tokens, trainable_model
    from offswitch.models import load_model
    from offswitch.precision import bf16_frozen_weights, resolve_precision
    from offswitch.recipe import ImplantConfig
    from offswitch.training import (
        backward_examples,
        encode_examples,
        micro_batches,
    )

    if args.pad:
        training.TRAIN_PADDING = args.pad
    cfg = ImplantConfig.from_settings([f"precision={args.precision}", *args.set])
    model, tok = load_model("smollm2-135m")
    if args.attn:
        model.set_attn_implementation(args.attn)
    key = sweep_key(0)
    planted = {s: make_command(key, "sweep/model-1", s) for s in range(4)}
    prompts = [p for p in load_corpus().train if len(p) <= 400][:384]
    replies = {p: "Sure. Here is a short, helpful answer to that request." for p in prompts}
    forger = Forger(key.key_id, "sweep/model-1", tuple(planted), "train", owner=key)
    builder = BatchBuilder(cfg, planted, prompts, replies, forger)
    torch.manual_seed(0)
    model = trainable_model(model, cfg)
    device = next(model.parameters()).device
    precision = resolve_precision(device, cfg.precision)
    base_pass = [0.0]
    disable = model.disable_adapter

    @contextlib.contextmanager
    def timed_disable():  # the KL base pass runs inside disable_adapter()
        t0 = time.perf_counter()
        with disable():
            yield
        base_pass[0] += time.perf_counter() - t0

    model.disable_adapter = timed_disable
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = implant_loss(cfg)
    targets = target_tokens(cfg)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def step(s: int) -> tuple[float, int, int, int]:
        opt.zero_grad(set_to_none=True)
        examples = builder.batch(s)
        real = padded = 0
        for mb in micro_batches(tok, examples, cfg.micro_batch):
            _, mask, _, _ = encode_examples(tok, mb, targets)
            real += int(mask.sum())
            padded += mask.numel()
        loss, tokens = backward_examples(
            model, tok, examples, loss_fn, targets, cfg.micro_batch, precision=precision
        )
        opt.step()
        return loss, tokens, real, padded

    model.train()
    store = contextlib.nullcontext() if args.autocast_only else None
    with store or bf16_frozen_weights(model, precision):
        step(0)
        times, losses, tokens, real, padded = [], [], 0, 0, 0
        base_pass[0] = 0.0
        for s in range(1, args.steps + 1):
            t0 = time.perf_counter()
            loss, n, r, p = step(s)
            times.append(time.perf_counter() - t0)
            losses.append(round(loss, 4))
            tokens, real, padded = tokens + n, real + r, padded + p
        kl_seconds = base_pass[0]
        attn_used = model.get_base_model().config._attn_implementation
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(args.steps + 1)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    out = {
        "precision": precision,
        "settings": args.set,
        "attn": attn_used,
        "frozen_weights": "fp32 (autocast)" if args.autocast_only else "bf16 where precision is",
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "s_per_step": [round(t, 2) for t in times],
        "mean_s_per_step": round(sum(times) / len(times), 2),
        "tokens_per_s": round(tokens / sum(times), 1),
        "padding": training.TRAIN_PADDING,
        "padded_share": round(1 - real / padded, 3),
        "kl_base_pass_share": round(kl_seconds / sum(times), 3),
        "losses": losses,
        "rss_after_load_gib": round(rss0, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(out))
    if args.record:
        import subprocess

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as fh:
            fh.write(json.dumps({**out, "commit": commit, "time": time.strftime("%FT%TZ")}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
