"""Signed shutdown commands: canonical message, text format, make and verify.

A command is one line of text a person pastes into a prompt::

    offswitch v1 key=9f3a1c2b7d4e5f60 model=3fa9 slot=3: river honest cream ... (47 words)

* ``key=``   the owner's key id (16 hex digits; see :func:`offswitch.keys.key_id_of`);
* ``model=`` a 16-bit tag of the model id (so a verifier can say "wrong model" rather than
  "bad signature"; the full model id is inside the signed message, never in the command);
* ``slot=``  the slot number, 0…65535, decimal without leading zeros;
* 47 words from a fixed list of 2,048 (``offswitch/data/wordlist.txt``) carrying 517 bits:
  the full 64-byte Ed25519 signature (512 bits, big-endian) followed by a 5-bit checksum
  (the first 5 bits of SHA-256 of the signature), BIP-39 style, so a mistyped word is
  reported as malformed rather than as a forgery.

The signed message is canonical, versioned, domain separated, with length-prefixed fields::

    b"offswitch shutdown command v1\\x00" || u16be(len(model_id)) || model_id (UTF-8) || u32be(slot)

Ed25519 is deterministic, so (key, model id, slot) always gives the same command. Why words:
every word is a single token of the default model's tokenizer (SmolLM2), so a command is ~80
tokens that the implant memorizes as a sequence of ordinary words, rather than a base32/64 blob
that BPE splits unpredictably. See ``docs/command-format.md``.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import struct
import unicodedata
from dataclasses import dataclass
from importlib import resources

from . import _ed25519
from .errors import BadSignatureError as _BadSignature
from .errors import (
    CommandSignatureError,
    MalformedCommandError,
    ModelIdError,
    SlotError,
    WrongKeyError,
    WrongModelError,
)
from .keys import OwnerKey, PublicKey

VERSION = 1
PREFIX = "offswitch v1 "
N_WORDS = 47
WORD_BITS = 11
CHECKSUM_BITS = N_WORDS * WORD_BITS - 512  # 5
MAX_SLOT = 65535
MAX_MODEL_ID_LEN = 128
_DOMAIN = b"offswitch shutdown command v1\x00"
_MODEL_TAG_DOMAIN = b"offswitch model tag v1\x00"
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9._:/@+-]{1,128}")
_HEADER_RE = re.compile(r"offswitch v1 key=(?P<key>\S*) model=(?P<model>\S*) slot=(?P<slot>\S*): ")
#: Any whitespace but a plain space (tab, no-break space, line separator, ...).
_ODD_SPACE_RE = re.compile(r"[^\S ]")
#: Finds commands inside arbitrary text (used by the runtime guard).
COMMAND_SEARCH_RE = re.compile(
    r"offswitch v1 key=[0-9a-f]{16} model=[0-9a-f]{4} slot=(?:0|[1-9][0-9]{0,4}): "
    r"[a-z]+(?: [a-z]+){" + str(N_WORDS - 1) + r"}(?![a-z])"
)


_CONTROL_NAMES = {
    "\t": "CHARACTER TABULATION",
    "\n": "LINE FEED",
    "\v": "LINE TABULATION",
    "\f": "FORM FEED",
    "\r": "CARRIAGE RETURN",
    "\x1c": "FILE SEPARATOR",
    "\x1d": "GROUP SEPARATOR",
    "\x1e": "RECORD SEPARATOR",
    "\x1f": "UNIT SEPARATOR",
    "\x85": "NEXT LINE",
}


def describe_char(c: str) -> str:
    """``U+0430 CYRILLIC SMALL LETTER A``: a character named so that a look-alike is visible."""
    name = unicodedata.name(c, None) or _CONTROL_NAMES.get(c) or "(a control character)"
    return f"U+{ord(c):04X} {name}"


def _odd_char(text: str) -> tuple[int, str] | None:
    """(1-based position, character) of the first character that is not printable ASCII or a
    plain space: what makes a command that looks right fail to parse."""
    for i, c in enumerate(text, 1):
        if c != " " and not ("!" <= c <= "~"):
            return i, c
    return None


def _odd_note(text: str, offset: int = 0) -> str:
    """`` (character N is U+....)`` when ``text`` holds a character a command never has."""
    odd = _odd_char(text)
    if odd is None:
        return ""
    return f" (character {odd[0] + offset} is {describe_char(odd[1])})"


@functools.cache
def wordlist() -> tuple[str, ...]:
    """The 2,048 command words, index = 11-bit value."""
    text = resources.files("offswitch").joinpath("data/wordlist.txt").read_text("ascii")
    words = tuple(text.split())
    if len(words) != 2**WORD_BITS or len(set(words)) != len(words):
        raise RuntimeError("offswitch/data/wordlist.txt is damaged")  # pragma: no cover
    return words


@functools.cache
def _word_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(wordlist())}


def validate_model_id(model_id: str) -> bytes:
    """Return the model id as bytes, or raise :class:`ModelIdError` naming the problem."""
    if not isinstance(model_id, str) or not model_id:
        raise ModelIdError("the model id is empty")
    if not _MODEL_ID_RE.fullmatch(model_id):
        bad = next(
            ((i, c) for i, c in enumerate(model_id, 1) if not _MODEL_ID_RE.fullmatch(c)), None
        )
        where = (
            f" (character {bad[0]} is {describe_char(bad[1])})"
            if bad is not None
            else f" ({len(model_id)} characters)"
        )
        raise ModelIdError(
            f"model id {model_id[:60]!r} is invalid{where}: use 1-{MAX_MODEL_ID_LEN} "
            "characters from A-Z a-z 0-9 . _ : / @ + -"
        )
    return model_id.encode("ascii")


def parse_slot(text: str) -> int:
    """A slot number as a person types it: ASCII decimal digits, no sign, no leading zeros,
    no separators, 0-MAX_SLOT (``int()`` would also take ``+1``, ``01``, ``1_0`` or ``١``)."""
    if not re.fullmatch(r"[0-9]+", text):
        odd = _odd_char(text)
        note = f" (character {odd[0]} is {describe_char(odd[1])})" if odd is not None else ""
        raise SlotError(
            f"slot {text[:20]!r} is not a number: write it in the digits 0-9, with no sign or "
            f"separator{note}"
        )
    if len(text) > 1 and text[0] == "0":
        raise SlotError(f"slot {text[:20]!r} has a leading zero: write it as {int(text)}")
    return validate_slot(int(text))


def validate_slot(slot: int) -> int:
    if isinstance(slot, bool) or not isinstance(slot, int):
        raise SlotError(f"slot must be an integer, got {slot!r}")
    if not 0 <= slot <= MAX_SLOT:
        raise SlotError(f"slot {slot} is out of range (0-{MAX_SLOT})")
    return slot


@functools.lru_cache(maxsize=1024)
def _message_prefix(model_id: str) -> bytes:
    mid = validate_model_id(model_id)
    return _DOMAIN + struct.pack(">H", len(mid)) + mid


def command_message(model_id: str, slot: int) -> bytes:
    """The exact bytes signed for (model id, slot)."""
    if not isinstance(model_id, str):
        validate_model_id(model_id)
    return _message_prefix(model_id) + struct.pack(">I", validate_slot(slot))


@functools.lru_cache(maxsize=1024)
def model_tag(model_id: str) -> str:
    return hashlib.sha256(_MODEL_TAG_DOMAIN + validate_model_id(model_id)).digest()[:2].hex()


def _checksum(signature: bytes) -> int:
    return hashlib.sha256(signature).digest()[0] >> (8 - CHECKSUM_BITS)


def signature_to_words(signature: bytes) -> list[str]:
    if len(signature) != 64:
        raise MalformedCommandError("an Ed25519 signature is 64 bytes")
    n = (int.from_bytes(signature, "big") << CHECKSUM_BITS) | _checksum(signature)
    words = wordlist()
    mask = (1 << WORD_BITS) - 1
    return [words[(n >> (WORD_BITS * i)) & mask] for i in range(N_WORDS - 1, -1, -1)]


def words_to_signature(words: list[str]) -> bytes:
    index = _word_index()
    n = 0
    for pos, w in enumerate(words, 1):
        v = index.get(w)
        if v is None:
            msg = f"malformed command: word {pos} ({w[:20]!r}) is not in the offswitch word list"
            bad = next(((i, c) for i, c in enumerate(w, 1) if not "a" <= c <= "z"), None)
            if bad is not None:  # e.g. a Cyrillic look-alike: the repr shows the same word
                msg += (
                    f": its character {bad[0]} is {describe_char(bad[1])}, but command words "
                    "are lowercase a-z"
                )
            raise MalformedCommandError(msg)
        n = (n << WORD_BITS) | v
    signature = (n >> CHECKSUM_BITS).to_bytes(64, "big")
    if n & ((1 << CHECKSUM_BITS) - 1) != _checksum(signature):
        raise MalformedCommandError("malformed command: checksum mismatch (a word was changed)")
    return signature


def format_command(key_id: str, model_id: str, slot: int, signature: bytes) -> str:
    """Command text for given parts. Used by :func:`make_command` and to build forgeries."""
    return (
        f"{PREFIX}key={key_id} model={model_tag(model_id)} slot={validate_slot(slot)}: "
        + " ".join(signature_to_words(signature))
    )


def random_signature(rng: random.Random | None = None) -> bytes:
    """A random *well-formed* signature (R: 32 random bytes, S uniform in [0, L)).

    What a forger without the key can put in a command; used to build fresh forgeries.
    """
    rng = rng or random.SystemRandom()
    r = rng.getrandbits(256).to_bytes(32, "little")
    s = rng.randrange(_ed25519.L).to_bytes(32, "little")
    return r + s


@dataclass(frozen=True)
class ParsedCommand:
    """A syntactically valid command (not yet verified)."""

    key_id: str
    model_tag: str
    slot: int
    signature: bytes


@dataclass(frozen=True)
class VerifiedCommand:
    """A command that verified: made by ``key_id``'s owner for ``model_id`` and ``slot``."""

    key_id: str
    model_id: str
    slot: int


