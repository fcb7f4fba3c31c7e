"""The README's commands run, in the order written, as a newcomer would paste them.

Every ``bash`` block after the two commands runs line by line in a fresh directory with an
empty ``HOME``, through a real shell (redirections and ``$(…)`` as written). Where a line
needs a model it gets the tiny test model instead (``tests/doc_runner.py``: ``implant``
trains the tiny model briefly, ``attack`` runs a one-attack suite without the baseline);
every other word of the line is the README's. The Python block then runs against that
directory's key and a tiny model. The two commands themselves are CI's job (``.ci/run`` is
command 2; command 1 is the real-model main job, docs/implant.md).
"""

from __future__ import annotations

import json
import re

from . import doc_runner
from .conftest import ROOT

README = ROOT / "README.md"
PASSPHRASE = "test-only readme passphrase"


def blocks(lang: str) -> list[str]:
    return doc_runner.blocks(README, lang)


def test_the_two_commands_are_the_first_block_and_ci_runs_the_second() -> None:
    first = [ln.split("#")[0].strip() for ln in blocks("bash")[0].splitlines() if ln.strip()]
    assert first == ["bash scripts/setup.sh && .venv/bin/offswitch demo", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text("utf-8")


def test_every_readme_command_runs_in_order(tmp_path) -> None:
    env, home, work = doc_runner.shell_env(tmp_path, OFFSWITCH_PASSPHRASE=PASSPHRASE)
    lines = doc_runner.shell_lines(README, skip_blocks=1)  # after the two commands
    assert any(ln.startswith("offswitch implant") for ln in lines)
    for line in lines:
        res = doc_runner.run_line(line, env, work)
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
