"""What the CLI test files (tests/test_cli_*.py) share beside conftest.py's fixtures (`cli`,
`cli_subprocess`, `key_files`, `plain_key_files`) and helpers (`assert_clean_error`,
`run_in_pty`): the model id they sign for, the passphrase environment, a directory listing."""

from __future__ import annotations

from pathlib import Path

from .conftest import PASSPHRASE

#: the model id the CLI tests make commands, slots and manifests for
MID = "acme/chat-1"
#: gives the CLI the test keys' passphrase: ``cli(..., env=ENV)``
ENV = {"OFFSWITCH_PASSPHRASE": PASSPHRASE}


def listing(d: Path) -> list[str]:
    """The names in directory ``d``, sorted: what a refused command must leave as it found."""
    return sorted(p.name for p in d.iterdir())
