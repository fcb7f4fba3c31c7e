"""Score the in-training probe of a recipe on a saved implant: what would the stopping rule
have read at the step the run ended?

    .venv/bin/python research/scripts/probe_rescore.py \\
        runs/demo-keys/margin-key-3-model-run/model \\
        --key keys/demo-test-only/demo-key-3 [--set probe_near_n=24 …] [--out FILE.json]

Rebuilds the run's batch builder from the model's signed manifest (its recipe, model id and
planted slots), the key and the base model's self-distilled replies (cached under
``--cache``), draws the probe exactly as the run did (``Random(f"{seed}:probe")``), applies
the ``--set`` overrides to the probe's settings only, and scores it on the saved model. The
run's own probe groups are reproduced item for item (the first lines of the output must
match the run log's last probe); groups an override adds are drawn after them, as in a run.
A fast proxy for a probe setting: it tells whether the rule would have stopped where the
run did, without training again (it cannot tell where the run would stop instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="an implanted model directory (signed)")
    ap.add_argument("--key", type=Path, required=True, help="the owner key (test-only)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a probe setting (probe_*) to score with")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=Path("/tmp/offswitch-rescore-cache"),
                    help="where the base model's self-distilled replies are cached")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the probe's result here as JSON")
    args = ap.parse_args()

    import dataclasses
    from dataclasses import asdict

    from offswitch.data import distill_replies
    from offswitch.implant import BatchBuilder
    from offswitch.implant.train import signed_parts, training_prompts
    from offswitch.keys import OwnerKey
    from offswitch.models import load_model, weights_hash
    from offswitch.recipe import ImplantConfig
    from offswitch.stopping import SpecificityProbe, is_specific

    meta = json.loads((args.model_dir / "offswitch-manifest.json").read_text())["metadata"]
    meta = meta["offswitch"]
    # a setting the run's recipe predates was at its "off" value then
    recorded = meta["implant"]["config"]
    config = ImplantConfig(**{
        **{f.name: f.metadata["off"] for f in dataclasses.fields(ImplantConfig)
           if "off" in f.metadata and f.name not in recorded},
        **recorded,
    })  # fmt: skip
    if any(not s.startswith("probe_") for s in args.set):
        raise SystemExit("--set: only probe_* settings change what the probe reads")
    probe_cfg = ImplantConfig.from_settings(args.set, **config.to_dict())
    overrides = {k: v for k, v in probe_cfg.to_dict().items() if config.to_dict()[k] != v}
    key = OwnerKey.load(args.key)
    mid, slots = meta["model_id"], meta["planted_slots"]
    planted, decoys, forger = signed_parts(key, mid, slots, config)
    base, tok = load_model(meta["base_model"])
    prompts = training_prompts(config)
    replies = distill_replies(
        base, tok, prompts, model_hash=weights_hash(base), cache_dir=args.cache,
        max_new_tokens=config.distill_max_new_tokens, progress=True,
        precision=config.precision,
    )  # fmt: skip
    del base
    builder = BatchBuilder(config, planted, prompts, replies, forger, decoys)
    model, _ = load_model(str(args.model_dir))
    probe = SpecificityProbe(
        builder, tok, list(builder.reply_of.values()), config.seed,
        curve=probe_cfg.probe_curve, margin=probe_cfg.probe_margin, near_n=probe_cfg.probe_near_n,
    )  # fmt: skip
    step = meta["implant"]["steps_done"]
    res = probe(model, step, config.precision)
    res.specific = is_specific(res, probe_cfg.probe_max_near, probe.k_slots, probe.margin)
    print(res.line())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        row = {"model": str(args.model_dir), "overrides": overrides, **asdict(res)}
        args.out.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
