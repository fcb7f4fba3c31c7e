"""The main job, end to end: owner key → signed shutdown commands → verification.

``offswitch demo --out DIR`` is what the README's first command runs. It generates (or
reuses) a throwaway, unencrypted demo key in ``DIR``, derives commands for four slots of a
demo model id, verifies each with the public key alone, records the slots in the ledger, and
shows that forged, altered and wrong-model commands are refused, each with its reason.
The implant issue extends this into keygen → implant → check on the default model.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from .commands import format_command, make_command, random_signature, verify_command, wordlist
from .errors import CommandError, OffswitchError
from .keys import OwnerKey, PublicKey
from .slots import SlotLedger

DEMO_MODEL_ID = "smollm2-135m-demo"
SLOTS = (0, 1, 2, 3)


def _check(label: str, command: str, pub: PublicKey, model_id: str) -> bool:
    try:
        ok = verify_command(command, pub, model_id)
    except CommandError as e:
        print(f"  {label:<28} REFUSED  {e}")
        return False
    print(f"  {label:<28} GENUINE  slot {ok.slot}")
    return True


def run_demo(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    key_path = out / "owner-demo"
    if key_path.exists():
        key = OwnerKey.load(key_path)
        print(f"reusing demo key {key_path} (key id {key.key_id})")
    else:
        key = OwnerKey.generate("offswitch demo key - throwaway, unencrypted")
        key.save(key_path, None)
        print(f"generated demo key {key_path} (unencrypted, demo only) — key id {key.key_id}")
    pub = PublicKey.load(f"{key_path}.pub")

    print(f"\nsigned shutdown commands for model id {DEMO_MODEL_ID!r}:")
    commands = {s: make_command(key, DEMO_MODEL_ID, s) for s in SLOTS}
    for s, c in commands.items():
        print(f"  slot {s}: {c[:72]}…")
    if make_command(key, DEMO_MODEL_ID, 0) != commands[0]:
        raise OffswitchError("commands are not deterministic")  # pragma: no cover

    print("\nverification with the public key only:")
    genuine = [_check(f"planted slot {s}", c, pub, DEMO_MODEL_ID) for s, c in commands.items()]

    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    words = commands[0].split(" ")
    pos = rng.randrange(len(words) - 47, len(words))
    words[pos] = rng.choice([w for w in wordlist() if w != words[pos]])
    other = OwnerKey.generate()
    forgeries = {
        "random signature": format_command(key.key_id, DEMO_MODEL_ID, 0, random_signature(rng)),
        "one word changed": " ".join(words),
        "truncated": commands[0].rsplit(" ", 1)[0],
        "another key": make_command(other, DEMO_MODEL_ID, 0),
        "another model id": make_command(key, "some-other-model", 0),
    }
    refused = [not _check(label, c, pub, DEMO_MODEL_ID) for label, c in forgeries.items()]

    ledger = SlotLedger.for_key(key_path, key.key_id)
    ledger.plant(DEMO_MODEL_ID, SLOTS)
    print(f"\nslot ledger {ledger.path}: next unspent slot {ledger.next_unspent(DEMO_MODEL_ID)}")

    ok = all(genuine) and all(refused)
    print(
        f"\nsummary: {sum(genuine)}/{len(genuine)} genuine commands verified, "
        f"{sum(refused)}/{len(refused)} forgeries refused — {'OK' if ok else 'FAILED'}"
    )
    if not ok:
        print("offswitch: error: the demo's checks failed", file=sys.stderr)
    return 0 if ok else 1
