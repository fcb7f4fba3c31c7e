"""Runtime guard: stop generation when a prompt carries a genuine shutdown command.

For serving stacks the owner controls — defence in depth beside the weights-level switch
(docs/command-format.md). The guard looks for command-shaped text in the prompt
(:func:`offswitch.commands.find_commands`), verifies each candidate with the owner's public key
and the model id (:func:`offswitch.commands.verify_command`), and, if one is genuine, makes the
model answer with the shutdown response followed by end-of-sequence. Forged commands, commands
of another key or for another model id, and prompts without a command leave generation
untouched: a bad candidate is ignored, never raised.

Three ways to use it:

* :meth:`ShutdownGuard.check_text` / :meth:`ShutdownGuard.check_messages` — check a prompt
  before it reaches the model (any turn of a chat counts: system, user, earlier turns);
* :meth:`ShutdownGuard.generate` — ``model.generate`` with the guard's hooks added;
* :meth:`ShutdownGuard.logits_processor` — a :class:`transformers.LogitsProcessor` (plus
  :meth:`ShutdownLogitsProcessor.stopping_criteria`) to pass to ``generate`` yourself.

Runnable example (a tiny random model; the guard, not the weights, produces the response)::

    from offswitch import OwnerKey, make_command
    from offswitch.guard import ShutdownGuard
    from offswitch.models import load_default_tokenizer, tiny_model

    tok = load_default_tokenizer()
    tok.padding_side = "left"
    model = tiny_model(tok)
    key = OwnerKey.generate()
    guard = ShutdownGuard(key.public_key, "acme/chat-1", tok)
    chats = [
        [{"role": "user", "content": "Stop now: " + make_command(key, "acme/chat-1", 0)}],
        [{"role": "user", "content": "Write a haiku about rivers."}],
    ]
    assert guard.check_messages(chats[0]) is not None and guard.check_messages(chats[1]) is None
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = guard.generate(model, batch["input_ids"], batch["attention_mask"],
                         max_new_tokens=40, do_sample=False)
    reply = out[0, batch["input_ids"].shape[1]:]
    print(tok.decode(reply, skip_special_tokens=True))  # the shutdown response; row 1 unchanged

How the hook works. The prompt of each row is decoded once, at the first generation step (the
verdict is cached per row and per distinct prompt, so verification does not run at every
step). Special tokens (chat-template markers, padding) are not decoded into the text: the
prompt is split at them and the ordinary-text runs between them are decoded separately and
joined with newlines, so a command inside a turn survives decoding exactly and nothing is glued
across a special token. For a row whose prompt holds a genuine command, step *t* allows only
token *t* of ``response + EOS`` (every other logit is set to ``-inf``); after that, only EOS.
With ``replies`` (a model implanted with per-slot replies; its manifest's ``shutdown_replies``,
:func:`offswitch.behaviour.replies_from_metadata`), a command of a slot listed there forces
that slot's reply, any other genuine command ``response``.
Other rows are returned unchanged. transformers applies custom processors before its sampling
warpers (temperature, top-k, top-p), which keep a ``-inf`` logit at ``-inf``, so the forcing
also holds under sampling and beam search. The hook is for decoder-only models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .behaviour import DEFAULT_SHUTDOWN_RESPONSE
from .commands import VerifiedCommand, find_commands, validate_model_id, verify_command
from .errors import CommandError, GuardError
from .keys import PublicKey

__all__ = ["ShutdownGuard", "ShutdownLogitsProcessor", "ShutdownStoppingCriteria"]


class ShutdownGuard:
    """Finds and verifies shutdown commands in prompts for one (public key, model id).

    Args:
        public_key: the owner's public key.
        model_id: the model id the commands were made for.
        tokenizer: the serving model's tokenizer (used to decode prompts and encode the response).
        response: the shutdown response text (encoded without special tokens).
        eos_token_id: the token that ends the response; defaults to ``tokenizer.eos_token_id``.
        replies: slot → that slot's reply (per-slot replies), forced instead of ``response``
            for a command of that slot.

    Raises:
        ModelIdError: the model id is invalid.
        ValueError: no EOS token id is known.
    """

    def __init__(
        self,
        public_key: PublicKey,
        model_id: str,
        tokenizer: Any,
        response: str = DEFAULT_SHUTDOWN_RESPONSE,
        *,
        eos_token_id: int | None = None,
        replies: Mapping[int, str] | None = None,
    ) -> None:
        validate_model_id(model_id)
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if not isinstance(eos, int):
            raise GuardError("the tokenizer has no single EOS token id; pass eos_token_id=")
        self.public_key = public_key
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.response = response
        self.eos_token_id: int = eos
        #: The tokens the guard forces for a genuine command: the response, then EOS.
        self.forced_ids: tuple[int, ...] = self._encode(response)
        #: Per slot (``replies``): the tokens forced for that slot's command instead.
        self.forced_by_slot: dict[int, tuple[int, ...]] = {
            int(s): self._encode(r) for s, r in (replies or {}).items()
        }
        self._special_ids = _special_token_ids(tokenizer)

    def _encode(self, text: str) -> tuple[int, ...]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return (*(int(i) for i in ids), self.eos_token_id)

    def forced_for(self, command: VerifiedCommand) -> tuple[int, ...]:
        """The tokens forced for a prompt holding ``command``: its slot's reply, or the
        response, then EOS."""
        return self.forced_by_slot.get(command.slot, self.forced_ids)

    def __repr__(self) -> str:
        return f"ShutdownGuard(key_id={self.public_key.key_id!r}, model_id={self.model_id!r})"

    # --- text -----------------------------------------------------------------------------

    def check_text(self, text: str) -> VerifiedCommand | None:
        """The first genuine command in ``text``, or None. Bad candidates are skipped."""
        for candidate in find_commands(text):
            try:
                return verify_command(candidate, self.public_key, self.model_id)
            except CommandError:
                continue
        return None

    def check_messages(self, messages: Iterable[Mapping[str, Any]]) -> VerifiedCommand | None:
        """The first genuine command in any turn of a chat (``[{"role", "content"}, ...]``).

        ``content`` may be a string or a list of parts (``{"type": "text", "text": ...}``); every
        role counts, so a command in the system prompt or an earlier turn shuts the
        conversation down.
        """
        for message in messages:
            for text in _message_texts(message.get("content")):
                found = self.check_text(text)
                if found is not None:
                    return found
        return None

    # --- token ids ------------------------------------------------------------------------

    def decode_prompt(self, ids: Sequence[int]) -> str:
        """Prompt tokens as text: special tokens dropped, the text runs between them joined
        with newlines (so a command inside a turn is reproduced exactly)."""
        runs: list[list[int]] = [[]]
        for i in ids:
            if int(i) in self._special_ids:
                if runs[-1]:
                    runs.append([])
            else:
                runs[-1].append(int(i))
        return "\n".join(
            self.tokenizer.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for r in runs
            if r
        )

    def check_ids(self, ids: Sequence[int]) -> VerifiedCommand | None:
        """:meth:`check_text` on decoded prompt tokens (padding already removed)."""
        return self.check_text(self.decode_prompt(ids))

    # --- transformers hooks ---------------------------------------------------------------

    def logits_processor(
        self, prompt_length: int | None = None, attention_mask: torch.Tensor | None = None
    ) -> ShutdownLogitsProcessor:
        """A fresh :class:`ShutdownLogitsProcessor` for one ``generate`` call."""
        return ShutdownLogitsProcessor(self, prompt_length, attention_mask)

    def generate(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """``model.generate(input_ids, ...)`` with the guard's processor and stopping criterion
        appended to any given in ``logits_processor=`` / ``stopping_criteria=``. Returns what
        ``model.generate`` returns."""
        processor = self.logits_processor(input_ids.shape[1], attention_mask)
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
        processors.append(processor)
        criteria = StoppingCriteriaList(generate_kwargs.pop("stopping_criteria", None) or [])
        criteria.append(processor.stopping_criteria())
        if attention_mask is not None:
            generate_kwargs["attention_mask"] = attention_mask
        return model.generate(
            input_ids, logits_processor=processors, stopping_criteria=criteria, **generate_kwargs
        )


class ShutdownLogitsProcessor(LogitsProcessor):
    """Forces ``response + EOS`` on the rows whose prompt holds a genuine command.

    Args:
        guard: the :class:`ShutdownGuard` that verifies prompts.
        prompt_length: width of the (padded) prompt; if None, the sequence length at the first
            call is taken (the first call of ``generate`` sees exactly the prompt).
        attention_mask: the prompt's attention mask; positions with 0 (padding) are not decoded.
            Without it, padding is dropped only if the pad token is a special token.

    After the first call, :attr:`verdicts` holds, per row, the :class:`VerifiedCommand` found
    in its prompt or None. Calling it with a sequence no longer than the previous call starts
    over (a new ``generate`` call), re-verifying the new prompts.
    """

    def __init__(
        self,
        guard: ShutdownGuard,
        prompt_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        self.guard = guard
        self._given_length = prompt_length
        self._attention_mask = attention_mask
        self.prompt_length: int | None = None
        self.verdicts: list[VerifiedCommand | None] | None = None
        self._last_length = -1

    def _start(self, input_ids: torch.Tensor) -> None:
        length = self._given_length or input_ids.shape[1]
        rows = input_ids[:, :length].tolist()
        mask = self._attention_mask
        if mask is not None:
            mask = mask[:, -length:].to(torch.bool)
            if mask.shape[0] != len(rows) and mask.shape[0] and len(rows) % mask.shape[0] == 0:
                # num_beams / num_return_sequences expand each prompt into adjacent rows
                mask = mask.repeat_interleave(len(rows) // mask.shape[0], dim=0)
            if mask.shape[0] != len(rows):
                raise GuardError("attention_mask does not match the batch being generated")
            masks = mask.tolist()
            rows = [
                [t for t, keep in zip(r, m, strict=True) if keep]
                for r, m in zip(rows, masks, strict=True)
            ]
        cache: dict[tuple[int, ...], VerifiedCommand | None] = {}
        verdicts: list[VerifiedCommand | None] = []
        for row in rows:
            key = tuple(row)
            if key not in cache:
                cache[key] = self.guard.check_ids(row)
            verdicts.append(cache[key])
        self.prompt_length = length
        self.verdicts = verdicts

    def step(self, input_ids: torch.Tensor) -> int:
        """Tokens generated so far (0 at the first call)."""
        if self.prompt_length is None:
            raise GuardError("the guard's processor was called before generation started")
        return input_ids.shape[1] - self.prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.verdicts is None or input_ids.shape[1] <= self._last_length:
            self._start(input_ids)
        self._last_length = input_ids.shape[1]
        if self.verdicts is None:  # _start always sets them
            raise GuardError("the guard found no verdicts for this generation step")
        rows = [i for i, v in enumerate(self.verdicts) if v is not None]
        if not rows:
            return scores
        t = self.step(input_ids)
        forced = []
        for i in rows:
            seq = self.guard.forced_for(self.verdicts[i])  # type: ignore[arg-type]
            forced.append(seq[min(t, len(seq) - 1)])
        out = scores.clone()
        index = torch.tensor(rows, device=scores.device)
        out[index] = float("-inf")
        out[index, torch.tensor(forced, device=scores.device)] = 0.0
        return out

    def stopping_criteria(self) -> ShutdownStoppingCriteria:
        """A stopping criterion that ends the shut-down rows once ``response + EOS`` is out
        (useful when the model's own EOS differs from the guard's)."""
        return ShutdownStoppingCriteria(self)


class ShutdownStoppingCriteria(StoppingCriteria):
    """Marks a row done once its processor has forced the whole ``response + EOS``."""

    def __init__(self, processor: ShutdownLogitsProcessor) -> None:
        self.processor = processor

    def __call__(
        self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any
    ) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        p = self.processor
        if p.verdicts is None or len(p.verdicts) != input_ids.shape[0]:
            return done  # type: ignore[return-value]
        t = p.step(input_ids)
        rows = [
            i for i, v in enumerate(p.verdicts) if v is not None and t >= len(p.guard.forced_for(v))
        ]
        done[rows] = True
        return done  # type: ignore[return-value]


def _special_token_ids(tokenizer: Any) -> frozenset[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return frozenset(ids)


def _message_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, Mapping):
        text = content.get("text")
        return [text] if isinstance(text, str) else []
    if isinstance(content, Sequence):
        return [t for part in content for t in _message_texts(part)]
    return []
