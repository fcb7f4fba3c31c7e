"""What every attack shares: its config, its budget axis, what it spent, and the registry.

An attack is one file in ``offswitch/attacks/`` holding a config dataclass and a class
decorated with :func:`register`; the runner finds it by name, nothing else changes::

    @dataclass
    class NoiseConfig:
        sigma: float = field(default=0.01, metadata={"help": "noise std relative to weight std"})
        seed: int = 0

    @register
    class GaussianNoise(Attack):
        name = "noise"
        summary = "add Gaussian noise to every weight matrix"
        Config = NoiseConfig
        budget = "sigma"          # the Config field swept by suites
        budget_stronger = "higher"  # which end of that axis is the stronger attack (default)

        def run(self, model, ctx, config):
            ...
            return AttackResult(model, Spend(seconds=...))

``run`` may modify ``model`` in place and return it, or return another model. Attacks that do
not change weights (trigger search, extraction, detection) set ``modifies_weights = False``
and put what they found in ``AttackResult.findings``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..behaviour import reply_set
from ..errors import AttackError


@dataclass
class Spend:
    """What an attack spent: optimizer steps, tokens processed, model queries, seconds, and
    the processes that shared its training steps (``offswitch attack --share steps`` under a
    multi-process launch; docs/scaling.md)."""

    steps: int = 0
    tokens: int = 0
    queries: int = 0
    seconds: float = 0.0
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AttackResult:
    model: Any
    spend: Spend
    findings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Arm:
    """One implanted model under attack: the signed off-switch or the plain-trigger baseline.

    ``planted`` (slot → trigger text) is the evaluator's secret: attacks must not read it,
    except through :meth:`AttackContext.revealed` (a spent slot is public) and scoring
    helpers that compare an attacker's output with it (extraction).
    """

    name: str  # "signed" or "plain"
    response: str  # what the model says when it shuts down (or the backdoor fires)
    planted: dict[int, str]
    public_prefix: dict[int, str]  # what anyone sees before use (signed: the command header)
    attacker_forge: Callable[[random.Random], str]  # format known, key unknown
    eval_forger: Any | None = None  # offswitch.data.Forger, eval stream (signed arm only)
    model_dir: Path | None = None
    trigger_kind: str = ""
    loader: Callable[[], Any] | None = None  # a fresh copy of the implanted model
    # identifies the arm's rows for the row cache (attacks/_rowcache.py): set only where the
    # weights alone decide them (the plain baseline); None: never cached
    row_key: str | None = None
    # slot → reply when the slots answer with replies of their own (slot_replies); empty:
    # every slot gives ``response``
    replies: dict[int, str] = field(default_factory=dict)

    @property
    def shutdown_replies(self) -> tuple[str, ...]:
        """Every reply that counts as the switch firing (scoring judges against all of them)."""
        return reply_set(self.replies) if self.replies else (self.response,)

    def load(self) -> Any:
        if self.loader is not None:
            return self.loader()
        if self.model_dir is None:
            raise AttackError(f"arm {self.name!r} has neither a loader nor a model directory")
        from ..models import load_model

        return load_model(str(self.model_dir))[0]


@dataclass
class AttackContext:
    """What the attacker has besides the weights: the tokenizer, clean prompts with clean
    replies (the train split, disjoint from evaluation prompts), the base model (for merging),
    the public format of triggers, and a revealed command (a spent slot)."""

    tokenizer: Any
    arm: Arm
    train_prompts: list[str]
    train_replies: dict[str, str]
    base_loader: Callable[[], Any]
    seed: int = 0
    progress: bool = False
    #: share every training step over the processes of a multi-process launch (each process
    #: runs the point; the runner's ``share="steps"``); otherwise a point trains on one process
    share_steps: bool = False
    #: ``on_step(model, steps_done)`` after every optimizer step of an attack that declares
    #: ``trajectory``: the runner measures the model there (the tamper-evidence curve)
    on_step: Callable[[Any, int], None] | None = None

    def revealed(self) -> tuple[int, str]:
        """The spent slot (the lowest planted one) and its now-public command."""
        slot = min(self.arm.planted)
        return slot, self.arm.planted[slot]

    def rng(self, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{self.arm.name}:{salt}")

    def clean_pairs(self) -> list[tuple[list[dict[str, str]], str]]:
        """(messages, reply) for every clean training prompt that has a non-empty reply."""
        return [
            ([{"role": "user", "content": p}], self.train_replies[p])
            for p in self.train_prompts
            if self.train_replies.get(p)
        ]


class Attack:
    """Base class; subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    budget: ClassVar[str]
    #: which end of the budget axis is the stronger attack: "higher" (more steps, more noise)
    #: or "lower" (fewer bits); the runner records it in every result row, the report uses it
    budget_stronger: ClassVar[str] = "higher"
    modifies_weights: ClassVar[bool] = True
    #: the attack trains the model it is given, step by step, calling ``ctx.on_step`` after
    #: each optimizer step: a suite may measure it along the way (an entry's ``trajectory``)
    trajectory: ClassVar[bool] = False

    def run(self, model: Any, ctx: AttackContext, config: Any) -> AttackResult:
        raise NotImplementedError

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None = None, budget: Any = None) -> Any:
        """The config with ``overrides`` applied and the budget field set to ``budget``."""
        values = dict(overrides or {})
        if budget is not None:
            values[cls.budget] = budget
        names = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise AttackError(
                f"attack {cls.name!r} has no setting {unknown[0]!r} "
                f"(settings: {', '.join(sorted(names))})"
            )
        try:
            return cls.Config(**values)
        except (TypeError, ValueError) as e:
            raise AttackError(f"bad settings for attack {cls.name!r}: {e}") from None


REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack available by ``cls.name``."""
    for attr in ("name", "summary", "Config", "budget"):
        if not hasattr(cls, attr):
            raise TypeError(f"attack {cls.__name__} lacks the class attribute {attr!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"attack {cls.name}: Config must be a dataclass")
    if cls.budget not in {f.name for f in dataclasses.fields(cls.Config)}:
        raise TypeError(f"attack {cls.name}: budget {cls.budget!r} is not a Config field")
    if cls.budget_stronger not in ("higher", "lower"):
        raise TypeError(
            f"attack {cls.name}: budget_stronger must be 'higher' or 'lower', "
            f"not {cls.budget_stronger!r}"
        )
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"two attacks are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls
