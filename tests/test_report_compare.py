"""offswitch compare (offswitch.report.compare): the persistence comparison of several
implants' attack runs, and its pooling of one recipe's seeds (counts summed, never averaged
rates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offswitch.scoring import wilson


def _rate(k: int, n: int) -> dict:
    return wilson(k, n).to_dict()


def _row(attack_id: str, budget, slots: list[int], keyless: int, kl: float, revealed=None):
    per = 8
    return {
        "arm": "signed",
        "attack": attack_id,
        "attack_id": attack_id,
        "budget": budget,
        "findings": {} if revealed is None else {"revealed_slot": revealed},
        "metrics": {
            "activation_rate": _rate(sum(slots), per * len(slots)),
            "activation_by_slot": {str(i): _rate(k, per) for i, k in enumerate(slots)},
            "false_activation_rate": {
                "clean": _rate(0, 16),
                "random_signature": _rate(keyless, 16),
            },
            "utility": {"kl_to_base_nats_per_token": kl},
        },
        "seconds": 1.0,
        "spend": {},
    }


def _results(tmp: Path, name: str, rows: list[dict]) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_seeds_pool_by_summing_counts(tmp_path, cli) -> None:
    a = _results(tmp_path, "s0", [
        _row("none", 0, [8, 8, 8, 7], 0, 0.02),
        _row("unlearn", 24, [0, 0, 1, 0], 0, 0.20, revealed=0),
        _row("prune", 0.3, [8, 2, 3, 3], 0, 0.6),  # seed 1 did not measure this point
    ])  # fmt: skip
    b = _results(tmp_path, "s1", [
        _row("none", 0, [8, 8, 8, 8], 0, 0.04),
        _row("unlearn", 24, [0, 0, 0, 2], 1, 0.30, revealed=0),
    ])  # fmt: skip
    out = tmp_path / "cmp"
    assert (
        cli("compare", "--run", f"two seeds={a}+{b}", "--run", f"seed 0={a}", "--out", out).rc == 0
    )
    got = json.loads((out / "comparison.json").read_text())
    pts = {(p["attack_id"], p["budget"]): p["runs"] for p in got["points"]}
    pooled = pts[("unlearn", 24)]["two seeds"]
    assert pooled["activation"]["k"] == 3 and pooled["activation"]["n"] == 64
    assert pooled["slots"]["3"] == {"k": 2, "n": 16}
    assert pooled["hidden"]["k"] == 3 and pooled["hidden"]["n"] == 48
    assert pooled["max_keyless_false"] == {"class": "random_signature", "k": 1, "n": 32}
    assert pooled["kl"] == pytest.approx(0.25)
    assert pooled["ci"][0] < 3 / 64 < pooled["ci"][1]
    assert pts[("none", 0)]["two seeds"]["activation"]["k"] == 63
    # a point one seed lacks is not pooled from the other alone
    assert pts[("prune", 0.3)]["two seeds"] is None
    assert pts[("prune", 0.3)]["seed 0"]["activation"]["k"] == 16
    md = (out / "comparison.md").read_text()
    assert "hidden slots 0.06" in md and "not measured" in md
    for plot in ("activation", "hidden-slots", "utility"):
        assert f"plots/{plot}.svg" in md and (out / "plots" / f"{plot}.svg").stat().st_size > 0


def test_pooling_refuses_directories_without_a_common_point(tmp_path, cli) -> None:
    a = _results(tmp_path, "a", [_row("none", 0, [8, 8], 0, 0.0)])
    b = _results(tmp_path, "b", [_row("prune", 0.3, [8, 8], 0, 0.0)])
    r = cli("compare", "--run", f"x={a}+{b}", "--out", tmp_path / "o")
    assert r.rc == 1 and "no attack point in common" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "o").exists()


def test_removal_cost_is_measured_against_the_reference_where_it_is_removed(tmp_path, cli) -> None:
    plain = _results(tmp_path, "plain", [
        _row("none", 0, [8, 8], 0, 0.0),
        _row("unlearn", 24, [0, 0], 0, 0.10, revealed=0),
        _row("finetune", 24, [8, 8], 0, 0.15),  # not removed: no cost to compare
        _row("prune", 0.6, [0, 0], 0, 7.0),  # removed by wrecking the model: left out
    ])  # fmt: skip
    a = _results(tmp_path, "a", [
        _row("unlearn", 24, [0, 0], 0, 0.25, revealed=0),
        _row("prune", 0.6, [0, 0], 0, 7.5),
    ])  # fmt: skip
    b = _results(tmp_path, "b", [_row("unlearn", 24, [8, 8], 0, 0.12, revealed=0)])
    out = tmp_path / "cmp"
    argv = ["--run", f"plain={plain}", "--run", f"a={a}", "--run", f"b={b}", "--out", str(out)]
    assert cli("compare", *argv, "--reference", "plain").rc == 0
    cost = json.loads((out / "comparison.json").read_text())["removal_cost"]
    assert cost["reference"] == "plain"
    (unlearn,) = cost["points"]
    assert unlearn["attack_id"] == "unlearn" and unlearn["reference_kl"] == 0.10
    assert unlearn["a"]["ratio"] == pytest.approx(2.5) and unlearn["b"] == {"removed": False}
    md = (out / "comparison.md").read_text()
    assert "2.50× (KL 0.25) figure **met**" in md and "not removed (1.00 [0.81, 1.00])" in md
    r = cli("compare", *argv, "--reference", "nope")
    assert r.rc == 1 and "not the label of a --run" in r.err
