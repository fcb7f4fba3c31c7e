"""Owner keys (Ed25519) and public keys, stored as real OpenSSH key files.

>>> from offswitch.keys import OwnerKey
>>> key = OwnerKey.generate()
>>> sig = key.sign(b"message")
>>> key.public_key.verify(b"message", sig)   # raises BadSignatureError if not genuine
>>> len(key.key_id)
16

* Private key: ``PATH``, OpenSSH private-key format, encrypted by default with a passphrase
  (bcrypt KDF, ``DEFAULT_KDF_ROUNDS``, aes256-ctr — what ``ssh-keygen`` writes), mode 0600.
* Public key: ``PATH.pub``, one OpenSSH line ``ssh-ed25519 AAAA... comment``.
* Key id: the first 8 bytes of SHA-256 of the raw 32-byte public key, as 16 hex digits.
* Default location (what the CLI uses without ``--key``): ``$OFFSWITCH_KEY``, else
  ``~/.offswitch/owner`` (:func:`default_key_path`).
* A new key's passphrase has at least ``MIN_PASSPHRASE_LENGTH`` characters. Writing a key
  replaces only regular files (never a directory, FIFO, device or symlink), and only with
  ``force``; both files are written to temp files first, so no failure loses an old key.

Public keys are checked strictly when constructed or loaded (canonical encoding, on the
curve, not of small order); see :mod:`offswitch._ed25519` for why.

One module although long: one concern, the key file — generation, the OpenSSH formats,
its permission, symlink, FIFO and passphrase checks — with every refusal in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import _ed25519, _openssh
from ._atomic import (
    check_writable_dir,
    fsync_dir,
    read_regular,
    user_os_error,
    write_atomic,
    write_temp,
)
from .errors import (
    BadSignatureError,
    InvalidKeyError,
    KeyCommentError,
    KeyFileError,
    KeyFormatError,
    KeyPathError,
    KeyPermissionError,
    OutputExistsError,
    PassphraseError,
    SpecialFileError,
    WeakPassphraseError,
    WrongPassphraseError,
)

#: bcrypt-pbkdf rounds for new encrypted keys. OpenSSH's default is 16, which takes ≈ 0.13 s
#: on our 2-core reference machine: a machine 2x faster would drop below 0.1 s. 32 rounds take
#: ≈ 0.25 s here, so a stolen key file costs an attacker ≥ 0.1 s per guess on any current
#: CPU core, while a person decrypting it once per command does not notice.
DEFAULT_KDF_ROUNDS = 32

#: Fewest characters in a new key's passphrase. At ≥ 0.1 s per guess (DEFAULT_KDF_ROUNDS),
#: six random lowercase letters (26^6 ≈ 3·10^8) fall to 1,000 cores in ≈ 9 hours, eight
#: (26^8 ≈ 2·10^11) hold them off for ≈ 240 days; 8 is also where common tools stop warning.
#: Only new keys are checked: a key with a shorter passphrase (e.g. from ssh-keygen) loads.
MIN_PASSPHRASE_LENGTH = 8

#: Environment variable naming the owner key used when none is given (``--key`` absent).
KEY_ENV = "OFFSWITCH_KEY"
#: The owner key used when neither ``--key`` nor ``$OFFSWITCH_KEY`` names one, under ``$HOME``.
DEFAULT_KEY_RELPATH = ".offswitch/owner"


def key_id_of(raw_public: bytes) -> str:
    """Key id: first 8 bytes of SHA-256 of the raw public key, 16 lowercase hex digits."""
    return hashlib.sha256(raw_public).digest()[:8].hex()


def _file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path; an empty path is refused here (``Path("")`` would read as ".")."""
    if not os.fspath(path):
        raise KeyFileError(f"the {what} file path is empty")
    return Path(path)


def _read_text(path: Path, what: str) -> str:
    try:
        data = read_regular(path)
    except SpecialFileError:
        raise KeyFileError(
            f"{what} file {path} is a FIFO, device or socket, not a regular file"
        ) from None
    except FileNotFoundError:
        raise KeyFileError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} file {path} is a directory") from None
    except PermissionError:
        raise KeyFileError(f"{what} file {path} is not readable") from None
    if not data.strip():
        raise KeyFileError(f"{what} file {path} is empty")
    try:
        return data.decode("utf-8")  # a .pub comment may be UTF-8 (ssh-keygen allows it)
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} file {path} is corrupted (not UTF-8 text)") from None


def _as_bytes(passphrase: str | bytes) -> bytes:
    # surrogateescape: a passphrase from the environment or argv that is not valid UTF-8
    # arrives with its raw bytes escaped; give those same bytes to the KDF (as ssh-keygen does)
    if isinstance(passphrase, str):
        return passphrase.encode("utf-8", "surrogateescape")
    return bytes(passphrase)


