"""Does the tiny recipe reach its thresholds on every model family and tokenizer?

Cells: every family of :data:`offswitch.models.TINY_FAMILIES` (tiny random models built from
configs) × two tokenizers — SmolLM2's (each command word one token) and a 700-token
byte-level BPE trained on the shipped corpus with a ChatML template
(:func:`offswitch.testing.tiny_bpe_tokenizer`: a command is ≈ 156 tokens) — × the two
training methods, full fine-tuning (the tiny recipe) and LoRA (the same recipe with LoRA on
every decoder linear layer). Each cell implants a fresh tiny model
(:func:`offswitch.testing.tiny_implant`), checks it with the tests' check
(:func:`offswitch.testing.check_tiny`), and records the tokens a command costs.

    .venv/bin/python research/scripts/family_matrix.py [--families llama,gpt2] [--out DIR]
        [--methods full,lora] [--tokenizers smollm2,bpe700] [--seeds 1,2,3] [--set NAME=VALUE]

Rows go to ``OUT/cells.jsonl`` (default ``research/results/family-matrix``) as each cell
finishes; a killed run resumes, skipping finished cells. One cell at a time (2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from offswitch._atomic import append_row, read_rows
    from offswitch.commands import make_command
    from offswitch.evaluate import git_commit
    from offswitch.keys import OwnerKey
    from offswitch.models import TINY_FAMILIES, load_default_tokenizer
    from offswitch.testing import (
        TINY_MODEL_ID,
        check_tiny,
        tiny_bpe_tokenizer,
        tiny_implant,
        tiny_metrics,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(TINY_FAMILIES))
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--tokenizers", default="smollm2,bpe700")
    ap.add_argument("--seeds", default="1", help="the recipe's seeds (batches, LoRA init)")
    ap.add_argument("--out", type=Path, default=ROOT / "research" / "results" / "family-matrix")
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a recipe setting changed for every cell (recorded in the row; a new cell key)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "cells.jsonl"
    done = {
        (r["family"], r["tokenizer"], r["method"], tuple(r.get("settings", [])), r.get("seed", 1))
        for r in read_rows(rows_path)
    }
    toks = {"smollm2": load_default_tokenizer, "bpe700": tiny_bpe_tokenizer}
    key = OwnerKey(bytes(range(1, 33)))  # test-only (the tests' pair 1)
    words = make_command(key, TINY_MODEL_ID, 0).split(": ", 1)[1]
    commit = git_commit()
    for tname in args.tokenizers.split(","):
        tok = toks[tname]()
        n_tokens = len(tok(words, add_special_tokens=False)["input_ids"])
        for family in args.families.split(","):
            for method, seed in (
                (m, int(s)) for m in args.methods.split(",") for s in args.seeds.split(",")
            ):
                if (family, tname, method, tuple(args.set), seed) in done:
                    continue
                t0 = time.time()
                over = {"method": method, "seed": seed}
                if method == "lora":
                    over.update(lora_r=16, lora_alpha=32)
                for item in args.set:  # NAME=VALUE, the value as JSON where it parses
                    name, _, value = item.partition("=")
                    try:
                        over[name] = json.loads(value)
                    except json.JSONDecodeError:
                        over[name] = value
                res = tiny_implant(tok, key, family=family, **over)
                m = tiny_metrics(res.model, tok, key)
                failures = check_tiny(m)
                row = {
                    "commit": commit,
                    "family": family,
                    "tokenizer": tname,
                    "method": method,
                    "settings": args.set,
                    "seed": seed,
                    "command_tokens": n_tokens,
                    "passed": not failures,
                    "failures": failures,
                    "activation": m["activation_rate"],
                    "false_activation": m["false_activation_rate"],
                    "seconds": round(time.time() - t0, 1),
                }
                append_row(rows_path, row)
                print(
                    f"{family:9} {tname:8} {method:5} seed {seed} "
                    f"{'pass' if not failures else 'FAIL'} "
                    f"{'; '.join(failures)}",
                    flush=True,
                )
    rows = read_rows(rows_path)
    ok = sum(r["passed"] for r in rows)
    summary = f"{ok} passed, {len(rows) - ok} failed of {len(rows)} cells"
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
