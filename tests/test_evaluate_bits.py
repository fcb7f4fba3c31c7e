"""The measured bound on effective bits: keyless forgeries that fire cap what the near-copy
formula claims (offswitch.evaluate.forgery_bits), and the check report says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from offswitch.evaluate import effective_bits, forgery_bits
from offswitch.report.check import format_check_markdown
from offswitch.scoring import wilson


def test_no_keyless_forgery_fired_gives_no_bound() -> None:
    far = {"clean": wilson(5, 200), "random_signature": wilson(0, 200), "other_key": wilson(0, 200)}
    assert forgery_bits(far) is None  # clean prompts firing is not a forgery


def test_bound_is_minus_log2_of_the_worst_keyless_class() -> None:
    far = {
        "clean": wilson(100, 200),
        "random_signature": wilson(63, 200),
        "other_model": wilson(73, 200),
        "unplanted_slot": wilson(0, 0),  # not measured: ignored
    }
    assert forgery_bits(far) == pytest.approx(-math.log2(73 / 200))
    assert forgery_bits({"other_key": wilson(1, 256)}) == pytest.approx(8.0)


def test_formula_alone_can_claim_hundreds_of_bits() -> None:
    # t = 0, L = 37: the demo's near-copy numbers, which the forgery rates contradict
    assert effective_bits(4, 0, 37) > 400


def _near_copy(forgery: float | None, bits: float) -> dict:
    rate = {"value": 0.5, "n": 2, "k": 1, "ci_low": 0.1, "ci_high": 0.9}
    return {
        "tolerance": 0,
        "shortest_firing_length": 37,
        "effective_bits": bits,
        "forgery_bits": forgery,
        "effective_bits_bounded": bits if forgery is None else min(bits, forgery),
        "q": 2048,
        "L": 47,
        "K": 4,
        "curve": {"1": rate},
        "truncation": {"46": rate},
        "sensitivity": [0.5],
        "exact_match": False,
    }


def test_check_markdown_flags_firing_forgeries() -> None:
    # a real check report (exp3, committed), its near-copy block replaced
    fixture = Path(__file__).parent / "golden" / "check-exp3.json"
    report = json.loads(fixture.read_text("utf-8"))
    report["metrics"]["near_copy"] = _near_copy(1.45, 405.0)
    md = format_check_markdown(report)
    assert "Keyless forgeries fire" in md and "1.4 bits" in md and "405.0 bits do not hold" in md
    report["metrics"]["near_copy"] = _near_copy(None, 405.0)
    assert "Keyless forgeries fire" not in format_check_markdown(report)


def test_check_markdown_orders_a_report_read_back_from_sorted_json() -> None:
    """JSON written with sorted keys puts "10" before "2": the summary restores the order."""
    import json
    from pathlib import Path

    from offswitch.report.check import format_check_markdown

    path = Path(__file__).resolve().parent / "golden" / "check-margin.json"
    md = format_check_markdown(json.loads(path.read_text("utf-8")))
    assert "| words changed k | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 10 | 12 | 16 | 24 | 32 | 47 |" in md
    assert "| words kept | 46 | 44 | 40 | 36 |" in md
    assert md.index("command in user") < md.index("command in after shutdown")
    assert md.index("slot 0 |") < md.index("slot 3 |")
    assert md.index("false activation: clean") < md.index("false activation: random signature")


def test_check_markdown_says_how_training_ended() -> None:
    """A run that reached the probe's cap says so, without calling the model unusable (the
    figures decide); a run the probe stopped names the steps it was specific at."""
    fixture = Path(__file__).parent / "golden" / "check-exp3.json"
    report = json.loads(fixture.read_text("utf-8"))
    probes = [{"step": s} for s in (60, 70, 80)]
    report["implant"]["stop"] = {"stopped": "cap", "steps": 150, "probes": probes}
    md = format_check_markdown(report)
    assert "**Trained to the cap of 150 steps**" in md and "the figures below decide" in md
    assert "150 steps ×" in md
    report["implant"]["stop"] = {"stopped": "specific", "steps": 80, "probes": probes}
    md = format_check_markdown(report)
    assert "specific at steps 70, 80 (3 probes)" in md and "cap" not in md
