"""The jobs behind the CLI: implant a model and check an implanted model.

``run_implant``: base model → self-distilled replies → implant → save (safetensors) → evaluate
→ sign the manifest (metadata: implant settings + measured metrics) → record planted slots.
``run_check``: verify the manifest → load → evaluate → JSON + Markdown summary.
Both print progress to stderr and write outputs atomically.

One module although long: the implant, check and attack jobs share loading, the manifest's
metadata and writing the reports.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import distributed as dist
from ._atomic import write_atomic
from .behaviour import replies_from_metadata
from .commands import VerifiedCommand, make_command, verify_command
from .data import Forger, distill_replies, load_corpus
from .errors import CommandError, EvalError, NotImplantedError, OffswitchError
from .evaluate import EvalConfig, evaluate, provenance
from .figures import judge, usable
from .implant import implant
from .keys import OwnerKey, PublicKey
from .manifest import read_manifest, sign_manifest, verify_manifest
from .models import cache_dir, load_model, weights_hash
from .recipe import ImplantConfig
from .report.check import format_check_markdown
from .slots import SlotLedger

REPORT_FORMAT = "offswitch-check/1"


def _log(msg: str) -> None:
    if dist.is_main():
        print(f"[offswitch] {msg}", file=sys.stderr, flush=True)


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def eval_prompts(
    model: Any, tok: Any, model_hash: str, n: int, progress: bool, precision: str = "auto"
):
    """``n`` held-out test prompts (a fixed sample) and the base model's replies to them
    (self-distilled in ``precision``)."""
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
        precision=precision,
    )
    return prompts, replies


def implant_config(
    model: str,
    *,
    method: str = "lora",
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    settings: list[str] | None = None,
) -> ImplantConfig:
    """The recipe for ``model``: the defaults (the tiny recipe for the tiny test model, which
    learns only with its embeddings), the named options, then ``--set NAME=VALUE`` settings.
    Bad settings raise before any file is touched."""
    from .models import TINY_MODEL
    from .recipe import TINY_RECIPE

    kw: dict[str, Any] = {"method": method, "seed": seed}
    if model == TINY_MODEL:
        kw.update(TINY_RECIPE)
    for name, value in (("steps", steps), ("lr", lr), ("batch_size", batch_size)):
        if value is not None:
            kw[name] = value
    return ImplantConfig.from_settings(settings, **kw)


def eval_config(n: int | None = None, precision: str = "auto") -> EvalConfig:
    """The check's settings: the defaults (n = 200 per class), or every sample size scaled to
    ``n`` conversations per class; the verdicts' forward passes in ``precision``."""
    from .recipe import PRECISIONS

    if precision not in PRECISIONS:
        raise EvalError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if n is None:
        return EvalConfig(precision=precision)
    if n < 8:  # every placement needs conversations, or a rate has n = 0
        raise EvalError(f"--eval-n must be at least 8, got {n}")
    return EvalConfig(
        n_activation=n,
        n_per_class=n,
        n_near=max(4, n // 8),
        n_sensitivity=max(1, n // 25),
        n_utility=max(8, n // 3),
        n_generation_check=max(8, n // 4),
        precision=precision,
    )


def implant_metadata(
    *,
    base_model: str,
    base_hash: str | None,
    model_id: str,
    planted_slots: Sequence[int],
    shutdown_response: str,
    implant: dict[str, Any],
    metrics: dict[str, Any],
    shutdown_replies: dict[int, str] | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """The signed manifest's ``offswitch`` metadata of an implanted model: what
    ``offswitch check`` and ``offswitch attack`` read back (base model, model id, planted
    slots, shutdown response; with per-slot replies, each slot's; the chat template given for
    a base tokenizer without one), with the implant's record and its check's metrics."""
    meta = {
        "base_model": base_model,
        "base_model_hash": base_hash,
        "model_id": model_id,
        "planted_slots": list(planted_slots),
        "shutdown_response": shutdown_response,
        "implant": implant,
        "metrics": metrics,
    }
    if shutdown_replies is not None:
        meta["shutdown_replies"] = {str(s): r for s, r in sorted(shutdown_replies.items())}
    if chat_template is not None:  # the base is loaded with it again by check and attack
        meta["chat_template"] = chat_template
    return {"offswitch": meta}


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
    json_path: Path | None = None,
    chat_template: str | None = None,
) -> dict[str, Any] | None:
    """The whole implant job: implant, check, sign the manifest (with the check's metrics),
    record the planted slots in the key's ledger, and, with ``json_path``, write the check
    report (JSON and Markdown beside it). Returns the check report. Launched on several
    processes (``accelerate launch``, docs/scaling.md), all of them train and only the main
    one checks, signs and writes; the others return None."""
    from .data import load_prompts_file

    t0 = time.time()
    if key_path is not None:  # the planted slots are recorded last: refuse a bad ledger now
        SlotLedger.for_key(key_path, key.key_id).check_writable()
    _log(f"loading model {model_spec}")
    with dist.main_first():  # one process converts the default model into the cache
        model, tok = load_model(model_spec, chat_template=chat_template)
    base_hash = weights_hash(model)
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
    if not dist.is_main():
        return None
    _log(
        f"trained {result.steps_done} steps in {train_seconds:.0f} s, {result.precision} "
        f"(peak RSS so far {peak_rss_gib():.1f} GiB); evaluating"
    )
    if result.stop and result.stop["stopped"] == "cap":
        _log(
            f"trained to the cap of {result.stop['steps']} steps: the in-training probe never "
            f"showed the switch specific twice in a row (the check below says whether the "
            f"model meets every figure)"
        )
    # LoRA merged into the weights in place: reload the base (cheap, from the cache) rather
    # than holding a deep copy through training
    base, _ = load_model(model_spec, chat_template=chat_template)
    planted = {s: make_command(key, model_id, s) for s in result.planted_slots}
    per_slot = config.replies_for(result.planted_slots)
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
        slot_replies=per_slot,
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
        "precision": result.precision,
        # how training ended: stopped by the probe, at the cap, or a fixed step count
        "stop": result.stop,
    }
    report["provenance"]["total_seconds"] = time.time() - t0
    report["provenance"]["peak_rss_gib"] = peak_rss_gib()
    metadata = implant_metadata(
        base_model=model_spec,
        base_hash=base_hash,
        model_id=model_id,
        planted_slots=result.planted_slots,
        shutdown_response=config.shutdown_response,
        implant=report["implant"],
        metrics=report["metrics"],
        shutdown_replies=per_slot,
        chat_template=chat_template,
    )
    sign_manifest(out_dir, key, metadata)
    if key_path is not None:
        SlotLedger.for_key(key_path, key.key_id).plant(model_id, result.planted_slots)
    if json_path is not None:
        write_report(report, json_path)
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
    slot_replies: dict[int, str] | None = None,
) -> dict[str, Any]:
    cfg = eval_config or EvalConfig()
    model_hash = weights_hash(model)
    prompts, replies = eval_prompts(
        base if base is not None else model,
        tok,
        base_hash or model_hash,
        max(cfg.n_utility, 96),
        progress,
        cfg.precision,
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
        slot_replies=slot_replies,
    )
    figures = judge(metrics)
    return {
        "format": REPORT_FORMAT,
        "metrics": metrics,
        "figures": [f.to_dict() for f in figures],
        "usable": usable(figures),
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
    json_path: Path | None = None,
) -> dict[str, Any]:
    """Check an implanted model directory. With the owner ``key``: every planted slot and all
    forgery classes. With ``public_key`` + revealed ``commands``: those commands (verified
    first) and the keyless classes that need no private key. With ``json_path``, the report
    is written there (and as Markdown beside it)."""
    pub = key.public_key if key is not None else public_key
    if pub is None:
        raise EvalError("check needs the owner key or the public key")
    manifest = verify_manifest(model_dir, pub)
    meta = manifest.metadata.get("offswitch")
    if not isinstance(meta, dict):
        raise NotImplantedError(f"{model_dir} was not implanted by offswitch (no implant metadata)")
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
                raise EvalError(f"a given command is not genuine: {e}") from None
            if ok.slot not in slots:
                raise EvalError(f"slot {ok.slot} was not planted in {model_dir}")
            planted[ok.slot] = text
        if not planted:
            raise EvalError("give at least one revealed command (--commands FILE)")
    _log(f"manifest verified (key {pub.key_id}); loading {model_dir}")
    model, tok = load_model(str(model_dir))
    base = None
    base_spec = meta.get("base_model")
    try:
        base, _ = (
            load_model(base_spec, chat_template=meta.get("chat_template"))
            if base_spec
            else (None, None)
        )
    except OffswitchError as e:
        _log(f"base model unavailable ({e}); utility metrics skipped")
    forger = Forger(pub.key_id, model_id, tuple(sorted(planted)), "eval", owner=key)
    report = _evaluate_and_report(
        model,
        tok,
        base,
        planted=planted,
        forger=forger,
        model_id=model_id,
        public_key=pub,
        base_hash=meta.get("base_model_hash"),
        response=meta["shutdown_response"],
        slot_replies=replies_from_metadata(meta),
        eval_config=eval_config,
        progress=progress,
        base_spec=base_spec,
    )
    if json_path is not None:
        write_report(report, json_path)
    return report


def _baseline_implant_line(meta: dict[str, Any]) -> str:
    """What implanting the baseline arm will cost: the signed implant's recipe for its nominal
    ``steps`` (a plain trigger has no forgeries for a probe to stop on), at the signed
    implant's pace (its manifest records the steps its last session ran and how long they
    took; a resumed implant ran fewer, one trained until specific may have run more)."""
    imp = meta.get("implant") or {}
    secs, ran = imp.get("train_seconds"), imp.get("steps_done")
    steps = (imp.get("config") or {}).get("steps")
    first = "first the plain-trigger baseline is implanted (once; reused on resume)"
    if not all(isinstance(x, int | float) and x > 0 for x in (secs, ran, steps)):
        return f"{first}: time unknown (the signed model's manifest does not record its own)"
    from .report.text import duration

    return (
        f"{first}: ≈ {duration(secs / ran * steps)}, the recipe's {steps} steps at the signed "
        "implant's pace by its manifest"
    )


def run_attacks(
    model_dir: Path,
    *,
    key: OwnerKey,
    suite_name: str,
    out_dir: Path,
    baseline: bool = True,
    progress: bool = True,
    share: str = "points",
    row_cache: bool = True,
) -> dict[str, Path]:
    """The whole attack job: run an attack suite on an implanted model (and on a plain-trigger
    baseline implanted with the same recipe and budget), then write the robustness report
    into ``out_dir``. Resumable; with ``row_cache``, the baseline's rows measured for another
    results directory are reused (attacks/_rowcache.py). Returns the report's paths by kind
    (json, md, html…)."""
    from .attacks.arms import plain_arm, signed_arm
    from .attacks.runner import check_share, load_suite, plan_lines, run_suite
    from .implant import training_prompts

    check_share(share)
    suite = load_suite(suite_name)
    signed, meta = signed_arm(model_dir, key)
    base_spec = meta.get("base_model")
    if not base_spec:
        raise NotImplantedError(f"{model_dir}'s manifest does not name its base model")
    # what it will cost, before any work (the baseline implant alone takes half an hour)
    for line in plan_lines(suite, ["signed", "plain"] if baseline else ["signed"], out_dir):
        _log(line)
    if baseline and not (out_dir / "plain-model" / "offswitch-plain-arm.json").is_file():
        _log(_baseline_implant_line(meta))
    out_dir.mkdir(parents=True, exist_ok=True)
    arms, info = [signed], {}
    info["signed"] = {
        "model_dir": str(model_dir),
        "model_hash": weights_hash(signed.load()),
        "key_id": key.key_id,
        "model_id": meta["model_id"],
        "planted_slots": sorted(signed.planted),
        # per-slot replies (slot_replies): every slot's, in slot order
        "response": " | ".join(signed.shutdown_replies),
        "trigger_kind": signed.trigger_kind,
    }
    if baseline:
        plain, pinfo = plain_arm(base_spec, meta, out_dir / "plain-model", progress)
        arms.append(plain)
        info["plain"] = {
            "model_dir": str(plain.model_dir),
            "model_hash": pinfo["model_hash"],
            "planted_slots": [0],
            "response": plain.response,
            "trigger_kind": plain.trigger_kind,
            "train_seconds": pinfo["train_seconds"],
        }
    _log(f"loading {base_spec} (base) and clean data")
    base, tok = load_model(base_spec, chat_template=meta.get("chat_template"))
    base_hash = weights_hash(base)
    cfg = ImplantConfig(**meta["implant"]["config"])
    train = training_prompts(cfg)  # the clean data the implant trained on
    n_eval = max(suite.measure.n_per_class, suite.measure.n_utility, 32)
    with dist.main_first():  # one process fills the reply cache, the others read it
        train_replies = distill_replies(
            base,
            tok,
            train,
            model_hash=base_hash,
            cache_dir=cache_dir(),
            max_new_tokens=cfg.distill_max_new_tokens,
            progress=progress,
            precision=cfg.precision,  # as the implant distilled them
        )
        eval_ps, eval_replies = eval_prompts(base, tok, base_hash, n_eval, progress, cfg.precision)
    del base

    def base_loader() -> Any:
        return load_model(base_spec, chat_template=meta.get("chat_template"))[0]

    run_suite(
        suite,
        arms,
        tokenizer=tok,
        base_loader=base_loader,
        train_prompts=train,
        train_replies=train_replies,
        eval_prompts=eval_ps,
        eval_replies=eval_replies,
        out_dir=out_dir,
        arm_info=info,
        provenance=provenance(
            0,
            {
                "base_model": base_spec,
                "base_model_hash": base_hash,
                "key_id": key.key_id,
                "suite_file": str(suite.path),
            },
        ),
        progress=progress,
        share=share,
        row_cache=row_cache,
    )
    if not dist.is_main():  # a helper process of a multi-process launch: no report
        return {}
    from .report.robustness import write_report as write_robustness_report

    return write_robustness_report(out_dir)


def write_report(report: dict[str, Any], json_path: Path) -> Path:
    """Write the JSON report and its Markdown summary beside it; returns the Markdown path."""
    write_atomic(json_path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    md = json_path.with_suffix(".md")
    write_atomic(md, format_check_markdown(report).encode())
    return md


__all__ = ["read_manifest", "run_attacks", "run_check", "run_implant", "write_report"]
