"""What every command shares: reading and announcing the owner key, the passphrase
(prompt, file, environment), one-sentence errors, and the pieces every ``--help`` is built
from (description, examples, exit status)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from ..commands import (
    MAX_MODEL_ID_LEN,
    MAX_SLOT,
)
from ..errors import (
    KeyFileError,
    KeyPathError,
    PassphraseError,
)
from ..keys import (
    DEFAULT_KEY_RELPATH,
    KEY_ENV,
    OwnerKey,
    check_new_passphrase,
    check_private_key_mode,
    default_key_path,
    load_public,
)
from ..models import DEVICE_ENV

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
