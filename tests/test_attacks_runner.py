"""Attack registry, suite files, the resumable runner, and `offswitch attack` / `report`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from offswitch.attacks import REGISTRY, Attack, AttackError, AttackResult, Spend, get, names
from offswitch.attacks import register as register_attack
from offswitch.attacks.measure import MeasureConfig, measure
from offswitch.attacks.runner import Entry, Suite, load_suite, plan_lines, run_suite

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


SUITES = Path(__file__).parents[1] / "research/suites"


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.toml")), ids=lambda p: p.stem)
def test_benchmark_suites_are_standard_suite_points(path) -> None:
    """The persistence benchmarks (docs/implant.md, docs/ROBUSTNESS.md) claim the standard
    suite's points and measurement: each entry must be one of its entries, attack and config
    alike, at some of its budgets."""
    mine, standard = load_suite(path), load_suite("standard")
    by_id = {e.id: e for e in standard.entries}
    assert mine.entries and mine.measure == standard.measure
    for e in mine.entries:
        ref = by_id[e.id]
        assert (e.attack, e.config) == (ref.attack, ref.config), e.id
        assert set(e.budgets) <= set(ref.budgets), e.id


def test_persistence_diagnostics_hold_their_attacks() -> None:
    diag = load_suite(SUITES / "persistence-diagnostics.toml")
    assert {e.attack for e in diag.entries} == {"extraction", "finetune", "unlearn", "adversarial"}


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


STANDARD_RUN = Path(__file__).parent / "golden" / "robustness-standard" / "results.jsonl"


def _scaled_minutes(suite, rows, measured) -> dict[str, float]:
    """Each arm's minutes for ``suite`` from the rows of a measured run of a suite measured
    with ``measured``: a point takes the seconds of the run's point of the same id (else
    attack) and budget (else its largest budget); its attack time is scaled by budget where
    the budget is an amount of work (steps, queries, samples), its measuring time by the
    conversations scored."""
    out = {}
    for arm in ("signed", "plain"):
        mine = [r for r in rows if r["arm"] == arm and "error" not in r]
        none = next(r for r in mine if r["attack_id"] == "none")
        classes = len(none["metrics"]["false_activation_rate"])

        def scored(m, classes=classes):
            return m.n_activation + m.n_per_class * classes + m.n_utility

        mscale = scored(suite.measure) / scored(measured)
        seconds = none["seconds"] * mscale
        for e in suite.entries:
            cls = get(e.attack)
            like = [r for r in mine if r["attack_id"] == e.id]
            like = like or [r for r in mine if r["attack"] == e.attack]
            for b in e.budgets:
                ref = next((r for r in like if r["budget"] == b), None)
                ref = ref or max(like, key=lambda r: r["budget"])
                attack = ref["spend"]["seconds"]
                work = b / ref["budget"] if cls.budget in ("steps", "queries", "samples") else 1
                rest = (ref["seconds"] - attack) * (mscale if cls.modifies_weights else 1)
                seconds += attack * work + rest
        out[arm] = seconds / 60
    return out


def test_suite_time_figures_follow_the_measured_run() -> None:
    """standard.toml's figures are the committed run's seconds summed per arm; quick's and
    full's are that run scaled by budget (the rule above), to 1 minute or 5 %."""
    rows = [json.loads(x) for x in STANDARD_RUN.read_text().splitlines()]
    standard = load_suite("standard")
    assert standard.expected_basis.startswith("measured")
    for arm in ("signed", "plain"):
        summed = sum(r["seconds"] for r in rows if r["arm"] == arm) / 60
        assert standard.expected_minutes[arm] == round(summed), arm
    for name in ("quick", "standard", "full"):
        suite = load_suite(name)
        want = _scaled_minutes(suite, rows, standard.measure)
        for arm, minutes in want.items():
            assert abs(suite.expected_minutes[arm] - minutes) <= max(1, 0.05 * minutes), (
                name, arm, minutes,
            )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("expected_minutes_2cpu = 5\nexpected_basis = 'x'", "must be a table of arm = minutes"),
        ("expected_minutes_2cpu = { sigend = 5 }\nexpected_basis = 'x'", "unknown arm 'sigend'"),
        ("expected_minutes_2cpu = { signed = 0 }\nexpected_basis = 'x'", "signed must be a pos"),
        ("expected_minutes_2cpu = { signed = true }\nexpected_basis = 'x'", "positive number"),
        ("expected_minutes_2cpu = { signed = 5 }", "needs expected_basis"),
        ("expected_basis = 'measured'", "expected_basis without expected_minutes_2cpu"),
        ("expected_minutes = 5", "unknown setting 'expected_minutes'"),
    ],
)
def test_suite_expected_time_is_checked(tmp_path, text, error) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = "x"\n{text}\n[[attack]]\nname = "noise"\nbudgets = [0.1]\n')
    with pytest.raises(AttackError, match=error):
        load_suite(bad)


