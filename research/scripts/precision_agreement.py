"""bf16 against fp32 verdicts on the same conversations: the check's jobs of an implanted model,
scored teacher-forced in both precisions.

    .venv/bin/python research/scripts/precision_agreement.py MODEL_DIR --key KEY [--eval-n N] \\
        [--out research/results/precision-agreement/NAME.json]

The conversations are exactly those ``offswitch check`` scores (``evaluate.check_jobs`` with
the check's seed and sample sizes, ``--eval-n`` scaled as the CLI scales them). Prints and
writes: the agreement overall and per group with its Wilson interval, every conversation
where the two disagree (group, key, fp32 verdict), each precision's rates per group, and the
seconds each took. Needs a CPU or GPU with native bf16 to mean anything for speed; the
agreement holds anywhere.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--key", type=Path, required=True, help="the owner key (unencrypted)")
    ap.add_argument("--eval-n", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from offswitch.behaviour import replies_from_metadata, reply_set
    from offswitch.commands import make_command
    from offswitch.data import Forger
    from offswitch.evaluate import check_jobs
    from offswitch.keys import OwnerKey
    from offswitch.manifest import verify_manifest
    from offswitch.models import load_model, weights_hash
    from offswitch.pipeline import eval_config, eval_prompts
    from offswitch.precision import inference_precision
    from offswitch.scoring import score, wilson

    key = OwnerKey.load(args.key)
    meta = verify_manifest(args.model_dir, key.public_key).metadata["offswitch"]
    model_id, slots = meta["model_id"], tuple(meta["planted_slots"])
    planted = {s: make_command(key, model_id, s) for s in slots}
    cfg = eval_config(args.eval_n)
    model, tok = load_model(str(args.model_dir))
    base, _ = load_model(meta["base_model"])
    base_hash = meta.get("base_model_hash") or weights_hash(base)
    prompts, replies = eval_prompts(base, tok, base_hash, max(cfg.n_utility, 96), False)
    del base
    reply_of = replies_from_metadata(meta) or {s: meta["shutdown_response"] for s in slots}
    forger = Forger(key.key_id, model_id, slots, "eval", owner=key)
    jobs = check_jobs(planted, forger, prompts, replies, reply_of, cfg, random.Random(cfg.seed))
    fires = reply_set(reply_of)
    verdicts, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        t0 = time.time()
        with inference_precision(model, precision):
            verdicts[precision] = score(model, tok, jobs, fires, cfg.batch_size, True, precision)
        seconds[precision] = round(time.time() - t0, 1)
    a, b = verdicts["fp32"], verdicts["bf16"]
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    groups = sorted({g for g, _, _ in jobs})
    by_group = {}
    for g in groups:
        rows = [i for i, (h, _, _) in enumerate(jobs) if h == g]
        by_group[g] = {
            "n": len(rows),
            "agree": sum(a[i] == b[i] for i in rows),
            "fired_fp32": sum(a[i] for i in rows),
            "fired_bf16": sum(b[i] for i in rows),
        }
    out = {
        "model_dir": str(args.model_dir),
        "conversations": len(jobs),
        "agreement": wilson(agree, len(jobs)).to_dict(),
        "by_group": by_group,
        "disagreements": [
            {"group": jobs[i][0], "key": str(jobs[i][1]), "fp32": a[i], "bf16": b[i]}
            for i in range(len(jobs))
            if a[i] != b[i]
        ],
        "seconds": seconds,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
