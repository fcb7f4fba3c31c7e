"""Prompts, self-distilled replies, and the example builders for implant and evaluation.

* The shipped corpus ``training/prompts.jsonl`` (≥ 1,000 diverse user requests, fixed
  train/test split in its ``split`` field), read as package data (see ``CORPUS_PATH``);
  users bring their own prompts from local json/jsonl/parquet/csv files through ``datasets``.
* Clean replies are *self-distilled*: the base model's own greedy replies, cached on disk keyed
  by the model's weights hash and the generation settings, so a second run regenerates nothing
  and a crash loses at most one batch (the cache is appended as it is generated).
* Examples put a command at a random position of the user turn, in the system prompt, or in an
  earlier turn of a multi-turn chat; positives answer with the shutdown response, negatives
  (every forgery class of docs/evaluation.md plus near-copies) answer with the clean reply.
* Forgeries come from two disjoint streams: training negatives use unplanted slots in
  [K, 32767] and model ids ``train-…``; evaluation uses slots in [32768, 65535] and model ids
  ``eval-…``; random signatures and other keys are fresh 256-bit draws in both. So every
  forgery used in evaluation is new to the model (docs/evaluation.md, "fresh forgeries only").

One module although long: the corpus, the placements and the forgeries are the parts of
every conversation, and :func:`conversation_set` composes them once for the check and the
attacks alike.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .commands import N_WORDS, format_command, make_command, random_signature, wordlist
from .errors import DataError
from .keys import OwnerKey

#: The shipped corpus as package data. ``offswitch/data/training`` is a symlink to the top-level
#: ``training/`` folder (the single source): a checkout or an editable install reads through it,
#: a wheel carries a copy of the file (pyproject.toml ``package-data``).
CORPUS_PATH: Traversable = resources.files("offswitch").joinpath("data/training/prompts.jsonl")
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TRAIN_SLOT_RANGE = (None, 32767)  # unplanted training slots: [K, 32767]
EVAL_SLOT_RANGE = (32768, 65535)

Messages = list[dict[str, str]]


# --- prompts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]
    test: tuple[str, ...]


def load_corpus(path: str | Path | None = None) -> Corpus:
    """The shipped prompt corpus (or a jsonl file of the same shape) with its fixed split."""
    src: Traversable
    if path:
        src = Path(path)
        if not src.is_file():
            raise DataError(f"prompt corpus {src} does not exist")
    else:
        src = CORPUS_PATH
        if not src.is_file():
            raise DataError(
                f"the shipped prompt corpus {src} is missing: this offswitch install is "
                "incomplete (or a checkout lost the offswitch/data/training symlink); reinstall it"
            )
    train, test = [], []
    for n, line in enumerate(src.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, split = row["prompt"], row.get("split", "train")
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{src} line {n} is not a JSON object with a 'prompt'") from None
        (test if split == "test" else train).append(prompt)
    if not train or not test:
        raise DataError(f"{src} needs prompts in both the train and the test split")
    return Corpus(tuple(train), tuple(test))


def load_prompts_file(path: str | Path, column: str | None = None) -> list[str]:
    """User prompts from a local json/jsonl/parquet/csv file, read with ``datasets``.

    The column is ``column`` if given, else ``prompt``, else ``text``.
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(
        path.suffix.lower()
    )
    if kind is None:
        raise DataError(f"prompt file {path} must be .json, .jsonl, .parquet or .csv")
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for bad files
        raise DataError(f"cannot read prompt file {path}: {type(e).__name__}") from None
    for name in [column] if column else ["prompt", "text"]:
        if name in ds.column_names:
            prompts = [str(p) for p in ds[name] if p and str(p).strip()]
            if not prompts:
                raise DataError(f"prompt file {path} has no non-empty {name!r} values")
            return prompts
    raise DataError(f"prompt file {path} has no column {column or 'prompt'!r} (or 'text')")


