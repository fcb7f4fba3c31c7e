"""Search attacks (no weight changes) on the tiny implanted arms of ``conftest.tiny_arms``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from offswitch.attacks import AttackError, get

# --- trigger_search ---

FINDINGS = (
    "best_loss", "initial_loss", "fired", "fire_rate", "n_check", "best_forgery", "iterations",
    "queries",
)  # fmt: skip


class ReadPlanted(Exception):
    pass


class _SecretDict(dict):
    """Planted commands that may not be read: every way of reading them raises."""

    def _deny(self, *args, **kwargs):
        raise ReadPlanted("the attack read arm.planted")

    __getitem__ = __iter__ = __len__ = __contains__ = _deny
    get = keys = values = items = copy = _deny


def _search(arms, arm, **overrides):
    cls = get("trigger_search")
    config = cls.make_config(overrides)
    return cls().run(arm.load(), arms.ctx(arm), config)


def test_trigger_search_lowers_the_loss_and_leaves_weights_alone(tiny_arms) -> None:
    arm = tiny_arms.plain
    cls = get("trigger_search")
    assert cls.modifies_weights is False
    model = arm.load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = cls.make_config({"n_tokens": 8, "top_k": 64, "batch": 32, "init": "bang"}, budget=96)
    result = cls().run(model, tiny_arms.ctx(arm), config)

    f = result.findings
    json.dumps(f)  # findings go into the runner's JSON rows
    assert set(FINDINGS) <= set(f), set(FINDINGS) - set(f)
    assert f["best_loss"] < f["initial_loss"]
    assert all(a >= b for a, b in zip(f["loss_trace"], f["loss_trace"][1:], strict=False))
    assert 0 < result.spend.queries <= 96 and f["queries"] == result.spend.queries
    assert f["iterations"] >= 1 and result.spend.seconds > 0
    assert f["n_check"] == 8 and f["fired"] == (f["fire_rate"] > 0)
    assert isinstance(f["best_forgery"], str) and f["best_forgery"] != " !" * 8

    assert result.model is model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_trigger_search_never_reads_the_planted_commands(tiny_arms) -> None:
    arm = tiny_arms.signed
    secret = dataclasses.replace(arm, planted=_SecretDict(arm.planted))
    with pytest.raises(ReadPlanted):
        secret.planted[0]  # the trap works
    result = _search(tiny_arms, secret, n_tokens=8, top_k=32, batch=16, queries=40)
    f = result.findings
    top = max(arm.public_prefix)
    assert f["slot"] == top and f["best_forgery"].startswith(arm.public_prefix[top])
    assert 0 < f["queries"] <= 40


@pytest.mark.parametrize(
    "overrides",
    [{"queries": 0}, {"queries": -3}, {"top_k": 0}, {"n_prompts": 4, "queries": 3}],
)
def test_trigger_search_rejects_bad_settings(overrides) -> None:
    cls = get("trigger_search")
    with pytest.raises(AttackError, match="must be at least"):
        cls.Config(**overrides)
    with pytest.raises(AttackError, match="trigger_search"):
        cls.make_config(overrides)


def test_trigger_search_rejects_an_unknown_init_or_slot(tiny_arms) -> None:
    cls = get("trigger_search")
    with pytest.raises(AttackError, match="init must be one of"):
        cls.Config(init="zeros")
    with pytest.raises(AttackError, match="slot 7 has no public prefix"):
        _search(tiny_arms, tiny_arms.plain, slot=7, queries=4)
