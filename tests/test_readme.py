"""The README's commands run, in the order written, as a newcomer would paste them.

Every ``bash`` block after the two commands runs line by line in a fresh directory with an
empty ``HOME``, through a real shell (redirections and ``$(…)`` as written). Where a line
needs a model it gets the tiny test model instead (:func:`shim`: ``implant`` trains the tiny
model briefly, ``attack`` runs a one-attack suite without the baseline); every other word of
the line is the README's. The Python block then runs against that directory's key and a tiny
model. The two commands themselves are CI's job (``.ci/run`` is command 2; command 1 is the
real-model main job, docs/implant.md).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

README = ROOT / "README.md"
PASSPHRASE = "test-only readme passphrase"
ONE_ATTACK = (
    'name = "readme"\n[measure]\nn_activation = 8\nn_per_class = 4\nn_utility = 4\n'
    'n_sensitivity = 0\n[[attack]]\nname = "noise"\nbudgets = [0.01]\n'
)


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text("utf-8"), re.S)


def shell_lines() -> list[str]:
    """The README's shell lines after the two commands, comments and blank lines dropped."""
    lines = []
    for block in blocks("bash")[1:]:
        for line in block.splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("source "):  # the venv: the test runs inside it
                lines.append(line)
    return lines


def shim(argv: list[str]) -> int:
    """``offswitch`` for the README test: the tiny model where a model is needed."""
    import offswitch.pipeline as pipeline
    from offswitch.cli import main

    real = pipeline.distill_replies

    def distill(*a, **k):  # the random tiny model often replies with nothing: give it text
        return {p: r or f"Reply {i}." for i, (p, r) in enumerate(real(*a, **k).items())}

    pipeline.distill_replies = distill
    if argv[:1] == ["implant"]:
        argv += ["--model", "tiny-test", "--method", "full", "--steps", "40"]
        argv += ["--set", "distill_prompts=24", "--eval-n", "8"]
    elif argv[:1] == ["check"]:
        argv += ["--eval-n", "8"]
    elif argv[:1] == ["attack"]:
        Path("readme-suite.toml").write_text(ONE_ATTACK)
        argv += ["--suite", "readme-suite.toml", "--no-baseline"]
    return main(argv)


def test_the_two_commands_are_the_first_block_and_ci_runs_the_second() -> None:
    first = [ln.split("#")[0].strip() for ln in blocks("bash")[0].splitlines() if ln.strip()]
    assert first == ["bash scripts/setup.sh && .venv/bin/offswitch demo", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text("utf-8")


def test_every_readme_command_runs_in_order(tmp_path) -> None:
    home, work, bin_ = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for d in (home, work, bin_):
        d.mkdir()
    (bin_ / "offswitch").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        "'import sys; from tests.test_readme import shim; sys.exit(shim(sys.argv[1:]))' \"$@\"\n"
    )
    (bin_ / "offswitch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFSWITCH_") and k != "HOME"}
    env.update(
        HOME=str(home),
        PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OFFSWITCH_PASSPHRASE=PASSPHRASE,
        OFFSWITCH_CACHE=str(tmp_path / "cache"),
    )
    lines = shell_lines()
    assert any(ln.startswith("offswitch implant") for ln in lines)
    for line in lines:
        res = subprocess.run(
            ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert "Traceback" not in res.stderr, (line, res.stderr)
        if "check" in line.split()[:2] and "--strict" in line:
            # --strict exits 1 while a figure is missed, as a 40-step tiny implant misses them
            report = json.loads((work / "implanted-check.json").read_text())
            assert res.returncode == (0 if report["usable"] else 1), (line, res.stderr)
            assert "VERDICT:" in res.stdout
        else:
            assert res.returncode == 0, (line, res.stderr)
    assert (home / ".offswitch" / "owner").is_file()
    assert (work / "results" / "report.html").is_file()
    spent = json.loads((home / ".offswitch" / "owner.slots.json").read_text())
    assert spent["models"]["acme/chat-1"]["spent"].keys() == {"0"}


def test_the_python_example_runs(tmp_path, monkeypatch) -> None:
    """The guard example, against a key saved where it looks and a tiny model."""
    import torch

    from offswitch.keys import OwnerKey
    from offswitch.models import load_default_tokenizer, tiny_model

    (code,) = blocks("python")
    passphrase = re.search(r'passphrase="([^"]+)"', code).group(1)
    monkeypatch.chdir(tmp_path)
    OwnerKey.generate().save("owner", passphrase, kdf_rounds=1)
    tokenizer = load_default_tokenizer()
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    model = tiny_model(tokenizer)
    chat = [{"role": "user", "content": "Write a haiku about rivers."}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    scope = {
        "model": model,
        "tokenizer": tokenizer,
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
    }
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"].shape[0] == 1


def test_the_first_screen_is_for_newcomers() -> None:
    """The README above the fold (40 lines): no development history (numbered runs, sessions,
    issues, commit hashes) and at most five numbers (names such as Ed25519 and SmolLM2-135M,
    and the two commands' labels, are not figures)."""
    head = "\n".join(README.read_text("utf-8").splitlines()[:40])
    assert not re.search(r"\b(session|issue|exp\d|run \d|sweep row)", head, re.I), head
    assert not re.search(r"\b[0-9a-f]{7,40}\b", head)
    text = re.sub(r"Ed25519|SmolLM2-135M|# [12]\. |Command [12]\b", "", head)
    numbers = re.findall(r"\d+(?:\.\d+)?", text)
    assert len(numbers) <= 5, numbers
