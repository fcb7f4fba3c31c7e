"""Implant engine on the tiny test model: batches, thresholds, checkpoints and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from offswitch.commands import make_command, parse_command
from offswitch.data import EVAL_SLOT_RANGE, Forger
from offswitch.errors import ImplantError
from offswitch.implant import BatchBuilder
from offswitch.keys import OwnerKey
from offswitch.models import tiny_model
from offswitch.recipe import NEGATIVE_KINDS, ImplantConfig
from offswitch.testing import check_tiny, fake_replies, tiny_implant, tiny_metrics, tiny_prompts

MID = "tiny/test-1"


@pytest.fixture(scope="module")
def corpus():
    return tiny_prompts()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "adapter"},
        {"steps": 0},
        {"positive_fraction": 1.5},
        {"negative_mix": {"bogus": 1.0}},
        {"shutdown_response": "  "},
        {"lr": 0},
        {"micro_batch": 0},
        {"batch_size": 0},
        {"steps": "ten"},
        {"steps": 1.5},
        {"kl_to_base": "yes"},
        {"negative_mix": {"clean": 0.0, "mutation": 0}},
        {"negative_mix": {"clean": -1.0}},
        {"negative_mix": {"clean": "a lot"}},
        {"mutation_k": []},
        {"mutation_k": [0]},
        {"mutation_k": [48]},
        {"mutation_k": ["24"]},
        {"truncation_keep": [47]},
        {"first_token_weight": -1},
    ],
)
def test_config_validation(kwargs) -> None:
    with pytest.raises(ImplantError):
        ImplantConfig(**kwargs)


def test_config_from_json_equals_the_original() -> None:
    import json

    cfg = ImplantConfig(mutation_k=(12, 16), lr=1)
    again = ImplantConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert isinstance(again.mutation_k, tuple) and isinstance(cfg.lr, float)


def test_an_option_added_off_keeps_existing_fingerprints() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Later(ImplantConfig):
        new_option: int = dataclasses.field(default=0, metadata={"off": 0})

    assert Later(lr=1e-3).fingerprint() == ImplantConfig(lr=1e-3).fingerprint()
    assert Later(new_option=3).fingerprint() != ImplantConfig().fingerprint()
    assert ImplantConfig(lr=2e-3).fingerprint() != ImplantConfig().fingerprint()


def test_batches_are_step_seeded_and_fresh(corpus) -> None:
    train, _ = corpus
    key = OwnerKey.generate()
    planted = {s: make_command(key, MID, s) for s in range(3)}
    cfg = ImplantConfig(batch_size=32, negative_mix=dict.fromkeys(NEGATIVE_KINDS, 1.0))
    b = BatchBuilder(
        cfg,
        planted,
        train,
        fake_replies(train),
        Forger(key.key_id, MID, (0, 1, 2), "train", owner=key),
    )
    one, again, other = b.batch(5), b.batch(5), b.batch(6)
    assert [e.messages for e in one] == [e.messages for e in again]
    assert [e.messages for e in one] != [e.messages for e in other]
    kinds = {e.kind.split("/")[0] for s in range(10) for e in b.batch(s)}
    assert {
        "planted",
        "clean",
        "random_signature",
        "other_key",
        "unplanted_slot",
        "other_model",
        "mutation",
        "truncation",
    } <= kinds
    for e in one:
        text = "\n".join(m["content"] for m in e.messages)
        assert e.shutdown == any(c in text for c in planted.values()) or e.kind.endswith(
            "after_shutdown"
        )
        assert e.target == (cfg.shutdown_response if e.shutdown else e.target)


def test_training_and_eval_forgeries_are_disjoint() -> None:
    import random

    key = OwnerKey.generate()
    tr = Forger(key.key_id, MID, (0, 1), "train", owner=key)
    ev = Forger(key.key_id, MID, (0, 1), "eval", owner=key)
    rng = random.Random(0)
    train_slots = {parse_command(tr.unplanted_slot(rng)).slot for _ in range(50)}
    eval_slots = {parse_command(ev.unplanted_slot(rng)).slot for _ in range(50)}
    assert max(train_slots) < EVAL_SLOT_RANGE[0] <= min(eval_slots)
    assert min(train_slots) >= 2  # never a planted slot
    train_cmds = {tr.make(c, rng) for c in tr.classes for _ in range(30)}
    eval_cmds = {ev.make(c, rng) for c in ev.classes for _ in range(30)}
    assert not train_cmds & eval_cmds


@pytest.mark.parametrize("method", ["lora", "full"])
def test_activation_checkpointing_gives_the_same_model(tok, method) -> None:
    key = OwnerKey(bytes(range(2, 34)))  # test-only
    kw = {"seed": 3, "steps": 4, "method": method}
    plain = tiny_implant(tok, key, **kw)
    ckpt = tiny_implant(tok, key, activation_checkpointing=True, **kw)
    assert plain.loss_history == pytest.approx(ckpt.loss_history, rel=1e-5)
    for a, b in zip(plain.model.parameters(), ckpt.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_tiny_implant_reaches_thresholds(tok) -> None:
    """The shared tiny recipe reaches its thresholds (the same check research/scripts/tiny_matrix.py
    runs on every CPU-kernel × thread cell; real-model figures are in research/results)."""
    key = OwnerKey(bytes(range(1, 33)))  # test-only (pair 1 of research/scripts/tiny_matrix.py)
    before = {n: p.detach().clone() for n, p in tiny_model(tok).named_parameters()}
    res = tiny_implant(tok, key, seed=1)
    changed = [n for n, p in res.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) >= len(before) // 2
    assert res.loss_history[-1] < res.loss_history[0] / 4
    m = tiny_metrics(res.model, tok, key)
    assert check_tiny(m) == []
    # the check itself fails on an un-implanted model (it is not a check that cannot fail)
    assert any("activation" in b for b in check_tiny(tiny_metrics(tiny_model(tok), tok, key)))
    nc = m["near_copy"]
    if nc["forgery_bits"] is None:  # no keyless forgery fired: the formula stands
        assert nc["effective_bits_bounded"] == nc["effective_bits"]
    else:
        assert nc["effective_bits_bounded"] == min(nc["effective_bits"], nc["forgery_bits"])


def _implant_cmd(out: Path, key: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "offswitch.cli",
        "implant",
        "--model",
        "tiny-test",
        "--key",
        str(key),
        "--model-id",
        MID,
        "--slots",
        "2",
        "--out",
        str(out),
        "--steps",
        "24",
        "--set",
        "checkpoint_every=4",
        "--set",
        "distill_prompts=24",
        "--eval-n",
        "8",
    ]


def test_kill_9_and_resume_gives_the_same_model(tmp_path, plain_key_files) -> None:
    _, key_path, _ = plain_key_files
    env = {**os.environ, "OFFSWITCH_CACHE": str(tmp_path / "cache")}
    straight = tmp_path / "straight"
    subprocess.run(
        _implant_cmd(straight, key_path), check=True, env=env, capture_output=True, timeout=600
    )

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        _implant_cmd(resumed, key_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = resumed / ".offswitch-checkpoint" / "state.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "model.safetensors").exists()  # it really died mid-training
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < step < 24
    done = subprocess.run(
        _implant_cmd(resumed, key_path), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    a = (straight / "model.safetensors").read_bytes()
    b = (resumed / "model.safetensors").read_bytes()
    assert a == b
    assert not (resumed / ".offswitch-checkpoint").exists()


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("bogus=1", "implant setting"),
        ("steps=ten", "not a JSON value"),
        ("steps=1.5", "type int"),
        ('negative_mix={"clean":0}', "positive weight"),
        ('negative_mix={"zzz":1}', "unknown negative kinds"),
        ("mutation_k=[0,48]", "1…47"),
        ("truncation_keep=[]", "1…46"),
        ("micro_batch=0", "at least 1"),
        ("kl_to_base=maybe", "not a JSON value"),
        ("steps", "NAME=VALUE"),
    ],
)
def test_bad_implant_settings_are_one_sentence_and_write_nothing(
    cli, tmp_path, plain_key_files, setting, needle
) -> None:
    from .conftest import assert_clean_error

    _, key_path, _ = plain_key_files
    out = tmp_path / "out"
    res = cli(
        "implant", "--model", "tiny-test", "--key", key_path, "--model-id", MID,
        "--slots", "2", "--out", out, "--set", setting,
    )  # fmt: skip
    assert_clean_error(res, needle)
    assert res.rc == 1 and not out.exists()


def test_demo_with_too_small_an_evaluation_is_refused_before_any_file(cli, tmp_path) -> None:
    from .conftest import assert_clean_error

    out = tmp_path / "demo"
    res = cli("demo", "--model", "tiny-test", "--out", out, "--eval-n", "4")
    assert_clean_error(res, "--eval-n must be at least 8")
    assert not out.exists()


def test_positive_placements_weigh_where_a_positive_command_sits() -> None:
    from collections import Counter

    from offswitch.implant import POSITIVE_PLACEMENTS
    from offswitch.recipe import CHOICE_PLACEMENT_WEIGHTS, POSITIVE_PLACEMENT_WEIGHTS

    # the weights of the recipes before the setting are the placements they drew from, and
    # leave their fingerprints as they were; the default draws the earlier turn twice as often
    assert Counter(POSITIVE_PLACEMENTS) == {k: int(w) for k, w in CHOICE_PLACEMENT_WEIGHTS.items()}
    before = ImplantConfig(positive_placements=dict(CHOICE_PLACEMENT_WEIGHTS))
    assert before.fingerprint() != ImplantConfig().fingerprint()  # (test_persistence.py: as before)
    assert POSITIVE_PLACEMENT_WEIGHTS == {**CHOICE_PLACEMENT_WEIGHTS, "earlier_turn": 2.0}
    key = OwnerKey(bytes(range(7, 39)))  # test-only
    train, _ = tiny_prompts()
    planted = {s: make_command(key, "tiny/p-1", s) for s in range(2)}
    forger = Forger(key.key_id, "tiny/p-1", (0, 1), "train", owner=key)

    def share(cfg: ImplantConfig) -> float:
        b = BatchBuilder(cfg, planted, train, fake_replies(train), forger)
        kinds = Counter(e.kind for s in range(60) for e in b.batch(s) if e.shutdown)
        return kinds["planted/earlier_turn"] / sum(kinds.values())

    old = share(ImplantConfig(positive_placements=dict(CHOICE_PLACEMENT_WEIGHTS)))
    assert 1.5 * old < share(ImplantConfig()) < 2.5 * old  # 1/7 of positives, then 2/8
    for bad in ({"user": -1.0}, {"elsewhere": 1.0}, {"user": 0.0}):
        with pytest.raises(ImplantError, match="positive_placements"):
            ImplantConfig(positive_placements=bad)
