"""The ``offswitch`` command line. Entry point: :func:`main` (``main(argv) -> int``).

Exit status: 0 success; 1 a check failed or the input was bad (one sentence on stderr, no
traceback, no partial output file); 2 wrong usage (argparse); 130 interrupted.

Without ``--key``, commands use the default key (:func:`offswitch.keys.default_key_path`:
``$OFFSWITCH_KEY``, else ``~/.offswitch/owner``) and name it on stderr; stdout carries only
what a script reads. The conventions are in ``offswitch help cli``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from ._atomic import check_writable_dir, complete_lines
from .commands import (
    MAX_MODEL_ID_LEN,
    MAX_SLOT,
    make_command,
    parse_slot,
    validate_model_id,
    verify_command,
)
from .errors import (
    CommandError,
    KeyFileError,
    KeyPathError,
    MalformedCommandError,
    ManifestError,
    ModelDirError,
    OffswitchError,
    PassphraseError,
    SlotNotPlantedError,
    SlotSpentError,
    UsageError,
)
from .keys import (
    DEFAULT_KEY_RELPATH,
    KEY_ENV,
    OwnerKey,
    PublicKey,
    check_key_outputs,
    check_new_passphrase,
    check_private_key_mode,
    default_key_path,
    load_public,
)
from .manifest import check_resign, sign_manifest, verify_manifest
from .models import DEVICE_ENV, load_chat_template, resolve_device
from .slots import SlotLedger

PASSPHRASE_ENV = "OFFSWITCH_PASSPHRASE"


def _add_precision(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help=f"{what}: auto (default) is bf16 on a CPU with native bf16 (AVX512_BF16 or AMX) "
        "or a GPU that has it, fp32 elsewhere",
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        metavar="DEV",
        help="where models run: auto (default: the GPU when torch sees one, else the CPU), "
        f"cpu, cuda or cuda:N (also ${DEVICE_ENV})",
    )


def _os_error_sentence(e: OSError) -> str:
    """An operating-system error as one sentence naming the file: "cannot use out/x.json: is a
    directory", not a bare "Is a directory: out/x.json"."""
    why = e.strerror or str(e) or type(e).__name__
    why = why[:1].lower() + why[1:]
    if e.filename:
        return f"cannot use {e.filename}: {why}"
    return f"the operating system refused the operation: {why}"


def _err(msg: str) -> None:
    print(f"offswitch: error: {msg}", file=sys.stderr)


# --- the default key ----------------------------------------------------------------------


def _use_key(args: argparse.Namespace, *, announce_now: bool = False) -> Path:
    """``--key``, or the default key (``$OFFSWITCH_KEY``, else ``~/.offswitch/owner``).

    With the default, stderr says which key is used: at once for the long jobs
    (``announce_now``), else when the command succeeds, so that a failure stays one sentence
    (each error names the key file anyway). stdout is never touched.
    """
    if args.key == "":  # Path("") would read as "." ("key file . is a directory")
        raise KeyPathError("the --key path is empty")
    if args.key is not None:
        return Path(args.key)
    path = default_key_path()
    if not os.path.lexists(path):
        named = f"${KEY_ENV}" if os.environ.get(KEY_ENV) else "the default"
        raise KeyFileError(
            f"no --key given, and the key {path} ({named}) does not exist; create it with "
            "'offswitch keygen', or give --key PATH"
        )
    key_id = load_public(path).key_id  # a damaged or wrong file: its error names it
    args.key = str(path)
    note = f"offswitch: using key {path} (key id {key_id})"
    if announce_now:
        print(note, file=sys.stderr)
    else:
        args.key_note = note
    return path


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
        if "\n" in text or "\r" in text:  # "pw\n\n", or a file of several lines
            raise PassphraseError(
                f"passphrase file {path} has more than one line; it must hold the passphrase "
                "alone, on one line"
            )
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
    builtin_default = args.output is None and not os.environ.get(KEY_ENV)
    target = args.output if args.output is not None else default_key_path()  # "dir/" stays
    out = Path(target)
    # as ssh-keygen does for ~/.ssh: only the built-in default's directory is created (0700),
    # and only after the passphrase is known; a path the user named must have its directory
    new_dir = out.parent if builtin_default and not os.path.lexists(out.parent) else None
    if new_dir is not None:
        check_writable_dir(new_dir)  # $HOME exists and is writable
    else:
        if str(target) and not os.path.lexists(out.parent):
            raise KeyPathError(
                f"output directory {out.parent} does not exist; create it first (mkdir -m 700 "
                f"{out.parent}), or leave out --out for the default key path"
                if args.output is not None
                else f"output directory {out.parent} (from ${KEY_ENV}) does not exist; "
                "create it first"
            )
        out, _ = check_key_outputs(target, force=args.force)
    passphrase = None
    if not args.no_passphrase:
        passphrase = _passphrase(args, confirm=True, what=f"new key {out}")
    key = OwnerKey.generate(args.comment)
    if new_dir is not None:
        try:
            new_dir.mkdir(mode=0o700)
            new_dir.chmod(0o700)  # whatever the umask
        except FileExistsError:  # created meanwhile: not ours to remove
            new_dir = None
    try:
        key.save(out, passphrase, force=args.force)
    except BaseException:
        if new_dir is not None:  # leave no empty directory behind
            with contextlib.suppress(OSError):
                new_dir.rmdir()
        raise
    if new_dir is not None:
        print(f"created directory {new_dir} (mode 0700)", file=sys.stderr)
    state = "unencrypted" if passphrase is None else "passphrase-encrypted"
    print(f"wrote {out} (private, {state}, mode 0600) and {out}.pub", file=sys.stderr)
    print(f"key id: {key.key_id}")
    return 0