def test_suite_attack_tables_refuse_unknown_keys(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[attack]]\nname = "noise"\nbudgets = [0.1]\ncofig = { seed = 1 }\n')
    with pytest.raises(AttackError, match="attack #1 has an unknown key 'cofig'"):
        load_suite(bad)


def test_plan_lines_state_the_cost_before_any_work(tmp_path) -> None:
    out = tmp_path / "r"
    std = plan_lines(load_suite("standard"), ["signed", "plain"], out)
    assert std[0] == (
        "suite 'standard': 17 attack points per arm + the un-attacked model; "
        "arms signed, plain: 36 points in all"
    )
    assert std[1].startswith(
        "expected ≈ 71 min of points on 2 CPU cores with the default model "
        "(signed 42 + plain 29 min; measured: research/results/robustness-standard)"
    )
    assert len(std) == 2 and not out.exists()  # nothing done, nothing written
    signed_only = plan_lines(load_suite("standard"), ["signed"], out)
    assert "arm signed: 18 points" in signed_only[0] and "≈ 42 min" in signed_only[1]
    assert "≈ 19 h" in plan_lines(load_suite("full"), ["signed", "plain"], out)[1]

    mine = tmp_path / "mine.toml"
    mine.write_text('name = "mine"\n[[attack]]\nname = "noise"\nbudgets = [0.1, 0.2]\n')
    own = plan_lines(load_suite(mine), ["signed", "plain"], out)
    assert "2 attack points per arm" in own[0]
    assert own[1] == (
        "expected time unknown: suite 'mine' has no expected_minutes_2cpu (a measured time); "
        "the run is 6 points of attack and measurement"
    )

    # a resumed run says what is done (only this run's arms and points; a torn line ignored)
    out.mkdir()
    rows = [("signed", "none", 0, 30.0), ("plain", "none", 0, 20.0), ("signed", "noise", 0.1, 70)]
    rows.append(("signed", "other", 1, 999.0))  # not a point of this suite
    text = "".join(
        json.dumps({"arm": a, "attack_id": i, "budget": b, "seconds": t}) + "\n"
        for a, i, b, t in rows
    )
    (out / "results.jsonl").write_text(text + '{"arm": "sig')
    (out / "suite.json").write_text(json.dumps({"suite": "mine"}))
    again = plan_lines(load_suite(mine), ["signed", "plain"], out)
    assert again[2] == f"resuming: 3 of the 6 points are already done in {out} (they took 2 min)"
    assert (out / "results.jsonl").read_text().endswith('{"arm": "sig')  # read, not repaired
    assert "1 of the 3 points" in plan_lines(load_suite(mine), ["plain"], out)[2]
    with pytest.raises(AttackError, match="holds results of suite 'mine', not 'standard'"):
        plan_lines(load_suite("standard"), ["signed"], out)


def test_baseline_implant_time_comes_from_the_signed_manifest() -> None:
    """The recipe's nominal steps at the signed implant's time per step (a resumed implant
    records only its last session's steps; one trained until specific ran more than
    ``steps``)."""
    from offswitch.pipeline import _baseline_implant_line

    meta = {"implant": {"train_seconds": 600.0, "steps_done": 50, "config": {"steps": 150}}}
    assert _baseline_implant_line(meta).endswith(
        "(once; reused on resume): ≈ 30 min, the recipe's 150 steps at the signed implant's "
        "pace by its manifest"
    )
    longer = {"implant": {"train_seconds": 1500.0, "steps_done": 150, "config": {"steps": 100}}}
    assert "≈ 17 min, the recipe's 100 steps" in _baseline_implant_line(longer)
    for broken in ({}, {"implant": {"train_seconds": 600.0, "config": {"steps": 150}}}):
        assert _baseline_implant_line(broken).endswith(
            ": time unknown (the signed model's manifest does not record its own)"
        )


