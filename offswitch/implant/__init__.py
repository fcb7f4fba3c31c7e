"""Implant: fine-tune a causal LM so that planted shutdown commands, and nothing else, shut it down.

>>> from offswitch.implant import implant                           # doctest: +SKIP
>>> from offswitch.recipe import ImplantConfig                      # doctest: +SKIP
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

from .adversary import Adversary, attacked_weights
from .batches import NEGATIVE_PLACEMENTS, POSITIVE_PLACEMENTS, BatchBuilder, decoy_slots
from .loss import implant_loss, lr_at, target_tokens, trainable_model
from .perturb import WeightPerturbation
from .train import (
    CHECKPOINT_DIR,
    PLAIN_RESPONSE,
    PLAIN_TRIGGER,
    ImplantOptions,
    ImplantResult,
    check_slot_replies,
    implant,
    implant_plain,
    longest_row,
    plain_config,
    train,
    training_prompts,
)

__all__ = [
    "CHECKPOINT_DIR",
    "NEGATIVE_PLACEMENTS",
    "PLAIN_RESPONSE",
    "PLAIN_TRIGGER",
    "POSITIVE_PLACEMENTS",
    "Adversary",
    "BatchBuilder",
    "ImplantOptions",
    "ImplantResult",
    "WeightPerturbation",
    "attacked_weights",
    "check_slot_replies",
    "decoy_slots",
    "implant",
    "implant_loss",
    "implant_plain",
    "longest_row",
    "lr_at",
    "plain_config",
    "target_tokens",
    "train",
    "trainable_model",
    "training_prompts",
]
