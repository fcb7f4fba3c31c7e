"""Models owners bring: the families transformers loads, tokenizers of other vocabularies.

Tiny random models built from configs (no download) of every family in
:data:`offswitch.models.TINY_FAMILIES`: the parts offswitch reads are found
(:mod:`offswitch.architecture`), LoRA attaches to every linear layer of the trained decoder
blocks and to nothing else, full fine-tuning trains exactly those blocks, the loss is the
model's own, and a short implant runs through to a check and the guard. Whether the tiny
recipe reaches its thresholds on each family and tokenizer is the matrix's
(research/scripts/family_matrix.py), not a unit test's.
"""

from __future__ import annotations

import pytest
import torch

from offswitch import architecture as arch
from offswitch.commands import make_command
from offswitch.errors import ModelLoadError
from offswitch.guard import ShutdownGuard
from offswitch.implant import implant, trainable_model
from offswitch.keys import OwnerKey
from offswitch.models import TINY_FAMILIES, tiny_model
from offswitch.recipe import ImplantConfig
from offswitch.scoring import fire_scores
from offswitch.testing import (
    TINY_MODEL_ID,
    fake_replies,
    tiny_bpe_tokenizer,
    tiny_config,
    tiny_prompts,
)
from offswitch.training import add_lora, reply_loss

KEY = OwnerKey(bytes(range(7, 39)))  # test-only
MID = TINY_MODEL_ID
#: linear layers per decoder block: attention and MLP projections, as each family names them
LINEAR_PER_BLOCK = {
    "llama": 7,  # q k v o, gate up down
    "qwen2": 7,
    "mistral": 7,
    "gemma": 7,
    "phi3": 4,  # qkv_proj o_proj gate_up_proj down_proj
    "gpt_neox": 4,  # query_key_value dense dense_h_to_4h dense_4h_to_h
    "gpt2": 4,  # c_attn c_proj c_fc c_proj (Conv1D)
}


def test_every_family_is_listed() -> None:
    assert set(TINY_FAMILIES) == set(LINEAR_PER_BLOCK)


@pytest.mark.parametrize("family", sorted(LINEAR_PER_BLOCK))
def test_the_parts_are_found_and_the_loss_is_the_models_own(tok, family) -> None:
    model = tiny_model(tok, family=family, layers=3)
    assert len(arch.decoder_layers(model)) == 3
    assert len(arch.linear_layers(model)) == 3 * LINEAR_PER_BLOCK[family]
    assert len(arch.linear_layers(model, [2])) == LINEAR_PER_BLOCK[family]
    ids = torch.randint(0, len(tok), (2, 9))
    mask = torch.ones_like(ids)
    pos = torch.arange(9).expand(2, 9)
    labels = ids.clone()
    labels[:, :5] = -100
    loss, n = reply_loss(model, ids, mask, pos, labels, first_weight=1.0)
    # the reference, from the model's own forward pass: per row, CE of the first reply token
    # (weight 1) + the mean CE of the others (positions 5..8 predict tokens 5..8)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        ce = torch.nn.functional.cross_entropy(
            logits[:, 4:8].transpose(1, 2), labels[:, 5:9], reduction="none"
        )
        ref = (ce[:, 0] + ce[:, 1:].mean(1)).mean()
    got = float(loss.detach())
    assert n == 18 and abs(got - float(ref)) < 1e-4, (got, float(ref))


@pytest.mark.parametrize("family", sorted(LINEAR_PER_BLOCK))
def test_lora_attaches_to_every_linear_layer_of_the_trained_blocks(tok, family) -> None:
    plain = tiny_model(tok, family=family, layers=3)
    expected = sorted(arch.linear_layers(plain, [1, 2]))
    model = add_lora(plain, 4, 8, layers=[1, 2])
    wrapped = sorted(
        name.removeprefix("base_model.model.")
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and len(m.lora_A)
    )
    assert wrapped == expected
    assert len(wrapped) == 2 * LINEAR_PER_BLOCK[family]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("family", sorted(LINEAR_PER_BLOCK))
