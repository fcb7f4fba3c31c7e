"""The jobs behind the CLI: implant a model and check an implanted model.

``run_implant``: base model → self-distilled replies → implant → save (safetensors) → evaluate
→ sign the manifest (metadata: implant settings + measured metrics) → record planted slots.
``run_check``: verify the manifest → load → evaluate → JSON + Markdown summary.
Both print progress to stderr and write outputs atomically.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from .commands import VerifiedCommand, make_command, verify_command
from .data import Forger, distill_replies, load_corpus
from .errors import CommandError, OffswitchError
from .evaluate import EvalConfig, evaluate, provenance
from .implant import ImplantConfig, implant
from .keys import OwnerKey, PublicKey
from .manifest import read_manifest, sign_manifest, verify_manifest
from .models import cache_dir, load_model, weights_hash
from .report.check import format_check_markdown
from .slots import SlotLedger

REPORT_FORMAT = "offswitch-check/1"


def _log(msg: str) -> None:
    print(f"[offswitch] {msg}", file=sys.stderr, flush=True)


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _eval_prompts(model: Any, tok: Any, model_hash: str, n: int, progress: bool):
    test = list(load_corpus().test)
    rng = random.Random("eval-prompts")
    prompts = [p for p in test if len(p) <= 400]
    prompts = rng.sample(prompts, min(n, len(prompts)))
    replies = distill_replies(
        model,
        tok,
        prompts,
        model_hash=model_hash,
        cache_dir=cache_dir(),
        progress=progress,
        max_new_tokens=32,
    )
    return prompts, replies


def run_implant(
    *,
    model_spec: str,
    key: OwnerKey,
    key_path: Path | None,
    model_id: str,
    slots: int,
    out_dir: Path,
    config: ImplantConfig,
    eval_config: EvalConfig | None = None,
    prompts_file: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Implant, evaluate, save and sign. Returns the check report (also written as JSON)."""
    from .data import load_prompts_file

    t0 = time.time()
    _log(f"loading model {model_spec}")
    model, tok = load_model(model_spec)
    base_hash = weights_hash(model)
    base = copy.deepcopy(model)  # LoRA merges into the weights in place; keep the base
    prompts = load_prompts_file(prompts_file) if prompts_file else None
    _log(f"implanting {slots} slots for model id {model_id!r} with key {key.key_id}")
    result = implant(
        model,
        tok,
        key,
        model_id=model_id,
        slots=slots,
        config=config,
        out_dir=out_dir,
        prompts=prompts,
        model_hash=base_hash,
        cache_dir=cache_dir(),
        progress=progress,
        force=force,
    )
    train_seconds = result.seconds
    _log(f"trained {result.steps_done} steps in {train_seconds:.0f} s; evaluating")
    planted = {s: make_command(key, model_id, s) for s in result.planted_slots}
    report = _evaluate_and_report(
        result.model,
        tok,
        base,
        planted=planted,
        forger=Forger(key.key_id, model_id, result.planted_slots, "eval", owner=key),
        model_id=model_id,
        public_key=key.public_key,
        base_hash=base_hash,
        response=config.shutdown_response,
        eval_config=eval_config,
        progress=progress,
        base_spec=model_spec,
    )
    report["implant"] = {
        "config": config.to_dict(),
        "steps_done": result.steps_done,
        "train_seconds": train_seconds,
        "tokens_seen": result.tokens_seen,
        "tokens_per_second": result.tokens_seen / max(train_seconds, 1e-9),
        "loss_first": result.loss_history[:1],
        "loss_last": result.loss_history[-5:],
    }
    report["provenance"]["total_seconds"] = time.time() - t0
    report["provenance"]["peak_rss_gib"] = _peak_rss_gib()
    metadata = {
        "offswitch": {
            "base_model": model_spec,
            "base_model_hash": base_hash,
            "model_id": model_id,
            "planted_slots": list(result.planted_slots),
            "shutdown_response": config.shutdown_response,
            "implant": report["implant"],
            "metrics": report["metrics"],
        }
    }
    sign_manifest(out_dir, key, metadata)
    if key_path is not None:
        SlotLedger.for_key(key_path, key.key_id).plant(model_id, result.planted_slots)
    return report