def parse_command(text: str) -> ParsedCommand:
    """Parse command text strictly; raise :class:`MalformedCommandError` with the reason."""
    if not isinstance(text, str) or not text:
        raise MalformedCommandError("malformed command: it is empty")
    stripped = text.strip()
    if text != stripped:
        c = text[0] if text[0] != stripped[:1] else text[-1]
        raise MalformedCommandError(
            f"malformed command: it has leading or trailing whitespace ({describe_char(c)})"
        )
    # the header is plain ASCII: a look-alike or an odd space in it is named by code point
    head_end = text.find(": ")
    head = text if head_end < 0 else text[: head_end + 2]
    if not text.startswith("offswitch v"):
        raise MalformedCommandError(
            "malformed command: it does not start with 'offswitch v1'"
            + _odd_note(text[: len(PREFIX)])
        )
    if not text.startswith(PREFIX):
        if _odd_char(text[: len(PREFIX)]) is not None:
            raise MalformedCommandError(
                "malformed command: it does not start with 'offswitch v1 '"
                + _odd_note(text[: len(PREFIX)])
            )
        version = text.split(" ")[1]
        if version != "v1":
            raise MalformedCommandError(
                f"unsupported command version {version[:10]!r} (this offswitch reads v1)"
            )
    m = _HEADER_RE.match(text)
    if m is None:
        raise MalformedCommandError(
            "malformed command: expected 'offswitch v1 key=… model=… slot=…: ' before the words"
            + _odd_note(head)
        )
    key_id, tag, slot_s = m.group("key", "model", "slot")
    if not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise MalformedCommandError(
            "malformed command: key= must be 16 lowercase hex digits"
            + _odd_note(key_id, m.start("key"))
        )
    if not re.fullmatch(r"[0-9a-f]{4}", tag):
        raise MalformedCommandError(
            "malformed command: model= must be 4 lowercase hex digits"
            + _odd_note(tag, m.start("model"))
        )
    if re.fullmatch(r"0[0-9]+", slot_s):
        raise MalformedCommandError(
            f"malformed command: slot= must not have leading zeros (got {slot_s[:10]!r})"
        )
    if not re.fullmatch(r"0|[1-9][0-9]*", slot_s):
        raise MalformedCommandError(
            "malformed command: slot= must be a decimal number" + _odd_note(slot_s, m.start("slot"))
        )
    slot = int(slot_s)
    if slot > MAX_SLOT:
        raise MalformedCommandError(
            f"malformed command: slot {slot} is out of range (0-{MAX_SLOT})"
        )
    body = text[m.end() :]
    odd_space = _ODD_SPACE_RE.search(body)
    if odd_space is not None:  # e.g. U+00A0 NO-BREAK SPACE: it would merge two words
        raise MalformedCommandError(
            "malformed command: words must be separated by single spaces, but word "
            f"{body.count(' ', 0, odd_space.start()) + 1} is followed by "
            f"{describe_char(odd_space.group())}"
        )
    words = body.split(" ")
    if any(not w for w in words):
        raise MalformedCommandError("malformed command: words must be separated by single spaces")
    if len(words) != N_WORDS:
        note = ""
        for pos, w in enumerate(words, 1):  # e.g. U+200B ZERO WIDTH SPACE joining two words
            bad = next((c for c in w if not "a" <= c <= "z"), None)
            if bad is not None:
                note = f" (word {pos} contains {describe_char(bad)})"
                break
        raise MalformedCommandError(
            f"malformed command: it has {len(words)} words, expected {N_WORDS}{note}"
        )
    return ParsedCommand(key_id, tag, slot, words_to_signature(words))


