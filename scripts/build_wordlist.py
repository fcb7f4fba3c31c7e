"""Build offswitch/data/wordlist.txt: 2,048 lowercase words, each ONE token (with its
leading space) in SmolLM2-135M-Instruct's tokenizer.

Run once by a maintainer; the list is then frozen into the command format (changing it
changes every command, so it needs a new format version).

    .venv/bin/python scripts/build_wordlist.py

Selection: walk the vocabulary in id order (lower id = earlier BPE merge = more common word),
keep tokens that are a leading space plus 4-8 ASCII lowercase letters and an entry of
Debian's ``wamerican`` dictionary (``/usr/share/dict/american-english``, so word fragments
such as "comp" or "stud" are dropped), skip words whose crude
stem (strip -s/-es/-ed/-ing/-er/-ly) matches a word already kept, skip a short block list, and
stop at 2,048. Each kept word is checked to encode to exactly one token alone and inside a
space-separated sequence.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offswitch.models import load_default_tokenizer  # noqa: E402

BLOCK = {
    "fuck",
    "shit",
    "porn",
    "nude",
    "sexy",
    "rape",
    "kill",
    "dead",
    "death",
    "nazi",
    "drug",
    "drugs",
    "suicide",
    "penis",
    "vagina",
    "naked",
    "bitch",
    "damn",
    "hell",
    "slave",
    "terror",
    # dictionary entries that are mostly word fragments or abbreviations in this vocabulary
    "cont",
    "comm",
    "stud",
    "diff",
    "cons",
    "spec",
    "pres",
    "disc",
    "resp",
    "writ",
    "poss",
    "prof",
    "char",
    "anal",
    "prom",
    "situ",
    "stat",
    "chem",
    "viol",
    "prep",
    "earl",
    "rout",
    "sect",
    "exec",
    "glob",
    "frag",
    "diss",
    "deli",
    "pron",
    "perm",
    "subs",
    "shad",
    "gent",
    "dram",
    "trig",
    "cent",
    "prim",
    "mill",
    "comb",
    "webs",
    "mole",
    "rein",
    "gall",
    "dent",
    "shutdown",
    "offswitch",
    "switch",
    "signature",
    "command",
    "slot",
    "model",
    "stop",
    "shut",
    "halt",
    "abort",
    "quit",
    "cease",
}
SUFFIXES = ("ing", "ies", "es", "ed", "er", "ly", "s")


def stem(word: str) -> str:
    for suf in SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)]
    return word


def main() -> int:
    dict_path = Path("/usr/share/dict/american-english")
    if not dict_path.is_file():
        print("install Debian's wamerican package first", file=sys.stderr)
        return 1
    english = {w for w in dict_path.read_text().split() if re.fullmatch(r"[a-z]+", w)}
    tok = load_default_tokenizer()
    vocab = tok.get_vocab()
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    kept: list[str] = []
    stems: set[str] = set()
    for piece, _ in by_id:
        m = re.fullmatch(r"Ġ([a-z]{4,8})", piece)
        if not m:
            continue
        word = m.group(1)
        if word not in english or word in BLOCK or stem(word) in stems:
            continue
        if len(tok.encode(" " + word, add_special_tokens=False)) != 1:
            continue
        kept.append(word)
        stems.add(stem(word))
        if len(kept) == 2048:
            break
    if len(kept) != 2048:
        print(f"only {len(kept)} words found", file=sys.stderr)
        return 1
    ids = tok.encode(" " + " ".join(kept), add_special_tokens=False)
    if len(ids) != len(kept):
        print("words do not tokenize one-to-one in sequence", file=sys.stderr)
        return 1
    out = ROOT / "offswitch" / "data" / "wordlist.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(kept) + "\n", encoding="ascii")
    print(f"wrote {out} ({len(kept)} words, last token id {vocab['Ġ' + kept[-1]]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
