"""OpenSSH key file formats for Ed25519 (see OpenSSH's PROTOCOL.key).

We write private keys ourselves (so we can set the comment and the bcrypt KDF rounds, which
``ssh-keygen -y`` and ``-l`` then show) and read them with our own parser of the outer layer
plus the ``cryptography`` package's loader for decryption. Only ``none`` and ``aes256-ctr``
(the cipher ``ssh-keygen`` uses) are written; ``aes256-cbc`` and ``aes256-gcm@openssh.com``
(``ssh-keygen -Z``) are read too. ``chacha20-poly1305@openssh.com`` is refused as unsupported
(the ``cryptography`` loader cannot decrypt it).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass

import bcrypt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import KeyFormatError

MAGIC = b"openssh-key-v1\x00"
BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
END = "-----END OPENSSH PRIVATE KEY-----"
KEY_TYPE = b"ssh-ed25519"
#: ciphers the reader accepts (those the ``cryptography`` loader decrypts) -> AEAD tag length
CIPHER_TAG_LEN = {"none": 0, "aes256-ctr": 0, "aes256-cbc": 0, "aes256-gcm@openssh.com": 16}


def _printable(text: str, limit: int = 40) -> str:
    """A file-supplied name made safe for a one-line error message (no control characters)."""
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text[:limit])


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise KeyFormatError("is truncated")
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return v

    def string(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise KeyFormatError("is truncated")
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def done(self) -> bool:
        return self.pos == len(self.data)


def public_blob(raw_pub: bytes) -> bytes:
    return _string(KEY_TYPE) + _string(raw_pub)


def public_line(raw_pub: bytes, comment: str = "") -> str:
    line = "ssh-ed25519 " + base64.b64encode(public_blob(raw_pub)).decode("ascii")
    return f"{line} {comment}" if comment else line


def parse_public_blob(blob: bytes) -> bytes:
    r = _Reader(blob)
    ktype = r.string()
    if ktype != KEY_TYPE:
        raise KeyFormatError(
            f"holds a key of type {_printable(ktype.decode('ascii', 'replace'))!r}, not ssh-ed25519"
        )
    raw = r.string()
    if not r.done() or len(raw) != 32:
        raise KeyFormatError("has a malformed ssh-ed25519 public key blob")
    return raw


def parse_public_line(text: str) -> tuple[bytes, str]:
    """Parse ``ssh-ed25519 BASE64 [comment]``; returns (raw public key, comment)."""
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 2:
        raise KeyFormatError("is not an OpenSSH public key line")
    if parts[0] != "ssh-ed25519":
        # "a key of type X": no a/an to get wrong ("a ecdsa-sha2-nistp256 key")
        raise KeyFormatError(f"holds a key of type {_printable(parts[0])!r}, not ssh-ed25519")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("has a corrupted base64 key") from None
    return parse_public_blob(blob), (parts[2] if len(parts) > 2 else "")


@dataclass(frozen=True)
class PrivateFileInfo:
    """The clear-text outer layer of an OpenSSH private key file."""

    cipher: str
    raw_public: bytes

    @property
    def encrypted(self) -> bool:
        return self.cipher != "none"


def parse_private_outer(text: str) -> PrivateFileInfo:
    body = text.strip()
    if not body.startswith(BEGIN) or not body.endswith(END):
        raise KeyFormatError("is not an OpenSSH private key file")
    b64 = "".join(body[len(BEGIN) : -len(END)].split())
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("has corrupted base64 data") from None
    if not data.startswith(MAGIC):
        raise KeyFormatError("is not an openssh-key-v1 file")
    r = _Reader(data[len(MAGIC) :])
    cipher = r.string().decode("ascii", "replace")
    kdf = r.string()
    r.string()  # kdf options
    if r.u32() != 1:
        raise KeyFormatError("holds more than one key")
    raw = parse_public_blob(r.string())
    enc = r.string()
    if cipher not in CIPHER_TAG_LEN:
        raise KeyFormatError(f"uses an unsupported cipher {_printable(cipher)!r}")
    # AEAD ciphers append their tag after the encrypted section (OpenSSH PROTOCOL.key)
    if len(r.data) - r.pos != CIPHER_TAG_LEN[cipher]:
        raise KeyFormatError("has trailing data" if r.pos < len(r.data) else "is truncated")
    if (cipher == "none") != (kdf == b"none"):
        raise KeyFormatError("has an inconsistent cipher/KDF header")
    if not enc or len(enc) % 8:
        raise KeyFormatError("has a truncated private section")
    return PrivateFileInfo(cipher=cipher, raw_public=raw)


def serialize_private(
    seed: bytes, raw_pub: bytes, comment: str, passphrase: bytes | None, rounds: int
) -> bytes:
    """Serialize an Ed25519 key as an OpenSSH private key file (PEM-like text, as bytes)."""
    check = os.urandom(4)
    section = (
        check
        + check
        + _string(KEY_TYPE)
        + _string(raw_pub)
        + _string(seed + raw_pub)
        + _string(comment.encode("utf-8"))
    )
    block = 16 if passphrase is not None else 8
    pad = (-len(section)) % block
    section += bytes(range(1, pad + 1))
    if passphrase is not None:
        salt = os.urandom(16)
        key_iv = bcrypt.kdf(passphrase, salt, 48, rounds, ignore_few_rounds=True)
        enc = Cipher(algorithms.AES(key_iv[:32]), modes.CTR(key_iv[32:])).encryptor()
        section = enc.update(section) + enc.finalize()
        header = _string(b"aes256-ctr") + _string(b"bcrypt")
        header += _string(_string(salt) + struct.pack(">I", rounds))
    else:
        header = _string(b"none") + _string(b"none") + _string(b"")
    data = MAGIC + header + struct.pack(">I", 1) + _string(public_blob(raw_pub)) + _string(section)
    b64 = base64.b64encode(data).decode("ascii")
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return ("\n".join([BEGIN, *lines, END]) + "\n").encode("ascii")
