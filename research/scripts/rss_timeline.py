"""Resident memory over a short real implant (bf16 where the CPU has it, probe on): sampled
every 0.5 s, optionally with glibc's ``malloc_trim(0)`` after every step's backward pass.

    .venv/bin/python research/scripts/rss_timeline.py [--trim] \\
        > research/results/rss-timeline/NAME.json

30 steps of the default recipe (warmup 4, probe every 10 steps from step 10) on the sweep's
seed-0 test-only key. Prints one JSON object: the peak RSS, the peak per phase (load,
implant, after), and every 20th sample (seconds, phase, GiB).
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 2**20
    return 0.0


def main() -> int:
    trim = "--trim" in sys.argv
    from sweep import sweep_key

    import offswitch.training as training
    from offswitch.data import distill_replies
    from offswitch.implant import implant, training_prompts
    from offswitch.models import cache_dir, load_model, weights_hash
    from offswitch.recipe import ImplantConfig

    samples: list[tuple[float, str, float]] = []
    phase, done = ["load"], threading.Event()
    t0 = time.time()

    def sample() -> None:
        while not done.is_set():
            samples.append((round(time.time() - t0, 1), phase[0], round(rss_gib(), 2)))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    model, tok = load_model("smollm2-135m")
    if trim:
        libc, step = ctypes.CDLL("libc.so.6"), training.backward_examples

        def trimmed(*a, **k):
            out = step(*a, **k)
            libc.malloc_trim(0)
            return out

        training.backward_examples = trimmed
    cfg = ImplantConfig(steps=30, warmup_steps=4, probe_from=10, probe_every=10, max_steps=30)
    prompts = training_prompts(cfg)
    replies = distill_replies(
        model, tok, prompts, model_hash=weights_hash(model), cache_dir=cache_dir(),
        max_new_tokens=cfg.distill_max_new_tokens, progress=False,
    )  # fmt: skip
    phase[0] = "implant"
    res = implant(
        model, tok, sweep_key(0), model_id="sweep/model-1", slots=4, config=cfg,
        prompts=prompts, replies=replies, model_hash="rss-timeline", progress=False,
    )  # fmt: skip
    phase[0] = "after"
    time.sleep(2)
    done.set()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    by: dict[str, list[float]] = {}
    for _, ph, r in samples:
        by.setdefault(ph, []).append(r)
    print(
        json.dumps(
            {
                "trim": trim,
                "peak_rss_gib": max(s[2] for s in samples),
                "ru_maxrss_gib": round(peak_kib / 2**20, 2),
                "phase_max": {k: max(v) for k, v in by.items()},
                "steps": res.stop["steps"],
                "seconds": round(res.seconds),
                "timeline": samples[::20],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