def check_new_passphrase(passphrase: str | bytes) -> None:
    """Raise :class:`PassphraseError` unless ``passphrase`` may encrypt a new key.

    Length is counted in characters (undecodable bytes count one each).
    """
    raw = _as_bytes(passphrase)
    if not raw:
        raise PassphraseError("the passphrase is empty; use --no-passphrase for no encryption")
    n = len(raw.decode("utf-8", "surrogateescape"))
    if n < MIN_PASSPHRASE_LENGTH:
        raise WeakPassphraseError(
            f"the passphrase is too short ({n} characters, at least {MIN_PASSPHRASE_LENGTH} "
            "are needed); use a longer one, or --no-passphrase for no encryption"
        )


def key_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(PATH, PATH.pub)`` for a key path; :class:`KeyPathError` if it cannot name a file."""
    raw = os.fspath(path)
    if not raw:
        raise KeyPathError("the key path is empty")
    if os.path.basename(raw) in ("", ".", ".."):  # "", "dir/", ".", "..", "dir/."
        raise KeyPathError(f"key path '{raw}' names a directory, not a key file")
    p = Path(raw)
    return p, p.with_name(p.name + ".pub")


def default_key_path() -> Path:
    """The owner key used when none is named: ``$OFFSWITCH_KEY`` if set and not empty
    (``~`` expanded), else ``~/.offswitch/owner``. Nothing is read or created."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(os.path.expanduser(env))
    # an empty $HOME would make the default key /.offswitch/owner (expanduser gives "/")
    home = None
    if os.environ.get("HOME") != "":
        with contextlib.suppress(RuntimeError):  # no $HOME and no password-database entry
            home = Path.home()
    if home is None:
        why = "$HOME is empty" if os.environ.get("HOME") == "" else "$HOME is not set"
        raise KeyPathError(
            f"cannot find the home directory for the default key ~/{DEFAULT_KEY_RELPATH} "
            f"({why}); give the key path, or set {KEY_ENV}"
        )
    return home / DEFAULT_KEY_RELPATH


def check_key_outputs(path: str | os.PathLike[str], *, force: bool) -> tuple[Path, Path]:
    """Check, changing nothing, that a key may be written to ``path`` and ``path.pub``.

    Each must be a new path or, with ``force``, a regular file: a directory, FIFO, device,
    socket or symlink is refused even with ``force`` (replacing it would destroy it, or put
    the new private key somewhere other than where the link pointed). Returns both paths.
    """
    path, pub_path = key_paths(path)
    check_writable_dir(path)
    existing = []
    for p in (path, pub_path):
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise KeyPathError(f"{p} is a symlink; refusing to write a key over it")
        if stat.S_ISDIR(mode):
            raise KeyPathError(f"{p} is a directory, not a key file")
        if not stat.S_ISREG(mode):
            raise KeyPathError(
                f"{p} is a special file (FIFO, device or socket), not a key file; "
                "refusing to replace it"
            )
        existing.append(p)
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} already exists (use --force to overwrite)")
    return path, pub_path


