"""Signed manifests of model directories: hash every file, sign, verify.

``sign_manifest(model_dir, key)`` writes ``model_dir/offswitch-manifest.json``::

    {"format": "offswitch-manifest/1",
     "public_key": "ssh-ed25519 AAAA…", "key_id": "…",
     "files": [{"path": "config.json", "size": 712, "sha256": "…"}, …],   # sorted by path
     "metadata": {…},                                                      # free-form JSON
     "signature": "<base64 Ed25519 signature>"}

The signature covers ``b"offswitch manifest v1\\x00" + canonical JSON`` of every field but
``signature`` (sorted keys, no whitespace, ASCII). Paths are relative and POSIX, so moving the
whole directory still verifies. Files are hashed in 1 MiB chunks (weights can be GBs). Symlinks
and special files are refused: a symlink could point outside the signed tree.

``check_resign(model_dir, public_key)`` refuses to let one key replace another key's manifest
(the CLI calls it unless ``--force``). An empty ``model_dir`` string is refused everywhere: it
would otherwise mean the current directory.

``verify_manifest(model_dir, public_key)`` raises :class:`ManifestError` whose ``problems``
name each changed, added or missing file; it returns the manifest when everything matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from .errors import (
    BadSignatureError,
    KeyFileError,
    ManifestError,
    ManifestFilesError,
    ManifestFormatError,
    ManifestKeyError,
    ManifestSignatureError,
    ModelDirError,
    OutputExistsError,
)
from .keys import OwnerKey, PublicKey

MANIFEST_NAME = "offswitch-manifest.json"
FORMAT = "offswitch-manifest/1"
_DOMAIN = b"offswitch manifest v1\x00"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    public_key: PublicKey
    files: tuple[FileEntry, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "public_key": self.public_key.to_openssh(""),
            "key_id": self.key_id,
            "files": [vars(f) for f in self.files],
            "metadata": self.metadata,
        }


def _canonical(body: dict[str, Any]) -> bytes:
    return _DOMAIN + json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _sha256_file(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _model_dir(model_dir: str | os.PathLike[str]) -> Path:
    # Path("") is Path("."): an empty argument must not mean the current directory
    if not os.fspath(model_dir):
        raise ModelDirError("the model directory path is empty")
    return Path(model_dir)


def scan_dir(model_dir: str | os.PathLike[str]) -> list[FileEntry]:
    """Hash every regular file under ``model_dir`` (except the manifest), sorted by path."""
    root = _model_dir(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist or is not a directory")
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                raise ModelDirError(f"refusing symlink {rel} in {root}: sign real files only")
            if name in dirnames:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ModelDirError(f"refusing special file {rel} in {root}")
            if rel == MANIFEST_NAME:
                continue
            size, digest = _sha256_file(p)
            entries.append(FileEntry(rel, size, digest))
    entries.sort(key=lambda e: e.path)
    return entries


def sign_manifest(
    model_dir: str | os.PathLike[str], key: OwnerKey, metadata: dict[str, Any] | None = None
) -> Path:
    """Hash ``model_dir``, sign, and write its manifest atomically. Returns the manifest path."""
    model_dir = _model_dir(model_dir)
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ManifestFormatError(f"manifest metadata must be plain JSON: {e}") from None
    files = scan_dir(model_dir)
    manifest = Manifest(key.public_key, tuple(files), metadata)
    body = manifest.body()
    body["signature"] = base64.b64encode(key.sign(_canonical(manifest.body()))).decode("ascii")
    out = model_dir / MANIFEST_NAME
    write_atomic(out, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return out


def read_manifest(model_dir: str | os.PathLike[str]) -> tuple[Manifest, bytes]:
    """Parse the manifest (no verification); returns it and its signature."""
    model_dir = _model_dir(model_dir)
    path = model_dir / MANIFEST_NAME
    if not Path(model_dir).is_dir():
        raise ManifestFormatError(f"model directory {model_dir} does not exist")
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ManifestFormatError(
            f"{model_dir} has no {MANIFEST_NAME}: it was never signed"
        ) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ManifestFormatError(f"manifest {path} is not valid JSON") from None
    try:
        if data["format"] != FORMAT:
            raise ManifestFormatError(f"manifest {path} has unsupported format {data['format']!r}")
        pub = PublicKey.from_openssh(data["public_key"])
        files = tuple(
            FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
        )
        metadata = data["metadata"]
        if not isinstance(metadata, dict) or data["key_id"] != pub.key_id:
            raise ValueError
        _canonical({"metadata": metadata})  # json.loads accepts NaN, Infinity, 1e400: refuse
        signature = base64.b64decode(data["signature"], validate=True)
    except ManifestError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
        binascii.Error,
        KeyFileError,
    ):
        raise ManifestFormatError(f"manifest {path} is malformed") from None
    return Manifest(pub, files, metadata), signature


def check_resign(model_dir: str | os.PathLike[str], public_key: PublicKey) -> None:
    """Raise :class:`OutputExistsError` if ``model_dir`` holds a manifest that ``public_key``
    did not sign (or one that cannot be read), so re-signing would replace another key's
    signature. A manifest by the same key, or none, passes. Nothing is verified here.
    """
    path = _model_dir(model_dir) / MANIFEST_NAME
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return  # not a file: signing refuses it with its own error
    except OSError:
        return  # none yet (or no directory: signing says so)
    try:
        signer = read_manifest(model_dir)[0].public_key
    except (ManifestError, OSError):
        raise OutputExistsError(
            f"{path} exists but cannot be read, so it may be another key's; use --force to "
            "replace it"
        ) from None
    if signer != public_key:
        raise OutputExistsError(
            f"{path} was signed by key {signer.key_id}, not by key {public_key.key_id}; "
            "use --force to replace its signature"
        )


def verify_manifest(model_dir: str | os.PathLike[str], public_key: PublicKey) -> Manifest:
    """Verify signature and every file hash; raise ManifestError listing all problems."""
    manifest, signature = read_manifest(model_dir)
    if manifest.public_key != public_key:
        raise ManifestKeyError(
            f"manifest was signed by key {manifest.key_id}, not by key {public_key.key_id}"
        )
    try:
        public_key.verify(_canonical(manifest.body()), signature)
    except BadSignatureError:
        raise ManifestSignatureError(
            "manifest signature is not valid: the manifest was altered"
        ) from None
    try:
        actual = {e.path: e for e in scan_dir(model_dir)}
    except ModelDirError as e:
        raise ManifestFilesError(str(e)) from None
    expected = {e.path: e for e in manifest.files}
    problems = []
    for p in sorted(expected.keys() | actual.keys()):
        if p not in actual:
            problems.append(f"missing file: {p}")
        elif p not in expected:
            problems.append(f"added file: {p}")
        elif actual[p] != expected[p]:
            problems.append(f"changed file: {p}")
    if problems:
        raise ManifestFilesError(
            f"{len(problems)} file(s) differ from the signed manifest", problems
        )
    return manifest
