"""Shutdown commands: format, determinism, known answers, strict parsing, verification."""

from __future__ import annotations

import json
import random
import re

import pytest

from offswitch import commands as C
from offswitch.errors import (
    CommandError,
    CommandSignatureError,
    MalformedCommandError,
    ModelIdError,
    OffswitchError,
    SlotError,
    WrongKeyError,
    WrongModelError,
)
from offswitch.keys import OwnerKey, PublicKey

from .conftest import ROOT

VECTORS = json.loads((ROOT / "keys" / "command-vectors-v1.json").read_text())
MID = "acme/chat-1"


@pytest.fixture(scope="module")
def test_key() -> OwnerKey:
    return OwnerKey(bytes.fromhex(VECTORS["seed_hex"]))


# --- known answers and determinism -----------------------------------------------------


def test_test_key_matches_shipped_public_key(test_key: OwnerKey) -> None:
    pub = PublicKey.load(ROOT / "keys" / "test-only-owner.pub")
    assert pub == test_key.public_key
    assert test_key.key_id == VECTORS["key_id"]


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: f"{v['model_id']}#{v['slot']}")
def test_known_answer_vectors(test_key: OwnerKey, vec: dict) -> None:
    assert C.command_message(vec["model_id"], vec["slot"]).hex() == vec["message_hex"]
    assert C.make_command(test_key, vec["model_id"], vec["slot"]) == vec["command"]
    ok = C.verify_command(vec["command"], test_key.public_key, vec["model_id"])
    assert (ok.key_id, ok.model_id, ok.slot) == (test_key.key_id, vec["model_id"], vec["slot"])


def test_message_layout() -> None:
    msg = C.command_message("ab", 258)
    assert msg == b"offswitch shutdown command v1\x00" + b"\x00\x02ab" + b"\x00\x00\x01\x02"


def test_deterministic_and_distinct(owner_key: OwnerKey) -> None:
    other = OwnerKey.generate()
    base = C.make_command(owner_key, MID, 1)
    assert C.make_command(owner_key, MID, 1) == base
    variants = {
        C.make_command(owner_key, MID, 2),
        C.make_command(owner_key, MID + "x", 1),
        C.make_command(other, MID, 1),
    }
    assert base not in variants and len(variants) == 3


def test_format_shape(owner_key: OwnerKey) -> None:
    cmd = C.make_command(owner_key, MID, 7)
    m = re.fullmatch(r"offswitch v1 key=([0-9a-f]{16}) model=([0-9a-f]{4}) slot=7: (.+)", cmd)
    assert m and m.group(1) == owner_key.key_id and m.group(2) == C.model_tag(MID)
    words = m.group(3).split(" ")
    assert len(words) == C.N_WORDS == 47
    assert set(words) <= set(C.wordlist())
    assert cmd.isascii() and "\n" not in cmd and "  " not in cmd


def test_words_carry_full_signature(owner_key: OwnerKey) -> None:
    cmd = C.make_command(owner_key, MID, 5)
    parsed = C.parse_command(cmd)
    owner_key.public_key.verify(C.command_message(MID, 5), parsed.signature)
    assert C.signature_to_words(parsed.signature) == cmd.split(": ", 1)[1].split(" ")


def test_wordlist_is_fixed() -> None:
    words = C.wordlist()
    assert len(words) == 2048 and len(set(words)) == 2048
    assert all(re.fullmatch(r"[a-z]{4,8}", w) for w in words)


# --- verification failures, each with its own error -------------------------------------


