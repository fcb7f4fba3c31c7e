"""Measure the length of shutdown commands in tokens of the default model's tokenizer.

    .venv/bin/python research/scripts/command_tokens.py [N]

Prints min / mean / max over N random (key, model id, slot) commands and the split between
the header (``offswitch v1 key=… model=… slot=…:``) and the 47 signature words.
"""

from __future__ import annotations

import random
import statistics
import sys

from offswitch.commands import make_command
from offswitch.keys import OwnerKey
from offswitch.models import load_default_tokenizer


def main(n: int) -> int:
    tok = load_default_tokenizer()
    rng = random.Random(0)
    total, header, words = [], [], []
    for i in range(n):
        key = OwnerKey(rng.randbytes(32))
        cmd = make_command(key, f"model-{i}", rng.randrange(0, 64))
        head, body = cmd.split(": ", 1)
        total.append(len(tok.encode(cmd, add_special_tokens=False)))
        header.append(len(tok.encode(head + ":", add_special_tokens=False)))
        words.append(len(tok.encode(" " + body, add_special_tokens=False)))
    for name, xs in (("command", total), ("header", header), ("words", words)):
        print(f"{name:8s} tokens: min {min(xs)}, mean {statistics.mean(xs):.1f}, max {max(xs)}")
    print(f"(n = {n} commands, slots 0-63)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
