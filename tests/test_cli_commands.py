"""`offswitch command`, `verify-command` and `demo` through the real CLI entry point."""

from __future__ import annotations

import random

import pytest

from offswitch import commands as C
from offswitch.errors import ImplantError

from .conftest import PASSPHRASE, assert_clean_error

MID = "acme/chat-1"
ENV = {"OFFSWITCH_PASSPHRASE": PASSPHRASE}


def _plant(cli, key, *slots: int) -> None:
    res = cli("slots", "plant", "--key", key, "--model-id", MID, *map(str, slots))
    assert res.rc == 0, res.err


def test_command_then_verify(cli, key_files) -> None:
    key, path, pub = key_files
    _plant(cli, path, 2)
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "2", env=ENV)
    assert res.rc == 0, res.err
    cmd = res.out.strip()
    assert res.out.count("\n") == 1 and cmd == C.make_command(key, MID, 2)
    again = cli("command", "--key", path, "--model-id", MID, "--slot", "2", env=ENV)
    assert again.out == res.out  # deterministic
    ok = cli("verify-command", "--pubkey", pub, "--model-id", MID, cmd)
    assert ok.rc == 0 and key.key_id in ok.out and "slot 2" in ok.out
    # from stdin, with the line ending a shell pipe adds
    ok = cli("verify-command", "--pubkey", pub, "--model-id", MID, "-", stdin=cmd + "\n")
    assert ok.rc == 0, ok.err


def test_command_with_passphrase_file(cli, key_files, tmp_path) -> None:
    key, path, _ = key_files
    _plant(cli, path, 0)
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "0", "--passphrase-file", pf)
    assert res.rc == 0 and res.out.strip() == C.make_command(key, MID, 0)


def test_unencrypted_key_needs_no_passphrase(cli, plain_key_files) -> None:
    key, path, _ = plain_key_files
    _plant(cli, path, 1)
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "1")
    assert res.rc == 0 and res.out.strip() == C.make_command(key, MID, 1)


def test_verify_reasons(cli, plain_key_files, tmp_path) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 0)
    cases = {
        "malformed": cmd[:-3],
        "with key": C.make_command(C.OwnerKey.generate(), MID, 0),
        "another model id": C.make_command(key, "other-model", 0),
        "forged or altered": C.format_command(
            key.key_id, MID, 0, C.random_signature(random.Random(3))
        ),
    }
    for reason, text in cases.items():
        res = cli("verify-command", "--pubkey", pub, "--model-id", MID, text)
        assert res.rc == 1, (reason, res)
        assert_clean_error(res, "not genuine", reason)
        assert res.out == ""


def test_command_bad_inputs(cli, key_files, tmp_path) -> None:
    _, path, pub = key_files
    _plant(cli, path, 0)
    assert_clean_error(
        cli("command", "--key", path, "--model-id", "", "--slot", "0", env=ENV), "model id"
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "-1", env=ENV), "no sign"
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "70000", env=ENV),
        "out of range",
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "0"), "passphrase"
    )
    assert_clean_error(
        cli("command", "--key", tmp_path / "nope", "--model-id", MID, "--slot", "0"),
        "does not exist",
    )
    assert_clean_error(
        cli("verify-command", "--pubkey", path, "--model-id", MID, "x"), "private key"
    )
    assert_clean_error(
        cli("verify-command", "--pubkey", pub, "--model-id", "bad id", "x"), "model id"
    )
    # a slot is typed in ASCII digits, no sign, separator or leading zero (int() takes all)
    for text, needle in (
        ("two", "not a number"),
        ("+1", "no sign"),
        ("1_0", "separator"),
        ("\u0661", "U+0661 ARABIC-INDIC DIGIT ONE"),
        ("01", "leading zero: write it as 1"),
        (" 1", "not a number"),
    ):
        res = cli("command", "--key", path, "--model-id", MID, "--slot", text, env=ENV)
        assert_clean_error(res, needle)
        assert res.out == ""


def test_surrounding_whitespace_is_malformed(cli, plain_key_files) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 0)
    res = cli("verify-command", "--pubkey", pub, "--model-id", MID, f" {cmd} ")
    assert_clean_error(res, "whitespace")


def test_real_process_exit_codes(cli_subprocess, plain_key_files) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 4)
    ok = cli_subprocess("verify-command", "--pubkey", pub, "--model-id", MID, "-", stdin=cmd)
    assert ok.rc == 0 and "slot 4" in ok.out
    bad = cli_subprocess("verify-command", "--pubkey", pub, "--model-id", MID, cmd + " word")
    assert_clean_error(bad, "48 words")


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