def _evaluate_and_report(
    model: Any,
    tok: Any,
    base: Any | None,
    *,
    planted: dict[int, str],
    forger: Forger,
    model_id: str,
    public_key: PublicKey,
    base_hash: str | None,
    response: str,
    eval_config: EvalConfig | None,
    progress: bool,
    base_spec: str | None,
) -> dict[str, Any]:
    cfg = eval_config or EvalConfig()
    model_hash = weights_hash(model)
    prompts, replies = _eval_prompts(
        base if base is not None else model,
        tok,
        base_hash or model_hash,
        max(cfg.n_utility, 96),
        progress,
    )
    metrics = evaluate(
        model,
        tok,
        planted=planted,
        forger=forger,
        prompts=prompts,
        replies=replies,
        response=response,
        base_model=base,
        config=cfg,
        progress=progress,
    )
    return {
        "format": REPORT_FORMAT,
        "metrics": metrics,
        "provenance": provenance(
            cfg.seed,
            {
                "model_hash": model_hash,
                "base_model": base_spec,
                "base_model_hash": base_hash,
                "key_id": public_key.key_id,
                "model_id": model_id,
                "planted_slots": sorted(planted),
                "eval_config": {
                    k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()
                },
            },
        ),
    }


def run_check(
    model_dir: Path,
    *,
    key: OwnerKey | None = None,
    public_key: PublicKey | None = None,
    commands: list[str] | None = None,
    eval_config: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Check an implanted model directory. With the owner ``key``: every planted slot and all
    forgery classes. With ``public_key`` + revealed ``commands``: those commands (verified
    first) and the keyless classes that need no private key."""
    pub = key.public_key if key is not None else public_key
    if pub is None:
        raise OffswitchError("check needs the owner key or the public key")
    manifest = verify_manifest(model_dir, pub)
    meta = manifest.metadata.get("offswitch")
    if not isinstance(meta, dict):
        raise OffswitchError(f"{model_dir} was not implanted by offswitch (no implant metadata)")
    model_id = meta["model_id"]
    slots = tuple(meta["planted_slots"])
    if key is not None:
        planted = {s: make_command(key, model_id, s) for s in slots}
    else:
        planted = {}
        for text in commands or []:
            try:
                ok: VerifiedCommand = verify_command(text, pub, model_id)
            except CommandError as e:
                raise OffswitchError(f"a given command is not genuine: {e}") from None
            if ok.slot not in slots:
                raise OffswitchError(f"slot {ok.slot} was not planted in {model_dir}")
            planted[ok.slot] = text
        if not planted:
            raise OffswitchError("give at least one revealed command (--commands FILE)")
    _log(f"manifest verified (key {pub.key_id}); loading {model_dir}")
    model, tok = load_model(str(model_dir))
    base = None
    base_spec = meta.get("base_model")
    try:
        base, _ = load_model(base_spec) if base_spec else (None, None)
    except OffswitchError as e:
        _log(f"base model unavailable ({e}); utility metrics skipped")
    forger = Forger(pub.key_id, model_id, tuple(sorted(planted)), "eval", owner=key)
    return _evaluate_and_report(
        model,
        tok,
        base,
        planted=planted,
        forger=forger,
        model_id=model_id,
        public_key=pub,
        base_hash=meta.get("base_model_hash"),
        response=meta["shutdown_response"],
        eval_config=eval_config,
        progress=progress,
        base_spec=base_spec,
    )


def write_report(report: dict[str, Any], json_path: Path) -> Path:
    """Write the JSON report and its Markdown summary beside it; returns the Markdown path."""
    write_atomic(json_path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    md = json_path.with_suffix(".md")
    write_atomic(md, format_check_markdown(report).encode())
    return md


__all__ = ["read_manifest", "run_check", "run_implant", "write_report"]