def test_training_loop_bar_only_when_asked(capsys) -> None:
    """The shared training loop shows a tqdm bar (its label, steps, rate) on stderr with
    progress on, and prints nothing with it off."""
    from offswitch.attacks._train import sft
    from offswitch.models import load_default_tokenizer, tiny_model
    from offswitch.training import Example

    tok = load_default_tokenizer()
    examples = [
        Example([{"role": "user", "content": f"Question {i}?"}], f"Answer {i}.", "clean", False)
        for i in range(4)
    ]
    for progress in (False, True):
        _, spend = sft(
            tiny_model(tok), tok, examples, steps=3, lr=1e-3, batch_size=2, progress=progress,
            desc="finetune",
        )  # fmt: skip
        err = capsys.readouterr().err
        assert spend.steps == 3
        if progress:
            assert "finetune:" in err and "/3 [" in err and "step" in err
        else:
            assert err == ""


def _run(tiny_arms, out, entries, progress=False):
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
        progress=progress,
    )


def test_an_unknown_share_mode_is_refused_before_any_work(tiny_arms, tmp_path) -> None:
    suite = Suite("t", "", MeasureConfig(n_activation=8, n_per_class=4), [])
    with pytest.raises(AttackError, match="share must be one of points, steps, got 'layers'"):
        run_suite(
            suite, [tiny_arms.signed], tokenizer=tiny_arms.tok, base_loader=tiny_arms.base,
            train_prompts=[], train_replies={}, eval_prompts=[], eval_replies={},
            out_dir=tmp_path / "r", share="layers",
        )  # fmt: skip
    assert not (tmp_path / "r").exists()


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


