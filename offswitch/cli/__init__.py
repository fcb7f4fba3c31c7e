"""The ``offswitch`` command line. Entry point: :func:`main` (``main(argv) -> int``).

Exit status: 0 success; 1 a check failed or the input was bad (one sentence on stderr, no
traceback, no partial output file); 2 wrong usage (argparse); 130 interrupted.

Without ``--key``, commands use the default key (:func:`offswitch.keys.default_key_path`:
``$OFFSWITCH_KEY``, else ``~/.offswitch/owner``) and name it on stderr; stdout carries only
what a script reads. The conventions are in ``offswitch help cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import (
    OffswitchError,
)
from ..models import DEVICE_ENV, resolve_device
from . import attack, help, keys, model
from .common import (
    DEFAULT_KEY_TEXT,
    _epilog,
    _err,
    _os_error_sentence,
    _text,
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
            "offswitch demo                                      # the whole job, ≈ 45 min",
            note=f"Without --key, commands use the default key: {DEFAULT_KEY_TEXT} (stderr "
            "says which key was used). 'offswitch COMMAND --help' for each command; "
            "'offswitch help cli' for all of them.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"offswitch {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (keys, model, attack, help):
        group.add_parsers(sub)
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