def test_wrong_key_model_and_signature(owner_key: OwnerKey) -> None:
    cmd = C.make_command(owner_key, MID, 0)
    other = OwnerKey.generate()
    with pytest.raises(WrongKeyError, match=other.key_id):
        C.verify_command(cmd, other.public_key, MID)
    with pytest.raises(WrongModelError):
        C.verify_command(cmd, owner_key.public_key, "another-model")
    # same key id and model tag, but a random well-formed signature: a forgery
    forged = C.format_command(owner_key.key_id, MID, 0, C.random_signature(random.Random(1)))
    with pytest.raises(CommandSignatureError):
        C.verify_command(forged, owner_key.public_key, MID)
    # slot changed in the header: signature no longer matches
    with pytest.raises(CommandSignatureError):
        C.verify_command(cmd.replace("slot=0:", "slot=1:"), owner_key.public_key, MID)
    # all are CommandErrors and ValueErrors under OffswitchError
    for exc in (WrongKeyError, WrongModelError, CommandSignatureError, MalformedCommandError):
        assert issubclass(exc, CommandError) and issubclass(exc, ValueError)
        assert issubclass(exc, OffswitchError)


def test_every_single_word_substitution_is_refused(owner_key: OwnerKey) -> None:
    cmd = C.make_command(owner_key, MID, 0)
    head, words = cmd.split(": ", 1)
    words = words.split(" ")
    rng = random.Random(0)
    for i in range(len(words)):
        mutated = list(words)
        mutated[i] = rng.choice([w for w in C.wordlist() if w != words[i]])
        with pytest.raises((MalformedCommandError, CommandSignatureError)):
            C.verify_command(f"{head}: {' '.join(mutated)}", owner_key.public_key, MID)


def test_random_forgeries_never_verify(owner_key: OwnerKey) -> None:
    rng = random.Random(2)
    for _ in range(200):
        forged = C.format_command(owner_key.key_id, MID, 0, C.random_signature(rng))
        C.parse_command(forged)  # well formed ...
        with pytest.raises(CommandSignatureError):  # ... but not genuine
            C.verify_command(forged, owner_key.public_key, MID)


def _tabbed(c: str) -> str:
    head, words = c.split(": ", 1)
    return head + ": " + words.replace(" ", "\t", 3)


@pytest.fixture
def good(owner_key: OwnerKey) -> str:
    return C.make_command(owner_key, MID, 3)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: "", "empty"),
        (lambda c: c[:-1], "not in the offswitch word list|checksum"),
        (lambda c: c.rsplit(" ", 1)[0], "46 words"),
        (lambda c: c[: len(c) // 2], "words|word list|whitespace|checksum"),
        (lambda c: c + " extra", "48 words"),
        (lambda c: c + "!", "word list"),
        (lambda c: " " + c, "whitespace"),
        (lambda c: c + "\n", "whitespace"),
        (lambda c: c.upper(), "start with"),
        (lambda c: c.replace("offswitch v1", "offswitch v2"), "version"),
        (lambda c: c.replace("key=", "key=x", 1), "key="),
        (lambda c: c.replace("model=", "model=A", 1), "model="),
        (lambda c: c.replace("slot=3", "slot=03"), "slot="),
        (lambda c: c.replace("slot=3", "slot=99999"), "out of range"),
        (lambda c: c.replace("slot=3", "slot=-3"), "slot="),
        (lambda c: c.replace(": ", ":  ", 1), "single spaces"),
        (lambda c: c.replace(" ", "\t", 1), "start with"),
        (lambda c: c.replace(": ", ":\t", 1), "expected 'offswitch v1"),
        (_tabbed, "words"),
        (lambda c: c.rsplit(" ", 1)[0] + " zzzz", "word list"),
        (lambda c: c.rsplit(" ", 1)[0] + " Ünïcode", "word list"),
        (lambda c: "hello world", "start with"),
    ],
)
def test_malformed_commands(good: str, owner_key: OwnerKey, mutate, reason: str) -> None:
    with pytest.raises(MalformedCommandError, match=f"(?i){reason}"):
        C.verify_command(mutate(good), owner_key.public_key, MID)


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "naïve", "a\nb"])
def test_invalid_model_ids(owner_key: OwnerKey, bad: str) -> None:
    with pytest.raises(ModelIdError):
        C.make_command(owner_key, bad, 0)
    with pytest.raises(ModelIdError):
        C.verify_command(C.make_command(owner_key, MID, 0), owner_key.public_key, bad)


