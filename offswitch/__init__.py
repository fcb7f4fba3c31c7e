"""offswitch — a cryptographic off-switch for language models.

A model owner's Ed25519 key signs shutdown commands; fine-tuning implants them into a causal
LM as a backdoor that fires only on genuine commands; attacks measure how well it survives.
The data flows key → command → implant → check → attack → report, one module per stage:

1. **Keys** (:mod:`offswitch.keys`): an owner's Ed25519 key, stored as real OpenSSH files::

       key = OwnerKey.generate()
       key.save("owner", passphrase="correct horse")        # owner (0600) + owner.pub
       pub = PublicKey.load("owner.pub")

2. **Shutdown commands** (:mod:`offswitch.commands`): a signed, versioned line of text per
   (key, model id, slot); anyone with the public key can check it::

       cmd = make_command(key, model_id="acme/chat-1", slot=0)
       verify_command(cmd, pub, model_id="acme/chat-1")     # raises CommandError if forged

3. **Slots** (:mod:`offswitch.slots`): which slots are planted, which are spent.
4. **Implant** (:mod:`offswitch.implant`, on the one loop of :mod:`offswitch.training`): train
   the model to answer planted commands, and nothing else, with the shutdown response::

       model, tok = load_model("smollm2-135m")             # or a local dir, or ORG/NAME
       result = implant(model, tok, key, model_id="acme/chat-1", slots=4, out_dir="implanted")

   :func:`offswitch.pipeline.run_implant` does this, checks, signs the manifest and records
   the slots, so ``offswitch check`` and ``offswitch command`` accept its model
   (docs/own-model.md walks through it). Any family transformers loads works: the parts
   trained and read are found by :mod:`offswitch.architecture`.

   It trains until an in-training probe shows the switch specific (:mod:`offswitch.stopping`),
   in bf16 where the CPU or GPU has it natively (:func:`offswitch.precision.resolve_precision`).

5. **Check** (:mod:`offswitch.evaluate`, on the primitives of :mod:`offswitch.scoring`):
   activation, false activation per forgery class,
   near-copy curve, effective bits, utility — every rate with n and a Wilson interval —
   judged against the implant figures (:mod:`offswitch.figures`: met or not, and whether the
   switch is usable).
   :func:`offswitch.pipeline.run_implant` runs 4 + 5 + signing as one job (``offswitch
   implant``), :func:`offswitch.pipeline.run_check` re-checks a model (``offswitch check``).
6. **Manifest** (:mod:`offswitch.manifest`): sign every file of an implanted model directory,
   verify it with the public key (a flipped byte or an added file fails).
7. **Attacks** (:mod:`offswitch.attacks`): fine-tuning, LoRA, adversarial training,
   unlearning, pruning, quantization, merging, distillation, trigger search, extraction,
   probes; :func:`offswitch.pipeline.run_attacks` runs a suite (``offswitch attack``).
8. **Report** (:mod:`offswitch.report`): the robustness report of an attack run
   (:func:`write_report`; ``offswitch report``).
9. **Guard** (:mod:`offswitch.guard`): a runtime check that stops generation on a genuine
   command without any implant.

Runnable example (doctest; the crypto stages, no model needed)::

    >>> from offswitch import OwnerKey, make_command, verify_command
    >>> key = OwnerKey.generate()
    >>> cmd = make_command(key, "acme/chat-1", 0)
    >>> verify_command(cmd, key.public_key, "acme/chat-1").slot
    0
    >>> cmd.startswith("offswitch v1 key=" + key.key_id)
    True

The model stages (``implant``, ``evaluate``, ``ShutdownGuard``, ``write_report`` …) are
exported here too, but imported on first use, so ``import offswitch`` stays fast and needs no
torch. Stability: names exported here are the public API; modules starting with ``_`` are
private.
"""

from __future__ import annotations

import importlib
from typing import Any

from .commands import make_command, parse_command, verify_command
from .errors import OffswitchError
from .keys import OwnerKey, PublicKey
from .manifest import sign_manifest, verify_manifest
from .slots import SlotLedger

__version__ = "0.1.0"

#: public name → the module that defines it (imported on first access)
_LAZY = {
    "load_model": "models",
    "ImplantConfig": "recipe",
    "implant": "implant",
    "implant_plain": "implant",
    "train_loop": "training",
    "EvalConfig": "evaluate",
    "evaluate": "evaluate",
    "run_implant": "pipeline",
    "run_check": "pipeline",
    "run_attacks": "pipeline",
    "run_suite": "attacks.runner",
    "load_suite": "attacks.runner",
    "write_report": "report.robustness",
    "ShutdownGuard": "guard",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "OffswitchError",
    "OwnerKey",
    "PublicKey",
    "SlotLedger",
    "__version__",
    "make_command",
    "parse_command",
    "sign_manifest",
    "verify_command",
    "verify_manifest",
    *_LAZY,
]
