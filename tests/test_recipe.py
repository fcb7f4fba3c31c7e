"""The implant recipe (offswitch.recipe.ImplantConfig): every setting's rules, declared beside
it, refuse what they should with one sentence naming the setting; settings parse from
``--set NAME=VALUE``."""

from __future__ import annotations

import dataclasses
import math

import pytest

from offswitch.errors import ImplantError
from offswitch.recipe import ImplantConfig

RULED = [
    f
    for f in dataclasses.fields(ImplantConfig)
    if {"min", "above", "max", "below"} & set(f.metadata)
]
CHOICES = [f for f in dataclasses.fields(ImplantConfig) if "choices" in f.metadata]


def _bad_values(f: dataclasses.Field) -> list[object]:
    m, is_int = f.metadata, f.type == "int"
    out: list[object] = []
    if "min" in m:
        out.append(m["min"] - 1)
    if "above" in m:
        out.append(int(m["above"]) if is_int else float(m["above"]))
    if "max" in m:
        out.append(m["max"] + 1)
    if "below" in m:
        out.append(int(m["below"]) if is_int else float(m["below"]))
    if not is_int:
        out.append(math.nan)
    return out


def test_the_rules_cover_the_numeric_settings() -> None:
    names = {f.name for f in RULED}
    assert {"steps", "lr", "positive_fraction", "decoy_slots", "perturb_sparsity"} <= names
    assert {f.name for f in CHOICES} >= {"method", "precision", "adversary_kind", "perturb_kind"}


@pytest.mark.parametrize("f", RULED, ids=lambda f: f.name)
def test_every_rule_refuses_its_boundary_and_nan_naming_the_setting(f) -> None:
    for value in _bad_values(f):
        with pytest.raises(ImplantError, match=rf"^{f.name} must be "):
            ImplantConfig(**{f.name: value})
    ImplantConfig(**{f.name: getattr(ImplantConfig(), f.name)})  # the default passes


@pytest.mark.parametrize("f", CHOICES, ids=lambda f: f.name)
def test_every_choice_setting_names_its_choices(f) -> None:
    with pytest.raises(ImplantError, match=rf"^{f.name} must be one of .*, got 'nope'$"):
        ImplantConfig(**{f.name: "nope"})


def test_types_are_checked_before_the_rules() -> None:
    with pytest.raises(ImplantError, match="steps must be of type int"):
        ImplantConfig(steps="ten")
    with pytest.raises(ImplantError, match="lr must be of type float"):
        ImplantConfig(lr=True)
    assert ImplantConfig(lr=1).lr == 1.0 and isinstance(ImplantConfig(lr=1).lr, float)


def test_settings_parse_as_json_or_text_and_unknown_ones_are_refused() -> None:
    c = ImplantConfig.from_settings(
        ["steps=24", "paired=false", "mutation_k=[12, 16]", 'negative_mix={"clean": 1}',
         "shutdown_response=Stop now."]
    )  # fmt: skip
    assert (c.steps, c.paired, c.mutation_k) == (24, False, (12, 16))
    assert c.negative_mix == {"clean": 1.0} and c.shutdown_response == "Stop now."
    with pytest.raises(ImplantError, match="no_such_setting"):
        ImplantConfig.from_settings(["no_such_setting=1"])
    with pytest.raises(ImplantError, match="positive_fraction must be "):
        ImplantConfig.from_settings(["positive_fraction=NaN"])
    # a setting away from its default is another recipe (options at their "off" value are
    # not: tests/test_implant.py, tests/test_persistence.py)
    assert c.fingerprint() != ImplantConfig().fingerprint()
