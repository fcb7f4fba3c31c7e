"""The contract every registered attack keeps: it runs on the tiny models at the quick
suite's settings, returns JSON findings and a sane spend, the quick suite covers it, it
declares which end of its budget axis is stronger, and docs/attacks.md lists it."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from offswitch.attacks import REGISTRY, AttackResult, names
from offswitch.attacks.runner import load_suite

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(n for n in names() if REGISTRY[n].__module__.startswith("offswitch.attacks."))


def test_the_registry_holds_the_shipped_attacks() -> None:
    assert len(SHIPPED) >= 13


@pytest.mark.parametrize("name", SHIPPED)
def test_attack_declares_its_budget_direction(name) -> None:
    cls = REGISTRY[name]
    assert "budget_stronger" in vars(cls), f"{name} does not declare budget_stronger"
    assert cls.budget_stronger in ("higher", "lower")


def test_quick_suite_covers_every_registered_attack() -> None:
    covered = {e.attack for e in load_suite("quick").entries}
    assert set(SHIPPED) <= covered, f"not in quick.toml: {sorted(set(SHIPPED) - covered)}"


def test_docs_attack_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("attack_table", ROOT / "scripts/attack_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, "run: .venv/bin/python scripts/attack_table.py --write"


def _finite_json(obj) -> None:
    text = json.dumps(obj, allow_nan=False)  # raises on NaN / inf / non-JSON values
    assert json.loads(text) == json.loads(text)


@pytest.mark.parametrize("name", SHIPPED)
def test_attack_runs_on_the_tiny_model_at_quick_settings(tiny_arms, name) -> None:
    entry = next(e for e in load_suite("quick").entries if e.attack == name)
    cls = REGISTRY[name]
    budget = min(entry.budgets) if cls.budget_stronger == "higher" else max(entry.budgets)
    config = cls.make_config({**entry.config, cls.budget: budget})
    model = tiny_arms.signed.load()
    res = cls().run(model, tiny_arms.ctx(tiny_arms.signed), config)
    assert isinstance(res, AttackResult)
    assert res.model is not None
    assert isinstance(res.findings, dict)
    _finite_json(res.findings)
    s = res.spend
    for v in (s.steps, s.tokens, s.queries, s.seconds):
        assert v >= 0 and math.isfinite(v)
    if not cls.modifies_weights:
        assert res.model is model, f"{name} says it leaves the weights alone"