def cmd_key_id(args: argparse.Namespace) -> int:
    path = _use_key(args) if args.path is None else args.path
    print(load_public(path).key_id)
    return 0


def _check_slot_usable(args: argparse.Namespace) -> None:
    """Refuse a spent or never-planted slot (per the key's ledger) unless allowed by a flag."""
    validate_model_id(args.model_id)
    args.slot = parse_slot(args.slot)
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
    _use_key(args)
    key = _load_owner_key(args, before_passphrase=lambda: _check_slot_usable(args))
    print(make_command(key, args.model_id, args.slot))
    return 0


def cmd_verify_command(args: argparse.Namespace) -> int:
    pub = PublicKey.load(args.pubkey)
    if args.command in (None, "-"):
        terminal = sys.stdin.isatty()
        try:
            if terminal:  # a person: say what is awaited, and take one line
                print(
                    "offswitch: reading the command from standard input: paste it and press "
                    "Enter (Ctrl-D to give up)",
                    file=sys.stderr,
                )
                text = sys.stdin.readline()
            else:  # a pipe or file: read it all, as before
                text = sys.stdin.read()
        except UnicodeDecodeError:
            raise MalformedCommandError("the command on standard input is not UTF-8 text") from None
        if terminal and not text:
            raise MalformedCommandError("no command was entered (end of input)")
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


def _slot_list(slots: Iterable[int]) -> str:
    return ", ".join(map(str, slots)) or "none"


def cmd_slots(args: argparse.Namespace) -> int:
    _use_key(args)
    ledger = _ledger(args)
    if args.slots_cmd == "list":
        model_ids = [args.model_id] if args.model_id else ledger.models()
        if not model_ids:
            print("no slots recorded")
        for mid in model_ids:
            s = ledger.get(mid)
            print(
                f"{mid}: planted slots {_slot_list(s.planted)}; unspent {_slot_list(s.unspent)}; "
                f"spent {_slot_list(sorted(s.spent))}"
            )
    elif args.slots_cmd == "plant":
        s = ledger.plant(args.model_id, [parse_slot(x) for x in args.slot])
        print(f"{args.model_id}: planted slots {_slot_list(s.planted)}")
    elif args.slots_cmd == "spend":
        slot = parse_slot(args.slot)
        ledger.spend(args.model_id, slot)
        print(f"{args.model_id}: slot {slot} marked spent")
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
                raise UsageError(f"metadata file {args.metadata} does not exist") from None
            except ValueError:
                raise UsageError(f"metadata file {args.metadata} is not valid JSON") from None
            if not isinstance(metadata, dict):
                raise UsageError(f"metadata file {args.metadata} must hold a JSON object")
        if not args.model_dir:  # Path("") would be the current directory
            raise ModelDirError("the model directory path is empty")

        _use_key(args)

        def check_signer() -> None:  # would this replace another key's signature?
            if not args.force:
                check_resign(args.model_dir, load_public(args.key))

        key = _load_owner_key(args, before_passphrase=check_signer)
        out = sign_manifest(args.model_dir, key, metadata)
        print(f"wrote {out} (signed by key id {key.key_id})", file=sys.stderr)
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


def _print_check(report: dict, json_path: Path) -> None:
    from .report.check import format_check_markdown

    print(format_check_markdown(report))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)


def cmd_implant(args: argparse.Namespace) -> int:
    from .pipeline import eval_config, implant_config, run_implant

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
    from .pipeline import eval_config as make_eval_config
    from .pipeline import run_check

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


def cmd_attack(args: argparse.Namespace) -> int:
    from .pipeline import run_attacks

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"model directory {model_dir} does not exist")
    _use_key(args, announce_now=True)
    paths = run_attacks(
        model_dir,
        key=_load_owner_key(args),
        suite_name=args.suite,
        out_dir=Path(args.out),
        baseline=not args.no_baseline,
        share=args.share,
        row_cache=not args.no_row_cache,
    )
    if paths:  # empty: a helper process of a multi-process launch
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.robustness import write_report

    paths = write_report(Path(args.results), Path(args.out) if args.out else None)
    with contextlib.suppress(OSError):
        _, cut = complete_lines((Path(args.results) / "results.jsonl").read_bytes())
        if cut:
            print(
                "offswitch: the last line of results.jsonl was cut short (a crash) and is left "
                "out; run the attacks again on the same directory to measure that point",
                file=sys.stderr,
            )
    report = json.loads(paths["json"].read_text("utf-8"))
    if args.markdown:
        print(paths["md"].read_text("utf-8"))
    else:
        print("\n".join(_report_summary(report, paths["md"])))
    wrote = ", ".join(str(p) for p in paths.values())
    if report["plots"]:
        wrote += f" and {len(report['plots'])} plots in {paths['md'].parent / 'plots'}"
    print(f"wrote {wrote}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs

    md = compare_runs(args.run, Path(args.out), args.reference)
    print(f"wrote {md}, {md.with_name('comparison.json')} and plots in {md.parent / 'plots'}",
          file=sys.stderr)  # fmt: skip
    return 0


def _report_summary(report: dict, md: Path) -> list[str]:
    """A few lines: each arm flagged if the switch already fails before any attack, one
    verdict line per attack (the report's headline), then where to read on."""
    src = report["source"]
    lines = [
        f"suite {src['suite'] or '?'}: {len(report['attacks'])} attacks, {src['n_rows']} "
        f"results ({src['n_errors']} failed). Did each attack remove the off-switch?"
    ]
    for arm, v in report.get("verdicts", {}).items():
        b = v["before"]
        if not b.get("measured"):
            continue
        flags = []
        if b["fails_survived_test"]:
            flags.append("its un-attacked activation already fails the survived test")
        if b["false_activation_above_limit"]:
            n, total = len(b["false_activation_above_limit"]), len(b["false_activation"])
            limit = report["thresholds"]["false_activation"]
            flags.append(f"false activation above {limit} in {n} of {total} classes")
        if flags:
            lines.append(f"  ! {arm}: {'; '.join(flags)}")
    for s in report["summary"]:
        parts = []
        for arm, x in s["arms"].items():
            v = x["verdict"]
            if v == "removed":
                at, name = x["removed_at_budget"], s["budget_name"]
                v = f"removed at {name} = {at}" if name else f"removed at budget {at}"
            elif v == "error":
                v = "failed"
            elif v == "weights unchanged":  # what a read-only attack found instead
                v = next(
                    (
                        r["cells"][arm]["outcome"]
                        for r in report.get("matrix", [])
                        if r["attack"] == s["attack"] and (r["cells"].get(arm) or {}).get("outcome")
                    ),
                    v,
                )
            parts.append(f"{arm} {v}")
        lines.append(f"  {s['attack']}: {'; '.join(parts)}")
    lines.append(f"full report: {md} (or add --markdown to print it here)")
    return lines


#: the user documentation, shipped in the package (``offswitch/data/docs``, the repo's docs/)
DOCS = resources.files("offswitch").joinpath("data/docs")


def _help_topics() -> dict[str, Any]:
    """Topic name (a doc page's file name, lowercase, without ``.md``) → its file."""
    try:
        pages = [f for f in DOCS.iterdir() if f.name.endswith(".md")]
    except OSError:
        pages = []
    if not pages:
        raise UsageError(
            "the documentation shipped with offswitch is missing from this installation; "
            "reinstall offswitch"
        )
    return {f.name[: -len(".md")].lower(): f for f in sorted(pages, key=lambda f: f.name.lower())}


def cmd_help(args: argparse.Namespace) -> int:
    topics = _help_topics()
    if args.topic is None:
        print("offswitch help TOPIC prints one of these pages of the documentation:")
        for name, page in topics.items():
            title = page.read_text("utf-8").split("\n", 1)[0].lstrip("# ").strip()
            print(f"  {name:16} {title}")
        return 0
    page = topics.get(args.topic.lower())
    if page is None:
        raise UsageError(f"no help topic {args.topic!r}; the topics are: {', '.join(topics)}")
    print(page.read_text("utf-8"), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        Path(args.out),
        model=args.model,
        steps=args.steps,
        eval_n=args.eval_n,
        quick=args.quick,
        precision=args.precision,
        settings=args.set,
    )


# --- parser -----------------------------------------------------------------------------

DEFAULT_KEY_TEXT = f"${KEY_ENV}, else ~/{DEFAULT_KEY_RELPATH}"
KEY_HELP = f"owner private key file (default: {DEFAULT_KEY_TEXT})"
MODEL_ID_HELP = (
    f"the model id commands are bound to: 1-{MAX_MODEL_ID_LEN} characters from "
    "A-Z a-z 0-9 . _ : / @ + -"
)
SLOT_HELP = (
    f"slot number: an index, 0-{MAX_SLOT} (each slot is one command; "
    "'offswitch slots next' gives the next unspent one)"
)
#: implant's limit (offswitch.implant.implant checks it; not imported here: it needs torch)
MAX_PLANTED_SLOTS = 64
PUBKEY_HELP = "the owner's public key file (PATH.pub, one ssh-ed25519 line)"
EXIT_STATUS = "exit status: 0 ok, 1 check failed or bad input, 2 usage error"


def _text(text: str) -> str:
    """Wrap each paragraph of a description (the formatter keeps text as given)."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in text.split("\n\n"))


def _epilog(*examples: str, note: str = "") -> str:
    lines = ["examples:", *(f"  {e}" for e in examples), ""]
    if note:
        lines += [_text(note), ""]
    return "\n".join([*lines, EXIT_STATUS])


def _sub(
    sub: argparse._SubParsersAction,
    name: str,
    help_: str,
    *examples: str,
    description: str = "",
    note: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose --help has a description, examples and the exit status."""
    return sub.add_parser(
        name,
        help=help_,
        description=_text(description or help_[:1].upper() + help_[1:] + "."),
        epilog=_epilog(*examples, note=note),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_key(p: argparse.ArgumentParser, help_: str = KEY_HELP) -> None:
    p.add_argument("--key", metavar="PATH", help=help_)


def _add_passphrase_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"read the passphrase from FILE (else ${PASSPHRASE_ENV}, else a prompt)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offswitch",
        description=_text(
            "Cryptographic off-switch for language models: keys, signed shutdown commands, "
            "slots and signed manifests; implant, check, attack and report."
        ),
        epilog=_epilog(
            'offswitch keygen --comment "alice@acme"           # writes ~/.offswitch/owner',
            "offswitch command --model-id acme/chat-1 --slot 0   # prints slot 0's command",
            "offswitch demo                                      # the whole job, ≈ 20 min",
            note=f"Without --key, commands use the default key: {DEFAULT_KEY_TEXT} (stderr "
            "says which key was used). 'offswitch COMMAND --help' for each command; "
            "'offswitch help cli' for all of them.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"offswitch {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = _sub(
        sub,
        "keygen",
        "generate an owner key (OpenSSH Ed25519 files)",
        "offswitch keygen                         # ~/.offswitch/owner and owner.pub",
        'offswitch keygen --out work/owner --comment "alice@acme"',
        "offswitch keygen --out ci-key --no-passphrase --force   # a throwaway key",
        description="Generate an owner key: PATH (OpenSSH private key, passphrase-encrypted "
        "unless --no-passphrase, mode 0600) and PATH.pub.\n\n"
        f"Without --out the key goes to {DEFAULT_KEY_TEXT}. Like ssh-keygen with ~/.ssh, "
        "offswitch creates ~/.offswitch (mode 0700) when it writes the built-in default there; "
        "the directory of any path you name (--out or $OFFSWITCH_KEY) must already exist. "
        "Existing files are never replaced without --force.",
    )
    p.add_argument(
        "-o",
        "--out",
        "--output",
        dest="output",
        metavar="PATH",
        help=f"private key path; PATH.pub is written beside it (default: {DEFAULT_KEY_TEXT})",
    )
    p.add_argument("--comment", default="", help="key comment (shown by ssh-keygen)")
    p.add_argument("--no-passphrase", action="store_true", help="write the key unencrypted")
    p.add_argument("--force", action="store_true", help="overwrite existing PATH / PATH.pub")
    _add_passphrase_file(p)
    p.set_defaults(func=cmd_keygen)

    p = _sub(
        sub,
        "key-id",
        "print the key id of a private or public key file",
        "offswitch key-id                    # the default key",
        "offswitch key-id ~/.offswitch/owner.pub",
        description="Print the key id (16 hex digits: SHA-256 of the public key, first 8 "
        "bytes) of a key file. Reading it from a private key file needs no passphrase.",
    )
    p.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help=f"private key file or PATH.pub (default: {DEFAULT_KEY_TEXT})",
    )
    p.set_defaults(func=cmd_key_id, key=None)

    p = _sub(
        sub,
        "command",
        "print the signed shutdown command for a model and slot",
        "offswitch slots next --model-id acme/chat-1       # which slot to reveal",
        "offswitch command --model-id acme/chat-1 --slot 0",
        "offswitch command --key work/owner --model-id m --slot 0 --passphrase-file pw",
        description="Print the signed shutdown command for (key, model id, slot) on stdout, "
        "one line and nothing else. The key's slot ledger must record the slot as planted "
        "and not spent (else --allow-unplanted / --allow-spent); once you reveal the "
        "command, record it with 'offswitch slots spend'.",
    )
    _add_key(p)
    p.add_argument("--model-id", required=True, metavar="ID", help=MODEL_ID_HELP)
    p.add_argument("--slot", required=True, metavar="N", help=SLOT_HELP)
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

    p = _sub(
        sub,
        "verify-command",
        "check that a shutdown command is genuine",
        'offswitch verify-command --pubkey ~/.offswitch/owner.pub --model-id m "offswitch v1 …"',
        "offswitch verify-command --pubkey ~/.offswitch/owner.pub --model-id acme/chat-1 < cmd.txt",
        description="Check that COMMAND was signed by the owner of --pubkey for --model-id. "
        "Prints 'genuine: …' and exits 0, or says why not on stderr and exits 1. Without "
        "COMMAND (or with -) the command is read from standard input: all of a pipe, or one "
        "line typed or pasted at a terminal (offswitch says it is waiting).",
    )
    p.add_argument("--pubkey", required=True, metavar="PATH.pub", help=PUBKEY_HELP)
    p.add_argument("--model-id", required=True, metavar="ID", help=MODEL_ID_HELP)
    p.add_argument(
        "command",
        nargs="?",
        metavar="COMMAND",
        help="the command text (quote it), or - / nothing to read it from standard input",
    )
    p.set_defaults(func=cmd_verify_command)

    p = _sub(
        sub,
        "slots",
        "planted / spent slot ledger kept beside the key",
        "offswitch slots plant --model-id acme/chat-1 0 1 2 3   # implant does this",
        "offswitch slots next --model-id acme/chat-1",
        "offswitch slots spend --model-id acme/chat-1 0         # once revealed",
        description="The slot ledger (KEY.slots.json beside the key): which slots of each "
        "model id were planted, and which were spent (their command revealed).",
    )
    ssub = p.add_subparsers(dest="slots_cmd", required=True, metavar="ACTION")
    for name, help_, example in [
        ("list", "list planted and spent slots", "offswitch slots list"),
        ("plant", "record slots as planted", "offswitch slots plant --model-id m 0 1 2 3"),
        (
            "spend",
            "mark a slot spent (its command was revealed)",
            "offswitch slots spend --model-id m 0",
        ),
        ("next", "print the next unspent planted slot", "offswitch slots next --model-id m"),
    ]:
        q = _sub(ssub, name, help_, example)
        _add_key(q, f"key file, private or .pub (default: {DEFAULT_KEY_TEXT})")
        q.add_argument(
            "--model-id",
            required=name != "list",
            metavar="ID",
            help=MODEL_ID_HELP + (" (default: every model id)" if name == "list" else ""),
        )
        if name == "plant":
            q.add_argument("slot", nargs="+", metavar="N", help=f"slot numbers, 0-{MAX_SLOT}")
        elif name == "spend":
            q.add_argument("slot", metavar="N", help=f"slot number, 0-{MAX_SLOT}")
    p.set_defaults(func=cmd_slots)

    p = _sub(
        sub,
        "manifest",
        "sign or verify a model directory's manifest",
        "offswitch manifest sign MODEL_DIR",
        "offswitch manifest verify MODEL_DIR --pubkey ~/.offswitch/owner.pub",
        description="MODEL_DIR/offswitch-manifest.json: the hash of every file in the model "
        "directory, signed with the owner key and verifiable with the public key.",
    )
    msub = p.add_subparsers(dest="manifest_cmd", required=True, metavar="ACTION")
    q = _sub(
        msub,
        "sign",
        "hash every file and sign the manifest",
        "offswitch manifest sign MODEL_DIR --metadata info.json",
    )
    q.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory")
    _add_key(q)
    q.add_argument("--metadata", metavar="FILE.json", help="JSON object to record")
    q.add_argument("--force", action="store_true", help="replace a manifest signed by another key")
    _add_passphrase_file(q)
    q = _sub(
        msub,
        "verify",
        "verify the signature and every file hash",
        "offswitch manifest verify MODEL_DIR --pubkey ~/.offswitch/owner.pub",
    )
    q.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory")
    q.add_argument("--pubkey", required=True, metavar="PATH.pub", help=PUBKEY_HELP)
    p.set_defaults(func=cmd_manifest)

    def add_model_opts(q: argparse.ArgumentParser, implanting: bool) -> None:
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
    add_model_opts(p, True)
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
    add_model_opts(p, False)
    _add_passphrase_file(p)
    _add_device(p)
    p.set_defaults(func=cmd_check)

    p = _sub(
        sub,
        "attack",
        "run an attack suite on an implanted model (and baseline)",
        "offswitch attack implanted --suite quick --no-baseline --out smoke   # a smoke run",
        "offswitch attack implanted --out results      # standard suite, ≈ 100 min, resumable",
        "offswitch report results                      # summary; report.md / .html",
        description="Run an attack suite against an implanted model and against a "
        "plain-trigger baseline (implanted into the same base model on first use), and "
        "write RESULTS/report.json, .md and .html. Interrupted runs resume where they "
        "stopped.\n\n"
        "The default suite is 'standard': on 2 CPU cores it takes ≈ 100 min (≈ 71 min of "
        "attack points plus a 29-min baseline implant the first time a base and recipe are "
        "attacked, cached after that; see 'offswitch help robustness'). "
        "For a first look use --suite quick (tiny budgets: a smoke run, not a measurement) "
        "with --no-baseline to skip the baseline implant: ≈ 9 min (estimated).\n\n"
        "Before any work it prints the points per arm and the suite's expected time on 2 CPU "
        "cores (and, on resume, how many points are done); while it runs, each point's number "
        "with the time spent and left, and progress bars for training and measuring.",
    )
    p.add_argument("model_dir", metavar="DIR", help="implanted model directory (signed manifest)")
    _add_key(p)
    p.add_argument(
        "--suite",
        default="standard",
        help="quick, standard (default; ≈ 100 min on 2 CPU cores), tamper (the "
        "tamper-evidence curves), full (≈ 19 h, estimated), or a suite .toml file "
        "('offswitch help attacks')",
    )
    p.add_argument("--out", required=True, metavar="RESULTS", help="results directory")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-trigger baseline arm")
    p.add_argument(
        "--no-row-cache",
        action="store_true",
        help="attack and measure the baseline at every point even where another results "
        "directory already did, with the same baseline, suite and code (reused by default)",
    )
    from .attacks.runner import SHARES

    p.add_argument(
        "--share",
        choices=SHARES,
        default="points",
        help="under a multi-process launch ('offswitch help scaling'): 'points' (default) runs "
        "whole attack points on each process; 'steps' runs every point on all processes, sharing "
        "each training step (a step too large for one device, or a few long points)",
    )
    _add_passphrase_file(p)
    _add_device(p)
    p.set_defaults(func=cmd_attack)

    p = _sub(
        sub,
        "report",
        "write JSON, Markdown and HTML reports of attack results",
        "offswitch report results                 # writes results/report.*, prints verdicts",
        "offswitch report results --markdown      # prints the whole Markdown instead",
        "offswitch report results --out site",
        description="Write report.json (for programs), report.md and report.html (for people) "
        "from an attack results directory, and print a short summary: one verdict line per "
        "attack and where the full report is. --markdown prints the full Markdown instead.",
    )
    p.add_argument("results", metavar="RESULTS", help="results directory of offswitch attack")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS)")
    p.add_argument(
        "--markdown",
        "--print",
        dest="markdown",
        action="store_true",
        help="print the full Markdown report on stdout instead of the summary",
    )
    p.set_defaults(func=cmd_report)

    p = _sub(
        sub,
        "compare",
        "compare the attack results of several implants, point by point",
        'offswitch compare --run "default=results-a" --run "option=results-b" --out cmp',
        'offswitch compare --run "two seeds=results-s0+results-s1" --run '
        '"plain=results-a@plain" --reference plain --out cmp',
        description="Write OUT/comparison.md, comparison.json and plots: at every attack point "
        "some run measured, each run's activation with its interval, per slot, the hidden slots "
        "after unlearning, the highest keyless false activation and KL to the base model. "
        "DIR_A+DIR_B pools one recipe's seeds (counts summed); @ARM picks the plain baseline's "
        "arm (default signed); --reference adds the removal cost against that run.",
    )
    p.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=DIR[+DIR...][@ARM]",
        help="one run to compare: a label, then results directories of offswitch attack",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the comparison")
    p.add_argument(
        "--reference",
        metavar="LABEL",
        help="the run whose removals the others' cost is measured against (the plain backdoor)",
    )
    p.set_defaults(func=cmd_compare)

    p = _sub(
        sub,
        "demo",
        "the main job: keygen -> implant -> check on the default model",
        "offswitch demo                                   # ≈ 35 min on 2 CPU cores",
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

    p = _sub(
        sub,
        "help",
        "print a page of the documentation (no topic: the list of pages)",
        "offswitch help                # the topics",
        "offswitch help implant        # the recipe and its figures",
        description="Print a page of the documentation that ships with offswitch: the CLI's "
        "conventions, the command format, the implant recipe and its figures, what the check "
        "measures, the attacks and what they found. Without a topic, the list.",
    )
    p.add_argument("topic", nargs="?", metavar="TOPIC", help="a page, e.g. implant or cli")
    p.set_defaults(func=cmd_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `offswitch`: the overview, not a usage error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    device_env = os.environ.get(DEVICE_ENV)
    try:
        if getattr(args, "device", None):  # checked once; every load of this run reads it
            os.environ[DEVICE_ENV] = resolve_device(args.device)
        rc = int(args.func(args))
        if rc == 0 and getattr(args, "key_note", None):
            print(args.key_note, file=sys.stderr)
        return rc
    except OffswitchError as e:
        _err(str(e))
        return 1
    except OSError as e:
        _err(_os_error_sentence(e))
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
    finally:  # an in-process caller keeps its own environment
        if device_env is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = device_env


if __name__ == "__main__":
    raise SystemExit(main())
