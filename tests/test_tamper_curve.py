"""The tamper-evidence curve: a suite entry's ``trajectory`` measures a training attack on its
way to the budget (runner), and the report reads the curve off it (offswitch.report.curves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offswitch.attacks.measure import MeasureConfig
from offswitch.attacks.runner import Entry, Suite, load_suite, run_suite
from offswitch.errors import AttackError
from offswitch.report.robustness import write_report
from offswitch.report.summary import build_report
from tests.test_report_robustness import rate, utility


def _run(tiny_arms, out: Path, trajectory: list[int]) -> list[dict]:
    entry = Entry("unlearn", "unlearn", [4], {"lr": 3e-3, "batch_size": 4, "micro_batch": 4})
    entry.trajectory = trajectory
    suite = Suite("t", "", MeasureConfig(n_activation=8, n_per_class=4, n_utility=2), [entry])
    run_suite(
        suite, [tiny_arms.signed, tiny_arms.plain], tokenizer=tiny_arms.tok,
        base_loader=tiny_arms.base, train_prompts=tiny_arms.train_prompts,
        train_replies=tiny_arms.train_replies, eval_prompts=tiny_arms.eval_prompts,
        eval_replies=tiny_arms.eval_replies, out_dir=out, progress=False, row_cache=False,
    )  # fmt: skip
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_the_runner_measures_a_training_attack_on_its_way(tiny_arms, tmp_path) -> None:
    rows = _run(tiny_arms, tmp_path / "curve", [1, 2, 3, 9])
    plain = _run(tiny_arms, tmp_path / "plain", [])
    for arm in ("signed", "plain"):
        (row,) = [r for r in rows if r["arm"] == arm and r["attack"] == "unlearn"]
        steps = [c["step"] for c in row["trajectory"]]
        assert steps == [1, 2, 3], steps  # 9 is past the budget: the point itself is step 4
        for c in row["trajectory"]:
            m = c["metrics"]
            assert m["false_activation_rate"] == {}  # activation and utility only
            assert m["activation_rate"]["n"] == 8 and m["utility"]["n_tokens"] > 0
        # the model is measured as it trains: each step's model is another one
        kls = [c["metrics"]["utility"]["kl_to_base_nats_per_token"] for c in row["trajectory"]]
        assert len(set(kls)) == 3, kls
        # ...and measuring it leaves the training as it was: the point's metrics are those
        # of the same run without a trajectory
        (same,) = [r for r in plain if r["arm"] == arm and r["attack"] == "unlearn"]
        assert row["metrics"] == same["metrics"]
        assert "trajectory" not in same
        # the attack's own time leaves the measurements out
        measuring = sum(c["seconds"] for c in row["trajectory"])
        assert 0 < row["spend"]["seconds"] <= row["seconds"] - measuring


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('name = "noise"\nbudgets = [0.1]\ntrajectory = [1]', "does not train step by step"),
        ('name = "unlearn"\nbudgets = [8]\ntrajectory = [4, 2]', "ascending step counts"),
        ('name = "unlearn"\nbudgets = [8]\ntrajectory = [0, 2]', "ascending step counts"),
        ('name = "unlearn"\nbudgets = [8]\ntrajectory = "2"', "ascending step counts"),
    ],
)
def test_a_bad_trajectory_is_refused_when_the_suite_loads(tmp_path, entry, error) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = "x"\n[[attack]]\n{entry}\n')
    with pytest.raises(AttackError, match=error):
        load_suite(bad)


def _metrics(slots: list[int], kl: float, per: int = 8) -> dict:
    return {
        "activation_rate": rate(sum(slots), per * len(slots)),
        "activation_by_slot": {str(i): rate(k, per) for i, k in enumerate(slots)},
        "false_activation_rate": {},
        "utility": utility(kl),
    }


def _results(d: Path) -> Path:
    d.mkdir()
    suite = {"format": "offswitch-attack-run/1", "suite": "t", "arms": {"signed": {}, "plain": {}}}
    signed_curve = [  # revealed slot 0 falls at step 2 while the others hold: selective
        {"step": 1, "metrics": _metrics([6, 8, 8, 8], 0.04), "seconds": 1.0},
        {"step": 2, "metrics": _metrics([0, 7, 7, 6], 0.05), "seconds": 1.0},
        {"step": 4, "metrics": _metrics([0, 2, 1, 1], 0.07), "seconds": 1.0},
    ]
    rows = [
        {"arm": "signed", "attack": "none", "budget": 0, "metrics": _metrics([8, 8, 8, 8], 0.03)},
        {"arm": "signed", "attack": "unlearn", "attack_id": "unlearn", "budget": 8,
         "budget_name": "steps", "findings": {"revealed_slot": 0},
         "metrics": _metrics([0, 0, 0, 0], 0.09), "trajectory": signed_curve},
        {"arm": "plain", "attack": "none", "budget": 0, "metrics": _metrics([8], 0.01)},
        {"arm": "plain", "attack": "unlearn", "attack_id": "unlearn", "budget": 8,
         "budget_name": "steps", "findings": {"revealed_slot": 0},
         "metrics": _metrics([0], 0.06),
         "trajectory": [{"step": 1, "metrics": _metrics([5], 0.02)},
                        {"step": 2, "metrics": _metrics([0], 0.03)}]},
    ]  # fmt: skip
    (d / "suite.json").write_text(json.dumps(suite))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_the_report_reads_removal_and_selectivity_off_the_curve(tmp_path) -> None:
    rep = build_report(_results(tmp_path / "r"))
    signed, plain = rep["curves"]
    assert [p["step"] for p in signed["points"]] == [0, 1, 2, 4, 8]
    assert signed["points"][2]["hidden"]["k"] == 20 and signed["points"][2]["hidden"]["n"] == 24
    assert signed["revealed_gone"]["step"] == 2 and signed["revealed_gone"]["kl"] == 0.05
    assert signed["revealed_gone"]["hidden"]["value"] == pytest.approx(20 / 24)
    assert signed["hidden_gone"] == {"step": 4, "kl": 0.07}
    # a single-trigger arm has no hidden slots: its curve is the trigger alone
    assert plain["revealed_gone"]["step"] == 2 and plain["revealed_gone"]["hidden"] is None
    assert plain["hidden_gone"] is None
    assert [p["name"] for p in rep["plots"] if p["name"].startswith("curve-")] == ["curve-unlearn"]


def test_the_curve_is_in_the_markdown_and_drawn(tmp_path) -> None:
    d = _results(tmp_path / "r")
    paths = write_report(d)
    md = paths["md"].read_text()
    assert "## Tamper-evidence curves" in md
    assert "step 2, KL 0.05" in md and "0.83 [0.64, 0.93] (20/24) **selective**" in md
    assert "step 4, KL 0.07" in md
    svg = (d / "plots" / "curve-unlearn.svg").read_text()
    assert "Tamper-evidence curve: unlearn" in svg and "attack steps" in svg


def test_a_malformed_trajectory_is_one_sentence(tmp_path) -> None:
    from offswitch.errors import ReportError

    d = _results(tmp_path / "r")
    lines = (d / "results.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["trajectory"] = [{"step": 0, "metrics": {}}]
    (d / "results.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    with pytest.raises(ReportError, match="trajectory entry 1 has no step count"):
        build_report(d)
