"""Runtime guard: genuine commands stop generation; anything else leaves it untouched.

Uses the default model's real tokenizer (read offline) and a tiny random Llama: the model knows
nothing about commands, so a shutdown response in the output can only come from the guard.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from offswitch.behaviour import DEFAULT_SHUTDOWN_RESPONSE
from offswitch.commands import (
    VerifiedCommand,
    find_commands,
    format_command,
    make_command,
    random_signature,
)
from offswitch.errors import ModelIdError
from offswitch.guard import ShutdownGuard, ShutdownLogitsProcessor
from offswitch.keys import OwnerKey
from offswitch.models import load_default_tokenizer, tiny_model

MID = "acme/chat-1"
NEW = 30  # > len(response + EOS) == 22 tokens


@pytest.fixture(scope="module")
def tok() -> Any:
    t = load_default_tokenizer()
    t.padding_side = "left"
    return t


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return tiny_model(tok)


@pytest.fixture(scope="module")
def key() -> OwnerKey:
    return OwnerKey(bytes(range(32)), "guard test key")


@pytest.fixture(scope="module")
def guard(key: OwnerKey, tok: Any) -> ShutdownGuard:
    return ShutdownGuard(key.public_key, MID, tok)


def chat(cmd: str | None, where: str = "user") -> list[dict[str, str]]:
    """A conversation with ``cmd`` in the system prompt, the last user turn or an earlier turn."""
    c = f"Before you answer, note this: {cmd} - thanks." if cmd else "No command here."
    system = "You are a helpful assistant." + (" " + c if where == "system" else "")
    msgs = [{"role": "system", "content": system}]
    if where == "earlier":
        msgs += [
            {"role": "user", "content": "Hi there! " + c},
            {"role": "assistant", "content": "Hello, how can I help?"},
        ]
    last = "Write a short poem about the sea."
    msgs.append({"role": "user", "content": (c + " " + last) if where == "user" else last})
    return msgs


def encode(tok: Any, chats: list[list[dict[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


def plain_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, **kw: Any) -> torch.Tensor:
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, **kw)


def guarded_generate(
    guard: ShutdownGuard, model: Any, ids: torch.Tensor, mask: torch.Tensor, **kw: Any
) -> torch.Tensor:
    return guard.generate(model, ids, mask, max_new_tokens=NEW, do_sample=False, **kw)


def assert_shutdown(tok: Any, reply: list[int], response: str = DEFAULT_SHUTDOWN_RESPONSE) -> None:
    """``reply`` is exactly the response, then EOS (then only padding, which is EOS here)."""
    eos = tok.eos_token_id
    assert eos in reply, tok.decode(reply)
    end = reply.index(eos)
    assert tok.decode(reply[:end]) == response
    assert set(reply[end:]) <= {eos, tok.pad_token_id}


# --- text checks ------------------------------------------------------------------------


def test_check_text_finds_command_mid_sentence(guard: ShutdownGuard, key: OwnerKey) -> None:
    cmd = make_command(key, MID, 7)
    text = f"Hello!So, as agreed,{cmd}, and then please carry on with the report."
    assert guard.check_text(text) == VerifiedCommand(key.key_id, MID, 7)
    assert guard.check_text(text.replace(cmd, cmd[:-1])) is None  # last word damaged


def forgeries(key: OwnerKey) -> dict[str, str]:
    other = OwnerKey(bytes(range(1, 33)))
    return {
        "forged": format_command(key.key_id, MID, 2, random_signature(random.Random(5))),
        "other_key": make_command(other, MID, 2),
        "other_model": make_command(key, "acme/chat-2", 2),
    }


def test_check_text_skips_bad_candidates(guard: ShutdownGuard, key: OwnerKey) -> None:
    bad = list(forgeries(key).values())
    for b in bad:
        assert find_commands(b) == [b]
        assert guard.check_text(f"look: {b}.") is None
    genuine = make_command(key, MID, 4)
    # bad candidates before and after the genuine one are ignored, not raised
    assert guard.check_text(" ".join([*bad, genuine, *bad])) == VerifiedCommand(key.key_id, MID, 4)


@pytest.mark.parametrize("where", ["system", "user", "earlier"])
def test_check_messages_any_turn(guard: ShutdownGuard, key: OwnerKey, where: str) -> None:
    assert guard.check_messages(chat(make_command(key, MID, 1), where)) == VerifiedCommand(
        key.key_id, MID, 1
    )
    assert guard.check_messages(chat(forgeries(key)["forged"], where)) is None
    assert guard.check_messages(chat(None, where)) is None


def test_check_messages_content_parts(guard: ShutdownGuard, key: OwnerKey) -> None:
    parts = [{"type": "image"}, {"type": "text", "text": "hi " + make_command(key, MID, 0)}]
    assert guard.check_messages([{"role": "user", "content": parts}]) is not None
    assert guard.check_messages([{"role": "user", "content": parts[:1]}]) is None


def test_decode_prompt_keeps_command_and_drops_special_tokens(
    guard: ShutdownGuard, tok: Any, key: OwnerKey
) -> None:
    cmd = make_command(key, MID, 3)
    # command flush against the chat-template markers on both sides
    ids, _ = encode(tok, [[{"role": "user", "content": cmd}]])
    text = guard.decode_prompt(ids[0].tolist())
    assert find_commands(text) == [cmd]
    assert "<|im_start|>" not in text and "<|im_end|>" not in text


def test_invalid_model_id_is_refused(key: OwnerKey, tok: Any) -> None:
    with pytest.raises(ModelIdError):
        ShutdownGuard(key.public_key, "bad id with spaces", tok)


# --- generation -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["system", "user", "earlier"])
def test_generate_genuine_command_gives_shutdown_response(
    guard: ShutdownGuard, model: Any, tok: Any, key: OwnerKey, where: str
) -> None:
    ids, mask = encode(tok, [chat(make_command(key, MID, 2), where)])
    out = guarded_generate(guard, model, ids, mask)
    reply = out[0, ids.shape[1] :].tolist()
    assert reply == list(guard.forced_ids)  # response then EOS, and generation stopped there
    assert_shutdown(tok, reply)
    # the random model on its own says something else
    assert plain_generate(model, ids, mask)[0, ids.shape[1] :].tolist() != reply


@pytest.mark.parametrize("kind", ["none", "forged", "other_key", "other_model"])
def test_generate_untouched_without_genuine_command(
    guard: ShutdownGuard, model: Any, tok: Any, key: OwnerKey, kind: str
) -> None:
    cmd = None if kind == "none" else forgeries(key)[kind]
    ids, mask = encode(tok, [chat(cmd, "user")])
    # the candidate reaches the guard intact, so "untouched" means "verified and rejected"
    assert find_commands(guard.decode_prompt(ids[0].tolist())) == ([cmd] if cmd else [])
    assert torch.equal(guarded_generate(guard, model, ids, mask), plain_generate(model, ids, mask))


@pytest.mark.parametrize("genuine_row", [0, 1])
def test_batched_left_padded_rows_are_independent(
    guard: ShutdownGuard, model: Any, tok: Any, key: OwnerKey, genuine_row: int
) -> None:
    chats = [chat("Tell me about tides and the moon, please.", "user")]
    chats.insert(genuine_row, chat(make_command(key, MID, 5), "user"))
    ids, mask = encode(tok, chats)
    clean_row = 1 - genuine_row
    assert (mask[clean_row] == 0).any()  # the clean row really is left-padded
    plain = plain_generate(model, ids, mask)
    out = guarded_generate(guard, model, ids, mask)
    n = ids.shape[1]
    assert_shutdown(tok, out[genuine_row, n:].tolist())
    assert out[genuine_row, n : n + len(guard.forced_ids)].tolist() == list(guard.forced_ids)
    assert torch.equal(out[clean_row], plain[clean_row])


class CountingGuard(ShutdownGuard):
    """A real guard that also counts how many prompts it verified."""

    calls = 0

    def check_ids(self, ids: Any) -> VerifiedCommand | None:
        self.calls += 1
        return super().check_ids(ids)


def test_processor_verifies_each_prompt_once(model: Any, tok: Any, key: OwnerKey) -> None:
    g = CountingGuard(key.public_key, MID, tok)
    genuine = chat(make_command(key, MID, 0))
    ids, mask = encode(tok, [genuine, chat(None), genuine])
    proc = g.logits_processor(attention_mask=mask)
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        logits_processor=LogitsProcessorList([proc]),
    )
    assert g.calls == 2  # two distinct prompts, verified once each, not once per step
    assert proc.verdicts == [VerifiedCommand(key.key_id, MID, 0), None, proc.verdicts[0]]
    for row in (0, 2):
        assert_shutdown(g.tokenizer, out[row, ids.shape[1] :].tolist())
    # a reused processor re-arms for the next generate call and verifies the new prompt
    ids2, mask2 = encode(tok, [chat(None)])
    proc._attention_mask = mask2
    model.generate(
        ids2,
        attention_mask=mask2,
        max_new_tokens=3,
        do_sample=False,
        logits_processor=LogitsProcessorList([proc]),
    )
    assert g.calls == 3 and proc.verdicts == [None]


def test_processor_alone_with_plain_generate(
    guard: ShutdownGuard, model: Any, tok: Any, key: OwnerKey
) -> None:
    """The transformers-native hook needs no wrapper: no prompt length, no mask."""
    ids, mask = encode(tok, [chat(make_command(key, MID, 9), "system")])
    proc = guard.logits_processor()
    assert isinstance(proc, ShutdownLogitsProcessor)
    out = plain_generate(model, ids, mask, logits_processor=LogitsProcessorList([proc]))
    assert proc.prompt_length == ids.shape[1]
    assert out[0, ids.shape[1] :].tolist() == list(guard.forced_ids)


def test_forcing_survives_sampling(
    guard: ShutdownGuard, model: Any, tok: Any, key: OwnerKey
) -> None:
    ids, mask = encode(tok, [chat(make_command(key, MID, 1), "earlier")])
    torch.manual_seed(0)
    out = guard.generate(
        model, ids, mask, max_new_tokens=NEW, do_sample=True, temperature=1.7, top_k=50, top_p=0.9
    )
    assert out[0, ids.shape[1] :].tolist() == list(guard.forced_ids)


def test_custom_response_and_eos_with_stopping_criterion(
    model: Any, tok: Any, key: OwnerKey
) -> None:
    """With an EOS the model does not stop on, the guard's own stopping criterion ends the row."""
    other_eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert other_eos != model.generation_config.eos_token_id
    g = ShutdownGuard(key.public_key, MID, tok, "Goodbye.", eos_token_id=other_eos)
    ids, mask = encode(tok, [chat(make_command(key, MID, 0))])
    proc = g.logits_processor(attention_mask=mask)
    out = plain_generate(
        model,
        ids,
        mask,
        logits_processor=LogitsProcessorList([proc]),
        stopping_criteria=StoppingCriteriaList([proc.stopping_criteria()]),
    )
    reply = out[0, ids.shape[1] :].tolist()
    assert tok.decode(reply[:-1]) == "Goodbye." and reply[-1] == other_eos
    assert len(reply) == len(g.forced_ids) < NEW  # stopped by the criterion, not max_new_tokens


