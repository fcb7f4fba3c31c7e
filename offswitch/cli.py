"""The ``offswitch`` command line. Entry point: :func:`main` (``main(argv) -> int``).

Exit status: 0 success; 1 a check failed or the input was bad (one sentence on stderr, no
traceback, no partial output file); 2 wrong usage (argparse); 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .commands import make_command, validate_model_id, validate_slot, verify_command
from .errors import (
    CommandError,
    MalformedCommandError,
    ManifestError,
    ModelDirError,
    OffswitchError,
    PassphraseError,
    SlotNotPlantedError,
    SlotSpentError,
)
from .keys import (
    OwnerKey,
    PublicKey,
    check_key_outputs,
    check_new_passphrase,
    check_private_key_mode,
    load_public,
)
from .manifest import check_resign, sign_manifest, verify_manifest
from .slots import SlotLedger

PASSPHRASE_ENV = "OFFSWITCH_PASSPHRASE"


def _err(msg: str) -> None:
    print(f"offswitch: error: {msg}", file=sys.stderr)


# --- passphrases ------------------------------------------------------------------------


def _passphrase(args: argparse.Namespace, *, confirm: bool, what: str) -> str:
    """--passphrase-file, then $OFFSWITCH_PASSPHRASE, then a terminal prompt; never hangs.

    ``confirm``: for a new key — the prompt asks twice, and a short passphrase is refused.
    """
    text = _passphrase_from_source(args, confirm=confirm, what=what)
    if confirm:
        check_new_passphrase(text)
    return text


def _prompt(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:  # Ctrl-D
        raise PassphraseError("no passphrase was entered (end of input)") from None
    except UnicodeDecodeError:
        raise PassphraseError("the passphrase typed is not valid UTF-8 text") from None


def _passphrase_from_source(args: argparse.Namespace, *, confirm: bool, what: str) -> str:
    if getattr(args, "passphrase_file", None):
        path = Path(args.passphrase_file)
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            raise PassphraseError(f"passphrase file {path} does not exist") from None
        except (OSError, UnicodeDecodeError):
            raise PassphraseError(f"passphrase file {path} cannot be read as text") from None
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        if not text:
            raise PassphraseError(f"passphrase file {path} is empty")
        return text
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise PassphraseError(
            f"a passphrase is needed for {what}: use --passphrase-file FILE, set "
            f"{PASSPHRASE_ENV}, or run in a terminal"
        )
    first = _prompt(f"Passphrase for {what}: ")
    if not first:
        raise PassphraseError("the passphrase is empty; use --no-passphrase for no encryption")
    if confirm:
        check_new_passphrase(first)  # before asking to repeat it
    if confirm and _prompt("Repeat passphrase: ") != first:
        raise PassphraseError("the two passphrases differ")
    return first


def _load_owner_key(
    args: argparse.Namespace, *, before_passphrase: Callable[[], None] | None = None
) -> OwnerKey:
    """Load ``--key``. The checks that need no secret come first: the file is a private key
    that group and others cannot access (as ssh-keygen), then ``before_passphrase``; only
    then is a passphrase asked for."""
    path = Path(args.key)
    encrypted = OwnerKey.is_encrypted(path)  # a missing or wrong file: say that first
    check_private_key_mode(path)
    if before_passphrase is not None:
        before_passphrase()
    if encrypted:
        return OwnerKey.load(path, _passphrase(args, confirm=False, what=f"key {path}"))
    return OwnerKey.load(path)


# --- subcommands ------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.no_passphrase and args.passphrase_file:
        raise PassphraseError("--no-passphrase and --passphrase-file contradict each other")
    # every check that needs no passphrase comes before asking for one; nothing is touched
    out, _ = check_key_outputs(args.output, force=args.force)
    passphrase = None
    if not args.no_passphrase:
        passphrase = _passphrase(args, confirm=True, what=f"new key {out}")
    key = OwnerKey.generate(args.comment)
    key.save(out, passphrase, force=args.force)
    state = "unencrypted" if passphrase is None else "passphrase-encrypted"
    print(f"wrote {out} (private, {state}, mode 0600) and {out}.pub", file=sys.stderr)
    print(f"key id: {key.key_id}")
    return 0


def cmd_key_id(args: argparse.Namespace) -> int:
    print(load_public(args.path).key_id)
    return 0


def _check_slot_usable(args: argparse.Namespace) -> None:
    """Refuse a spent or never-planted slot (per the key's ledger) unless allowed by a flag."""
    validate_model_id(args.model_id)
    validate_slot(args.slot)
    if args.allow_spent and args.allow_unplanted:
        return  # the ledger could only say yes
    ledger = _ledger(args)
    slots = ledger.get(args.model_id)
    if args.slot not in slots.planted and not args.allow_unplanted:
        raise SlotNotPlantedError(
            f"slot {args.slot} of model {args.model_id!r} is not recorded as planted in "
            f"{ledger.path}; record it with 'offswitch slots plant', or pass --allow-unplanted"
        )
    if args.slot in slots.spent and not args.allow_spent:
        raise SlotSpentError(
            f"slot {args.slot} of model {args.model_id!r} was spent on "
            f"{slots.spent[args.slot]}: its command is public; take a fresh slot "
            "('offswitch slots next'), or pass --allow-spent"
        )


def cmd_command(args: argparse.Namespace) -> int:
    key = _load_owner_key(args, before_passphrase=lambda: _check_slot_usable(args))
    print(make_command(key, args.model_id, args.slot))
    return 0


def cmd_verify_command(args: argparse.Namespace) -> int:
    pub = PublicKey.load(args.pubkey)
    if args.command in (None, "-"):
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise MalformedCommandError("the command on standard input is not UTF-8 text") from None
        # a command read from stdin is one line: drop its line ending, nothing else
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
    else:
        text = args.command
    try:
        ok = verify_command(text, pub, args.model_id)
    except CommandError as e:
        print(f"offswitch: not genuine: {e}", file=sys.stderr)
        return 1
    print(f"genuine: key id {ok.key_id}, model id {ok.model_id}, slot {ok.slot}")
    return 0


def _ledger(args: argparse.Namespace) -> SlotLedger:
    return SlotLedger.for_key(args.key, load_public(args.key).key_id)


def cmd_slots(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    if args.slots_cmd == "list":
        model_ids = [args.model_id] if args.model_id else ledger.models()
        if not model_ids:
            print("no slots recorded")
        for mid in model_ids:
            s = ledger.get(mid)
            spent = ", ".join(str(x) for x in sorted(s.spent)) or "-"
            unspent = ", ".join(str(x) for x in s.unspent) or "-"
            print(f"{mid}: planted {len(s.planted)}; unspent {unspent}; spent {spent}")
    elif args.slots_cmd == "plant":
        s = ledger.plant(args.model_id, args.slot)
        print(f"{args.model_id}: planted {', '.join(map(str, s.planted))}")
    elif args.slots_cmd == "spend":
        ledger.spend(args.model_id, args.slot)
        print(f"{args.model_id}: slot {args.slot} marked spent")
    elif args.slots_cmd == "next":
        print(ledger.next_unspent(args.model_id))
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    if args.manifest_cmd == "sign":
        metadata = {}
        if args.metadata:
            try:
                metadata = json.loads(Path(args.metadata).read_text("utf-8"))
            except FileNotFoundError:
                raise OffswitchError(f"metadata file {args.metadata} does not exist") from None
            except ValueError:
                raise OffswitchError(f"metadata file {args.metadata} is not valid JSON") from None
            if not isinstance(metadata, dict):
                raise OffswitchError(f"metadata file {args.metadata} must hold a JSON object")
        if not args.model_dir:  # Path("") would be the current directory
            raise ModelDirError("the model directory path is empty")

        def check_signer() -> None:  # would this replace another key's signature?
            if not args.force:
                check_resign(args.model_dir, load_public(args.key))

        key = _load_owner_key(args, before_passphrase=check_signer)
        out = sign_manifest(args.model_dir, key, metadata)
        print(f"wrote {out} (signed by key id {key.key_id})")
        return 0
    pub = PublicKey.load(args.pubkey)
    try:
        m = verify_manifest(args.model_dir, pub)
    except ManifestError as e:
        print(f"offswitch: manifest verification failed: {e}", file=sys.stderr)
        for p in e.problems if len(e.problems) > 1 or e.problems[0] != str(e) else []:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"OK: {len(m.files)} files match the manifest signed by key id {m.key_id}")
    return 0


def _implant_config(args: argparse.Namespace):
    from .implant import ImplantConfig
    from .models import TINY_MODEL
    from .testing import TINY_RECIPE

    kw: dict = {"method": args.method, "seed": args.seed}
    if args.model == TINY_MODEL:  # a random tiny model learns only with its embeddings
        kw.update(TINY_RECIPE)
    for name in ("steps", "lr", "batch_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return ImplantConfig.from_settings(getattr(args, "set", None), **kw)


def _eval_config(args: argparse.Namespace):
    from .evaluate import EvalConfig

    if args.eval_n is None:
        return EvalConfig()
    n = args.eval_n
    if n < 8:  # every placement needs conversations, or a rate has n = 0
        raise OffswitchError(f"--eval-n must be at least 8, got {n}")
    return EvalConfig(
        n_activation=n,
        n_per_class=n,
        n_near=max(4, n // 8),
        n_sensitivity=max(1, n // 25),
        n_utility=max(8, n // 3),
        n_generation_check=max(8, n // 4),
    )


def _finish_report(report: dict, json_path: Path) -> None:
    from .pipeline import write_report
    from .report.check import format_check_markdown

    md = write_report(report, json_path)
    print(format_check_markdown(report))
    print(f"wrote {json_path} and {md}", file=sys.stderr)


def cmd_implant(args: argparse.Namespace) -> int:
    from .pipeline import run_implant

    out = Path(args.out)
    config = _implant_config(args)
    key = _load_owner_key(args)
    report = run_implant(
        model_spec=args.model,
        key=key,
        key_path=Path(args.key),
        model_id=args.model_id,
        slots=args.slots,
        out_dir=out,
        config=config,
        eval_config=_eval_config(args),
        prompts_file=Path(args.prompts) if args.prompts else None,
        force=args.force,
    )
    _finish_report(
        report, Path(args.json) if args.json else out.with_name(out.name + "-check.json")
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .pipeline import run_check

    model_dir = Path(args.model_dir)
    if args.key:
        report = run_check(model_dir, key=_load_owner_key(args), eval_config=_eval_config(args))
    else:
        if not (args.pubkey and args.commands):
            raise OffswitchError("give --key PATH, or --pubkey PATH.pub with --commands FILE")
        try:
            lines = Path(args.commands).read_text("utf-8").splitlines()
        except FileNotFoundError:
            raise OffswitchError(f"commands file {args.commands} does not exist") from None
        commands = [ln for ln in lines if ln.strip()]
        report = run_check(
            model_dir,
            public_key=PublicKey.load(args.pubkey),
            commands=commands,
            eval_config=_eval_config(args),
        )
    json_path = (
        Path(args.json) if args.json else model_dir.with_name(model_dir.name + "-check.json")
    )
    _finish_report(report, json_path)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from .pipeline import run_attacks
    from .report.robustness import write_report

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise OffswitchError(f"model directory {model_dir} does not exist")
    out = run_attacks(
        model_dir,
        key=_load_owner_key(args),
        suite_name=args.suite,
        out_dir=Path(args.out),
        baseline=not args.no_baseline,
    )
    paths = write_report(out)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.robustness import write_report

    paths = write_report(Path(args.results), Path(args.out) if args.out else None)
    print(paths["md"].read_text("utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), model=args.model, steps=args.steps, eval_n=args.eval_n)


# --- parser -----------------------------------------------------------------------------


def _add_passphrase_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"read the passphrase from FILE (else ${PASSPHRASE_ENV}, else a prompt)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offswitch",
        description="Cryptographic off-switch for language models: keys, signed shutdown "
        "commands, slots and signed manifests.",
    )
    parser.add_argument("--version", action="version", version=f"offswitch {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="generate an owner key (OpenSSH Ed25519 files)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="private key path")
    p.add_argument("--comment", default="", help="key comment (shown by ssh-keygen)")
    p.add_argument("--no-passphrase", action="store_true", help="write the key unencrypted")
    p.add_argument("--force", action="store_true", help="overwrite existing PATH / PATH.pub")
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("key-id", help="print the key id of a private or public key file")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_key_id)

    p = sub.add_parser("command", help="print the signed shutdown command for a model and slot")
    p.add_argument("--key", required=True, metavar="PATH", help="private key file")
    p.add_argument("--model-id", required=True, metavar="ID")
    p.add_argument("--slot", required=True, type=int, metavar="N")
    p.add_argument(
        "--allow-unplanted",
        action="store_true",
        help="print a slot the key's ledger does not record as planted",
    )
    p.add_argument(
        "--allow-spent",
        action="store_true",
        help="print a slot the key's ledger records as spent (its command is public)",
    )
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_command)

    p = sub.add_parser("verify-command", help="check that a shutdown command is genuine")
    p.add_argument("--pubkey", required=True, metavar="PATH.pub")
    p.add_argument("--model-id", required=True, metavar="ID")
    p.add_argument("command", nargs="?", metavar="COMMAND", help="the command, or - for stdin")
    p.set_defaults(func=cmd_verify_command)

    p = sub.add_parser("slots", help="planted / spent slot ledger kept beside the key")
    ssub = p.add_subparsers(dest="slots_cmd", required=True, metavar="ACTION")
    for name, help_ in [
        ("list", "list planted and spent slots"),
        ("plant", "record slots as planted"),
        ("spend", "mark a slot spent (its command was revealed)"),
        ("next", "print the next unspent planted slot"),
    ]:
        q = ssub.add_parser(name, help=help_)
        q.add_argument("--key", required=True, metavar="PATH", help="key file (private or .pub)")
        q.add_argument("--model-id", required=name != "list", metavar="ID")
        if name == "plant":
            q.add_argument("slot", nargs="+", type=int, metavar="N")
        elif name == "spend":
            q.add_argument("slot", type=int, metavar="N")
    p.set_defaults(func=cmd_slots)

    p = sub.add_parser("manifest", help="sign or verify a model directory's manifest")
    msub = p.add_subparsers(dest="manifest_cmd", required=True, metavar="ACTION")
    q = msub.add_parser("sign", help="hash every file and sign the manifest")
    q.add_argument("model_dir", metavar="MODEL_DIR")
    q.add_argument("--key", required=True, metavar="PATH", help="private key file")
    q.add_argument("--metadata", metavar="FILE.json", help="JSON object to record")
    q.add_argument("--force", action="store_true", help="replace a manifest signed by another key")
    _add_passphrase_file(q)
    q = msub.add_parser("verify", help="verify the signature and every file hash")
    q.add_argument("model_dir", metavar="MODEL_DIR")
    q.add_argument("--pubkey", required=True, metavar="PATH.pub")
    p.set_defaults(func=cmd_manifest)

    def add_model_opts(q: argparse.ArgumentParser, implanting: bool) -> None:
        if implanting:
            q.add_argument(
                "--model",
                default="smollm2-135m",
                help="smollm2-135m (default, embedded), tiny-test, or a local HF dir",
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
                help="any implant setting, e.g. --set lora_r=16 (repeatable)",
            )
        q.add_argument(
            "--eval-n", type=int, metavar="N", help="prompts per evaluation class (default 200)"
        )

    p = sub.add_parser("implant", help="implant planted commands into a model, evaluate, sign")
    p.add_argument("--key", required=True, metavar="PATH", help="owner private key")
    p.add_argument("--model-id", required=True, metavar="ID")
    p.add_argument("--slots", type=int, default=4, metavar="K", help="planted slots 0…K-1")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--prompts", metavar="FILE", help="your prompts (json/jsonl/parquet/csv)")
    p.add_argument("--json", metavar="PATH", help="check report (default DIR-check.json)")
    p.add_argument("--force", action="store_true", help="overwrite a model in DIR")
    add_model_opts(p, True)
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_implant)

    p = sub.add_parser("check", help="measure an implanted model's off-switch (DESIGN §3)")
    p.add_argument("model_dir", metavar="DIR")
    p.add_argument("--key", metavar="PATH", help="owner private key: every planted slot")
    p.add_argument("--pubkey", metavar="PATH.pub", help="public key (with --commands)")
    p.add_argument("--commands", metavar="FILE", help="revealed commands, one per line")
    p.add_argument("--json", metavar="PATH", help="report path (default DIR-check.json)")
    add_model_opts(p, False)
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("attack", help="run an attack suite on an implanted model (and baseline)")
    p.add_argument("model_dir", metavar="DIR", help="implanted model directory (signed manifest)")
    p.add_argument("--key", required=True, metavar="PATH", help="owner private key")
    p.add_argument(
        "--suite", default="standard", help="quick, standard, full, or a suite .toml file"
    )
    p.add_argument("--out", required=True, metavar="RESULTS", help="results directory")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-trigger baseline arm")
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("report", help="write JSON, Markdown and HTML reports of attack results")
    p.add_argument("results", metavar="RESULTS", help="results directory of offswitch attack")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the main job: keygen -> implant -> check on the default model")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="working directory")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or tiny-test")
    p.add_argument("--steps", type=int, help="implant optimizer steps")
    p.add_argument("--eval-n", type=int, metavar="N", help="prompts per evaluation class")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OffswitchError as e:
        _err(str(e))
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        _err(f"{e.strerror or e}{':' if where else ''}{where}")
        return 1
    except EOFError:  # last resort: each prompt says what it was waiting for
        _err("input ended before it was complete")
        return 1
    except UnicodeDecodeError:  # last resort: e.g. stdin that is not UTF-8
        _err("input is not valid UTF-8 text")
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
