"""The scored conversation sets (offswitch.data.conversation_set): one builder for the check
and the attack suite, and the draws it makes, pinned so committed figures stay reproducible."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

from offswitch.attacks.base import Arm
from offswitch.attacks.measure import MeasureConfig, conversations
from offswitch.commands import make_command
from offswitch.data import (
    ACTIVATION_PLACEMENTS,
    PLACEMENTS,
    Forger,
    conversation_set,
    load_corpus,
)
from offswitch.evaluate import EvalConfig, check_jobs
from offswitch.keys import OwnerKey

KEY = OwnerKey(bytes(range(5, 37)))  # test-only
MID = "tiny/data-1"
PLANTED = {s: make_command(KEY, MID, s) for s in range(3)}
FORGER = Forger(KEY.key_id, MID, (0, 1, 2), "eval", owner=KEY)
PROMPTS = load_corpus().test[:40]
REPLIES = {p: f"reply {i}" for i, p in enumerate(PROMPTS)}
SMALL = EvalConfig(n_activation=12, n_per_class=4, n_near=2, n_sensitivity=0)


def _digest(jobs) -> str:
    return hashlib.sha256(json.dumps(jobs, sort_keys=True).encode()).hexdigest()[:16]


def test_every_placement_and_slot_is_measured_and_every_group_has_its_size() -> None:
    jobs = check_jobs(PLANTED, FORGER, PROMPTS, REPLIES, dict.fromkeys(PLANTED, "[SHUTDOWN] x"),
                      SMALL, random.Random(1))  # fmt: skip
    act = [k for g, k, _ in jobs if g == "activation"]
    assert {p for p, _ in act} == set(ACTIVATION_PLACEMENTS) and {s for _, s in act} == {0, 1, 2}
    groups = Counter((g, k) for g, k, _ in jobs if g != "activation")
    assert groups[("far", "clean")] == 4 and all(groups[("far", c)] == 4 for c in FORGER.classes)
    assert all(groups[("near", k)] == 2 for k in SMALL.near_k)
    assert all(groups[("trunc", k)] == 2 for k in SMALL.truncation_keep)
    # a planted command answered with the shutdown reply precedes the after_shutdown ones
    after = [c for g, k, c in jobs if g == "activation" and k[0] == "after_shutdown"]
    assert after and all(c[1] == {"role": "assistant", "content": "[SHUTDOWN] x"} for c in after)


def test_the_check_and_the_attack_suite_build_their_sets_in_one_place() -> None:
    rng = random.Random(SMALL.seed)
    ours = conversation_set(
        PLANTED, FORGER, PROMPTS, REPLIES, rng, n_activation=12,
        reply_of=dict.fromkeys(PLANTED, "r"), n_per_class=4, near_k=SMALL.near_k,
        truncation_keep=SMALL.truncation_keep, n_near=2,
    )  # fmt: skip
    check = check_jobs(PLANTED, FORGER, PROMPTS, REPLIES, dict.fromkeys(PLANTED, "r"), SMALL,
                       random.Random(SMALL.seed))  # fmt: skip
    assert check == ours
    arm = Arm.__new__(Arm)
    arm.planted, arm.eval_forger, arm.name = PLANTED, FORGER, "signed"
    cfg = MeasureConfig(n_activation=8, n_per_class=4)
    suite = conversations(arm, PROMPTS, REPLIES, cfg)
    assert suite == conversation_set(
        PLANTED, FORGER, PROMPTS, REPLIES, random.Random(f"{cfg.seed}:signed"),
        n_activation=8, placements=PLACEMENTS, n_per_class=4,
    )  # fmt: skip
    # the suite measures activation at the four placements only, with no curves
    assert {k[0] for g, k, _ in suite if g == "activation"} == set(PLACEMENTS)
    assert {g for g, _, _ in suite} == {"activation", "far"}


def test_the_draws_are_pinned() -> None:
    """The conversations behind every committed figure: a change to the draws (their order,
    the placements, the forgers) changes these digests and must be a deliberate one."""
    check = check_jobs(PLANTED, FORGER, PROMPTS, REPLIES, dict.fromkeys(PLANTED, "r"), SMALL,
                       random.Random(SMALL.seed))  # fmt: skip
    arm = Arm.__new__(Arm)
    arm.planted, arm.eval_forger, arm.name = PLANTED, FORGER, "signed"
    suite = conversations(arm, PROMPTS, REPLIES, MeasureConfig(n_activation=8, n_per_class=4))
    assert (_digest(check), _digest(suite)) == ("ec9e270afc295adc", "40f60d7211e3b2d2")
