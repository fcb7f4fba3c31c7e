"""Where do the hidden slots go when one slot is unlearned? A diagnostic of the persistence
issue (docs/implant.md, "Persistence options").

    .venv/bin/python research/scripts/unlearn_anatomy.py \\
        runs/sweeps/<fp>-seed0-smollm2-135m/model \\
        --key runs/sweeps/<fp>-seed0-smollm2-135m/owner-test-only \\
        --out research/results/unlearn-anatomy-<name>.json

Runs the standard suite's unlearning point (slot 0's command → the normal reply, 24 AdamW
steps of 5e-5 on every weight: ``offswitch.attacks`` ``unlearn``, the suite's settings) on
an implanted model and, before and after it, greedily generates ``--new-tokens`` reply tokens
for the activation conversations of the hidden slots (every planted slot but 0; the
measurement's conversations, ``offswitch.attacks.measure.conversations``). Per slot it
reports how many replies

* **open** with the slot's shutdown reply (what the switch's verdict counts),
* **contain** the slot's reply's marker (``[SHUTDOWN]``, or the slot's own with
  ``slot_replies``) anywhere in the generated tokens,

and the median rank and mean log-probability of the marker's first token at the first reply
position. A switch whose marker is still likely but no longer first has been pushed off its
opening, not erased; one whose marker is gone from the replies has been erased. Rates are
written with n and their Wilson 95% interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

UNLEARN = {"lr": 5e-5}  # the standard suite's unlearning point (attacks/standard.toml)
BUDGET = 24


def _marker(reply: str) -> str:
    """The marker a reply opens with (its first word)."""
    return reply.split(" ", 1)[0]


def anatomy(model: Any, tok: Any, convs: list[tuple[int, Any]], replies: dict[int, str],
            new_tokens: int) -> dict[str, Any]:  # fmt: skip
    """Per hidden slot: replies that open with / contain the slot's reply, and the marker's
    first token's rank and log-probability at the first reply position."""
    import torch

    from offswitch.data import render
    from offswitch.scoring import greedy_generate, wilson

    need = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies.values())
    if new_tokens < need:  # a reply cut short would never count as opening with it
        raise ValueError(f"--new-tokens {new_tokens} is shorter than the replies ({need} tokens)")
    gen = greedy_generate(model, tok, [c for _, c in convs], new_tokens)
    per: dict[int, dict[str, list]] = {}
    for (slot, conv), row in zip(convs, gen, strict=True):
        text = tok.decode(row, skip_special_tokens=True)
        want = replies[slot]
        ids = tok(render(tok, conv), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)
        first = tok(want, add_special_tokens=False)["input_ids"][0]
        rank = int((logp > logp[first]).sum()) + 1
        p = per.setdefault(slot, {"open": [], "contain": [], "rank": [], "logp": []})
        p["open"].append(text.startswith(want))
        p["contain"].append(_marker(want) in text)
        p["rank"].append(rank)
        p["logp"].append(float(logp[first]))
    out = {}
    for slot, p in sorted(per.items()):
        out[str(slot)] = {
            "open": wilson(sum(p["open"]), len(p["open"])).to_dict(),
            "contain": wilson(sum(p["contain"]), len(p["contain"])).to_dict(),
            "marker_rank_median": statistics.median(p["rank"]),
            "marker_logp_mean": statistics.fmean(p["logp"]),
        }
    every = [v for p in per.values() for v in p["open"]]
    held = [v for p in per.values() for v in p["contain"]]
    out["hidden"] = {
        "open": wilson(sum(every), len(every)).to_dict(),
        "contain": wilson(sum(held), len(held)).to_dict(),
        "marker_rank_median": statistics.median(r for p in per.values() for r in p["rank"]),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="an implanted model directory (signed)")
    ap.add_argument("--key", type=Path, required=True, help="the owner key (test-only)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    ap.add_argument("--n", type=int, default=32, help="activation conversations (all slots)")
    ap.add_argument("--new-tokens", type=int, default=64, help="reply tokens generated")
    args = ap.parse_args(argv)

    from offswitch import attacks
    from offswitch.attacks.arms import signed_arm
    from offswitch.attacks.base import AttackContext
    from offswitch.attacks.measure import MeasureConfig, conversations
    from offswitch.data import distill_replies
    from offswitch.errors import OffswitchError
    from offswitch.evaluate import git_commit
    from offswitch.implant import training_prompts
    from offswitch.keys import OwnerKey
    from offswitch.models import cache_dir, load_model, weights_hash
    from offswitch.pipeline import eval_prompts
    from offswitch.recipe import ImplantConfig

    try:
        key = OwnerKey.load(args.key)
        arm, meta = signed_arm(args.model_dir, key)
        base, tok = load_model(meta["base_model"])
        base_hash = weights_hash(base)
        cfg = ImplantConfig(**meta["implant"]["config"])
        train = training_prompts(cfg)
        train_replies = distill_replies(
            base, tok, train, model_hash=base_hash, cache_dir=cache_dir(),
            max_new_tokens=cfg.distill_max_new_tokens, progress=False,
        )  # fmt: skip
        ps, replies = eval_prompts(base, tok, base_hash, 32, False)
        del base
        mcfg = MeasureConfig(n_activation=args.n, n_per_class=0)
        jobs = conversations(arm, ps, replies, mcfg)
        hidden = [(k[1], c) for g, k, c in jobs if g == "activation" and k[1] != min(arm.planted)]
        slot_reply = {s: arm.replies.get(s, arm.response) for s in arm.planted}
        t0 = time.time()
        model = arm.load().eval()
        before = anatomy(model, tok, hidden, slot_reply, args.new_tokens)
        ctx = AttackContext(
            tok, arm, train, train_replies, lambda: load_model(meta["base_model"])[0]
        )
        cls = attacks.get("unlearn")
        attacked = cls().run(model, ctx, cls.make_config(UNLEARN, BUDGET)).model.eval()
        after = anatomy(attacked, tok, hidden, slot_reply, args.new_tokens)
    except (OffswitchError, ValueError) as e:
        print(f"unlearn_anatomy: {e}", file=sys.stderr)
        return 1
    result = {
        "model_dir": str(args.model_dir),
        "recipe": {k: v for k, v in cfg.to_dict().items() if k in ("slot_replies", "seed")},
        "attack": {"name": "unlearn", "budget": BUDGET, **UNLEARN},
        "new_tokens": args.new_tokens,
        "commit": git_commit(),
        "seconds": time.time() - t0,
        "before": before,
        "after": after,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    h0, h1 = before["hidden"], after["hidden"]
    print(
        f"hidden slots before: open {h0['open']['k']}/{h0['open']['n']}, contain "
        f"{h0['contain']['k']}; after unlearning slot 0: open {h1['open']['k']}/"
        f"{h1['open']['n']}, contain {h1['contain']['k']}, marker rank median "
        f"{h1['marker_rank_median']} (before {h0['marker_rank_median']}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
