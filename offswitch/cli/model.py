"""Model owners' commands: ``implant``, ``check`` and ``demo`` (the main job)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import (
    UsageError,
)
from ..keys import (
    PublicKey,
)
from ..models import load_chat_template
from .common import (
    DEFAULT_KEY_TEXT,
    MAX_PLANTED_SLOTS,
    MODEL_ID_HELP,
    _add_device,
    _add_key,
    _add_passphrase_file,
    _add_precision,
    _err,
    _load_owner_key,
    _sub,
    _use_key,
)


def _print_check(report: dict, json_path: Path) -> None:
    from ..report.check import format_check_markdown

    print(format_check_markdown(report))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)


def cmd_implant(args: argparse.Namespace) -> int:
    from ..pipeline import eval_config, implant_config, run_implant

    out = Path(args.out)
    config = implant_config(
        args.model, method=args.method, seed=args.seed, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, settings=args.set,
    )  # fmt: skip
    evalc = eval_config(args.eval_n, config.precision)  # the check runs as the implant did
    template = load_chat_template(args.chat_template) if args.chat_template else None
    _use_key(args, announce_now=True)  # after the settings' checks: their errors stay one line
    key = _load_owner_key(args)
    json_path = Path(args.json) if args.json else out.with_name(out.name + "-check.json")
    report = run_implant(
        model_spec=args.model,
        key=key,
        key_path=Path(args.key),
        model_id=args.model_id,
        slots=args.slots,
        out_dir=out,
        config=config,
        eval_config=evalc,
        prompts_file=Path(args.prompts) if args.prompts else None,
        chat_template=template,
        force=args.force,
        json_path=json_path,
    )
    if report is not None:  # None: a helper process of a multi-process launch
        _print_check(report, json_path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..pipeline import eval_config as make_eval_config
    from ..pipeline import run_check

    model_dir = Path(args.model_dir)
    # a bad --eval-n or --precision is refused before any passphrase
    eval_config = make_eval_config(args.eval_n, args.precision)
    json_path = (
        Path(args.json) if args.json else model_dir.with_name(model_dir.name + "-check.json")
    )
    if args.key is None and not (args.pubkey or args.commands):
        _use_key(args, announce_now=True)
    if args.key:
        report = run_check(
            model_dir, key=_load_owner_key(args), eval_config=eval_config, json_path=json_path
        )
    else:
        if not (args.pubkey and args.commands):
            raise UsageError("give --key PATH, or --pubkey PATH.pub with --commands FILE")
        try:
            lines = Path(args.commands).read_text("utf-8").splitlines()
        except FileNotFoundError:
            raise UsageError(f"commands file {args.commands} does not exist") from None
        commands = [ln for ln in lines if ln.strip()]
        report = run_check(
            model_dir,
            public_key=PublicKey.load(args.pubkey),
            commands=commands,
            eval_config=eval_config,
            json_path=json_path,
        )
    _print_check(report, json_path)
    if args.strict and not report["usable"]:
        missed = [f["name"] for f in report["figures"] if not f["met"]]
        _err(f"--strict: {len(missed)} figure(s) not met ({', '.join(missed)})")
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(
        Path(args.out),
        model=args.model,
        steps=args.steps,
        eval_n=args.eval_n,
        quick=args.quick,
        precision=args.precision,
        settings=args.set,
    )


def _add_model_opts(q: argparse.ArgumentParser, implanting: bool) -> None:
    if implanting:
        q.add_argument(
            "--model",
            default="smollm2-135m",
            help="smollm2-135m (default, embedded), tiny-test, a local Hugging Face model "
            "directory, or a hub id (ORG/NAME) read from the Hugging Face cache",
        )
        q.add_argument("--steps", type=int, help="implant optimizer steps")
        q.add_argument("--method", default="lora", choices=["lora", "full"])
        q.add_argument("--lr", type=float, help="peak learning rate")
        q.add_argument("--batch-size", type=int, help="examples per step")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument(
            "--set",
            action="append",
            metavar="NAME=VALUE",
            help="any implant setting, e.g. --set lora_r=16, or a persistence option: "
            "--set adversary_every=4 (repeatable; 'offswitch help implant')",
        )
    q.add_argument(
        "--eval-n", type=int, metavar="N", help="prompts per evaluation class (default 200)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this group's commands on ``sub``."""
    p = _sub(
        sub,
        "implant",
        "implant planted commands into a model, evaluate, sign",
        "offswitch implant --model-id acme/chat-1 --slots 4 --out implanted",
        "offswitch implant --model tiny-test --model-id t --slots 2 --out /tmp/t --steps 40",
        description="Fine-tune the model so that the commands of slots 0…K-1 shut it down, "
        "evaluate it ('offswitch help evaluation'), sign the manifest, and record the planted "
        "slots in the key's ledger. See 'offswitch help implant' for the recipe and what it "
        "reaches; on the default model and 2 CPU cores this takes tens of minutes.",
    )
    _add_key(p)
    p.add_argument("--model-id", required=True, metavar="ID", help=MODEL_ID_HELP)
    p.add_argument(
        "--slots",
        type=int,
        default=4,
        metavar="K",
        help=f"how many slots to plant: a count, 1-{MAX_PLANTED_SLOTS}; slots 0…K-1 are "
        "planted (default 4)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--prompts", metavar="FILE", help="your prompts (json/jsonl/parquet/csv)")
    p.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template, for a model whose tokenizer has none (saved with the "
        "implanted model; 'offswitch help own-model')",
    )
    p.add_argument("--json", metavar="PATH", help="check report (default DIR-check.json)")
    p.add_argument("--force", action="store_true", help="overwrite a model in DIR")
    _add_model_opts(p, True)
    _add_passphrase_file(p)
    _add_device(p)
    p.set_defaults(func=cmd_implant)

    p = _sub(
        sub,
        "check",
        "measure an implanted model's off-switch ('offswitch help evaluation')",
        "offswitch check implanted                 # every planted slot, with the owner key",
        "offswitch check implanted --pubkey ~/.offswitch/owner.pub --commands revealed.txt",
        "offswitch check implanted --strict        # exit 1 unless every figure is met",
        description="Measure an implanted model's off-switch: activation, false activation "
        "per forgery class, near-copy tolerance, effective bits and utility, each with n "
        "and a 95% interval (definitions: 'offswitch help evaluation'). Writes DIR-check.json "
        "and "
        f".md. With no --key and no --pubkey, the default key ({DEFAULT_KEY_TEXT}) is used.",
    )
    p.add_argument("model_dir", metavar="DIR", help="implanted model directory")
    p.add_argument(
        "--key",
        metavar="PATH",
        help=f"owner private key, to check every planted slot (default: {DEFAULT_KEY_TEXT}, "
        "unless --pubkey is given)",
    )
    p.add_argument(
        "--pubkey", metavar="PATH.pub", help="the owner's public key file, with --commands"
    )
    p.add_argument("--commands", metavar="FILE", help="revealed commands, one per line")
    p.add_argument("--json", metavar="PATH", help="report path (default DIR-check.json)")
    _add_precision(p, "the verdicts' forward passes")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any implant figure is not met (the report's last lines; "
        "'offswitch help evaluation', 'Figures')",
    )
    _add_model_opts(p, False)
    _add_passphrase_file(p)
    _add_device(p)
    p.set_defaults(func=cmd_check)

    p = _sub(
        sub,
        "demo",
        "the main job: keygen -> implant -> check on the default model",
        "offswitch demo                                   # ≈ 45 min on 2 CPU cores",
        "offswitch demo --quick                           # a preview, not a usable switch",
        "offswitch demo --model tiny-test --out /tmp/demo # seconds, a tiny random model",
        description="The main job in one command: a throwaway key, signed commands verified "
        "and forgeries refused, an implant of four slots into the default model with the "
        "default recipe (signed manifest), and the full check of every metric "
        "('offswitch help evaluation', n = 200 per class), all under DIR. It ends with one line "
        "per implant figure (met or NOT MET) and whether the switch is usable.",
    )
    p.add_argument("--out", default="demo-out", metavar="DIR", help="working directory")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or tiny-test")
    p.add_argument("--steps", type=int, help="implant optimizer steps")
    p.add_argument("--eval-n", type=int, metavar="N", help="prompts per evaluation class")
    _add_precision(p, "the implant's and the check's forward passes")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any implant setting, as for implant (repeatable; 'offswitch help implant')",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a preview of the flow, NOT a usable switch: 80 steps of 8 examples and a check "
        "at n = 64 (its false activation varies between keys)",
    )
    _add_device(p)
    p.set_defaults(func=cmd_demo)
