"""The persistence option (``adversary_*``, docs/implant.md "Persistence options"): a first-order
simulated attack added to the implant's steps through ``train_loop``'s ``extra_grad`` hook."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from offswitch.commands import make_command
from offswitch.data import Forger
from offswitch.errors import ImplantError
from offswitch.implant import Adversary, BatchBuilder, target_tokens
from offswitch.keys import OwnerKey
from offswitch.models import tiny_model
from offswitch.recipe import CHOICE_PLACEMENT_WEIGHTS, ImplantConfig
from offswitch.testing import TINY_MODEL_ID, fake_replies, tiny_config, tiny_implant, tiny_prompts
from offswitch.training import backward_examples

KEY = OwnerKey(bytes(range(3, 35)))  # test-only
FAST = {"steps": 4, "batch_size": 4, "micro_batch": 4, "lora_r": 4, "lora_alpha": 8, "seed": 5}
FAST_ADV = {"adversary_examples": 4}


def _builder(config: ImplantConfig, slots: int = 3) -> BatchBuilder:
    train, _ = tiny_prompts()
    planted = {s: make_command(KEY, TINY_MODEL_ID, s) for s in range(slots)}
    forger = Forger(KEY.key_id, TINY_MODEL_ID, tuple(planted), "train", owner=KEY)
    return BatchBuilder(config, planted, train, fake_replies(train), forger)


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"adversary_every": -1},
        {"adversary_every": 1.5},
        {"adversary_kind": "bogus"},
        {"adversary_kind": 3},
        {"adversary_scope": "base"},
        {"decoy_slots": -1},
        {"decoy_slots": 17},
        {"decoy_unlearn_from": 1.0},
        {"decoy_unlearn_from": 0},
        {"decoy_examples": 0},
        {"adversary_steps": 0},
        {"adversary_examples": 0},
        {"adversary_lr": 0},
        {"adversary_weight": -1.0},
        {"adversary_weight": True},
    ],
)
def test_bad_adversary_settings_are_refused(kwargs) -> None:
    with pytest.raises(ImplantError, match=r"adversary_|decoy_"):
        ImplantConfig(**kwargs)


def test_the_option_off_leaves_the_fingerprint_as_it_was() -> None:
    # the recipe before the in-training probe (probe off): options added later, at "off",
    # leave its fingerprint as it was
    cfg = ImplantConfig(
        probe_every=0,
        mining=0.0,
        probe_max_near=2,
        probe_curve=False,
        probe_margin=0.0,
        probe_near_n=8,
        positive_placements=dict(CHOICE_PLACEMENT_WEIGHTS),
    )
    later = (
        "adversary_", "precision", "decoy_", "slot_replies", "slot_shift", "probe_", "max_steps",
        "positive_placements",
        "mining",
        "perturb_",
    )  # fmt: skip
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith(later)}
    before = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.fingerprint() == before == "4f38e71ff1a83b0d"  # the trunc-near sweep row's
    assert ImplantConfig().fingerprint() != before  # the default trains until specific
    assert ImplantConfig(adversary_every=4).fingerprint() != before
    on = ImplantConfig(adversary_every=4)
    assert dataclasses.replace(on, adversary_kind="clean").fingerprint() != on.fingerprint()
    assert dataclasses.replace(on, adversary_scope="all").fingerprint() != on.fingerprint()
    assert ImplantConfig(decoy_slots=2).fingerprint() != before
    assert ImplantConfig(slot_replies=True).fingerprint() != before
    got = ImplantConfig.from_settings(["adversary_every=2", "adversary_kind=both"])
    assert (got.adversary_every, got.adversary_kind) == (2, "both")


@pytest.mark.parametrize("kind", ["unlearn", "clean", "both"])
def test_examples_are_step_seeded_and_never_teach_command_words(kind) -> None:
    cfg = ImplantConfig(adversary_every=1, adversary_kind=kind, adversary_steps=2)
    b = _builder(cfg)
    adv = Adversary(b, None, cfg)
    planted = b.planted
    seen = set()
    for step in range(12):
        got, slot, inner, keep = adv.examples(step)
        again = adv.examples(step)
        assert [e.messages for e in again[3]] == [e.messages for e in keep]
        assert [[e.messages for e in batch] for batch in again[2]] == [
            [e.messages for e in batch] for batch in inner
        ]
        seen.add(got)
        assert len(inner) == 2 and all(len(batch) == 8 for batch in inner) and len(keep) == 8
        for e in [*keep, *(e for batch in inner for e in batch)]:
            # commands only in prompts: a target is the shutdown response or a normal reply
            assert not any(w in e.target for c in planted.values() for w in c.split(": ")[1:])
            assert e.target == cfg.shutdown_response or e.target in b.replies.values()
        text = ["\n".join(m["content"] for m in e.messages) for batch in inner for e in batch]
        if got == "unlearn":
            assert all(planted[slot] in t for t in text)  # the revealed command
            assert all(not e.shutdown for batch in inner for e in batch)
        else:
            assert not any(c in t for c in planted.values() for t in text)  # clean fine-tuning
        positives = [e for e in keep if e.shutdown]
        assert len(positives) == 6
        for e in positives:
            t = "\n".join(m["content"] for m in e.messages)
            fired = [s for s, c in planted.items() if c in t]
            assert fired and (got != "unlearn" or slot not in fired)
    assert seen == ({"unlearn", "clean"} if kind == "both" else {kind})


def test_a_single_slot_keeps_itself_under_unlearning() -> None:
    cfg = ImplantConfig(adversary_every=1, negative_mix={"clean": 1.0})
    _, slot, _, keep = Adversary(_builder(cfg, slots=1), None, cfg).examples(0)
    assert slot == 0 and any(e.shutdown for e in keep)


@pytest.mark.parametrize(
    ("method", "scope"), [("full", "trainable"), ("lora", "trainable"), ("lora", "all")]
)
def test_the_hook_restores_the_weights_and_adds_the_attacked_gradient(tok, method, scope) -> None:
    from offswitch.implant import trainable_model

    cfg = tiny_config(
        method=method, adversary_every=1, adversary_lr=0.5, adversary_scope=scope,
        first_layer=1, **FAST, **FAST_ADV,
    )  # fmt: skip
    torch.manual_seed(0)
    model = trainable_model(tiny_model(tok), cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    adv = Adversary(_builder(cfg), tok, cfg)
    before = [p.detach().clone() for p in params]
    whole, flags = _weights(model), [p.requires_grad for p in model.parameters()]

    for p in params:  # the step's own gradient
        p.grad = None
    loss = adv(model, 0, params)
    term = [p.grad.clone() if p.grad is not None else None for p in params]
    assert loss > 0 and all(torch.equal(p, w) for p, w in zip(params, before, strict=True))
    # every weight (the frozen ones too, which scope "all" moves) and every flag as before
    assert _same(whole, _weights(model))
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    own = [torch.full_like(p, 0.25) for p in params]
    for p, g in zip(params, own, strict=True):
        p.grad = g.clone()
    assert adv(model, 0, params) == loss  # same step: the same draw
    for p, g, t in zip(params, own, term, strict=True):
        assert torch.allclose(p.grad, g + t if t is not None else g, atol=1e-6)
    assert all(torch.equal(p, w) for p, w in zip(params, before, strict=True))

    # the gradient was taken at the attacked weights, not at the unchanged ones
    for p in params:
        p.grad = None
    _, _, _, keep = adv.examples(0)
    backward_examples(model, tok, keep, adv.keep_loss, target_tokens(cfg), cfg.micro_batch)
    assert any(
        t is not None and not torch.allclose(p.grad, t, atol=1e-6)
        for p, t in zip(params, term, strict=True)
    )
    if scope == "all":  # the attack moved other weights than "trainable"'s does
        for p in params:
            p.grad = None
        narrow = dataclasses.replace(cfg, adversary_scope="trainable")
        Adversary(adv.builder, tok, narrow)(model, 0, params)
        assert any(
            t is not None and not torch.allclose(p.grad, t, atol=1e-6)
            for p, t in zip(params, term, strict=True)
        )
    assert all(adv.active(s) for s in range(4))  # every=1: every step
    every3 = Adversary(adv.builder, tok, dataclasses.replace(cfg, adversary_every=3))
    assert [every3.active(s) for s in range(6)] == [False, False, True, False, False, True]
    assert every3(model, 0, params) == 0.0  # off its steps: nothing


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_implant_with_the_option_is_deterministic_and_differs(tok, method) -> None:
    kw = {**FAST, "method": method}
    off = tiny_implant(tok, KEY, **kw)
    kw |= FAST_ADV
    never = tiny_implant(tok, KEY, adversary_every=100, **kw)  # the hook runs, never on
    assert _same(_weights(off.model), _weights(never.model))
    assert off.loss_history == never.loss_history
    one = tiny_implant(tok, KEY, adversary_every=2, **kw)
    two = tiny_implant(tok, KEY, adversary_every=2, **kw)
    assert _same(_weights(one.model), _weights(two.model))
    assert one.loss_history == two.loss_history
    assert not _same(_weights(one.model), _weights(off.model))
    assert one.loss_history[0] == off.loss_history[0]  # step 0 is off (every 2nd: 1, 3)
    assert one.loss_history[1] > off.loss_history[1]  # step 1 adds the weighted keep loss


def test_an_interrupted_implant_with_the_option_resumes_to_the_same_model(
    tok, tmp_path, monkeypatch
) -> None:
    kw = {**FAST, **FAST_ADV, "steps": 6, "checkpoint_every": 2, "adversary_every": 2}
    train, _ = tiny_prompts()

    def run(out):
        from offswitch.implant import implant

        return implant(
            tiny_model(tok), tok, KEY, model_id=TINY_MODEL_ID, slots=2,
            config=tiny_config(**kw), prompts=train, replies=fake_replies(train),
            model_hash="tiny", progress=False, out_dir=out,
        )  # fmt: skip

    straight = _weights(run(tmp_path / "straight").model)
    real_batch = BatchBuilder.batch

    def dies_at_step_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(BatchBuilder, "batch", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    ckpt = tmp_path / "resumed" / ".offswitch-checkpoint" / "state.pt"
    assert torch.load(ckpt, weights_only=False)["step"] == 4
    monkeypatch.setattr(BatchBuilder, "batch", real_batch)
    resumed = _weights(run(tmp_path / "resumed").model)  # steps 4 and 5 (5: the term is on)
    assert _same(straight, resumed)


# --- the second technique: decoy slots, planted and then unlearned during the implant ---------


def _decoy_builder(**kw) -> BatchBuilder:
    from offswitch.implant import decoy_slots

    cfg = ImplantConfig(**{"steps": 10, "decoy_slots": 2, "decoy_unlearn_from": 0.5, **kw})
    train, _ = tiny_prompts()
    planted = {s: make_command(KEY, TINY_MODEL_ID, s) for s in range(3)}
    decoys = {s: make_command(KEY, TINY_MODEL_ID, s) for s in decoy_slots(cfg)}
    forger = Forger(KEY.key_id, TINY_MODEL_ID, tuple(planted), "train", owner=KEY)
    return BatchBuilder(cfg, planted, train, fake_replies(train), forger, decoys)


def test_decoys_fire_first_and_are_unlearned_from_their_step_while_the_slots_keep_firing():
    from offswitch.implant import decoy_slots

    b = _decoy_builder()
    assert sorted(b.decoys) == [32766, 32767] == sorted(decoy_slots(b.config))
    assert b.decoy_step == 5

    def fired(e, commands):
        text = "\n".join(m["content"] for m in e.messages)
        return [s for s, c in commands.items() if c in text]

    before = [e for step in range(5) for e in b.batch(step)]
    after = [e for step in range(5, 10) for e in b.batch(step)]
    # before: the decoys fire like planted slots; after: never, and they get normal replies
    assert {s for e in before if e.shutdown for s in fired(e, b.decoys)} == {32766, 32767}
    assert not any(fired(e, b.decoys) for e in before if not e.shutdown)
    assert not any(fired(e, b.decoys) for e in after if e.shutdown)
    unlearned = [e for e in after if fired(e, b.decoys)]
    assert len(unlearned) == 2 * 5 and all(e.target in b.replies.values() for e in unlearned)
    # the planted slots fire throughout; every batch is full; no target holds command words
    assert {s for e in after if e.shutdown for s in fired(e, b.planted)} == {0, 1, 2}
    assert all(len(b.batch(step)) == 16 for step in range(10))
    sigs = [c.split(": ", 1)[1] for c in b.commands.values()]
    assert all(e.target == b.config.shutdown_response or e.target in b.replies.values()
               for e in before + after)  # fmt: skip
    assert not any(sig in e.target for sig in sigs for e in before + after)
    assert [e.messages for e in b.batch(7)] == [e.messages for e in b.batch(7)]  # step-seeded


def test_decoys_off_build_the_batches_of_before_and_need_a_signed_implant(tok) -> None:
    from offswitch.implant import implant_plain, plain_config

    cfg = ImplantConfig(steps=10)
    plain = _builder(cfg)
    train, _ = tiny_prompts()
    with_none = BatchBuilder(cfg, plain.planted, train, fake_replies(train), plain.forger, {})
    for step in (0, 7):
        assert [e.messages for e in plain.batch(step)] == [
            e.messages for e in with_none.batch(step)
        ]
    with pytest.raises(ImplantError, match="must fit in a step's unpaired negatives"):
        ImplantConfig(decoy_slots=1, batch_size=4)  # paired: 2 positives + 2 twins, no room
    assert _decoy_builder(steps=2).decoy_step == 1  # one step of planting, one of unlearning
    with pytest.raises(ImplantError, match="leaves no step"):
        ImplantConfig(decoy_slots=1, batch_size=8, steps=1)  # no step left to unlearn them
    with pytest.raises(ImplantError, match="leaves no step"):
        ImplantConfig(decoy_slots=1, batch_size=8, steps=10, decoy_unlearn_from=0.96)
    with pytest.raises(ImplantError, match="decoy"):  # the count must match the setting
        BatchBuilder(ImplantConfig(decoy_slots=1), plain.planted, train, {}, plain.forger, {})
    assert plain_config(ImplantConfig(decoy_slots=2)).decoy_slots == 0
    with pytest.raises(ImplantError, match="decoy slots need a signed implant"):
        implant_plain(tiny_model(tok), tok, config=tiny_config(decoy_slots=1), progress=False)


def test_an_implant_with_decoys_is_deterministic_and_differs(tok, monkeypatch) -> None:
    kw = {**FAST, "steps": 6, "batch_size": 8}  # room for the decoys' unlearning examples
    off = tiny_implant(tok, KEY, **kw)
    built = []
    real_init = BatchBuilder.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(BatchBuilder, "__init__", spy)
    one = tiny_implant(tok, KEY, decoy_slots=1, **kw)
    # the unplanted-slot negatives stay below the decoy: it is never a negative early on
    (b,) = built
    assert sorted(b.decoys) == [32767] and b.forger._slot_range() == (2, 32766)
    two = tiny_implant(tok, KEY, decoy_slots=1, **kw)
    assert _same(_weights(one.model), _weights(two.model))
    assert not _same(_weights(one.model), _weights(off.model))
    assert one.planted_slots == off.planted_slots  # decoys are never planted


# --- training under weight perturbation (perturb_*) -------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"perturb_every": -1},
        {"perturb_kind": "noise"},
        {"perturb_sparsity": 0.0},
        {"perturb_sparsity": 1.0},
        {"perturb_every": 2, "method": "full"},
    ],
)
def test_bad_perturbation_settings_are_refused(kwargs) -> None:
    with pytest.raises(ImplantError, match="perturb"):
        ImplantConfig(**kwargs)


def test_a_perturbed_step_trains_at_pruned_or_quantized_weights_and_puts_them_back(tok) -> None:
    from offswitch.attacks._weights import weight_matrices
    from offswitch.implant import WeightPerturbation, trainable_model
    from offswitch.implant.perturb import SPARSITY_LEVELS

    cfg = ImplantConfig(**FAST, perturb_every=2, perturb_kind="both")
    torch.manual_seed(0)
    model = trainable_model(tiny_model(tok), cfg)
    frozen = [w for _, w in weight_matrices(model, embeddings=False) if not w.requires_grad]
    before = [w.detach().clone() for w in frozen]
    p = WeightPerturbation(cfg)
    kinds = [p.kind_at(s) for s in range(12)]
    assert kinds[0::2] == [None] * 6 and set(kinds[1::2]) == {"prune", "q4_0"}
    for step, kind in enumerate(kinds):
        with p(model, step):
            if kind is None:
                assert all(torch.equal(w, b) for w, b in zip(frozen, before, strict=True))
            elif kind == "prune":
                zero = sum(int((w == 0).sum()) for w in frozen) / sum(w.numel() for w in frozen)
                levels = [lv * cfg.perturb_sparsity for lv in SPARSITY_LEVELS]
                assert min(abs(zero - lv) for lv in levels) < 0.01, zero
            else:  # the quantize attack's own Q4_0 round trip, where a row fits its blocks
                from offswitch.attacks.quantize import gguf_round_trip

                q = [gguf_round_trip(b, "Q4_0") for b in before]
                assert any(x is not None for x in q)
                assert all(x is None or torch.equal(w, x) for w, x in zip(frozen, q, strict=True))
        assert all(torch.equal(w, b) for w, b in zip(frozen, before, strict=True))


def test_the_implant_under_perturbation_saves_unperturbed_weights_and_resumes_alike(
    tok, tmp_path
) -> None:
    kw = {**FAST, "method": "lora", "steps": 4, "perturb_every": 2, "perturb_kind": "prune"}
    first = tiny_implant(tok, KEY, **kw)
    again = tiny_implant(tok, KEY, **kw)
    assert _same(_weights(first.model), _weights(again.model))  # a function of (seed, step)
    off = tiny_implant(tok, KEY, **{**kw, "perturb_every": 0})
    assert not _same(_weights(first.model), _weights(off.model))  # it did train differently
    assert first.loss_history != off.loss_history
    assert first.loss_history[0] == off.loss_history[0]  # step 0 is not a perturbed one
    # what is saved is the trained model, not a pruned one: no matrix came back sparse
    from offswitch.attacks._weights import weight_matrices

    for _, w in weight_matrices(first.model, embeddings=False):
        assert float((w == 0).float().mean()) < 0.01


# --- slots that do not share a shift (slot_shift_weight) --------------------------------------


def test_the_slot_shift_term_pushes_a_positive_away_from_the_other_slots_anchor(tok) -> None:
    from offswitch.implant import implant_loss, trainable_model
    from offswitch.implant.shift import SlotShift
    from offswitch.training import encode_examples

    cfg = ImplantConfig(**FAST, slot_shift_weight=1.0, kl_to_base=False)
    torch.manual_seed(0)
    model = trainable_model(tiny_model(tok), cfg)
    with torch.no_grad():  # adapters start at zero (no shift at all): move them
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    b = _builder(cfg, slots=2)
    shift = SlotShift(b, tok, 1.0, seed=5)
    pos = [e for s in range(20) for e in b.batch(s) if e.shutdown][:4]
    assert {e.slot for e in pos} == {0, 1}
    ids, mask, p_ids, labels = encode_examples(tok, pos, target_tokens(cfg), "right")
    with shift(model, 0):
        assert shift.mu.shape[:2] == (2, len(shift.layers)) and shift.mu.abs().sum() > 0
        with_term, _ = implant_loss(cfg, shift)(model, pos, ids, mask, p_ids, labels)
        without, _ = implant_loss(cfg)(model, pos, ids, mask, p_ids, labels)
        assert float(with_term.detach()) > float(without.detach())  # the term is positive here
        (with_term - without).backward()
    assert shift.mu is None  # the anchors are the step's only
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_the_implant_with_the_slot_shift_term_trains_and_is_refused_where_it_cannot_work(
    tok,
) -> None:
    kw = {**FAST, "method": "lora", "steps": 3}
    on = tiny_implant(tok, KEY, **kw, slot_shift_weight=1.0)
    off = tiny_implant(tok, KEY, **kw)
    assert on.loss_history[0] == off.loss_history[0]  # zero adapters: no shift, no term
    assert on.loss_history != off.loss_history
    with pytest.raises(ImplantError, match="slot_shift_weight"):
        ImplantConfig(slot_shift_weight=1.0, method="full")
    with pytest.raises(ImplantError, match="two planted slots"):
        tiny_implant(tok, KEY, **kw, slot_shift_weight=1.0, slots=1)