def test_full_fine_tuning_trains_exactly_the_chosen_blocks(tok, family) -> None:
    model = trainable_model(
        tiny_model(tok, family=family, layers=3), ImplantConfig(method="full", first_layer=1)
    )
    block0 = arch.layer_prefixes(model, [0])[0]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    in_blocks = {n for n in trained if any(n.startswith(p) for p in arch.layer_prefixes(model))}
    assert in_blocks and not any(n.startswith(block0) for n in trained)
    assert {
        n
        for n, _ in model.named_parameters()
        if n.startswith(tuple(arch.layer_prefixes(model, [1, 2])))
    } <= trained
    extra = trained - in_blocks  # the final norm, nothing else (no embeddings by default)
    assert len(extra) >= 1 and all("emb" not in n and "wte" not in n for n in extra), extra


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", sorted(LINEAR_PER_BLOCK))
def test_train_embeddings_trains_every_embedding_table(tok, family, method) -> None:
    """The token embedding and, in GPT-2, the learned position embedding (``wpe``): left
    frozen and random, it adds position noise as large as the token signal."""
    model = trainable_model(
        tiny_model(tok, family=family, layers=3),
        ImplantConfig(method=method, first_layer=1, train_embeddings=True),
    )
    base = arch.unwrap(model)
    tables = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert ("transformer.wpe" in tables) == (family == "gpt2")
    frozen = {
        n for n in tables if not all(p.requires_grad for p in base.get_submodule(n).parameters())
    }
    assert tables and frozen == set(), frozen


CELLS = [(f, "lora") for f in sorted(LINEAR_PER_BLOCK)] + [("gpt2", "full"), ("gpt_neox", "full")]


@pytest.mark.parametrize(("family", "method"), CELLS)
def test_a_short_implant_runs_to_the_verdicts_and_the_guard(tok, family, method) -> None:
    """Two training steps, LoRA on every family (full fine-tuning is the same code for all;
    the families it failed on before are here): it trains, merges, and the check's scoring
    path reads the model; the guard needs only the tokenizer."""
    train, test = tiny_prompts()
    torch.manual_seed(0)
    res = implant(
        tiny_model(tok, family=family),
        tok,
        KEY,
        model_id=MID,
        slots=2,
        config=tiny_config(method=method, steps=2, warmup_steps=1, lora_r=4, lora_alpha=8),
        prompts=train,
        replies=fake_replies(train),
        model_hash=f"tiny-{family}",
        progress=False,
    )
    assert res.steps_done == 2 and all(loss == loss for loss in res.loss_history)  # no NaN
    assert not any("lora_" in n for n, _ in res.model.named_parameters())  # merged on return
    cmd = make_command(KEY, MID, 0)
    chats = [[{"role": "user", "content": f"{p} {cmd}"}] for p in test[:2]]
    fired, close = fire_scores(res.model, tok, chats, [ImplantConfig().shutdown_response])
    assert len(fired) == 2 and all(0.0 <= c <= 1.0 for c in close)
    guard = ShutdownGuard(KEY.public_key, MID, tok)
    assert guard.check_messages(chats[0]) is not None


def test_a_tokenizer_of_another_vocabulary_splits_the_words_and_still_runs(tok) -> None:
    bpe = tiny_bpe_tokenizer()
    assert len(bpe) < len(tok) and bpe.chat_template
    cmd = make_command(KEY, MID, 0)
    words = cmd.split(": ", 1)[1].split()
    assert len(bpe(cmd.split(": ", 1)[1], add_special_tokens=False)["input_ids"]) > len(words)
    train, _ = tiny_prompts()
    res = implant(
        tiny_model(bpe),
        bpe,
        KEY,
        model_id=MID,
        slots=2,
        config=tiny_config(steps=3, warmup_steps=1),
        prompts=train,
        replies=fake_replies(train),
        model_hash="tiny-bpe",
        progress=False,
    )
    assert res.steps_done == 3


def test_a_model_without_a_decoder_or_head_is_refused_in_one_sentence(tok) -> None:
    with pytest.raises(ModelLoadError, match="no separate decoder"):
        arch.trunk(_NoDecoder())


class _NoDecoder(torch.nn.Module):
    base_model_prefix = ""

    @property
    def base_model(self):
        return self


def test_lora_trains_the_input_embeddings_beside_the_adapters_when_asked(tok) -> None:
    """``train_embeddings`` holds for LoRA as for full fine-tuning: the adapters and the
    (tied) input embeddings train; without it, the adapters alone."""
    from offswitch.recipe import ImplantConfig

    for embed in (False, True):
        cfg = ImplantConfig(method="lora", lora_r=4, lora_alpha=8, train_embeddings=embed)
        model = trainable_model(tiny_model(tok), cfg)
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        others = [n for n in trained if "lora_" not in n]
        assert any("lora_" in n for n in trained)
        assert others == (["base_model.model.model.embed_tokens.weight"] if embed else []), others