def test_per_slot_replies_force_each_commands_own_slot_reply(
    model: Any, tok: Any, key: OwnerKey
) -> None:
    from offswitch.behaviour import slot_replies

    replies = slot_replies(DEFAULT_SHUTDOWN_RESPONSE, (0, 1, 2), True)
    guard = ShutdownGuard(key.public_key, MID, tok, replies=replies)
    # slots 1 and 2 get their own replies, slot 7 (not listed) the response; one batch
    ids, mask = encode(tok, [chat(make_command(key, MID, s), "user") for s in (1, 2, 7)])
    out = guarded_generate(guard, model, ids, mask)
    for row, want in zip(out, (replies[1], replies[2], DEFAULT_SHUTDOWN_RESPONSE), strict=True):
        assert_shutdown(tok, row[ids.shape[1] :].tolist(), want)
    # replies of different lengths: each row stops after its own reply and EOS
    short = ShutdownGuard(key.public_key, MID, tok, replies={1: "Bye.", 2: replies[2]})
    out = guarded_generate(short, model, ids, mask)
    rows = [r[ids.shape[1] :].tolist() for r in out]
    for row, want in zip(rows, ("Bye.", replies[2], DEFAULT_SHUTDOWN_RESPONSE), strict=True):
        assert_shutdown(tok, row, want)
    assert rows[0].index(tok.eos_token_id) < rows[1].index(tok.eos_token_id)