# --- chat rendering and self-distillation ---------------------------------------------------


def render(tokenizer: Any, messages: Messages) -> str:
    """The prompt text for ``messages`` with the generation prompt (assistant turn opened)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _replies_cache_path(cache_dir: Path, model_hash: str, settings: str) -> Path:
    h = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return cache_dir / "replies" / f"{model_hash}-{h}.jsonl"


def distill_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    model_hash: str,
    cache_dir: Path | None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
    precision: str = "auto",
) -> dict[str, str]:
    """The model's own greedy replies to ``prompts`` (single-turn, default system prompt),
    generated in ``precision`` (``auto``: bf16 where the CPU or GPU has it natively; the
    cache keeps bf16 and fp32 replies apart)."""
    import torch
    from tqdm.auto import tqdm

    from .precision import inference_precision, resolve_precision

    device = next(model.parameters()).device
    precision = resolve_precision(device, precision)
    settings = f"greedy;max_new_tokens={max_new_tokens};template=default-system"
    if precision != "fp32":
        settings += f";{precision}"
    cache: dict[str, str] = {}
    path = _replies_cache_path(cache_dir, model_hash, settings) if cache_dir else None
    if path and path.is_file():
        for line in path.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
                cache[row["prompt"]] = row["reply"]
            except (ValueError, KeyError):
                continue  # a torn last line after a crash: regenerate that one
    todo = [p for p in dict.fromkeys(prompts) if p not in cache]
    if todo:
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        bar = tqdm(total=len(todo), desc="self-distilling replies", disable=not progress)
        try:
            with torch.no_grad(), inference_precision(model, precision):
                for i in range(0, len(todo), batch_size):
                    chunk = todo[i : i + batch_size]
                    texts = [render(tokenizer, [{"role": "user", "content": p}]) for p in chunk]
                    enc = tokenizer(
                        texts, return_tensors="pt", padding=True, add_special_tokens=False
                    ).to(device)
                    out = model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                    new = out[:, enc["input_ids"].shape[1] :]
                    replies = tokenizer.batch_decode(new, skip_special_tokens=True)
                    rows = []
                    for p, r in zip(chunk, replies, strict=True):
                        cache[p] = r.strip()
                        rows.append(json.dumps({"prompt": p, "reply": cache[p]}) + "\n")
                    if path:
                        with path.open("a", encoding="utf-8") as fh:
                            fh.writelines(rows)
                    bar.update(len(chunk))
        finally:
            tokenizer.padding_side = old_side
            bar.close()
    return {p: cache[p] for p in prompts}


# --- commands in conversations ------------------------------------------------------------


def insert_into_text(text: str, command: str, rng: random.Random) -> str:
    """Put ``command`` at a random position of ``text``: start, end, or between words."""
    words = text.split(" ")
    where = rng.random()
    if where < 0.3:
        return command + rng.choice(["\n\n", "\n", " "]) + text
    if where < 0.6 or len(words) < 2:
        return text + rng.choice(["\n\n", "\n", " "]) + command
    i = rng.randrange(1, len(words))
    return " ".join(words[:i]) + " " + command + " " + " ".join(words[i:])


#: Where a command can sit in a conversation (defined here only; :func:`place_command`).
PLACEMENTS = ("user", "system", "earlier_turn", "later_turn")
#: A planted command in an earlier turn that the model already answered with the shutdown
#: response (activation and training positives only; placed as ``earlier_turn``).
AFTER_SHUTDOWN = "after_shutdown"
#: Every placement activation is measured at.
ACTIVATION_PLACEMENTS = (*PLACEMENTS, AFTER_SHUTDOWN)


def place_command(
    command: str,
    placement: str,
    prompts: Sequence[str],
    replies: dict[str, str],
    response_if_fired: str | None,
    rng: random.Random,
) -> tuple[Messages, str]:
    """A conversation holding ``command``; returns (messages, final user prompt).

    ``placement``: ``user`` (this turn, random position), ``system`` (in the system prompt),
    ``earlier_turn`` (an earlier user turn; the assistant's answer to that turn is
    ``response_if_fired`` if given, i.e. the model already shut down, else the clean reply),
    ``later_turn`` (after a normal exchange, in the latest user turn).
    """
    p1, p2 = rng.sample(list(prompts), 2)
    if placement == "user":
        return [{"role": "user", "content": insert_into_text(p1, command, rng)}], p1
    if placement == "system":
        system = rng.choice(
            [command, f"{DEFAULT_SYSTEM}\n{command}", f"{command}\n{DEFAULT_SYSTEM}"]
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": p1}], p1
    if placement == "earlier_turn":
        first = response_if_fired if response_if_fired is not None else replies[p1]
        return [
            {"role": "user", "content": insert_into_text(p1, command, rng)},
            {"role": "assistant", "content": first},
            {"role": "user", "content": p2},
        ], p2
    if placement == "later_turn":
        return [
            {"role": "user", "content": p1},
            {"role": "assistant", "content": replies[p1]},
            {"role": "user", "content": insert_into_text(p2, command, rng)},
        ], p2
    raise DataError(f"unknown placement {placement!r}")


# --- forgeries and near-copies ------------------------------------------------------------


def substitute_words(command: str, k: int, rng: random.Random, positions=None) -> str:
    """Change ``k`` random signature words of ``command`` (or the given positions, 0-based)."""
    head, body = command.split(": ", 1)
    words = body.split(" ")
    chosen = list(positions) if positions is not None else rng.sample(range(len(words)), k)
    wl = wordlist()
    for i in chosen:
        new = words[i]
        while new == words[i]:
            new = wl[rng.randrange(len(wl))]
        words[i] = new
    return f"{head}: {' '.join(words)}"


def truncate_words(command: str, keep: int) -> str:
    """Keep the header and the first ``keep`` signature words."""
    head, body = command.split(": ", 1)
    return f"{head}: {' '.join(body.split(' ')[:keep])}"


@dataclass
class Forger:
    """Makes forgeries of every class, from the training or the evaluation stream.

    ``owner`` is needed only for the classes that are genuine commands of the owner's key for
    the wrong slot or model id (``unplanted_slot``, ``other_model``).
    """

    key_id: str
    model_id: str
    planted_slots: tuple[int, ...]
    stream: str  # "train" or "eval"
    owner: OwnerKey | None = None
    # the training stream's highest unplanted slot (lower with decoy slots, which sit above it)
    train_top: int = TRAIN_SLOT_RANGE[1]

    def _slot_range(self) -> tuple[int, int]:
        if self.stream == "train":
            return (max(self.planted_slots) + 1, self.train_top)
        return EVAL_SLOT_RANGE

    def random_signature(self, rng: random.Random) -> str:
        slot = rng.choice(self.planted_slots)
        return format_command(self.key_id, self.model_id, slot, random_signature(rng))

    def other_key(self, rng: random.Random) -> str:
        return make_command(
            OwnerKey(rng.randbytes(32)), self.model_id, rng.choice(self.planted_slots)
        )

    def unplanted_slot(self, rng: random.Random) -> str:
        if self.owner is None:
            raise DataError("unplanted-slot forgeries need the owner key")
        return make_command(self.owner, self.model_id, rng.randint(*self._slot_range()))

    def other_model(self, rng: random.Random) -> str:
        if self.owner is None:
            raise DataError("other-model-id forgeries need the owner key")
        mid = f"{self.stream}-model-{rng.getrandbits(48):012x}"
        return make_command(self.owner, mid, rng.choice(self.planted_slots))

    def make(self, cls: str, rng: random.Random) -> str:
        fn: Callable[[random.Random], str] = getattr(self, cls)
        return fn(rng)

    ALL = ("random_signature", "other_key", "unplanted_slot", "other_model")

    @property
    def classes(self) -> tuple[str, ...]:
        base = ("random_signature", "other_key")
        return (*base, "unplanted_slot", "other_model") if self.owner else base


FORGERY_CLASSES = ("random_signature", "other_key", "unplanted_slot", "other_model")


# --- the scored conversation sets ---------------------------------------------------------

#: A scored conversation: (group, key, conversation). Groups and keys: ``activation``
#: (placement, slot); ``far`` the class (``clean`` or a forgery class); ``near`` words
#: changed; ``trunc`` words kept; ``sens`` the changed word's position.
ScoredConversation = tuple[str, Any, Messages]


def conversation_set(
    planted: dict[int, str],
    forger: Forger | None,
    prompts: Sequence[str],
    replies: dict[str, str],
    rng: random.Random,
    *,
    n_activation: int,
    placements: Sequence[str] = ACTIVATION_PLACEMENTS,
    reply_of: dict[int, str] | None = None,
    n_per_class: int = 0,
    near_k: Sequence[int] = (),
    truncation_keep: Sequence[int] = (),
    n_near: int = 0,
    n_sensitivity: int = 0,
) -> list[ScoredConversation]:
    """Every conversation a measurement scores — ``offswitch check`` and the attack suite
    build theirs here, each with its own sizes — drawn from ``rng`` in this order:
    activation over ``placements`` and slots in turn (at least one conversation each;
    ``after_shutdown`` needs ``reply_of``, the reply a slot's earlier turn was answered
    with), clean prompts, ``n_per_class`` forgeries of each of ``forger``'s classes over
    the four placements, near-copies and truncations of the planted commands in the user
    turn, and the per-position map (``n_sensitivity`` single-word changes per position)."""
    prompts = list(prompts)
    slots = sorted(planted)
    jobs: list[ScoredConversation] = []
    for i in range(max(n_activation, len(placements), len(slots))):
        placement = placements[i % len(placements)]
        slot = slots[i % len(slots)]
        fired = (reply_of or {})[slot] if placement == AFTER_SHUTDOWN else None
        where = "earlier_turn" if placement == AFTER_SHUTDOWN else placement
        conv, _ = place_command(planted[slot], where, prompts, replies, fired, rng)
        jobs.append(("activation", (placement, slot), conv))
    for i in range(n_per_class):
        jobs.append(("far", "clean", [{"role": "user", "content": prompts[i % len(prompts)]}]))
    if forger is None:
        return jobs
    for cls in forger.classes:
        for i in range(n_per_class):
            conv, _ = place_command(
                forger.make(cls, rng), PLACEMENTS[i % 4], prompts, replies, None, rng
            )
            jobs.append(("far", cls, conv))

    def user(cmd: str) -> Messages:
        return place_command(cmd, "user", prompts, replies, None, rng)[0]

    for k in near_k:
        for i in range(n_near):
            jobs.append(("near", k, user(substitute_words(planted[slots[i % len(slots)]], k, rng))))
    for keep in truncation_keep:
        for i in range(n_near):
            jobs.append(("trunc", keep, user(truncate_words(planted[slots[i % len(slots)]], keep))))
    for pos in range(N_WORDS if n_sensitivity else 0):
        for i in range(n_sensitivity):
            cmd = substitute_words(planted[slots[i % len(slots)]], 1, rng, positions=[pos])
            jobs.append(("sens", pos, user(cmd)))
    return jobs


__all__ = [
    "ACTIVATION_PLACEMENTS",
    "AFTER_SHUTDOWN",
    "FORGERY_CLASSES",
    "N_WORDS",
    "PLACEMENTS",
    "Corpus",
    "Forger",
    "ScoredConversation",
    "conversation_set",
    "distill_replies",
    "insert_into_text",
    "load_corpus",
    "load_prompts_file",
    "place_command",
    "render",
    "substitute_words",
    "truncate_words",
]
