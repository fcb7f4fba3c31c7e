"""Key holders' commands: ``keygen``, ``key-id``, ``command``, ``verify-command``,
``slots`` (the ledger) and ``manifest`` (sign and verify a model directory)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .._atomic import check_writable_dir
from ..commands import (
    MAX_SLOT,
    make_command,
    parse_slot,
    validate_model_id,
    verify_command,
)
from ..errors import (
    CommandError,
    KeyPathError,
    MalformedCommandError,
    ManifestError,
    ModelDirError,
    PassphraseError,
    SlotNotPlantedError,
    SlotSpentError,
    UsageError,
)
from ..keys import (
    KEY_ENV,
    OwnerKey,
    PublicKey,
    check_key_outputs,
    default_key_path,
    load_public,
)
from ..manifest import check_resign, sign_manifest, verify_manifest
from ..slots import SlotLedger
from .common import (
    DEFAULT_KEY_TEXT,
    MODEL_ID_HELP,
    PUBKEY_HELP,
    SLOT_HELP,
    _add_key,
    _add_passphrase_file,
    _load_owner_key,
    _passphrase,
    _sub,
    _use_key,
)


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this group's commands on ``sub``."""
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
