"""`offswitch demo` through the real CLI entry point, and the settings of the main job it runs
(`demo.main_job_configs`: the default recipe, `--quick`, `--steps`, `--eval-n`, `--set`).

`implant` and `check` through the CLI are tested beside their jobs (test_implant.py,
test_figures.py, test_memory_device.py); `attack`, `report` and `compare` beside theirs
(test_attacks_runner.py, test_report_robustness.py, test_report_compare.py).
"""

from __future__ import annotations

import pytest

from offswitch.errors import ImplantError


def test_demo_runs_end_to_end(cli, tmp_path) -> None:
    """The main job's path, on the tiny test model (the real model runs in the README)."""
    import json

    from offswitch.keys import PublicKey
    from offswitch.manifest import verify_manifest

    out = tmp_path / "demo"
    res = cli("demo", "--out", out, "--model", "tiny-test", "--steps", "40", "--eval-n", "16")
    assert res.rc == 0, res.err
    assert "4/4 genuine commands verified, 5/5 forgeries refused — OK" in res.out
    assert (out / "owner-demo").stat().st_mode & 0o777 == 0o600
    report = json.loads((out / "model-check.json").read_text())
    assert report["metrics"]["activation_rate"]["n"] == 16
    assert (out / "model-check.md").read_text().startswith("# offswitch check")
    manifest = verify_manifest(out / "model", PublicKey.load(out / "owner-demo.pub"))
    assert manifest.metadata["offswitch"]["planted_slots"] == [0, 1, 2, 3]


def test_main_job_runs_the_default_recipe_and_quick_only_previews() -> None:
    from offswitch.demo import QUICK_EVAL_N, QUICK_STEPS, main_job_configs
    from offswitch.recipe import ImplantConfig

    cfg, ecfg = main_job_configs("smollm2-135m")
    assert cfg == ImplantConfig() and ecfg.n_per_class == ecfg.n_activation == 200
    quick, equick = main_job_configs("smollm2-135m", quick=True)
    assert (quick.steps, quick.batch_size, quick.distill_prompts) == (QUICK_STEPS, 8, 192)
    assert equick.n_per_class == equick.n_activation == QUICK_EVAL_N
    # every other setting is the default recipe's
    rest = {k: v for k, v in quick.to_dict().items() if k not in ("steps", "batch_size")}
    default = ImplantConfig().to_dict()
    assert {k: v for k, v in rest.items() if default[k] != v} == {"distill_prompts": 192}
    mine, emine = main_job_configs("smollm2-135m", steps=3, eval_n=16)
    assert (mine.steps, mine.batch_size, emine.n_per_class) == (3, 16, 16)
    tiny, _ = main_job_configs("tiny-test", quick=True)
    assert tiny.batch_size == ImplantConfig().batch_size and tiny.method == "full"
    # demo --set NAME=VALUE: one setting changed, the rest the recipe's
    near, _ = main_job_configs("smollm2-135m", settings=["probe_max_near=2"])
    assert near == ImplantConfig(probe_max_near=2)
    with pytest.raises(ImplantError, match="no_such_setting"):
        main_job_configs("smollm2-135m", settings=["no_such_setting=1"])