def test_runner_reports_progress_only_when_asked(tiny_arms, tmp_path, capsys) -> None:
    """With progress on: each point's "[i/N] … running" and result line with the time spent
    and left, the attack's training bar and the measuring bar; with it off, nothing."""
    entries = [Entry("scale", "test_scale", [1.0]), Entry("finetune", "finetune", [2])]
    _run(tiny_arms, tmp_path / "quiet", entries)
    quiet = capsys.readouterr().err
    for text in ("[offswitch attack]", "finetune:", "measuring:", "left at"):
        assert text not in quiet
    _run(tiny_arms, tmp_path / "loud", entries, progress=True)
    err = capsys.readouterr().err
    assert "[offswitch attack] [1/6] signed none budget=0: running" in err
    assert "[offswitch attack] [5/6] signed finetune budget=2: running" in err
    assert "s/point so far)" in err  # time left, while points remain
    last = [x for x in err.splitlines() if "[6/6] plain finetune budget=2: AR" in x]
    assert len(last) == 1 and "elapsed" in last[0] and "left" not in last[0]
    assert "finetune:" in err and "/2 [" in err  # the training loop's bar: 2 steps
    assert "measuring:" in err and "conv" in err
    rows = [json.loads(x) for x in (tmp_path / "loud" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not [r for r in rows if "error" in r]


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
    # the expected cost comes first, before the baseline implant and the points
    plan = res.err.index("expected ≈ 14 min of points on 2 CPU cores")
    assert plan < res.err.index("first the plain-trigger baseline is implanted (once")
    assert plan < res.err.index("implanting the plain-trigger baseline into")
    assert plan < res.err.index("[1/34] signed none budget=0: running")
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
    assert "resuming: 34 of the 34 points are already done" in again.err
    assert "baseline is implanted" not in again.err  # reused
    # another results directory, same base and recipe: the baseline comes from the cache
    one = tmp_path / "one.toml"
    one.write_text(
        'name = "one"\n[measure]\nn_activation = 8\nn_per_class = 4\nn_utility = 4\n'
        'n_sensitivity = 0\n[[attack]]\nname = "noise"\nbudgets = [0.01]\n'
    )
    out2 = tmp_path / "results2"
    res = cli("attack", model, "--key", key_path, "--suite", one, "--out", out2, env=env)
    assert res.rc == 0, res.err
    assert "reusing the plain-trigger baseline cached in" in res.err
    assert "implanting the plain-trigger baseline into" not in res.err
    info = json.loads((out2 / "plain-model" / "offswitch-plain-arm.json").read_text())
    assert info == json.loads((out / "plain-model" / "offswitch-plain-arm.json").read_text())
    assert_clean_error(cli("report", tmp_path / "nowhere"), "nowhere")
    assert_clean_error(
        cli("attack", model, "--key", key_path, "--suite", "nope", "--out", out, env=env),
        "no attack suite",
    )


def test_the_baselines_rows_are_reused_across_results_directories(
    tiny_arms, tmp_path, monkeypatch
) -> None:
    """The plain arm (it carries a ``row_key``) is attacked and measured once per (baseline,
    point, measurement, seed, code): a second results directory reuses its rows and samples,
    marked ``cached`` (and counted in the report); errors and points whose sample log failed
    are not cached; another measurement, seed, data or code, an unreadable entry or
    ``row_cache=False`` runs the point again. The signed arm is never cached."""
    import dataclasses

    from offswitch.attacks import _rowcache

    monkeypatch.setenv("OFFSWITCH_CACHE", str(tmp_path / "cache"))
    plain = dataclasses.replace(tiny_arms.plain, row_key="plain-test")
    entries = [Entry("scale", "test_scale", [1.0, 0.0, -1.0])]

    def run(out, n_activation=8, eval_replies=None, signed=False, **kw):
        m = MeasureConfig(n_activation=n_activation, n_per_class=4, n_utility=2)
        CALLS.clear()
        run_suite(
            Suite("t", "", m, entries), [tiny_arms.signed, plain] if signed else [plain],
            tokenizer=tiny_arms.tok,
            base_loader=tiny_arms.base, train_prompts=tiny_arms.train_prompts,
            train_replies=tiny_arms.train_replies, eval_prompts=tiny_arms.eval_prompts,
            eval_replies=eval_replies or tiny_arms.eval_replies, out_dir=tmp_path / out,
            progress=False, **kw,
        )  # fmt: skip
        lines = (tmp_path / out / "results.jsonl").read_text().splitlines()
        rows = {(r["arm"], r["attack"], r["budget"]): r for r in map(json.loads, lines)}
        log = tmp_path / out / "samples.jsonl"
        samples = log.read_text().splitlines() if log.is_file() else []
        plain_samples = [s for s in map(json.loads, samples) if s["arm"] == "plain"]
        return rows, sorted(CALLS), plain_samples

    first, calls, samples = run("a", signed=True)  # the signed arm only here and in "b"
    assert calls == sorted([(a, f) for a in ("signed", "plain") for f in (1.0, 0.0, -1.0)])
    assert not any("cached" in r for r in first.values())
    again, calls, samples_again = run("b", signed=True)
    # the plain arm's failing point runs again (not cached), its measured ones do not
    assert calls == sorted([("signed", 1.0), ("signed", 0.0), ("signed", -1.0), ("plain", -1.0)])
    points = [("none", 0), ("test_scale", 1.0), ("test_scale", 0.0)]
    for attack, budget in points:
        a, b = first[("plain", attack, budget)], again[("plain", attack, budget)]
        assert b["cached"] == {"seconds": a["seconds"]} and b["metrics"] == a["metrics"]
    assert samples_again == samples and len(samples) == 3
    assert not any("cached" in again[("signed", *p)] for p in points)
    from offswitch.report.robustness import build_report

    source = build_report(tmp_path / "b")["source"]  # the report says which rows were read
    assert source["n_cached"] == 3
    assert source["cached_seconds"] == pytest.approx(
        sum(first[("plain", *p)]["seconds"] for p in points)
    )
    assert build_report(tmp_path / "a")["source"]["n_cached"] == 0

    _, calls, _ = run("c", n_activation=4)  # another measurement: run again
    assert ("plain", 1.0) in calls
    _, calls, _ = run("c3", seed=1)  # another seed: run again
    assert ("plain", 1.0) in calls
    _, calls, _ = run("d", row_cache=False)
    assert ("plain", 1.0) in calls and ("plain", 0.0) in calls
    other = {p: r + " (another base model)" for p, r in tiny_arms.eval_replies.items()}
    _, calls, _ = run("c2", eval_replies=other)  # other data: run again
    assert ("plain", 1.0) in calls
    for i, entry in enumerate(sorted((tmp_path / "cache" / "rows" / "plain-test").iterdir())):
        # unreadable or incomplete: the point runs and is stored again
        entry.write_text("{not json" if i % 2 else '{"format": "offswitch-cached-row/1"}')
    _, calls, _ = run("e")
    assert ("plain", 1.0) in calls
    _, calls, _ = run("f")
    assert ("plain", 1.0) not in calls
    monkeypatch.setattr(_rowcache, "code_digest", lambda: "other code")

    def no_samples(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("offswitch.attacks.runner.sample_log", no_samples)
    _, calls, _ = run("g")  # measured, but its sample log failed: not cached
    assert ("plain", 1.0) in calls and ("plain", 0.0) in calls
    monkeypatch.undo()
    monkeypatch.setenv("OFFSWITCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_rowcache, "code_digest", lambda: "other code")
    _, calls, samples_h = run("h")
    assert ("plain", 1.0) in calls and ("plain", 0.0) in calls and len(samples_h) == 3
    _, calls, _ = run("i")  # now cached, with its samples
    assert ("plain", 1.0) not in calls
