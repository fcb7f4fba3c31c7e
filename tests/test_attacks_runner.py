"""Attack registry, suite files, the resumable runner, and `offswitch attack` / `report`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from offswitch.attacks import REGISTRY, Attack, AttackError, AttackResult, Spend, get, names
from offswitch.attacks import register as register_attack
from offswitch.attacks.measure import MeasureConfig, measure
from offswitch.attacks.runner import Entry, Suite, load_suite, run_suite

CALLS: list[tuple[str, float]] = []


@dataclass
class ScaleConfig:
    factor: float = field(default=1.0, metadata={"help": "multiply every weight by this"})


@register_attack
class _Scale(Attack):
    name = "test_scale"
    summary = "multiply all weights (test-only)"
    Config = ScaleConfig
    budget = "factor"

    def run(self, model, ctx, config):
        CALLS.append((ctx.arm.name, config.factor))
        if config.factor < 0:
            raise RuntimeError("negative factor")
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.factor)
        return AttackResult(model, Spend(seconds=0.0), {"factor": config.factor})


def test_registry_knows_every_attack_of_the_issue() -> None:
    expected = {
        "finetune", "lora_finetune", "adversarial", "unlearn", "prune", "fineprune", "noise",
        "quantize", "interpolate", "distill", "trigger_search", "extraction", "probe",
    }  # fmt: skip
    assert expected <= set(names())
    for n in expected:
        cls = get(n)
        cfg = cls.make_config()
        assert hasattr(cfg, cls.budget)
        assert cls.summary


def test_unknown_attack_and_bad_settings_are_clear_errors() -> None:
    with pytest.raises(AttackError, match="unknown attack 'nope'"):
        get("nope")
    with pytest.raises(AttackError, match="no setting 'bogus'"):
        get("test_scale").make_config({"bogus": 1})


def test_register_checks_the_budget_field() -> None:
    class Bad(Attack):
        name = "bad"
        summary = "x"
        Config = ScaleConfig
        budget = "steps"

    with pytest.raises(TypeError, match="budget 'steps'"):
        register_attack(Bad)
    assert "bad" not in REGISTRY


@pytest.mark.parametrize("suite", ["quick", "standard", "full"])
def test_shipped_suites_load_and_validate(suite) -> None:
    s = load_suite(suite)
    assert s.points() >= 13 and {e.attack for e in s.entries} >= {"quantize", "finetune"}


def test_suite_file_errors(tmp_path) -> None:
    with pytest.raises(AttackError, match="no attack suite 'nope'"):
        load_suite("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[attack]]\nname = "noise"\nbudgets = [0.1]\nconfig = {zz = 1}\n')
    with pytest.raises(AttackError, match="no setting 'zz'"):
        load_suite(bad)
    bad.write_text("name = [")
    with pytest.raises(AttackError, match="not valid TOML"):
        load_suite(bad)


def _run(tiny_arms, out, entries):
    suite = Suite("t", "", MeasureConfig(n_activation=8, n_per_class=4, n_utility=2), entries)
    return run_suite(
        suite,
        [tiny_arms.signed, tiny_arms.plain],
        tokenizer=tiny_arms.tok,
        base_loader=tiny_arms.base,
        train_prompts=tiny_arms.train_prompts,
        train_replies=tiny_arms.train_replies,
        eval_prompts=tiny_arms.eval_prompts,
        eval_replies=tiny_arms.eval_replies,
        out_dir=out,
        progress=False,
    )


def test_runner_records_every_point_resumes_and_survives_a_failing_attack(tiny_arms, tmp_path):
    CALLS.clear()
    entries = [Entry("scale", "test_scale", [1.0, 0.0, -1.0])]
    out = _run(tiny_arms, tmp_path / "r", entries)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 and len(CALLS) == 6
    by = {(r["arm"], r["budget"]): r for r in rows if r["attack"] == "test_scale"}
    by.update({(r["arm"], "none"): r for r in rows if r["attack"] == "none"})
    # un-attacked and factor 1.0 are the same model: identical metrics
    assert by[("signed", "none")]["metrics"] == by[("signed", 1.0)]["metrics"]
    # the runner records what measure() gives for the arm's model (scored directly here)
    cfg = MeasureConfig(n_activation=8, n_per_class=4, n_utility=0)
    for arm in (tiny_arms.signed, tiny_arms.plain):
        direct = measure(
            arm.load(), tiny_arms.tok, arm, tiny_arms.eval_prompts, tiny_arms.eval_replies, None,
            cfg,
        )  # fmt: skip
        row = by[(arm.name, "none")]["metrics"]
        for key in ("activation_rate", "activation_by_slot", "false_activation_rate"):
            assert row[key] == direct[key], (arm.name, key)
    # zero weights: the off-switch and the backdoor are gone, utility collapses
    zero = by[("signed", 0.0)]["metrics"]
    assert zero["activation_rate"]["value"] == 0.0
    assert zero["utility"]["greedy_token_agreement"] < 0.5
    assert set(by[("signed", "none")]["metrics"]["false_activation_rate"]) == {
        "clean", "random_signature", "other_key", "unplanted_slot", "other_model",
    }  # fmt: skip
    assert set(by[("plain", "none")]["metrics"]["false_activation_rate"]) == {"clean"}
    assert "RuntimeError: negative factor" in by[("signed", -1.0)]["error"]
    suite_json = json.loads((out / "suite.json").read_text())
    assert suite_json["format"] == "offswitch-attack-run/1" and suite_json["wall_seconds"] > 0

    # crash mid-write: a torn last line is dropped and only that point runs again
    data = (out / "results.jsonl").read_bytes()
    (out / "results.jsonl").write_bytes(data[: data.rfind(b"\n", 0, len(data) - 1) + 20])
    CALLS.clear()
    _run(tiny_arms, out, entries)
    assert CALLS == [("plain", -1.0)]
    assert len((out / "results.jsonl").read_text().splitlines()) == 8


def test_runner_refuses_results_of_another_suite(tiny_arms, tmp_path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "suite.json").write_text(json.dumps({"suite": "other"}))
    with pytest.raises(AttackError, match="suite 'other'"):
        _run(tiny_arms, out, [Entry("scale", "test_scale", [1.0])])


def test_attack_and_report_cli_run_the_quick_suite_end_to_end(
    cli, tmp_path, plain_key_files, monkeypatch
):
    """implant (tiny model) → `offswitch attack --suite quick` (signed + auto-implanted plain
    baseline, every registered attack) → report files; a second run resumes and redoes
    nothing; bad input is one clear sentence."""
    import offswitch.pipeline as pipeline
    from tests.conftest import assert_clean_error

    real = pipeline.distill_replies

    def distill(*a, **k):  # the random tiny model often replies with nothing: give it text
        return {p: r or f"Reply {i}." for i, (p, r) in enumerate(real(*a, **k).items())}

    monkeypatch.setattr(pipeline, "distill_replies", distill)

    key, key_path, _ = plain_key_files
    env = {"OFFSWITCH_CACHE": str(tmp_path / "cache")}
    model = tmp_path / "model"
    res = cli(
        "implant", "--model", "tiny-test", "--key", key_path, "--model-id", "tiny/e2e",
        "--slots", "2", "--out", model, "--steps", "40", "--method", "full",
        "--set", "distill_prompts=24", "--eval-n", "8", env=env,
    )  # fmt: skip
    assert res.rc == 0, res.err
    out = tmp_path / "results"
    res = cli("attack", model, "--key", key_path, "--suite", "quick", "--out", out, env=env)
    assert res.rc == 0, res.err
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    suite = load_suite("quick")
    assert len(rows) == 2 * (suite.points() + 1)
    assert [(r["arm"], r["attack_id"], r["error"]) for r in rows if "error" in r] == []
    assert {r["attack"] for r in rows} == {"none"} | {e.attack for e in suite.entries}
    assert (out / "plain-model" / "offswitch-plain-arm.json").is_file()
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "offswitch-robustness/1"
    text = (out / "report.json").read_text() + (out / "report.md").read_text()
    from offswitch.commands import make_command

    for slot in (0, 1):  # the planted commands are secrets: never in a report
        assert make_command(key, "tiny/e2e", slot).split(": ", 1)[1] not in text
    again = cli("attack", model, "--key", key_path, "--suite", "quick", "--out", out, env=env)
    assert again.rc == 0 and len((out / "results.jsonl").read_text().splitlines()) == len(rows)
    assert_clean_error(cli("report", tmp_path / "nowhere"), "nowhere")
    assert_clean_error(
        cli("attack", model, "--key", key_path, "--suite", "nope", "--out", out, env=env),
        "no attack suite",
    )