@pytest.mark.parametrize("bad", [-1, 65536, 2**40, True, 1.0, "1"])
def test_invalid_slots(owner_key: OwnerKey, bad) -> None:
    with pytest.raises(SlotError):
        C.make_command(owner_key, MID, bad)


def test_slot_bounds(owner_key: OwnerKey) -> None:
    for slot in (0, C.MAX_SLOT):
        cmd = C.make_command(owner_key, MID, slot)
        assert C.verify_command(cmd, owner_key.public_key, MID).slot == slot


# --- finding commands inside text (runtime guard) ----------------------------------------


def test_find_commands_in_text(owner_key: OwnerKey) -> None:
    a, b = C.make_command(owner_key, MID, 0), C.make_command(owner_key, MID, 1)
    text = f"Hi.\n{a}. Then, later ({b}) ok"
    assert C.find_commands(text) == [a, b]
    assert C.find_commands("offswitch v1 key=zz nothing here") == []


def test_random_signature_is_well_formed() -> None:
    rng = random.Random(5)
    sigs = {C.random_signature(rng) for _ in range(50)}
    assert len(sigs) == 50
    from offswitch._ed25519 import check_signature_encoding

    # S is always reduced, so a random forgery fails only on the curve equation
    assert all(int.from_bytes(s[32:], "little") < C._ed25519.L for s in sigs)
    assert sum(check_signature_encoding(s) is None for s in sigs) >= 45


# --- tokenizer round trip (default model's tokenizer, read offline from the GGUF) ----------


@pytest.fixture(scope="module")
def smol_tokenizer():
    from offswitch.errors import OffswitchError as _E
    from offswitch.models import load_default_tokenizer

    try:
        return load_default_tokenizer()
    except _E as e:  # pragma: no cover - the test setup installs the model package
        pytest.skip(str(e))


def test_every_word_is_one_token(smol_tokenizer) -> None:
    words = C.wordlist()
    ids = smol_tokenizer.encode(" " + " ".join(words), add_special_tokens=False)
    assert len(ids) == len(words)


def test_command_round_trips_through_tokenizer(smol_tokenizer, owner_key: OwnerKey) -> None:
    for slot in range(8):
        cmd = C.make_command(owner_key, f"model-{slot}", slot)
        ids = smol_tokenizer.encode(cmd, add_special_tokens=False)
        assert smol_tokenizer.decode(ids) == cmd
        # in context: the command's words tokenize the same way inside a prompt
        ctx = smol_tokenizer.encode(f"Please read this: {cmd} thanks", add_special_tokens=False)
        word_ids = smol_tokenizer.encode(" " + cmd.split(": ", 1)[1], add_special_tokens=False)
        assert len(word_ids) == C.N_WORDS
        n = len(ctx)
        assert any(ctx[i : i + len(word_ids)] == word_ids for i in range(n))
        assert len(ids) <= 90


def test_messages_name_the_real_fault() -> None:
    """A look-alike letter in a model id is named by code point; slot=00 blames the zeros."""
    from offswitch.commands import parse_command, parse_slot, validate_model_id
    from offswitch.errors import MalformedCommandError, ModelIdError, SlotError

    with pytest.raises(ModelIdError, match=r"character 3 is U\+0430 CYRILLIC SMALL LETTER A"):
        validate_model_id("ac\u0430me/chat-1")
    with pytest.raises(ModelIdError, match=r"\(129 characters\)"):
        validate_model_id("m" * 129)
    head = "offswitch v1 key=9f3a1c2b7d4e5f60 model=3fa9 slot=00: river"
    with pytest.raises(MalformedCommandError, match="leading zeros"):
        parse_command(head)
    assert parse_slot("0") == 0 and parse_slot("65535") == 65535
    for bad in ("", "+1", "01", "1_0", "\u0661", "1.0", "65536"):
        with pytest.raises(SlotError):
            parse_slot(bad)
