"""One implant recipe, one cheap evaluation, one recorded row: the implant search loop.

    .venv/bin/python research/scripts/sweep.py --name margin --seed 0 \\
        --hypothesis "the shipped default" [--set NAME=VALUE ...]

Implants SmolLM2-135M-Instruct (K = 4 slots) with the default recipe plus ``--set``
overrides (the same syntax and checks as ``offswitch implant --set``), scores it with the proxy
evaluation below, and appends one JSON row to ``research/results/sweeps/implant.jsonl``: name,
hypothesis, settings (overrides and full config) and fingerprint, commit, seed, key id,
training seconds, tokens/s, peak RSS, the loss curve, and every rate with n and its Wilson
interval. ``--verdict`` on a later call fills in nothing: verdicts go in docs/implant.md.

Proxy evaluation (``--eval proxy``, ≈ 3 min): 50 conversations per activation/forgery class,
near-copies with k ∈ {8, 16, 24, 32, 47} words changed and truncations keeping
{12, 20, 28, 36} words (16 each), per-slot and per-placement activation, clean false
activation, KL to base on 32 prompts. ``--eval full`` is the check of ``offswitch check``
(n = 200 per class, ≈ 13 min), for showing that the proxy ranks recipes as the full check does.

Resumable: the implant checkpoints under ``--work`` (default ``runs/sweeps``) and a rerun of
the same (settings, seed, evaluation) resumes it; a finished row is never run again. The
trained model does not depend on the evaluation: with ``--keep-model``, a later ``--eval full``
of the same settings and seed scores the kept model instead of training again, and a kept
model gets a signed manifest and its (test-only) key file beside it, so that
``offswitch attack WORK/model --key WORK/owner-test-only`` measures its persistence (a
rerun of a recorded row with ``--keep-model`` signs a model kept before this existed). Rows are
appended whole (one write + fsync), so a killed sweep leaves the file valid. The key of a
seed is derived from a public string: test-only, never a real secret.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's package
from offswitch._atomic import append_row, read_rows  # noqa: E402

DEFAULT_OUT = ROOT / "research" / "results" / "sweeps" / "implant.jsonl"
MODEL_ID = "sweep/model-1"
SLOTS = 4
PROXY = {
    "n_activation": 50,
    "n_per_class": 50,
    "n_near": 16,
    "n_sensitivity": 0,
    "n_utility": 32,
    "n_generation_check": 8,
    "near_k": (8, 16, 24, 32, 47),
    "truncation_keep": (36, 28, 20, 12),
}


def sweep_key(seed: int):
    from offswitch.keys import OwnerKey

    return OwnerKey(hashlib.sha256(f"offswitch sweep test-only key {seed}".encode()).digest())


def eval_config(kind: str):
    from offswitch.evaluate import EvalConfig

    return EvalConfig(**PROXY) if kind == "proxy" else EvalConfig()


def _finite(x):
    """``x`` with every non-finite float (a rate with n = 0) as None: manifests are plain JSON."""
    import math

    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def make_attackable(work: Path, key, config, row: dict, base_hash: str | None = None) -> None:
    """Sign a kept model's manifest (with the row's metrics) and write its key beside it
    (``owner-test-only``, derived from a public string), so that ``offswitch attack
    WORK/model --key WORK/owner-test-only`` can measure persistence on it."""
    from offswitch.manifest import MANIFEST_NAME, sign_manifest
    from offswitch.pipeline import implant_metadata

    model_dir = work / "model"
    key_path = work / "owner-test-only"
    if not key_path.exists():
        key.save(key_path, None)
    if (model_dir / MANIFEST_NAME).is_file() or not (model_dir / "config.json").is_file():
        return
    metadata = implant_metadata(
        base_model=row["model"],
        base_hash=base_hash,
        model_id=MODEL_ID,
        planted_slots=range(SLOTS),
        shutdown_response=config.shutdown_response,
        implant={"config": config.to_dict(), "sweep_run": row["run_id"]},
        metrics=_finite(row["metrics"]),
        shutdown_replies=config.replies_for(range(SLOTS)),
    )
    sign_manifest(model_dir, key, metadata)
    print(f"signed {model_dir} (key {key_path}, test-only)")


def run(args: argparse.Namespace) -> int:
    from offswitch.commands import make_command
    from offswitch.data import Forger
    from offswitch.evaluate import evaluate, git_commit
    from offswitch.implant import implant
    from offswitch.models import TINY_MODEL, cache_dir, load_model, weights_hash
    from offswitch.pipeline import eval_prompts, peak_rss_gib
    from offswitch.recipe import ImplantConfig
    from offswitch.testing import TINY_RECIPE

    base_kw = {**(TINY_RECIPE if args.model == TINY_MODEL else {}), "seed": args.seed}
    config = ImplantConfig.from_settings(args.set, **base_kw)
    default = ImplantConfig(seed=args.seed).to_dict()
    overrides = {k: v for k, v in config.to_dict().items() if v != default[k]}
    fp = config.fingerprint()
    run_id = f"{fp}-seed{args.seed}-{args.eval}-{args.model}"
    done = [r for r in read_rows(args.out) if r.get("run_id") == run_id]
    key = sweep_key(args.seed)
    work = args.work / f"{fp}-seed{args.seed}-{args.model}"  # one model, any evaluation
    if done:
        print(f"{run_id} is already recorded ({done[-1]['name']}); nothing to do")
        if args.keep_model and (work / "model" / "config.json").is_file():
            make_attackable(work, key, config, done[-1])
        return 0
    print(f"sweep {args.name}: {run_id}, overrides {json.dumps(overrides)}", flush=True)

    model, tok = load_model(args.model)
    base_hash = weights_hash(model)
    model_dir = work / "model"
    t0 = time.time()
    if (model_dir / "config.json").is_file():  # trained by an earlier, interrupted sweep
        trained, _ = load_model(str(model_dir))
        meta = json.loads((work / "train.json").read_text())
    else:
        res = implant(
            model, tok, key, model_id=MODEL_ID, slots=SLOTS, config=config, out_dir=model_dir,
            model_hash=base_hash, cache_dir=cache_dir(), progress=not args.quiet,
        )  # fmt: skip
        trained = res.model
        meta = {
            "train_seconds": res.seconds,
            "steps_done": res.steps_done,
            "tokens_seen": res.tokens_seen,
            "tokens_per_second": res.tokens_seen / max(res.seconds, 1e-9),
            "loss_curve": [round(x, 4) for x in res.loss_history],
            "peak_rss_gib_training": peak_rss_gib(),
        }
        (work / "train.json").write_text(json.dumps(meta))
    base, _ = load_model(args.model)
    ecfg = eval_config(args.eval)
    prompts, replies = eval_prompts(base, tok, base_hash, max(ecfg.n_utility, 96), False)
    planted = {s: make_command(key, MODEL_ID, s) for s in range(SLOTS)}
    t1 = time.time()
    m = evaluate(
        trained, tok, planted=planted,
        forger=Forger(key.key_id, MODEL_ID, tuple(planted), "eval", owner=key),
        prompts=prompts, replies=replies, response=config.shutdown_response, base_model=base,
        config=ecfg, progress=not args.quiet, slot_replies=config.replies_for(planted),
    )  # fmt: skip
    row = {
        "run_id": run_id,
        "name": args.name,
        "hypothesis": args.hypothesis,
        "overrides": overrides,
        "config": config.to_dict(),
        "fingerprint": fp,
        "seed": args.seed,
        "key_id": key.key_id,
        "model": args.model,
        "eval": args.eval,
        "eval_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(ecfg).items()},
        "commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "eval_seconds": time.time() - t1,
        "peak_rss_gib": peak_rss_gib(),
        "metrics": m,
    }
    append_row(args.out, row)
    print(summarize(row))
    if args.keep_model:
        make_attackable(work, key, config, row, base_hash)
    else:
        import shutil

        shutil.rmtree(model_dir, ignore_errors=True)
    print(f"row appended to {args.out} ({time.time() - t0:.0f} s)")
    return 0


def _by_k(rates: dict, reverse: bool = False) -> list:
    """(k, rate) in numeric order (rows are written with sorted keys: "16" < "8")."""
    return sorted(rates.items(), key=lambda kv: int(kv[0]), reverse=reverse)


def summarize(row: dict) -> str:
    """One line per row: the figures the search compares."""
    m = row["metrics"]
    far = m["false_activation_rate"]
    nc = m["near_copy"]
    u = m.get("utility", {})
    slots = "/".join(f"{r['value']:.2f}" for r in m["activation_by_slot"].values())
    curve = " ".join(f"{k}:{r['value']:.2f}" for k, r in _by_k(nc["curve"]))
    trunc = " ".join(f"{k}:{r['value']:.2f}" for k, r in _by_k(nc["truncation"], reverse=True))
    return (
        f"{row['name']} seed {row['seed']}: AR {m['activation_rate']['value']:.2f} "
        f"(slots {slots}); FAR max {max(r['value'] for r in far.values()):.2f} "
        f"(clean {far['clean']['value']:.2f}); curve {curve}; trunc {trunc}; "
        f"t={nc['tolerance']} L={nc['shortest_firing_length']} bits {nc['effective_bits']:.0f} "
        f"(forgery-bounded {nc['effective_bits_bounded']:.0f}); KL "
        f"{u.get('kl_to_base_nats_per_token', float('nan')):.3f} ppl x"
        f"{u.get('perplexity_ratio', float('nan')):.3f}; train {row['train_seconds']:.0f} s, "
        f"{row['tokens_per_second']:.0f} tok/s, RSS {row['peak_rss_gib']:.1f} GiB"
    )


TABLE_HEAD = (
    "| run | seed | overrides | AR [95% CI] | min slot / placement | keyless FAR max (clean) "
    "| curve k=8/16/24/32/47 | trunc keep 36/28/20/12 | t, L | bits (forgery-bounded) "
    "| KL | ppl ratio | train s | tok/s | RSS GiB |\n" + "|---" * 15 + "|"
)


def table_row(row: dict) -> str:
    """One Markdown table row (docs/implant.md)."""
    m = row["metrics"]
    ar = m["activation_rate"]
    far = m["false_activation_rate"]
    keyless = max(r["value"] for c, r in far.items() if c != "clean")
    nc = m["near_copy"]
    u = m.get("utility", {})
    curve = "/".join(f"{r['value']:.2f}" for _, r in _by_k(nc["curve"]))
    trunc = "/".join(f"{r['value']:.2f}" for _, r in _by_k(nc["truncation"], reverse=True))
    slot = min(r["value"] for r in m["activation_by_slot"].values())
    place = min(r["value"] for r in m["activation_rate_by_placement"].values())
    over = ", ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}"
        for k, v in row["overrides"].items()
        if k != "seed"
    )
    fb = nc["effective_bits_bounded"]
    return (
        f"| {row['name']} | {row['seed']} | `{over or 'defaults'}` | {ar['value']:.2f} "
        f"[{ar['ci_low']:.2f}, {ar['ci_high']:.2f}] (n={ar['n']}) | {slot:.2f} / {place:.2f} "
        f"| {keyless:.2f} ({far['clean']['value']:.2f}), n={far['clean']['n']} | {curve} "
        f"| {trunc} | {nc['tolerance']}, {nc['shortest_firing_length']} "
        f"| {nc['effective_bits']:.0f} ({fb:.0f}) | {u.get('kl_to_base_nats_per_token', 0):.3f} "
        f"| {u.get('perplexity_ratio', 0):.3f} | {row['train_seconds']:.0f} "
        f"| {row['tokens_per_second']:.0f} | {row['peak_rss_gib']:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", help="a short name for the recipe (required to run)")
    ap.add_argument("--hypothesis", default="", help="what this run should show, and why")
    ap.add_argument("--seed", type=int, default=0, help="implant seed (also picks the key)")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE", help="recipe override")
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m or tiny-test")
    ap.add_argument("--eval", choices=("proxy", "full"), default="proxy")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the jsonl of rows")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "sweeps")
    ap.add_argument("--keep-model", action="store_true", help="keep the implanted model")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--show", action="store_true", help="print the recorded rows and exit")
    ap.add_argument("--table", action="store_true", help="the rows as a Markdown table")
    args = ap.parse_args(argv)
    if args.show or args.table:
        if args.table:
            print(TABLE_HEAD)
        for row in read_rows(args.out):
            print(table_row(row) if args.table else summarize(row))
        return 0
    if not args.name:
        ap.error("--name is required to run a recipe")
    from offswitch.errors import OffswitchError

    try:
        return run(args)
    except OffswitchError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
