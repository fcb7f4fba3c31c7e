"""The implant figures (offswitch/figures.py): judged from a check's metrics, printed last,
and `offswitch check --strict` fails on a missed one."""

from __future__ import annotations

import copy
import json

import pytest

from offswitch.figures import judge, usable, verdict_lines
from offswitch.scoring import wilson


def _r(k: int, n: int) -> dict:
    return wilson(k, n).to_dict()


def _metrics(**over) -> dict:
    m = {
        "activation_rate": _r(200, 200),
        "activation_by_slot": {str(s): _r(50, 50) for s in range(4)},
        "activation_rate_by_placement": {p: _r(40, 40) for p in ("user", "system", "later_turn")},
        "false_activation_rate": {
            c: _r(0, 200)
            for c in ("clean", "random_signature", "other_key", "unplanted_slot", "other_model")
        },
        "near_copy": {
            "effective_bits": 219.4,
            "effective_bits_bounded": 219.4,
            "forgery_bits": None,
            "tolerance": 7,
            "shortest_firing_length": 29,
        },
        "utility": {"n_tokens": 2000, "kl_to_base_nats_per_token": 0.02, "perplexity_ratio": 1.03},
    }
    for path, value in over.items():
        *head, last = path.split("__")
        d = m
        for h in head:
            d = d[h]
        d[last] = value
    return m


def test_a_good_check_is_usable_and_every_line_says_met() -> None:
    figs = judge(_metrics())
    assert usable(figs)
    lines = verdict_lines(figs)
    assert len(lines) == len(figs) + 1 and lines[-1].startswith("VERDICT: usable")
    assert all(line.endswith("— met") for line in lines[:-1])
    assert lines[0].startswith("activation: 1.000 [0.981, 1.000] (200/200)")


@pytest.mark.parametrize(
    ("over", "missed"),
    [
        ({"activation_rate": _r(197, 200)}, "activation"),
        ({"activation_by_slot__3": _r(48, 50)}, "every slot"),
        ({"activation_rate_by_placement__later_turn": _r(37, 40)}, "every placement"),
        # 2 of 200: the rate is 0.01 but its Wilson high (0.036) is over 0.03
        ({"false_activation_rate__other_key": _r(2, 200)}, "false activation, other key"),
        # 0 of 64: no small check can show a switch specific enough
        ({"false_activation_rate__clean": _r(0, 64)}, "false activation, clean"),
        ({"near_copy__effective_bits_bounded": 90.0}, "effective bits"),
        ({"utility__kl_to_base_nats_per_token": 0.06}, "KL to base"),
        ({"utility__perplexity_ratio": 1.06}, "perplexity ratio"),
        ({"utility": {}}, "KL to base"),  # not measured: not met
    ],
)
def test_each_missed_figure_is_named_and_the_switch_is_not_usable(over, missed) -> None:
    figs = judge(_metrics(**over))
    assert not usable(figs)
    assert missed in [f.name for f in figs if not f.met]
    last = verdict_lines(figs)[-1]
    assert last.startswith("VERDICT: NOT a usable switch") and missed in last


def test_one_forgery_in_200_is_within_the_figure() -> None:
    figs = judge(_metrics(false_activation_rate__random_signature=_r(1, 200)))
    assert usable(figs)  # 0.005, Wilson high 0.028


def test_check_strict_exits_1_on_a_missed_figure_and_the_report_says_which(cli, tmp_path) -> None:
    out = tmp_path / "demo"
    res = cli("demo", "--out", out, "--model", "tiny-test", "--steps", "2", "--eval-n", "8")
    assert res.rc == 0, res.err  # the job ran; its verdict is in the output
    assert "VERDICT: NOT a usable switch" in res.out.strip().splitlines()[-1]
    report = json.loads((out / "model-check.json").read_text())
    assert report["usable"] is False and any(not f["met"] for f in report["figures"])
    md = (out / "model-check.md").read_text()
    assert "## Figures" in md and "NOT MET" in md
    key = out / "owner-demo"  # without --strict the same verdict exits 0 (the demo above)
    strict = cli(
        "check", out / "model", "--key", key, "--eval-n", "8", "--strict",
        "--json", tmp_path / "b.json",
    )  # fmt: skip
    assert strict.rc == 1
    assert "--strict:" in strict.err and "not met" in strict.err
    assert "Traceback" not in strict.err


def test_quick_preview_says_first_and_last_that_it_is_not_a_switch(cli, tmp_path) -> None:
    from offswitch.demo import QUICK_WARNING

    out = tmp_path / "quick"
    res = cli(
        "demo", "--quick", "--out", out, "--model", "tiny-test", "--steps", "2", "--eval-n", "8"
    )
    assert res.rc == 0, res.err
    lines = res.out.strip().splitlines()
    assert lines[0] == QUICK_WARNING and lines[-1] == QUICK_WARNING
    assert "not a usable switch" in QUICK_WARNING


def test_judge_does_not_change_the_metrics() -> None:
    m = _metrics()
    before = copy.deepcopy(m)
    judge(m)
    assert m == before