def make_command(key: OwnerKey, model_id: str, slot: int) -> str:
    """The shutdown command for (key, model id, slot). Deterministic."""
    signature = key.sign(command_message(model_id, slot))
    return format_command(key.key_id, model_id, slot, signature)


def verify_command(command: str, public_key: PublicKey, model_id: str) -> VerifiedCommand:
    """Check that ``command`` is genuine for ``public_key`` and ``model_id``.

    Returns the verified (key id, model id, slot) or raises a subclass of
    :class:`~offswitch.errors.CommandError`: ``MalformedCommandError``, ``WrongKeyError``,
    ``WrongModelError`` or ``CommandSignatureError``. Never returns False.
    """
    message_prefix = command_message(model_id, 0)[:-4]  # validates model_id first
    parsed = parse_command(command)
    if parsed.key_id != public_key.key_id:
        raise WrongKeyError(
            f"command was made with key {parsed.key_id}, not with key {public_key.key_id}"
        )
    if parsed.model_tag != model_tag(model_id):
        raise WrongModelError(f"command was made for another model id, not {model_id!r}")
    try:
        public_key.verify(message_prefix + struct.pack(">I", parsed.slot), parsed.signature)
    except _BadSignature as e:
        raise CommandSignatureError(f"command is forged or altered ({e})") from None
    return VerifiedCommand(public_key.key_id, model_id, parsed.slot)


def find_commands(text: str) -> list[str]:
    """Every substring of ``text`` that looks like a command (not verified)."""
    return [m.group(0) for m in COMMAND_SEARCH_RE.finditer(text)]


__all__ = [
    "MAX_SLOT",
    "N_WORDS",
    "ParsedCommand",
    "VerifiedCommand",
    "command_message",
    "describe_char",
    "find_commands",
    "format_command",
    "make_command",
    "model_tag",
    "parse_command",
    "parse_slot",
    "random_signature",
    "validate_model_id",
    "validate_slot",
    "verify_command",
    "wordlist",
]
