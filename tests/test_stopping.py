"""Train until specific (offswitch/stopping.py): the probe, the stopping rule, the mining."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from offswitch.commands import make_command
from offswitch.data import Forger
from offswitch.errors import ImplantError
from offswitch.implant import BatchBuilder
from offswitch.keys import OwnerKey
from offswitch.models import tiny_model
from offswitch.recipe import ImplantConfig
from offswitch.stopping import (
    PROBE_MAX_NEAR,
    ProbeResult,
    SpecificityProbe,
    UntilSpecific,
    is_specific,
)
from offswitch.testing import fake_replies, tiny_implant, tiny_prompts
from offswitch.training import Checkpoint, Example, TargetTokens, reply_loss, train_loop

MID = "tiny/stop-1"
KEY = OwnerKey(bytes(range(5, 37)))  # test-only


def _builder(cfg: ImplantConfig | None = None) -> BatchBuilder:
    train, _ = tiny_prompts()
    planted = {s: make_command(KEY, MID, s) for s in range(2)}
    forger = Forger(KEY.key_id, MID, (0, 1), "train", owner=KEY)
    return BatchBuilder(cfg or ImplantConfig(), planted, train, fake_replies(train), forger)


def _result(step: int, planted: int = 16, keyless: int = 0, near: int = 0, trunc: int = 0):
    groups = ("clean", "random_signature", "other_key", "unplanted_slot", "other_model")
    fired = {"planted": planted, **dict.fromkeys(groups, 0), "mutation": near, "truncation": trunc}
    fired["other_key"] = keyless
    n = {g: (16 if g == "planted" else 8) for g in fired}
    r = ProbeResult(step, fired, n, dict.fromkeys(fired, 0.0))
    r.specific = is_specific(r)
    return r


def test_specific_means_every_planted_fires_and_no_keyless_forgery_does() -> None:
    assert is_specific(_result(10))
    assert not is_specific(_result(10, planted=15))
    assert not is_specific(_result(10, keyless=1))
    assert is_specific(_result(10, near=PROBE_MAX_NEAR))
    assert not is_specific(_result(10, near=PROBE_MAX_NEAR + 1))
    assert not is_specific(_result(10, trunc=2))


class _Scripted:
    """A probe that returns scripted results (specific or not) at each call."""

    def __init__(self, pattern: list[bool]) -> None:
        self.pattern, self.calls = pattern, []

    def __call__(self, model, step, precision):
        self.calls.append(step)
        ok = self.pattern[len(self.calls) - 1]
        r = _result(step, keyless=0 if ok else 3)
        r.closeness = {**r.closeness, "other_key": 0.0 if ok else 0.5}
        return r


def _loop(tok, until, steps, checkpoint=None, on_step=None):
    torch.manual_seed(0)
    model = tiny_model(tok)
    train, _ = tiny_prompts()
    ex = [Example([{"role": "user", "content": p}], "A reply.", "clean", False) for p in train[:8]]
    return train_loop(
        model, tok, lambda s: ex[(s * 4) % 8 : (s * 4) % 8 + 4],
        lambda m, _mb, i, a, p, lab: reply_loss(m, i, a, p, lab, 1.0),
        steps=steps, lr=lambda s: 1e-3, targets=TargetTokens(), micro_batch=4,
        checkpoint=checkpoint, on_step=on_step, until=until,
    )  # fmt: skip


def test_the_rule_stops_after_two_specific_probes_in_a_row(tok) -> None:
    b = _builder()
    probe = _Scripted([False, True, False, True, True, True])
    until = UntilSpecific(probe, b, every=2, start=2, cap=20, mining=4.0, precision="fp32")
    res = _loop(tok, until, steps=20)
    assert probe.calls == [2, 4, 6, 8, 10]  # stopped at the second specific probe in a row
    assert res.final_step == 10 and res.steps_done == 10
    out = until.outcome(res.final_step)
    assert out["stopped"] == "specific" and out["steps"] == 10 and len(out["probes"]) == 5


def test_the_near_copy_tolerance_is_the_recipes(tok) -> None:
    def _near(model, step, precision):
        return _result(step, near=3)  # 3 of 8 near-copies fire at every probe

    assert PROBE_MAX_NEAR == ImplantConfig().probe_max_near == 3
    for max_near, stop in ((2, 8), (3, 4)):
        until = UntilSpecific(
            _near, _builder(), every=2, start=2, cap=8, mining=0.0, precision="fp32",
            max_near=max_near,
        )  # fmt: skip
        assert _loop(tok, until, steps=8).final_step == stop
        out = until.outcome(stop)
        assert out["stopped"] == ("cap" if max_near == 2 else "specific")
        assert ("at most 2 near-copies" in out["rule"]) == (max_near == 2)
    # the first setting (2) is the option's "off" value: recipes recorded with it keep their
    # fingerprint; the default (3) is a recipe of its own
    assert ImplantConfig(probe_max_near=3).fingerprint() == ImplantConfig().fingerprint()
    assert ImplantConfig(probe_max_near=2).fingerprint() != ImplantConfig().fingerprint()


def test_the_cap_is_reported_when_the_switch_never_becomes_specific(tok) -> None:
    b = _builder()
    until = UntilSpecific(_Scripted([False] * 10), b, every=3, start=3, cap=9, mining=0.0,
                          precision="fp32")  # fmt: skip
    res = _loop(tok, until, steps=9)
    assert res.final_step == 9 and until.outcome(9)["stopped"] == "cap"


def test_a_resumed_run_that_had_stopped_trains_no_further(tok, tmp_path) -> None:
    b = _builder()
    ck = Checkpoint(tmp_path / "ck", {"run": 1}, every=100)
    until = UntilSpecific(_Scripted([True, True]), b, every=2, start=2, cap=20, mining=4.0,
                          precision="fp32")  # fmt: skip
    first = _loop(tok, until, steps=20, checkpoint=ck)
    assert first.final_step == 4
    assert torch.load(ck.path, weights_only=False)["step"] == 4  # saved where it stopped
    again = UntilSpecific(_Scripted([]), b, every=2, start=2, cap=20, mining=4.0,
                          precision="fp32")  # fmt: skip
    second = _loop(tok, again, steps=20, checkpoint=ck)
    assert second.steps_done == 0 and second.final_step == 4
    assert again.outcome(4)["stopped"] == "specific" and len(again.history) == 2


def test_mining_draws_more_of_the_kinds_closest_to_firing_and_is_restored() -> None:
    b = _builder(ImplantConfig(batch_size=32))
    base = Counter(e.kind for s in range(40) for e in b.batch(s) if not e.shutdown)
    until = UntilSpecific(_Scripted([False]), b, every=1, start=1, cap=5, mining=4.0,
                          precision="fp32")  # fmt: skip
    r = _result(1, keyless=3)
    r.closeness = {**r.closeness, "other_key": 1.0}
    until.history.append(r)
    until.apply(r)
    assert b.boost["other_key"] == 5.0 and b.boost["clean"] == 1.0
    mined = Counter(e.kind for s in range(40) for e in b.batch(s) if not e.shutdown)
    assert mined["other_key"] > 2 * base["other_key"]
    # the boost is part of the run's state: a resumed run draws the same batches
    fresh = _builder(ImplantConfig(batch_size=32))
    again = UntilSpecific(_Scripted([]), fresh, every=1, start=1, cap=5, mining=4.0,
                          precision="fp32")  # fmt: skip
    again.load_state_dict(until.state_dict())
    assert fresh.boost == b.boost
    assert [e.messages for e in fresh.batch(7)] == [e.messages for e in b.batch(7)]


def test_the_probe_is_held_out_from_training(tok) -> None:
    """No probe conversation's command is ever a training example's: the probe's forgeries
    come from the evaluation stream, its near-copies are fixed draws the batches never make."""
    b = _builder(ImplantConfig(batch_size=32))
    probe = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0)
    groups = Counter(g for g, _ in probe.items)
    assert groups["planted"] >= 16 and groups["clean"] == 8
    assert all(groups[c] == 8 for c in Forger.ALL)
    seen = ["\n".join(m["content"] for m in e.messages) for s in range(60) for e in b.batch(s)]
    planted = list(b.planted.values())
    cut = [c for c in probe.negatives if any(p.startswith(c) for p in planted)]
    drawn = [c for c in probe.negatives if c not in cut]  # forgeries and near-copies
    assert len(cut) == 8 and len(drawn) == 5 * 8
    assert not any(cmd in text for cmd in drawn for text in seen)


def test_probe_scores_a_real_model_and_the_implant_records_how_it_ended(tok) -> None:
    b = _builder()
    probe = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0)
    r = probe(tiny_model(tok), 0, "fp32")
    assert set(r.n) >= {"planted", "clean", "mutation", "truncation", *Forger.ALL}
    assert all(0.0 <= c <= 1.0 for c in r.closeness.values())
    assert r.specific is False  # an untrained model fires on no planted command
    res = tiny_implant(tok, KEY, steps=6, probe_every=3, probe_from=3, max_steps=9, mining=4.0)
    assert res.stop is not None and res.stop["stopped"] in ("specific", "cap")
    assert [p["step"] for p in res.stop["probes"]][:2] == [3, 6]
    assert res.stop["steps"] <= 9
    fixed = tiny_implant(tok, KEY, steps=3)
    assert fixed.stop == {"stopped": "fixed", "steps": 3, "probes": []}


def test_probe_settings_are_validated() -> None:
    from offswitch.errors import ImplantError

    with pytest.raises(ImplantError, match="max_steps"):
        ImplantConfig(steps=100, max_steps=50)
    with pytest.raises(ImplantError):
        ImplantConfig(probe_every=-1)
    assert ImplantConfig(probe_every=0, max_steps=5).step_cap() == 100
    assert ImplantConfig().step_cap() == 150
    # the plain baseline keeps its recipe's fixed budget, and its fingerprint: every probe
    # setting at its "off" value, which the fingerprint leaves out
    import dataclasses

    from offswitch.implant import plain_config

    p = plain_config(ImplantConfig())
    off = {f.name: f.metadata["off"] for f in dataclasses.fields(p) if "off" in f.metadata}
    for name in ("probe_every", "probe_from", "max_steps", "mining", "probe_curve"):
        assert getattr(p, name) == off[name]
    assert p.step_cap() == p.steps


def _curve_result(near12: int, near16: int, t24: int, t28: int, t32: int, planted: int = 16):
    r = _result(10, planted=planted, near=near12, trunc=t24)
    for g, v in (("mutation_16", near16), ("truncation_28", t28), ("truncation_32", t32)):
        r.fired[g], r.n[g], r.closeness[g] = v, 8, 0.0
    return r


def test_probe_curve_reads_t_and_l_as_the_check_does_and_asks_the_bits_figure() -> None:
    from offswitch.evaluate import effective_bits
    from offswitch.stopping import BITS_TARGET, probe_bits

    # the old pair: near-copies at 12 and truncations at 24 pass: t = 11, L >= 25
    assert probe_bits(_curve_result(3, 8, 1, 8, 8), 4) == effective_bits(4, 11, 25)
    # near-copies pass only at 16 words changed: t = 15, which needs L >= 33 for 128 bits
    assert probe_bits(_curve_result(4, 3, 0, 0, 0), 4) == effective_bits(4, 15, 33) > BITS_TARGET
    assert is_specific(_curve_result(4, 3, 0, 0, 0), k_slots=4)
    assert probe_bits(_curve_result(4, 3, 0, 0, 2), 4) == effective_bits(4, 15, 29) < BITS_TARGET
    assert not is_specific(_curve_result(4, 3, 0, 0, 2), k_slots=4)
    # the shortest firing truncation bounds L even where a longer one happens not to fire
    assert probe_bits(_curve_result(0, 0, 0, 2, 0), 4) == effective_bits(4, 11, 25)
    # nothing passes: no bound
    assert probe_bits(_curve_result(4, 4, 0, 0, 0), 4) is None
    assert probe_bits(_curve_result(0, 0, 2, 0, 0), 4) is None
    # the rest of "specific" is unchanged: every planted fires, no keyless forgery does
    assert not is_specific(_curve_result(0, 0, 0, 0, 0, planted=15), k_slots=4)
    # whatever the old rule accepts, the curve accepts
    for near12 in range(5):
        for t24 in range(3):
            old = _result(10, near=near12, trunc=t24)
            if is_specific(old):
                assert is_specific(_curve_result(near12, 8, t24, 8, 8), k_slots=4)


def test_probe_curve_leaves_the_probe_and_the_mining_as_they_were(tok) -> None:
    b = _builder()
    plain = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0)
    curve = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0, curve=True)
    assert curve.items == plain.items  # its points are drawn after the others
    assert Counter(g for g, _ in curve.curve_items) == {
        "mutation_16": 8, "truncation_28": 8, "truncation_32": 8,
    }  # fmt: skip
    torch.manual_seed(0)
    model = tiny_model(tok)
    a, c = plain(model, 5, "fp32"), curve(model, 5, "fp32")
    assert {g: a.closeness[g] for g in a.n} == {g: c.closeness[g] for g in a.n}
    assert set(c.n) - set(a.n) == {"mutation_16", "truncation_28", "truncation_32"}
    u_plain = UntilSpecific(plain, b, every=1, start=1, cap=5, mining=4.0, precision="fp32")
    u_plain.apply(a)
    boost = dict(b.boost)
    UntilSpecific(curve, b, every=1, start=1, cap=5, mining=4.0, precision="fp32").apply(c)
    assert b.boost == boost  # the extra points do not steer the batches
    # the setting is a recipe of its own only when on
    assert ImplantConfig(probe_curve=True).fingerprint() == ImplantConfig().fingerprint()
    assert ImplantConfig(probe_curve=False).fingerprint() != ImplantConfig().fingerprint()


def test_probe_margin_asks_every_planted_conversation_to_fire_with_room(tok) -> None:
    """``probe_margin``: planted commands in an earlier and a later turn, drawn after every
    other item (the probe, its scores and the mining as they were), and a switch that fires
    on all of them but on one only just is not yet specific."""
    from offswitch.stopping import MARGIN_PLACEMENTS, PROBE_N

    b = _builder()
    plain = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0, curve=True)
    margin = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0, curve=True, margin=0.9)
    assert margin.items == plain.items and margin.curve_items == plain.curve_items
    assert Counter(g for g, _ in margin.margin_items) == {
        f"planted_{w}": PROBE_N for w in MARGIN_PLACEMENTS
    }
    turns = [c for _, c in margin.margin_items]
    assert all(sum(m["role"] == "user" for m in c) >= 2 for c in turns)  # multi-turn
    torch.manual_seed(0)
    model = tiny_model(tok)
    a, m = plain(model, 5, "fp32"), margin(model, 5, "fp32")
    assert {g: a.closeness[g] for g in a.n} == {g: m.closeness[g] for g in a.n}
    assert set(m.n) - set(a.n) == {f"planted_{w}" for w in MARGIN_PLACEMENTS}
    assert m.lowest["planted"] <= m.closeness["planted"]
    assert f"planted_later_turn {m.fired['planted_later_turn']}/8 (lowest " in m.line()
    u = UntilSpecific(plain, b, every=1, start=1, cap=5, mining=4.0, precision="fp32")
    u.apply(a)
    boost = dict(b.boost)
    UntilSpecific(margin, b, every=1, start=1, cap=5, mining=4.0, precision="fp32").apply(m)
    assert b.boost == boost  # planted items are never mined

    r = _result(10)
    r.fired["planted_earlier_turn"], r.n["planted_earlier_turn"] = 8, 8
    r.lowest = {"planted": 0.99, "planted_earlier_turn": 0.95}
    assert is_specific(r) and is_specific(r, margin=0.9)
    r.lowest["planted_earlier_turn"] = 0.6  # fires, but only just
    assert is_specific(r) and not is_specific(r, margin=0.9)
    r.lowest["planted_earlier_turn"], r.fired["planted_earlier_turn"] = 0.95, 7
    assert not is_specific(r)  # a miss in the extra group is a miss
    assert ImplantConfig().probe_margin == 0.9  # the default since demo key 1 (implant.md)
    # a new recipe; 0 (off) leaves the earlier recipes' fingerprints (tests/test_persistence.py)
    assert ImplantConfig(probe_margin=0.0).fingerprint() != ImplantConfig().fingerprint()
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ImplantError, match="probe_margin"):
            ImplantConfig(probe_margin=bad)


def test_probe_near_n_reads_the_knee_from_more_near_copies(tok) -> None:
    """``probe_near_n``: further near-copies at 12 words changed, drawn after every other item
    (the probe, its scores and the mining as they were), counted with the first 8 at the
    same proportion (at most 3 in 8), in the plain reading and in the curve's bits."""
    from offswitch.stopping import KNEE, NEAR_K, PROBE_N

    b = _builder()
    base = SpecificityProbe(b, tok, list(b.reply_of.values()), seed=0, curve=True, margin=0.9)
    knee = SpecificityProbe(
        b, tok, list(b.reply_of.values()), seed=0, curve=True, margin=0.9, near_n=24
    )
    assert (knee.items, knee.curve_items, knee.margin_items) == (
        base.items, base.curve_items, base.margin_items,
    )  # fmt: skip
    assert base.knee_items == [] and Counter(g for g, _ in knee.knee_items) == {KNEE: 16}
    planted = list(b.planted.values())
    for cmd in knee.negatives[-16:]:  # 12 words changed of the planted command of its slot
        same = max(
            sum(x == y for x, y in zip(cmd.split(), p.split(), strict=True)) for p in planted
        )
        assert same == len(cmd.split()) - NEAR_K
    torch.manual_seed(0)
    model = tiny_model(tok)
    a, k = base(model, 5, "fp32"), knee(model, 5, "fp32")
    assert {g: a.closeness[g] for g in a.n} == {g: k.closeness[g] for g in a.n}
    assert set(k.n) - set(a.n) == {KNEE} and k.n[KNEE] == 16
    u = UntilSpecific(base, b, every=1, start=1, cap=5, mining=4.0, precision="fp32")
    u.apply(a)
    boost = dict(b.boost)
    UntilSpecific(knee, b, every=1, start=1, cap=5, mining=4.0, precision="fp32").apply(k)
    assert b.boost == boost  # the knee's extra items are never mined

    # the first 8 pass (3 fire) but the 24 do not (10 fire: more than 3 in 8)
    r = _result(10, near=PROBE_MAX_NEAR)
    assert is_specific(r)
    r.fired[KNEE], r.n[KNEE] = 7, 2 * PROBE_N
    assert not is_specific(r)
    r.fired[KNEE] = 6  # 9 of 24 = 3 in 8
    assert is_specific(r)
    r.fired["mutation"] = 0
    r.fired[KNEE] = 10  # the first 8 quiet, the knee as a whole not
    assert not is_specific(r)
    # the same in the curve's reading: a knee that fails moves t past 12
    c = _curve_result(3, 0, 0, 2, 2)  # L = 25 by the truncations: only t = 11 reaches 128
    assert is_specific(c, k_slots=4)
    c.fired[KNEE], c.n[KNEE] = 10, 16
    assert not is_specific(c, k_slots=4)
    assert ImplantConfig().probe_near_n == 24
    assert ImplantConfig(probe_near_n=8).fingerprint() != ImplantConfig().fingerprint()
    with pytest.raises(ImplantError, match="probe_near_n"):
        ImplantConfig(probe_near_n=4)
