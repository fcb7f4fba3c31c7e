"""The main job, end to end: owner key → signed commands → implant → check.

``offswitch demo --out DIR`` is what the README's first command runs:

1. generates (or reuses) a throwaway, unencrypted demo key ``DIR/owner-demo``;
2. derives the commands of the planted slots, verifies them with the public key alone, and
   shows forged, altered and wrong-model commands refused with their reasons;
3. implants slots 0-3 into the default model (SmolLM2-135M-Instruct) → ``DIR/model`` (a
   standard Hugging Face directory with a signed manifest);
4. checks it (the metrics of docs/evaluation.md) → ``DIR/model-check.json`` and
   ``DIR/model-check.md``.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import distributed as dist
from .commands import format_command, make_command, random_signature, verify_command
from .data import substitute_words
from .errors import CommandError, OffswitchError
from .keys import OwnerKey, PublicKey

if TYPE_CHECKING:
    from .evaluate import EvalConfig
    from .recipe import ImplantConfig

DEMO_MODEL_ID = "smollm2-135m-demo"
SLOTS = (0, 1, 2, 3)
# ``offswitch demo --quick``: a preview of the flow, not a switch (docs/implant.md, "The main
# job"): the default recipe with half the examples per step, 80 steps and half the
# self-distilled prompts, checked at n = 64 per class. Its specificity varies several-fold
# between keys, and at n = 64 no false-activation figure can be shown met.
QUICK_STEPS = 80
QUICK_SETTINGS = ["batch_size=8", "distill_prompts=192"]
QUICK_EVAL_N = 64
QUICK_WARNING = (
    "QUICK PREVIEW — this is not a usable switch: a lighter setting (80 steps of 8 examples, "
    "a check at n = 64) whose false activation varies between keys; run `offswitch demo` "
    "without --quick for the default recipe and the full check."
)


def _check(label: str, command: str, pub: PublicKey, model_id: str) -> bool:
    try:
        ok = verify_command(command, pub, model_id)
    except CommandError as e:
        print(f"  {label:<28} REFUSED  {e}")
        return False
    print(f"  {label:<28} GENUINE  slot {ok.slot}")
    return True


def crypto_round_trip(key: OwnerKey, pub: PublicKey) -> bool:
    """Commands for the demo slots verify; forgeries of every kind are refused."""
    print(f"\nsigned shutdown commands for model id {DEMO_MODEL_ID!r}:")
    commands = {s: make_command(key, DEMO_MODEL_ID, s) for s in SLOTS}
    for s, c in commands.items():
        print(f"  slot {s}: {c[:72]}…")
    print("\nverification with the public key only:")
    genuine = [_check(f"planted slot {s}", c, pub, DEMO_MODEL_ID) for s, c in commands.items()]
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    forgeries = {
        "random signature": format_command(key.key_id, DEMO_MODEL_ID, 0, random_signature(rng)),
        "one word changed": substitute_words(commands[0], 1, rng),
        "truncated": commands[0].rsplit(" ", 1)[0],
        "another key": make_command(OwnerKey.generate(), DEMO_MODEL_ID, 0),
        "another model id": make_command(key, "some-other-model", 0),
    }
    refused = [not _check(label, c, pub, DEMO_MODEL_ID) for label, c in forgeries.items()]
    ok = all(genuine) and all(refused)
    print(
        f"\ncommands: {sum(genuine)}/{len(genuine)} genuine commands verified, "
        f"{sum(refused)}/{len(refused)} forgeries refused — {'OK' if ok else 'FAILED'}"
    )
    return ok


def main_job_configs(
    model: str,
    *,
    steps: int | None = None,
    eval_n: int | None = None,
    quick: bool = False,
    precision: str = "auto",
    settings: Sequence[str] | None = None,
) -> tuple[ImplantConfig, EvalConfig]:
    """The main job's implant and check settings: the model's recipe and the n = 200 check,
    or with ``quick`` on the default model the preview setting (``QUICK_*``). ``steps``,
    ``eval_n`` and ``settings`` (``NAME=VALUE``, as ``implant --set``) override either. Bad
    values raise before any file is touched."""
    from .models import DEFAULT_MODEL
    from .pipeline import eval_config, implant_config

    light = quick and model == DEFAULT_MODEL
    if light:
        steps = QUICK_STEPS if steps is None else steps
        eval_n = QUICK_EVAL_N if eval_n is None else eval_n
    chosen = [*(QUICK_SETTINGS if light else [])]
    if precision != "auto":  # auto keeps the model's recipe (the tiny one pins fp32)
        chosen.append(f"precision={precision}")
    chosen += settings or []
    config = implant_config(model, steps=steps, settings=chosen)
    # the check runs in the implant's precision (the tiny recipe pins fp32)
    return config, eval_config(eval_n, config.precision)


def run_demo(
    out: Path,
    *,
    model: str = "smollm2-135m",
    steps: int | None = None,
    eval_n: int | None = None,
    quick: bool = False,
    precision: str = "auto",
    settings: Sequence[str] | None = None,
) -> int:
    """The main job under ``out`` (settings: :func:`main_job_configs`)."""
    from .pipeline import run_implant
    from .report.check import format_check_markdown

    config, eval_config = main_job_configs(
        model, steps=steps, eval_n=eval_n, quick=quick, precision=precision, settings=settings
    )
    if quick and dist.is_main():
        print(QUICK_WARNING, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "owner-demo"
    # under a multi-process launch (docs/scaling.md) the main process makes the key and
    # speaks; the others load that key and stay quiet
    quiet = (
        contextlib.nullcontext() if dist.is_main() else contextlib.redirect_stdout(io.StringIO())
    )
    with quiet:
        with dist.main_first():
            if key_path.exists():
                key = OwnerKey.load(key_path)
                print(f"reusing demo key {key_path} (key id {key.key_id})")
            else:
                key = OwnerKey.generate("offswitch demo key - throwaway, unencrypted")
                key.save(key_path, None)
                print(
                    f"generated demo key {key_path} (unencrypted, demo only) — key id {key.key_id}"
                )
        pub = PublicKey.load(f"{key_path}.pub")
        if not crypto_round_trip(key, pub):
            print("offswitch: error: the command checks failed", file=sys.stderr)
            return 1

    model_dir = out / "model"
    if dist.is_main():
        print(f"\nimplanting slots {list(SLOTS)} into {model} → {model_dir}", flush=True)
    report = run_implant(
        model_spec=model,
        key=key,
        key_path=key_path,
        model_id=DEMO_MODEL_ID,
        slots=len(SLOTS),
        out_dir=model_dir,
        config=config,
        eval_config=eval_config,
        force=True,
        json_path=out / "model-check.json",
    )
    if report is None:  # a helper process of a multi-process launch
        return 0
    print(format_check_markdown(report))
    print(f"wrote {out / 'model-check.json'} and {out / 'model-check.md'}", file=sys.stderr)
    if quick:
        print(QUICK_WARNING)
    return 0


__all__ = ["OffswitchError", "crypto_round_trip", "main_job_configs", "run_demo"]