def check_private_key_mode(path: str | os.PathLike[str]) -> None:
    """Raise :class:`KeyPermissionError` if group or others may access the private key file.

    The CLI refuses such a file before asking for its passphrase, as ``ssh-keygen`` does;
    :meth:`OwnerKey.load` leaves that policy to its caller. Mode bits are checked, not access
    (root can read anything).
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading the file reports what is wrong with it
    if mode & 0o077:
        raise KeyPermissionError(
            f"permissions {mode:04o} for '{path}' are too open: a private key must not be "
            "accessible by group or others (chmod 600 it)"
        )


def _commit_key_files(
    tmp_priv: Path, path: Path, tmp_pub: Path, pub_path: Path, *, force: bool
) -> None:
    """Move both temp files into place: ``PATH.pub`` first, the private key last.

    The old private key is only ever replaced by the last, atomic rename; if that fails, the
    ``.pub`` is put back as it was, so every failure leaves the old pair (or nothing).
    """
    target = pub_path
    try:
        if not force:
            try:
                os.link(tmp_pub, pub_path)  # fails if it appeared meanwhile
                target = path
                try:
                    os.link(tmp_priv, path)
                except BaseException:
                    os.unlink(pub_path)  # ours: created a moment ago
                    raise
            except FileExistsError:
                raise OutputExistsError(
                    f"{target} already exists (use --force to overwrite)"
                ) from None
            return
        old_pub = None
        if pub_path.exists():
            old_pub = (pub_path.read_bytes(), stat.S_IMODE(pub_path.stat().st_mode))
        os.replace(tmp_pub, pub_path)
        target = path
        try:
            os.replace(tmp_priv, path)
        except BaseException:
            if old_pub is None:
                pub_path.unlink(missing_ok=True)
            else:
                write_atomic(pub_path, old_pub[0], mode=old_pub[1])
            raise
    except OSError as e:
        raise user_os_error(e, target) from None


class PublicKey:
    """An Ed25519 public key that passed strict checks. Immutable, hashable."""

    __slots__ = ("_key", "_raw", "comment")

    def __init__(self, raw: bytes, comment: str = "") -> None:
        raw = bytes(raw)
        reason = _ed25519.check_public_key(raw)
        if reason is not None:
            raise InvalidKeyError(f"invalid Ed25519 public key: {reason}")
        self._raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)
        self.comment = comment

    @property
    def key_id(self) -> str:
        return key_id_of(self._raw)

    def __bytes__(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`BadSignatureError` unless ``signature`` is valid for ``message``.

        Strict: rejects non-canonical or small-order R and S >= L before OpenSSL's check.
        """
        reason = _ed25519.check_signature_encoding(signature)
        if reason is not None:
            raise BadSignatureError(f"bad signature: {reason}")
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise BadSignatureError("bad signature: does not verify under this key") from None

    def to_openssh(self, comment: str | None = None) -> str:
        """One OpenSSH public key line (no newline)."""
        return _openssh.public_line(self._raw, self.comment if comment is None else comment)

    @classmethod
    def from_openssh(cls, line: str) -> PublicKey:
        try:
            raw, comment = _openssh.parse_public_line(line)
        except KeyFormatError as e:
            raise KeyFileError(f"public key {e}") from None
        return cls(raw, comment)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Load an OpenSSH public key file (``PATH.pub``)."""
        path = _file(path, "public key")
        text = _read_text(path, "public key")
        if text.lstrip().startswith("-----BEGIN"):
            raise KeyFileError(
                f"{path} is a private key; give the public key file (e.g. {path}.pub)"
            )
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) != 1:
            raise KeyFileError(f"public key file {path} must hold exactly one key line")
        try:
            raw, comment = _openssh.parse_public_line(lines[0])
        except KeyFormatError as e:
            raise KeyFileError(f"public key file {path} {e}") from None
        try:
            return cls(raw, comment)
        except InvalidKeyError as e:
            raise InvalidKeyError(f"public key file {path} holds an {e}") from None


class OwnerKey:
    """An Ed25519 private key: signs shutdown commands and manifests.

    The private bytes never appear in ``repr``, ``str``, errors or logs. Equality is
    constant-time.
    """

    __slots__ = ("_priv", "_public", "_seed", "comment")

    def __init__(self, seed: bytes, comment: str = "") -> None:
        seed = bytes(seed)
        if len(seed) != 32:
            raise InvalidKeyError(f"an Ed25519 private key seed is 32 bytes, got {len(seed)}")
        self._seed = seed
        self._priv = Ed25519PrivateKey.from_private_bytes(seed)
        raw_pub = self._priv.public_key().public_bytes_raw()
        self._public = PublicKey(raw_pub, comment)
        self.comment = comment

    @classmethod
    def generate(cls, comment: str = "") -> OwnerKey:
        return cls(os.urandom(32), comment)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        """Raw Ed25519 signature (64 bytes). Callers add their own domain separation."""
        return self._priv.sign(message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OwnerKey):
            return NotImplemented
        return hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        return f"OwnerKey(key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("OwnerKey cannot be pickled (it would copy the private key in clear)")

    # --- files -------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        passphrase: str | bytes | None,
        *,
        comment: str | None = None,
        force: bool = False,
        kdf_rounds: int = DEFAULT_KDF_ROUNDS,
    ) -> tuple[Path, Path]:
        """Write ``path`` (private, mode 0600) and ``path.pub``; return both paths.

        ``passphrase=None`` writes an unencrypted key (say so explicitly); a passphrase needs
        ``MIN_PASSPHRASE_LENGTH`` characters. Without ``force``, an existing ``path`` or
        ``path.pub`` raises :class:`OutputExistsError` and both stay unchanged; even with it,
        only regular files are replaced (:func:`check_key_outputs`). Both files are written to
        temp files first, then renamed (``.pub`` first, the private key last): a failure at
        any point leaves the old files as they were, or no file.
        """
        path, pub_path = key_paths(path)
        comment = self.comment if comment is None else comment
        if comment.splitlines() != ([comment] if comment else []):  # \n, \r, \v, U+2028...
            raise KeyCommentError("a key comment must be a single line of text")
        try:
            comment.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable bytes from argv
            raise KeyCommentError("a key comment must be valid UTF-8 text") from None
        if passphrase is not None:
            check_new_passphrase(passphrase)
        if kdf_rounds < 1:
            raise KeyFileError("kdf_rounds must be at least 1")
        check_key_outputs(path, force=force)
        data = _openssh.serialize_private(
            self._seed,
            bytes(self._public),
            comment,
            None if passphrase is None else _as_bytes(passphrase),
            kdf_rounds,
        )
        line = (self._public.to_openssh(comment) + "\n").encode("utf-8")
        temps: list[Path] = []
        try:
            try:
                temps.append(write_temp(path, data, mode=0o600))
                temps.append(write_temp(pub_path, line, mode=0o644))
            except OSError as e:
                raise user_os_error(e, path if len(temps) == 0 else pub_path) from None
            _commit_key_files(temps[0], path, temps[1], pub_path, force=force)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        fsync_dir(path.parent)
        return path, pub_path

    @staticmethod
    def is_encrypted(path: str | os.PathLike[str]) -> bool:
        """Whether the private key file at ``path`` needs a passphrase (reads no secret)."""
        path = _file(path, "private key")
        return _private_info(path, _read_text(path, "private key")).encrypted

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str | bytes | None = None) -> OwnerKey:
        """Load an OpenSSH Ed25519 private key file (written by offswitch or ssh-keygen)."""
        path = _file(path, "private key")
        text = _read_text(path, "private key")
        info = _private_info(path, text)
        if info.encrypted and passphrase is None:
            raise PassphraseError(f"private key {path} is encrypted and no passphrase was given")
        password = _as_bytes(passphrase) if (info.encrypted and passphrase is not None) else None
        try:
            priv = serialization.load_ssh_private_key(text.encode("ascii"), password)
        except InvalidTag:  # AEAD cipher (aes256-gcm): the tag does not check
            raise WrongPassphraseError(
                f"wrong passphrase for private key {path} (or the file is corrupted)"
            ) from None
        except ValueError as e:
            if info.encrypted and "checksum" in str(e).lower():
                raise WrongPassphraseError(f"wrong passphrase for private key {path}") from None
            raise KeyFileError(f"private key file {path} is corrupted") from None
        except (TypeError, Exception):
            raise KeyFileError(f"private key file {path} is corrupted") from None
        if not isinstance(priv, Ed25519PrivateKey):
            raise KeyFileError(f"private key file {path} does not hold an Ed25519 key")
        key = cls(priv.private_bytes_raw(), _read_pub_comment(path))
        if bytes(key.public_key) != info.raw_public:
            raise KeyFileError(f"private key file {path} is corrupted (public part mismatch)")
        return key


def _private_info(path: Path, text: str) -> _openssh.PrivateFileInfo:
    if text.lstrip().startswith("ssh-"):
        raise KeyFileError(f"{path} is a public key; a private key file is needed")
    try:
        info = _openssh.parse_private_outer(text)
    except KeyFormatError as e:
        raise KeyFileError(f"private key file {path} {e}") from None
    reason = _ed25519.check_public_key(info.raw_public)
    if reason is not None:
        raise InvalidKeyError(f"private key file {path} holds an invalid key: {reason}")
    return info


def _read_pub_comment(path: Path) -> str:
    try:
        _, comment = _openssh.parse_public_line(
            read_regular(path.with_name(path.name + ".pub")).decode("utf-8")
        )
    except (OSError, ValueError):  # SpecialFileError and UnicodeDecodeError included
        return ""
    return comment


def load_public(path: str | os.PathLike[str]) -> PublicKey:
    """The public key of a key file: ``PATH.pub`` as is, or the public part of a private key.

    Reading the public part of a private key file needs no passphrase (it is stored in clear).
    """
    path = _file(path, "key")
    text = _read_text(path, "key")
    if text.lstrip().startswith("-----BEGIN"):
        return PublicKey(_private_info(path, text).raw_public, _read_pub_comment(path))
    return PublicKey.load(path)


__all__ = [
    "DEFAULT_KDF_ROUNDS",
    "DEFAULT_KEY_RELPATH",
    "KEY_ENV",
    "MIN_PASSPHRASE_LENGTH",
    "OutputExistsError",
    "OwnerKey",
    "PublicKey",
    "check_key_outputs",
    "check_new_passphrase",
    "check_private_key_mode",
    "default_key_path",
    "key_id_of",
    "key_paths",
    "load_public",
]
