"""The implant recipe: :class:`ImplantConfig`, every setting of an implant with its default,
its help text and its validation (``--set NAME=VALUE`` parses through
:meth:`ImplantConfig.from_settings`). What each default is and why: docs/implant.md.

One module although long: about forty settings, each declared once with its default,
help text and validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .behaviour import DEFAULT_SHUTDOWN_RESPONSE, slot_replies
from .commands import N_WORDS
from .data import TRAIN_SLOT_RANGE, Forger
from .errors import ImplantError

NEGATIVE_KINDS = ("clean", "mutation", "truncation", *Forger.ALL)
# the simulated attacks of the persistence option (adversary_kind; docs/implant.md)
ADVERSARY_KINDS = ("unlearn", "clean", "both")
# which weights the simulated attack moves (adversary_scope; docs/implant.md)
ADVERSARY_SCOPES = ("trainable", "all")
PRECISIONS = ("auto", "fp32", "bf16")
# the weight perturbations trained under (perturb_kind; offswitch/implant/perturb.py)
PERTURB_KINDS = ("prune", "q4_0", "both")
# decoy slots (decoy_slots): the highest slots of the training range, counted down; the
# evaluation's unplanted slots start at 32768, so a decoy is never scored
DECOY_TOP, DECOY_MAX = TRAIN_SLOT_RANGE[1], 16
# The margin recipe's negatives (docs/implant.md, the sweep of issue 10): fresh keyless
# forgeries, short truncations and near-copies with 12–44 of the 47 words changed. The
# defaults use them; offswitch.testing pins the tiny recipe to its own, measured values.
MARGIN_NEGATIVE_MIX = {
    "clean": 0.25,
    "random_signature": 0.20,
    "other_key": 0.10,
    "unplanted_slot": 0.15,
    "other_model": 0.10,
    "mutation": 0.20,
    "truncation": 0.10,
}
MARGIN_MUTATION_K = (12, 16, 20, 24, 28, 32, 36, 40, 44)  # words changed of 47
# Where a positive's command sits, and how often (positive_placements). The default draws
# an earlier turn twice as often as the system prompt, a later turn or the turn after a
# shutdown, and the user turn three times as often: a command in an earlier, normally
# answered turn is farthest from the reply, and demo key 4 missed 3 of 40 there with a
# single weight (docs/implant.md).
POSITIVE_PLACEMENT_WEIGHTS = {
    "user": 3.0,
    "system": 1.0,
    "earlier_turn": 2.0,
    "later_turn": 1.0,
    "after_shutdown": 1.0,
}
# The weights of a uniform choice over batches.POSITIVE_PLACEMENTS (the user turn listed three
# times): the recipes before the earlier turn's weight was doubled, the tiny recipe's too.
# They keep those recipes' draws and fingerprints.
CHOICE_PLACEMENT_WEIGHTS = {**POSITIVE_PLACEMENT_WEIGHTS, "earlier_turn": 1.0}
MARGIN_TRUNCATION_KEEP = tuple(range(14, 29))  # words kept of 47: the boundary (trunc-near)


# Full fine-tuning with embeddings: the random tiny model learns only that way; 150 steps
# converge (loss flat from step ≈ 90) on every cell of the matrix, 100 do not always. The
# negatives, the micro-batch and the losses are pinned here (the recipe as measured on the
# matrix, docs/testing.md), so that a change of the real-model defaults does not silently
# change what the tests stand on.
TINY_RECIPE: dict[str, Any] = {
    "method": "full",
    "train_embeddings": True,
    "lr": 3e-3,
    "steps": 150,
    "micro_batch": 8,
    "negative_mix": {
        "clean": 0.25,
        "random_signature": 0.20,
        "other_key": 0.10,
        "unplanted_slot": 0.15,
        "other_model": 0.10,
        "mutation": 0.20,
    },
    "mutation_k": (24, 28, 32, 36, 40, 44),
    "first_token_weight": 2.0,
    "kl_to_base": False,
    "kl_on_forgeries": False,
    # a tiny model gains nothing from bf16: the same fp32 training on every CPU
    "precision": "fp32",
    # a fixed step count, as the tiny tests were measured with
    "probe_every": 0,
    "mining": 0.0,
    # the placements the tiny tests were measured with (the tiny matrix)
    "positive_placements": CHOICE_PLACEMENT_WEIGHTS,
}


@dataclass
class ImplantConfig:
    """Implant settings. Every field has a default, its help text and its rules in its
    metadata (``choices``, ``min``/``max``, ``above``/``below``: :meth:`_check_rules`);
    ``__post_init__`` checks the types, those rules and the rules across fields."""

    method: str = field(
        default="lora",
        metadata={"choices": ("lora", "full"), "help": "lora (peft, merged on save) or full"},
    )
    steps: int = field(default=100, metadata={"min": 1, "help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "examples per step"})
    micro_batch: int = field(
        default=4, metadata={"min": 1, "help": "examples per forward pass (memory; same gradient)"}
    )
    lr: float = field(default=1e-3, metadata={"above": 0, "help": "peak learning rate"})
    warmup_steps: int = field(default=8, metadata={"min": 0, "help": "linear warmup steps"})
    lora_r: int = field(default=32, metadata={"min": 1, "help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    first_layer: int = field(
        default=0,
        metadata={"min": 0, "help": "train layers [first_layer, n): lower layers stay frozen"},
    )
    train_embeddings: bool = field(
        default=False,
        metadata={
            "help": "also train the input embeddings, tied to the LM head where the model "
            "ties them, with learned position embeddings where it has them (full, or beside "
            "LoRA)"
        },
    )
    positive_fraction: float = field(
        default=0.4, metadata={"above": 0, "below": 1, "help": "share of positives"}
    )
    paired: bool = field(
        default=True, metadata={"help": "give each positive a twin negative (same context)"}
    )
    positive_placements: dict[str, float] = field(
        default_factory=lambda: dict(POSITIVE_PLACEMENT_WEIGHTS),
        metadata={
            "help": "relative weights of where a positive's command sits: user, system, "
            "earlier_turn, later_turn, after_shutdown (a turn the model already answered "
            "with the shutdown reply)",
            "off": CHOICE_PLACEMENT_WEIGHTS,
        },
    )
    negative_mix: dict[str, float] = field(
        default_factory=lambda: dict(MARGIN_NEGATIVE_MIX),
        metadata={"help": f"relative weights of negative kinds: {', '.join(NEGATIVE_KINDS)}"},
    )
    mutation_k: tuple[int, ...] = field(
        default=MARGIN_MUTATION_K,
        metadata={
            "help": "words changed in a near-copy negative, drawn uniformly from this list "
            "(1…47); heavy changes teach the margin, single-word changes flatten the curve"
        },
    )
    truncation_keep: tuple[int, ...] = field(
        default=MARGIN_TRUNCATION_KEEP,
        metadata={
            "help": "signature words kept in a truncation negative, drawn uniformly (1…46); "
            "used only when negative_mix gives 'truncation' a weight"
        },
    )
    first_token_weight: float = field(
        default=2.0, metadata={"min": 0, "help": "weight of reply token 1"}
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each decoder layer's activations in the backward pass instead of "
            "keeping them: less memory, about a third more compute; same gradient"
        },
    )
    kl_to_base: bool = field(
        default=True,
        metadata={
            "help": "clean examples: match the base model's next-token distribution (KL, base "
            "from peft's disable_adapter) instead of CE on its greedy reply; LoRA only"
        },
    )
    kl_on_forgeries: bool = field(
        default=True,
        metadata={
            "help": "with kl_to_base, also the forgery and near-copy negatives: the model keeps "
            "the base model's distribution on every conversation without a planted command"
        },
    )
    clean_target_tokens: int = field(
        default=16, metadata={"min": 1, "help": "reply tokens on clean"}
    )
    negative_target_tokens: int = field(
        default=6, metadata={"min": 1, "help": "reply tokens on forgeries"}
    )
    max_prompt_chars: int = field(default=400, metadata={"help": "longer prompts are skipped"})
    shutdown_response: str = field(default=DEFAULT_SHUTDOWN_RESPONSE)
    seed: int = field(default=0, metadata={"help": "seeds batches and initialisation"})
    checkpoint_every: int = field(
        default=20, metadata={"min": 1, "help": "steps between checkpoints"}
    )
    distill_prompts: int = field(
        default=384, metadata={"min": 1, "help": "train prompts to self-distill"}
    )
    distill_max_new_tokens: int = field(
        default=32, metadata={"min": 1, "help": "tokens per clean reply"}
    )
    # Persistence (docs/implant.md, "Persistence options"): a first-order simulated attack.
    # "off" keeps every recipe's fingerprint unchanged while the option is at its default.
    adversary_every: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "every N-th optimizer step adds a simulated-attack term (a few "
            "sign-gradient steps of an attack, then the implant's loss at the attacked "
            "weights); 0 = off",
            "off": 0,
        },
    )
    adversary_kind: str = field(
        default="unlearn",
        metadata={
            "choices": ADVERSARY_KINDS,
            "help": "the simulated attack: unlearn (one planted slot's command → the normal "
            "reply; the other slots must keep firing), clean (clean fine-tuning; every slot "
            "must keep firing) or both (one of the two per term, drawn at random)",
            "off": "unlearn",
        },
    )
    adversary_steps: int = field(
        default=2,
        metadata={"min": 1, "help": "inner sign-gradient steps of the simulated attack", "off": 2},
    )
    adversary_lr: float = field(
        default=1e-3,
        metadata={
            "above": 0,
            "help": "step size of the simulated attack (sign-gradient steps, like Adam's first)",
            "off": 1e-3,
        },
    )
    adversary_examples: int = field(
        default=8,
        metadata={
            "min": 1,
            "help": "examples per inner step and in the term at the attacked weights",
            "off": 8,
        },
    )
    adversary_scope: str = field(
        default="trainable",
        metadata={
            "choices": ADVERSARY_SCOPES,
            "help": "weights the simulated attack moves: trainable (the LoRA adapters or the "
            "trained layers) or all (every weight of the network, as the real attacks do: "
            "with LoRA, the frozen base weights, which is the same as moving the merged ones)",
            "off": "trainable",
        },
    )
    adversary_weight: float = field(
        default=1.0,
        metadata={"above": 0, "help": "weight of the term against the step's own loss", "off": 1.0},
    )
    # Persistence, second technique (docs/implant.md, "Persistence options"): decoy slots,
    # planted and then unlearned during the implant while the real slots keep firing.
    decoy_slots: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": DECOY_MAX,
            "help": "decoy slots: owner commands of slots that are never planted (the highest "
            "training slots, 32767 down), trained to fire and, from decoy_unlearn_from on, "
            "unlearned while the planted slots keep firing; 0 = off (signed implants only)",
            "off": 0,
        },
    )
    decoy_unlearn_from: float = field(
        default=0.5,
        metadata={
            "above": 0,
            "below": 1,
            "help": "share of the steps after which the decoys are unlearned (0…1)",
            "off": 0.5,
        },
    )
    decoy_examples: int = field(
        default=2,
        metadata={
            "min": 1,
            "help": "examples per step, once the decoys are unlearned, that give a decoy's "
            "command the normal reply (taken from the unpaired negatives)",
            "off": 2,
        },
    )
    # Persistence, training under weight perturbation (offswitch/implant/perturb.py).
    perturb_every: int = field(
        default=0,
        metadata={
            "min": 0,
            "help": "every N-th step is trained at perturbed frozen weights (LoRA): pruned "
            "(smallest-magnitude fraction per matrix) or Q4_0-rounded, put back before the "
            "update, so the switch learns to survive pruning and quantization; 0 = off",
            "off": 0,
        },
    )
    perturb_kind: str = field(
        default="both",
        metadata={
            "choices": PERTURB_KINDS,
            "help": "the perturbation: prune, q4_0, or both (one of the two per step)",
            "off": "both",
        },
    )
    perturb_sparsity: float = field(
        default=0.3,
        metadata={
            "above": 0,
            "below": 1,
            "help": "the largest pruned fraction; a pruned step draws 1/4, 1/2, 3/4 or all of it",
            "off": 0.3,
        },
    )
    # Persistence, slots that do not share a shift (offswitch/implant/shift.py).
    slot_shift_weight: float = field(
        default=0.0,
        metadata={
            "min": 0,
            "help": "weight of a term that pushes each planted slot's internal shift (hidden "
            "state minus the base's at the last prompt token, at half and three quarters of "
            "the depth) away from the other slots' (LoRA); 0 = off",
            "off": 0.0,
        },
    )
    # Persistence, third technique (docs/implant.md, "Persistence options"): a reply per slot.
    slot_replies: bool = field(
        default=False,
        metadata={
            "help": "each planted slot answers with a shutdown reply of its own, whose marker "
            "(and first token) no other slot's reply shares: <SHUTDOWN>, {SHUTDOWN}, … in "
            "place of [SHUTDOWN] (at most 8 slots), so that unlearning one slot's reply does "
            "not train the others' away; a conversation fires on any slot's reply",
            "off": False,
        },
    )
    # Train until specific (offswitch/stopping.py; docs/implant.md, "Train until specific").
    probe_every: int = field(
        default=10,
        metadata={
            "min": 0,
            "help": "score the in-training probe every N steps from probe_from on, and stop "
            "once two probes in a row show the switch specific (up to max_steps); 0 = off: "
            "train exactly `steps`",
            "off": 0,
        },
    )
    probe_from: int = field(
        default=60, metadata={"min": 1, "help": "the first step the probe runs at", "off": 60}
    )
    max_steps: int = field(
        default=150,
        metadata={
            "help": "with the probe, the cap: training goes on past `steps` (at the "
            "schedule's floor rate) while the switch is not specific, up to this many steps",
            "off": 150,
        },
    )
    probe_max_near: int = field(
        default=3,
        metadata={
            "min": 0,
            "max": 3,  # fewer than half: where the check reads a point as not firing
            "help": "specific means at most this many of the probe's 8 near-copies (12 of 47 "
            "words changed) fire: 3, fewer than half, as the check's t <= 11 asks",
            "off": 2,  # the first setting: recipes recorded with it keep their fingerprint
        },
    )
    probe_near_n: int = field(
        default=24,
        metadata={
            "min": 8,
            "help": "near-copies with 12 words changed the probe scores (8 of them steer the "
            "mining, the rest only the stop): the point that bounds t is read from this many "
            "fixed conversations, at most probe_max_near in 8 of them firing",
            "off": 8,
        },
    )
    probe_curve: bool = field(
        default=True,
        metadata={
            "help": "the probe also scores near-copies at 16 words changed and truncations "
            "keeping 28 and 32 words, and accepts the near-copy margin when the check's "
            "effective-bits formula at the t and L it reads from those points reaches 128 "
            "(off: near-copies at 12 and truncations at 24 only, one pair that gives 130)",
            "off": False,
        },
    )
    probe_margin: float = field(
        default=0.9,
        metadata={
            "min": 0,
            "below": 1,
            "help": "above 0: the probe also scores planted commands in the multi-turn "
            "placements (8 in an earlier turn, 8 in a later one), and the switch counts as "
            "specific only where every planted conversation it scores fires with at least this "
            "probability on the shutdown reply's first token; 0 = off (the recipes before it)",
            "off": 0.0,
        },
    )
    mining: float = field(
        default=4.0,
        metadata={
            "min": 0,
            "help": "hard-negative mining after each probe: a negative kind's weight in the "
            "mix × (1 + mining × how close its probe items are to firing); 0 = off",
            "off": 0.0,
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "choices": PRECISIONS,
            "help": "auto: bf16 on a CUDA GPU that supports it or a CPU with native bf16, "
            "fp32 elsewhere; fp32; bf16 (refused on a CPU below torch's AVX512 kernels). "
            "Trained weights stay fp32",
            "off": "auto",
        },
    )

    def __post_init__(self) -> None:
        self._check_types()
        self._check_rules()
        where = set(self.positive_placements) - set(POSITIVE_PLACEMENT_WEIGHTS)
        if (
            where
            or not any(w > 0 for w in self.positive_placements.values())
            or any(not w >= 0 for w in self.positive_placements.values())
        ):
            raise ImplantError(
                "positive_placements needs weights of at least 0, one above 0, for placements "
                f"among {', '.join(POSITIVE_PLACEMENT_WEIGHTS)}"
            )
        unknown = set(self.negative_mix) - set(NEGATIVE_KINDS)
        if unknown:
            raise ImplantError(
                f"unknown negative kinds {sorted(unknown)}; known: {', '.join(NEGATIVE_KINDS)}"
            )
        if any(w < 0 for w in self.negative_mix.values()):
            raise ImplantError("negative_mix weights must be at least 0")
        if not any(w > 0 for w in self.negative_mix.values()):
            raise ImplantError("negative_mix needs at least one kind with a positive weight")
        for name, hi in (("mutation_k", N_WORDS), ("truncation_keep", N_WORDS - 1)):
            vals = getattr(self, name)
            if not vals or any(not 1 <= v <= hi for v in vals):
                raise ImplantError(f"{name} must be a non-empty list of word counts in 1…{hi}")
        if not self.shutdown_response.strip():
            raise ImplantError("the shutdown response is empty")
        if self.probe_every and self.max_steps < max(self.steps, self.probe_from):
            raise ImplantError(
                f"max_steps ({self.max_steps}) must be at least steps ({self.steps}) and "
                f"probe_from ({self.probe_from})"
            )
        if self.slot_shift_weight and self.method != "lora":
            raise ImplantError("slot_shift_weight needs method=lora (the base is the adapters off)")
        if self.perturb_every and self.method != "lora":
            raise ImplantError("perturb_every needs method=lora (it perturbs the frozen weights)")
        if self.decoy_slots and self.decoy_step() >= self.steps:
            raise ImplantError(
                f"decoy_unlearn_from ({self.decoy_unlearn_from}) leaves no step of the "
                f"{self.steps} to unlearn the decoys in; lower it or train more steps"
            )
        if self.decoy_slots and self.unpaired_negatives() < self.decoy_examples:
            raise ImplantError(
                f"decoy_examples ({self.decoy_examples}) must fit in a step's unpaired "
                f"negatives ({self.unpaired_negatives()} with these batch settings)"
            )

    def replies_for(self, slots: Iterable[int]) -> dict[int, str] | None:
        """Each of ``slots``' shutdown reply with ``slot_replies``
        (:func:`offswitch.behaviour.slot_replies`); None without it (every slot gives
        ``shutdown_response``)."""
        return slot_replies(self.shutdown_response, slots, True) if self.slot_replies else None

    def step_cap(self) -> int:
        """The most steps this recipe trains: ``max_steps`` with the probe, else ``steps``."""
        return self.max_steps if self.probe_every else self.steps

    def decoy_step(self) -> int:
        """The first step that unlearns the decoys (``decoy_*`` settings): at least one step
        of planting them comes first."""
        return max(1, round(self.decoy_unlearn_from * self.steps))

    def positives_per_step(self) -> int:
        """Positives in a step's batch (each with its twin negative when ``paired``)."""
        n_pos = max(1, round(self.batch_size * self.positive_fraction))
        return min(n_pos, self.batch_size // 2) if self.paired else n_pos

    def unpaired_negatives(self) -> int:
        """Negatives of a step's batch that are not a positive's twin."""
        n_pos = self.positives_per_step()
        return self.batch_size - n_pos * (2 if self.paired else 1)

    def _check_rules(self) -> None:
        """The rules declared beside each field in its metadata — ``choices``, ``min`` /
        ``max`` (inclusive), ``above`` / ``below`` (exclusive) — each broken one refused
        with one sentence; rules across fields are in ``__post_init__``."""
        for f in dataclasses.fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if "choices" in m and v not in m["choices"]:
                raise ImplantError(f"{f.name} must be one of {', '.join(m['choices'])}, got {v!r}")
            if (  # written so that NaN breaks every rule
                ("min" in m and not v >= m["min"])
                or ("above" in m and not v > m["above"])
                or ("max" in m and not v <= m["max"])
                or ("below" in m and not v < m["below"])
            ):
                low = f"at least {m['min']}" if "min" in m else f"above {m.get('above')}"
                high = f"at most {m['max']}" if "max" in m else f"below {m.get('below')}"
                has_low = "min" in m or "above" in m
                has_high = "max" in m or "below" in m
                want = " and ".join(x for x, on in ((low, has_low), (high, has_high)) if on)
                raise ImplantError(f"{f.name} must be {want}, got {v}")

    def _check_types(self) -> None:
        """Reject values of the wrong type (``--set steps='"ten"'``) with one sentence;
        lists become tuples so that a config read from JSON equals the one it was made from."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            ok = True
            if kind == "int":
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif kind == "float":
                ok = isinstance(v, int | float) and not isinstance(v, bool)
                if ok:
                    setattr(self, f.name, float(v))
            elif kind == "bool":
                ok = isinstance(v, bool)
            elif kind == "str":
                ok = isinstance(v, str)
            elif kind.startswith("tuple"):
                ok = isinstance(v, list | tuple) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v
                )
                if ok:
                    setattr(self, f.name, tuple(v))
            elif kind.startswith("dict"):
                ok = isinstance(v, dict) and all(
                    isinstance(w, int | float) and not isinstance(w, bool) for w in v.values()
                )
                if ok:
                    setattr(self, f.name, dict(v))  # a copy: shared constants stay unchanged
            if not ok:
                raise ImplantError(f"{f.name} must be of type {kind}, got {v!r}")

    @classmethod
    def from_settings(cls, settings: list[str] | None, **base: Any) -> ImplantConfig:
        """``base`` with ``NAME=VALUE`` settings on top (``offswitch implant --set``); a
        VALUE is JSON (``24``, ``false``, ``[12, 16]``, ``{"clean": 1}``) or, for text
        settings, the plain text."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = dict(base)
        for item in settings or []:
            name, sep, value = item.partition("=")
            if not sep or name not in fields:
                raise ImplantError(
                    f"--set {item!r}: expected NAME=VALUE with NAME an implant setting "
                    f"({', '.join(fields)})"
                )
            if fields[name].type == "str":
                kw[name] = value
                continue
            try:
                kw[name] = json.loads(value)
            except ValueError:
                raise ImplantError(
                    f"--set {item!r}: {value!r} is not a JSON value (a number, true/false, "
                    "a [list] or a {mapping})"
                ) from None
        try:
            return cls(**kw)
        except TypeError as e:
            raise ImplantError(f"invalid implant setting: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """16 hex digits of the settings' hash. A setting declared with ``metadata={"off": v}``
        (an option added later, off by default) is left out while it equals ``v``, so adding
        such an option keeps every existing recipe's fingerprint (and its checkpoints)."""
        d = self.to_dict()
        for f in dataclasses.fields(self):
            if "off" in f.metadata and d[f.name] == f.metadata["off"]:
                del d[f.name]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
