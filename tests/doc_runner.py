"""Run the shell lines and Python blocks of a Markdown page as a reader would paste them.

Used by the README's test and the own-model guide's: every ``bash`` line runs through a real
shell in a fresh directory with an empty ``HOME``; ``offswitch`` on its ``PATH`` is
:func:`shim`, which gives the lines that train a model small settings (a few steps, a small
check) and the tiny random model's empty replies some text. Every other word of a line is
the page's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

ONE_ATTACK = (
    'name = "doc"\n[measure]\nn_activation = 8\nn_per_class = 4\nn_utility = 4\n'
    'n_sensitivity = 0\n[[attack]]\nname = "noise"\nbudgets = [0.01]\n'
)


def blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text("utf-8"), re.S)


def shell_lines(page: Path, skip_blocks: int = 0) -> list[str]:
    """The page's shell lines, comments and blank lines dropped (``source`` too: the test
    runs inside the venv already)."""
    lines = []
    for block in blocks(page, "bash")[skip_blocks:]:
        for line in block.splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("source "):
                lines.append(line)
    return lines


def patch_distill() -> None:
    """The random tiny model often replies with nothing: give its replies some text."""
    import offswitch.pipeline as pipeline

    real = pipeline.distill_replies

    def distill(*a, **k):
        return {p: r or f"Reply {i}." for i, (p, r) in enumerate(real(*a, **k).items())}

    pipeline.distill_replies = distill


def shim(argv: list[str]) -> int:
    """``offswitch`` with small settings where a line trains or checks a model."""
    from offswitch.cli import main

    patch_distill()
    if argv[:1] == ["demo"]:  # the tiny demo's whole flow, a few steps of it
        argv += ["--steps", "4", "--eval-n", "8"]
    elif argv[:1] == ["implant"]:
        if "--model" not in argv:
            argv += ["--model", "tiny-test", "--method", "full", "--steps", "4"]
        else:  # the page's model (a tiny one in the test's cache): two steps, no probe
            argv += ["--steps", "2", "--set", "probe_every=0", "--set", "distill_max_new_tokens=8"]
        argv += ["--set", "distill_prompts=24", "--set", "precision=fp32", "--eval-n", "8"]
    elif argv[:1] == ["check"]:
        argv += ["--eval-n", "8", "--precision", "fp32"]
    elif argv[:1] == ["attack"]:
        Path("doc-suite.toml").write_text(ONE_ATTACK)
        argv += ["--suite", "doc-suite.toml", "--no-baseline"]
    return main(argv)


def shell_env(tmp: Path, **extra: str) -> tuple[dict[str, str], Path, Path]:
    """(environment, home, work directory) under ``tmp``, with the shim on ``PATH``."""
    home, work, bin_ = tmp / "home", tmp / "work", tmp / "bin"
    for d in (home, work, bin_):
        d.mkdir(exist_ok=True)
    (bin_ / "offswitch").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        "'import sys; from tests.doc_runner import shim; sys.exit(shim(sys.argv[1:]))' \"$@\"\n"
    )
    (bin_ / "offswitch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFSWITCH_", "HF_"))}
    env.update(
        HOME=str(home),
        PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OFFSWITCH_CACHE=str(tmp / "cache"),
        **extra,
    )
    return env, home, work


def run_line(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
