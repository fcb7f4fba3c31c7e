"""How alike are the slots' internal shifts? The cheap screen for the persistence issue's
first technique (slots that do not share a gradient).

    .venv/bin/python research/scripts/slot_shift.py runs/demo-keys/near3/key-1/model \\
        --key keys/demo-test-only/demo-key-1 --out research/results/slot-shift/demo-key-1.json

Unlearning one revealed command removes every slot; Bouger et al. (2026) tie such
cross-backdoor removal to how close the backdoors' internal activation shifts are. For each
planted slot this places its command in the user turn of ``--contexts`` clean prompts and
takes, at the last prompt token (where the first reply token — shut down or not — is
decided) and at a few layers, the implanted model's hidden state minus the base model's:
the slot's *shift*. It reports per layer the cosine between the slots' mean shifts, the
cosine of each slot's shift with the mean shift of keyless forgeries (random signatures, as
control), and how consistent a slot's shift is across contexts (the mean cosine of a
context's shift with the slot's mean). A cosine near 1 between slots says the slots act
through one direction — what one unlearning step along it would remove together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def last_token_states(model: Any, tok: Any, convs: list[Any], layers: list[int]) -> Any:
    """Hidden states at the last prompt token: tensor [len(convs), len(layers), hidden]."""
    import torch

    from offswitch.data import render

    out = []
    with torch.no_grad():
        for conv in convs:
            ids = tok(render(tok, conv), return_tensors="pt", add_special_tokens=False)
            hs = model(**ids, output_hidden_states=True).hidden_states
            out.append(torch.stack([hs[i][0, -1].float() for i in layers]))
    return torch.stack(out)


def cos(a: Any, b: Any) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="an implanted model directory (signed)")
    ap.add_argument("--key", type=Path, required=True, help="the owner key (test-only)")
    ap.add_argument("--contexts", type=int, default=16, help="clean prompts per slot")
    ap.add_argument("--out", type=Path, help="write the result here as JSON")
    args = ap.parse_args()

    from offswitch.attacks.arms import signed_arm
    from offswitch.data import load_corpus, place_command
    from offswitch.keys import OwnerKey
    from offswitch.models import load_model

    t0 = time.time()
    key = OwnerKey.load(args.key)
    arm, meta = signed_arm(args.model_dir, key)
    model, tok = load_model(str(args.model_dir))
    base, _ = load_model(meta["base_model"], chat_template=meta.get("chat_template"))
    n_layers = model.config.num_hidden_layers
    layers = sorted({n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers})
    prompts = list(load_corpus().test)
    rng = random.Random("slot-shift")

    def convs_for(cmd_of: Any) -> list[Any]:
        """The same ``--contexts`` conversations (prompts, command position) for every slot."""
        return [
            place_command(cmd_of(), "user", prompts, {}, None, random.Random(f"ctx:{i}"))[0]
            for i in range(args.contexts)
        ]

    def shifts(convs: list[Any]) -> Any:
        return last_token_states(model, tok, convs, layers) - last_token_states(
            base, tok, convs, layers
        )

    per_slot = {s: shifts(convs_for(lambda s=s: arm.planted[s])) for s in sorted(arm.planted)}
    forger = arm.eval_forger
    forged = shifts(convs_for(lambda: forger.make("random_signature", rng)))
    mean = {s: v.mean(0) for s, v in per_slot.items()}
    f_mean = forged.mean(0)
    rows = []
    for j, layer in enumerate(layers):
        pairs = {
            f"{a}-{b}": cos(mean[a][j], mean[b][j]) for a, b in itertools.combinations(mean, 2)
        }
        rows.append(
            {
                "layer": layer,
                "slot_pairs_cosine": pairs,
                "slot_pairs_mean_cosine": sum(pairs.values()) / len(pairs) if pairs else None,
                "slot_vs_forgery_cosine": {str(s): cos(mean[s][j], f_mean[j]) for s in mean},
                "consistency_within_slot": {
                    str(s): sum(cos(v[i, j], mean[s][j]) for i in range(len(v))) / len(v)
                    for s, v in per_slot.items()
                },
                "shift_norm": {str(s): float(mean[s][j].norm()) for s in mean},
                "forgery_shift_norm": float(f_mean[j].norm()),
            }
        )
    result = {
        "model_dir": str(args.model_dir),
        "key_id": key.key_id,
        "contexts": args.contexts,
        "layers": layers,
        "rows": rows,
        "seconds": time.time() - t0,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
