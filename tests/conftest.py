"""Shared fixtures. Everything here is offline and fast (no model weights)."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from offswitch.cli import main
from offswitch.keys import OwnerKey

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PASSPHRASE = "test-only passphrase"


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``offswitch`` in-process: ``cli("keygen", "-o", p, stdin="...", env={...})``."""
    monkeypatch.delenv("OFFSWITCH_PASSPHRASE", raising=False)

    def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> CliResult:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code or 0)
        finally:
            for k in env or {}:
                monkeypatch.delenv(k, raising=False)
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run


@pytest.fixture
def cli_subprocess():
    """Run ``offswitch`` as a real process (proves: no traceback, real exit status)."""

    def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> CliResult:
        import os

        full_env = {k: v for k, v in os.environ.items() if k != "OFFSWITCH_PASSPHRASE"}
        full_env.update(env or {})
        p = subprocess.run(
            [sys.executable, "-m", "offswitch.cli", *map(str, argv)],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=120,
        )
        return CliResult(p.returncode, p.stdout, p.stderr)

    return run


def assert_clean_error(res: CliResult, *needles: str) -> None:
    """Non-zero exit, one clear line on stderr, no traceback; needles appear in it."""
    assert res.rc != 0, res
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    for n in needles:
        assert n.lower() in res.err.lower(), (n, res.err)


@pytest.fixture
def owner_key() -> OwnerKey:
    return OwnerKey.generate("test-only key")


@pytest.fixture
def key_files(tmp_path, owner_key):
    """An encrypted key pair on disk (1 KDF round: fast). Returns (key, path, pub_path)."""
    path, pub = owner_key.save(tmp_path / "owner", PASSPHRASE, kdf_rounds=1)
    return owner_key, path, pub


@pytest.fixture
def plain_key_files(tmp_path, owner_key):
    """An unencrypted key pair on disk. Returns (key, path, pub_path)."""
    path, pub = owner_key.save(tmp_path / "owner", None)
    return owner_key, path, pub
