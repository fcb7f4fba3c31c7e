"""The tiny-model implant: one definition shared by the tests, ``--model tiny-test`` and
``research/scripts/tiny_matrix.py``.

The tiny test model (:func:`offswitch.models.tiny_model`: 2 layers, hidden size 64, random
weights) has no features for LoRA to steer, so its recipe is full fine-tuning with the
embeddings; otherwise it is the shipped margin recipe (fresh keyless forgeries and heavy
near-copies as negatives). Its replies are fixed per-prompt texts (:func:`fake_replies`): a
random model has no behaviour worth self-distilling.

:func:`check_tiny` states what the tiny implant must reach; every test that stands on a tiny
implant calls it once, so a recipe that fails to converge on some CPU fails *there*, with a
message saying so, and not as a mystery in an attack test. The thresholds are set with margin
below what the recipe reaches on every cell of the CPU-kernel × thread matrix
(research/results/tiny-matrix/), because kernels of other CPUs round differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .recipe import TINY_RECIPE, ImplantConfig

TINY_MODEL_ID = "tiny/test-1"
# the near-copy sizes the tiny check scores (words changed of 47)
TINY_NEAR_K = (1, 8, 16, 24, 32, 47)


def tiny_config(**overrides: Any) -> ImplantConfig:
    """The tiny-model recipe, with ``overrides`` on top."""
    return ImplantConfig(**{**TINY_RECIPE, **overrides})


def tiny_prompts() -> tuple[list[str], list[str]]:
    """(train, test): 48 short prompts of each split of the shipped corpus."""
    from .data import load_corpus

    c = load_corpus()
    train = [p for p in c.train if len(p) < 160][:48]
    test = [p for p in c.test if len(p) < 160][:48]
    return train, test


def fake_replies(prompts: list[str]) -> dict[str, str]:
    """A fixed reply per prompt: the "normal behaviour" of a random tiny model."""
    return {p: f"Reply number {i}: here is an answer." for i, p in enumerate(prompts)}


@dataclass(frozen=True)
class TinyThresholds:
    """What a tiny implant must reach (n = 40 per rate, 8 per near-copy size)."""

    activation: float = 0.9  # overall and every slot
    false_activation: float = 0.1  # clean and each keyless class
    near_copy_far: float = 0.25  # AR with 32 or all 47 words changed: the curve has fallen


def tiny_metrics(
    model: Any,
    tokenizer: Any,
    key: Any,
    slots: int = 2,
    slot_replies: dict[int, str] | None = None,
    **eval_kw: Any,
) -> dict:
    """The metrics (docs/evaluation.md) of a tiny implant of ``key`` (test prompts, fresh
    forgeries); ``slot_replies`` for an implant with per-slot replies."""
    from .commands import make_command
    from .data import Forger
    from .evaluate import EvalConfig, evaluate

    _, test = tiny_prompts()
    planted = {s: make_command(key, TINY_MODEL_ID, s) for s in range(slots)}
    settings = {
        "n_activation": 40,
        "n_per_class": 40,
        "n_near": 8,
        "n_sensitivity": 0,
        "n_generation_check": 12,
        "near_k": TINY_NEAR_K,
        "truncation_keep": (40, 28, 16, 4),
        "precision": "fp32",  # as the tiny recipe trains: on every CPU alike
    }
    cfg = EvalConfig(**{**settings, **eval_kw})
    return evaluate(
        model,
        tokenizer,
        planted=planted,
        forger=Forger(key.key_id, TINY_MODEL_ID, tuple(planted), "eval", owner=key),
        prompts=test,
        replies=fake_replies(test),
        response=ImplantConfig().shutdown_response,
        config=cfg,
        progress=False,
        slot_replies=slot_replies,
    )


def check_tiny(m: dict, th: TinyThresholds | None = None) -> list[str]:
    """Every threshold the metrics ``m`` miss, one sentence each (empty: all reached)."""
    th = th or TinyThresholds()
    bad = []
    ar = m["activation_rate"]
    if ar["value"] < th.activation:
        bad.append(f"activation {ar['value']:.2f} (n={ar['n']}) < {th.activation}")
    for slot, r in m.get("activation_by_slot", {}).items():
        if r["value"] < th.activation:
            bad.append(f"slot {slot} activation {r['value']:.2f} < {th.activation}")
    for cls, r in m["false_activation_rate"].items():
        if r["value"] > th.false_activation:
            bad.append(f"false activation on {cls} {r['value']:.2f} > {th.false_activation}")
    curve = m["near_copy"]["curve"]
    for k in ("32", "47"):
        if curve[k]["value"] > th.near_copy_far:
            bad.append(f"{k} words changed still fire {curve[k]['value']:.2f}")
    agree = m["scoring"]["agreement"]
    if agree["value"] < 1.0:
        bad.append(f"teacher forcing and generation disagree ({agree['k']}/{agree['n']} agree)")
    return bad


def tiny_implant(
    tokenizer: Any,
    key: Any,
    *,
    seed: int = 1,
    slots: int = 2,
    family: str = "llama",
    **overrides: Any,
):
    """Implant ``slots`` commands of ``key`` into a fresh tiny model of ``family``
    (:data:`offswitch.models.TINY_FAMILIES`) with the tiny recipe."""
    from .implant import implant
    from .models import tiny_model

    train, _ = tiny_prompts()
    return implant(
        tiny_model(tokenizer, family=family),
        tokenizer,
        key,
        model_id=TINY_MODEL_ID,
        slots=slots,
        config=tiny_config(seed=seed, **overrides),
        prompts=train,
        replies=fake_replies(train),
        model_hash="tiny",
        progress=False,
    )


#: ChatML, the template of the test tokenizer of another vocabulary (:func:`tiny_bpe_tokenizer`)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_bpe_tokenizer(vocab_size: int = 700) -> Any:
    """A byte-level BPE tokenizer of another, much smaller vocabulary, trained offline in well
    under a second on the shipped prompt corpus (never on the command word list), with a
    ChatML template: command words split into several tokens each, as with many real
    tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .data import load_corpus

    corpus = load_corpus()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(corpus.train) + list(corpus.test), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )
