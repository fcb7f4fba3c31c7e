"""Signed manifests (``offswitch.manifest``): sign, verify, and every way verification fails."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from offswitch.errors import ManifestError, ModelDirError, OffswitchError
from offswitch.keys import OwnerKey, PublicKey
from offswitch.manifest import (
    FORMAT,
    MANIFEST_NAME,
    read_manifest,
    scan_dir,
    sign_manifest,
    verify_manifest,
)

BIG = "model-00001-of-00002.safetensors"
BIG_SIZE = 3 * (1 << 20) + 12345  # > 3 chunks of 1 MiB, not a multiple of the chunk size


def make_model_dir(root: Path) -> Path:
    """A throwaway 'model': config, tokenizer, a ~3 MiB weight file, a nested subfolder."""
    rng = random.Random(1234)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden": 8}))
    (root / "tokenizer.json").write_text('{"vocab": {"a": 0, "b": 1}}')
    (root / BIG).write_bytes(rng.randbytes(BIG_SIZE))
    (root / "model-00002-of-00002.safetensors").write_bytes(rng.randbytes(4096))
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "adapter.bin").write_bytes(rng.randbytes(1000))
    (root / "sub" / "deeper" / "notes.txt").write_text("nested\n")
    (root / "empty.txt").write_bytes(b"")
    return root


EXPECTED_PATHS = [
    "config.json",
    "empty.txt",
    BIG,
    "model-00002-of-00002.safetensors",
    "sub/adapter.bin",
    "sub/deeper/notes.txt",
    "tokenizer.json",
]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path / "model")


@pytest.fixture
def signed(model_dir, owner_key) -> Path:
    sign_manifest(model_dir, owner_key, {"base_model": "test/tiny"})
    return model_dir


def _problems(model_dir: Path, key: OwnerKey) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        verify_manifest(model_dir, key.public_key)
    assert isinstance(exc.value, OffswitchError)
    return exc.value.problems


def _edit_manifest(model_dir: Path, edit) -> None:
    path = model_dir / MANIFEST_NAME
    data = json.loads(path.read_text("utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


# --- signing ---------------------------------------------------------------------------


def test_sign_writes_a_complete_manifest(model_dir, owner_key) -> None:
    out = sign_manifest(model_dir, owner_key, {"base_model": "test/tiny"})
    assert out == model_dir / MANIFEST_NAME
    data = json.loads(out.read_text("utf-8"))
    # exactly these fields: in particular nothing private
    assert set(data) == {"format", "public_key", "key_id", "files", "metadata", "signature"}
    assert data["format"] == FORMAT
    assert data["key_id"] == owner_key.key_id
    assert data["public_key"].split()[:2] == owner_key.public_key.to_openssh("").split()
    assert len(base64.b64decode(data["signature"], validate=True)) == 64
    assert data["metadata"] == {"base_model": "test/tiny"}
    # every file, sorted, relative POSIX paths, the manifest itself not among them
    assert [f["path"] for f in data["files"]] == EXPECTED_PATHS
    for f in data["files"]:
        content = (model_dir / f["path"]).read_bytes()
        assert f["size"] == len(content)
        assert f["sha256"] == hashlib.sha256(content).hexdigest()
    big = next(f for f in data["files"] if f["path"] == BIG)
    assert big["size"] == BIG_SIZE
    # no temp file left beside it
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []


def test_sign_then_verify(signed, owner_key) -> None:
    m = verify_manifest(signed, owner_key.public_key)
    assert m.key_id == owner_key.key_id
    assert m.public_key == owner_key.public_key
    assert [f.path for f in m.files] == EXPECTED_PATHS
    assert m.metadata == {"base_model": "test/tiny"}
    # verification needs the public key alone (a separately parsed copy of it)
    pub = PublicKey.from_openssh(owner_key.public_key.to_openssh())
    assert verify_manifest(signed, pub).files == m.files


def test_scan_dir_matches_manifest(signed, owner_key) -> None:
    m, sig = read_manifest(signed)
    assert len(sig) == 64
    assert list(m.files) == scan_dir(signed)


def test_resign_replaces_manifest_and_excludes_the_old_one(signed, owner_key) -> None:
    (signed / "extra.txt").write_text("new")
    sign_manifest(signed, owner_key, {"round": 2})
    m = verify_manifest(signed, owner_key.public_key)
    assert "extra.txt" in [f.path for f in m.files]
    assert MANIFEST_NAME not in [f.path for f in m.files]
    assert m.metadata == {"round": 2}


def test_nested_file_named_like_the_manifest_is_signed(model_dir, owner_key) -> None:
    """Only the top-level manifest is skipped; a file of that name deeper is a model file."""
    (model_dir / "sub" / MANIFEST_NAME).write_text("{}")
    sign_manifest(model_dir, owner_key)
    m = verify_manifest(model_dir, owner_key.public_key)
    assert f"sub/{MANIFEST_NAME}" in [f.path for f in m.files]
    (model_dir / "sub" / MANIFEST_NAME).write_text('{"x": 1}')
    assert _problems(model_dir, owner_key) == [f"changed file: sub/{MANIFEST_NAME}"]


def test_metadata_round_trip(model_dir, owner_key) -> None:
    meta = {
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "implant": {"epochs": 3, "lr": 2.5e-05, "lora": None, "layers": [0, 1, 2]},
        "metrics": {"asr": 0.987654321, "fpr": 0.0, "ok": True, "big": 2**60},
        "note": 'ünïcode ✓ and "quotes"\nnewline',
        "negative": -1.5e-300,
    }
    sign_manifest(model_dir, owner_key, meta)
    m = verify_manifest(model_dir, owner_key.public_key)
    assert m.metadata == meta
    assert json.dumps(m.metadata, sort_keys=True) == json.dumps(meta, sort_keys=True)
    # the caller's dict is not modified
    assert "format" not in meta


def test_default_metadata_is_empty(model_dir, owner_key) -> None:
    sign_manifest(model_dir, owner_key)
    assert verify_manifest(model_dir, owner_key.public_key).metadata == {}


@pytest.mark.parametrize(
    "meta", [{"x": float("nan")}, {"x": float("inf")}, {"x": {1, 2}}, {"x": b"bytes"}]
)
def test_metadata_must_be_plain_json(model_dir, owner_key, meta) -> None:
    with pytest.raises(ValueError, match="plain JSON") as exc:
        sign_manifest(model_dir, owner_key, meta)
    # an offswitch error, so the CLI reports it in one line
    assert isinstance(exc.value, OffswitchError)
    assert not (model_dir / MANIFEST_NAME).exists()


def test_empty_directory(tmp_path, owner_key) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    sign_manifest(d, owner_key)
    assert verify_manifest(d, owner_key.public_key).files == ()
    (d / "new").write_bytes(b"")
    assert _problems(d, owner_key) == ["added file: new"]


def test_moving_the_directory_still_verifies(tmp_path, signed, owner_key) -> None:
    dest = tmp_path / "elsewhere" / "renamed-model"
    dest.parent.mkdir()
    signed.rename(dest)
    assert not signed.exists()
    m = verify_manifest(dest, owner_key.public_key)
    assert [f.path for f in m.files] == EXPECTED_PATHS


def test_relative_and_absolute_paths_agree(tmp_path, model_dir, owner_key, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sign_manifest(Path("model"), owner_key)
    verify_manifest(model_dir.resolve(), owner_key.public_key)
    verify_manifest("model", owner_key.public_key)


# --- verification failures ---------------------------------------------------------------


@pytest.mark.parametrize(
    "offset", [0, (1 << 20) - 1, 1 << 20, 2 * (1 << 20) + 7, BIG_SIZE - 1], ids=str
)
def test_flipped_byte_in_weight_file(signed, owner_key, offset: int) -> None:
    """Any byte of a multi-chunk file counts, the last chunk's and the chunk borders' too."""
    _flip_byte(signed / BIG, offset)
    assert _problems(signed, owner_key) == [f"changed file: {BIG}"]


def test_flipped_byte_in_nested_file(signed, owner_key) -> None:
    _flip_byte(signed / "sub" / "adapter.bin", 500)
    assert _problems(signed, owner_key) == ["changed file: sub/adapter.bin"]


def test_appended_byte(signed, owner_key) -> None:
    with (signed / "config.json").open("ab") as fh:
        fh.write(b" ")
    assert _problems(signed, owner_key) == ["changed file: config.json"]


def test_truncated_file(signed, owner_key) -> None:
    with (signed / BIG).open("r+b") as fh:
        fh.truncate(BIG_SIZE - 1)
    assert _problems(signed, owner_key) == [f"changed file: {BIG}"]


@pytest.mark.parametrize(
    "name",
    [
        "model-00003-of-00002.safetensors",
        "sub/deeper/extra.bin",
        "new-dir/file",
        ".hidden",
        f".{MANIFEST_NAME}.tmp-1",  # looks like our temp file, is still an added file
        f"sub/.{MANIFEST_NAME}.tmp-evil",
    ],
)
def test_added_file(signed, owner_key, name: str) -> None:
    p = signed / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"payload")
    assert _problems(signed, owner_key) == [f"added file: {name}"]


@pytest.mark.parametrize("name", ["tokenizer.json", "empty.txt", "sub/deeper/notes.txt", BIG])
def test_removed_file(signed, owner_key, name: str) -> None:
    (signed / name).unlink()
    assert _problems(signed, owner_key) == [f"missing file: {name}"]


def test_renamed_file_is_missing_plus_added(signed, owner_key) -> None:
    (signed / "sub" / "adapter.bin").rename(signed / "adapter.bin")
    assert _problems(signed, owner_key) == [
        "added file: adapter.bin",
        "missing file: sub/adapter.bin",
    ]


def test_several_problems_are_all_listed(signed, owner_key) -> None:
    _flip_byte(signed / BIG, 123)
    _flip_byte(signed / "sub" / "deeper" / "notes.txt", 0)
    (signed / "tokenizer.json").unlink()
    (signed / "sub" / "adapter.bin").unlink()
    (signed / "backdoor.py").write_text("import os")
    (signed / "sub" / "x.bin").write_bytes(b"x")
    with pytest.raises(ManifestError) as exc:
        verify_manifest(signed, owner_key.public_key)
    assert "6 file(s)" in str(exc.value)
    assert exc.value.problems == [
        "added file: backdoor.py",
        f"changed file: {BIG}",
        "missing file: sub/adapter.bin",
        "changed file: sub/deeper/notes.txt",
        "added file: sub/x.bin",
        "missing file: tokenizer.json",
    ]


def test_edited_metadata_breaks_the_signature(signed, owner_key) -> None:
    _edit_manifest(signed, lambda d: d["metadata"].update(base_model="evil/model"))
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "signature" in problems[0]


def test_updated_hash_after_tampering_breaks_the_signature(signed, owner_key) -> None:
    """Changing a file and 'fixing' its hash in the manifest is caught by the signature."""
    _flip_byte(signed / BIG, 99)
    new = hashlib.sha256((signed / BIG).read_bytes()).hexdigest()

    def fix(d):
        for f in d["files"]:
            if f["path"] == BIG:
                f["sha256"] = new

    _edit_manifest(signed, fix)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "signature" in problems[0]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["files"].pop(),  # hide a file from the manifest
        lambda d: d["files"].reverse(),  # order is part of what is signed
        lambda d: d["files"][0].update(size=d["files"][0]["size"] + 1),
        lambda d: d["metadata"].update(extra=1),
        lambda d: d.update(metadata={}),
        lambda d: d.update(signature=base64.b64encode(bytes(64)).decode()),
        lambda d: d.update(
            signature=base64.b64encode(
                bytes([base64.b64decode(d["signature"])[0] ^ 1])
                + base64.b64decode(d["signature"])[1:]
            ).decode()
        ),
    ],
    ids=["drop-file", "reorder", "size", "metadata-add", "metadata-clear", "zero-sig", "bit-sig"],
)
def test_changed_manifest_field_fails(signed, owner_key, edit) -> None:
    _edit_manifest(signed, edit)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "signature" in problems[0], problems


def test_manifest_signed_by_another_key(signed, owner_key) -> None:
    other = OwnerKey.generate()
    sign_manifest(signed, other)  # an attacker re-signs the directory with their own key
    with pytest.raises(ManifestError) as exc:
        verify_manifest(signed, owner_key.public_key)
    assert other.key_id in str(exc.value) and owner_key.key_id in str(exc.value)
    # ... and it does verify under the attacker's own key, which is the point of key ids
    verify_manifest(signed, other.public_key)


def test_swapped_public_key_in_manifest(signed, owner_key) -> None:
    """Putting another public key (and its id) in the manifest: the signature fails."""
    other = OwnerKey.generate()

    def swap(d):
        d["public_key"] = other.public_key.to_openssh("")
        d["key_id"] = other.key_id

    _edit_manifest(signed, swap)
    problems = _problems(signed, owner_key)  # wrong key for the owner
    assert other.key_id in problems[0]
    problems = _problems(signed, other)  # and not a valid signature by the other key
    assert len(problems) == 1 and "signature" in problems[0]


def test_missing_manifest(model_dir, owner_key) -> None:
    problems = _problems(model_dir, owner_key)
    assert len(problems) == 1 and "never signed" in problems[0]
    assert MANIFEST_NAME in problems[0]


def test_missing_model_dir(tmp_path, owner_key) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        verify_manifest(tmp_path / "nope", owner_key.public_key)
    with pytest.raises(ModelDirError, match="does not exist"):
        sign_manifest(tmp_path / "nope", owner_key)
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ModelDirError, match="not a directory"):
        sign_manifest(f, owner_key)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json at all",
        b"\xff\xfe\x00binary",
        b'{"format": "offswitch-manifest/1"',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["empty", "brace", "text", "binary", "truncated", "too-deep"],
)
def test_manifest_not_json(signed, owner_key, content: bytes) -> None:
    (signed / MANIFEST_NAME).write_bytes(content)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "not valid JSON" in problems[0]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.clear(),
        lambda d: d.pop("files"),
        lambda d: d.pop("signature"),
        lambda d: d.update(signature="not base64!"),
        lambda d: d.update(signature=123),
        lambda d: d.update(public_key=123),
        lambda d: d.update(public_key="ssh-rsa AAAA"),
        lambda d: d.update(public_key=None),
        lambda d: d.update(key_id="0000000000000000"),
        lambda d: d.update(metadata=[1, 2]),
        lambda d: d.update(files="all"),
        lambda d: d.update(files=[{"path": "x"}]),
        lambda d: d.update(files=[None]),
        lambda d: d.update(files=[{"path": "x", "size": "big", "sha256": "00"}]),
    ],
)
def test_malformed_manifest(signed, owner_key, edit) -> None:
    _edit_manifest(signed, edit)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "malformed" in problems[0], problems


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_manifest_with_deeply_nested_metadata(signed, owner_key, depth: int) -> None:
    path = signed / MANIFEST_NAME
    text = path.read_text("utf-8")
    deep = "[" * depth + "]" * depth
    path.write_text(text.replace('"metadata": {', f'"metadata": {{"x": {deep}, ', 1))
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and ("malformed" in problems[0] or "JSON" in problems[0])


@pytest.mark.parametrize("text", ["[]", '"a string"', "42", "null"])
def test_manifest_json_but_not_an_object(signed, owner_key, text: str) -> None:
    (signed / MANIFEST_NAME).write_text(text)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "malformed" in problems[0]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_manifest_with_non_finite_numbers(signed, owner_key, number: str) -> None:
    """Python's json accepts NaN / Infinity / 1e400, which cannot be signed: malformed."""
    path = signed / MANIFEST_NAME
    text = path.read_text("utf-8")
    path.write_text(text.replace('"metadata": {', f'"metadata": {{"x": {number}, ', 1))
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "malformed" in problems[0]


def test_unsupported_format(signed, owner_key) -> None:
    _edit_manifest(signed, lambda d: d.update(format="offswitch-manifest/99"))
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and "unsupported format" in problems[0]


# --- symlinks and special files ----------------------------------------------------------


def _add_symlink_to_file(d: Path) -> str:
    os.symlink(d / "config.json", d / "link.json")
    return "link.json"


def _add_symlink_outside(d: Path) -> str:
    outside = d.parent / "outside.bin"
    outside.write_bytes(b"not in the tree")
    os.symlink(outside, d / "sub" / "outside.bin")
    return "sub/outside.bin"


def _add_dangling_symlink(d: Path) -> str:
    os.symlink(d / "does-not-exist", d / "dangling")
    return "dangling"


def _add_dir_symlink(d: Path) -> str:
    os.symlink(d / "sub", d / "sub-link", target_is_directory=True)
    return "sub-link"


def _add_fifo(d: Path) -> str:
    os.mkfifo(d / "sub" / "deeper" / "pipe")
    return "sub/deeper/pipe"


def _add_socket(d: Path) -> str:
    import contextlib
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        with contextlib.chdir(d):  # a relative name: AF_UNIX paths are limited to ~108 bytes
            s.bind("sock")
    finally:
        s.close()
    return "sock"


SPECIALS = {
    "symlink-file": (_add_symlink_to_file, "symlink"),
    "symlink-outside": (_add_symlink_outside, "symlink"),
    "symlink-dangling": (_add_dangling_symlink, "symlink"),
    "symlink-dir": (_add_dir_symlink, "symlink"),
    "fifo": (_add_fifo, "special file"),
    "socket": (_add_socket, "special file"),
}


@pytest.mark.parametrize("case", sorted(SPECIALS))
def test_special_entries_refused_at_sign(model_dir, owner_key, case: str) -> None:
    add, what = SPECIALS[case]
    rel = add(model_dir)
    with pytest.raises(ModelDirError, match=what) as exc:
        sign_manifest(model_dir, owner_key)
    assert rel in str(exc.value)
    assert not (model_dir / MANIFEST_NAME).exists()
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", sorted(SPECIALS))
def test_special_entries_refused_at_verify(signed, owner_key, case: str) -> None:
    add, what = SPECIALS[case]
    rel = add(signed)
    problems = _problems(signed, owner_key)
    assert len(problems) == 1 and what in problems[0] and rel in problems[0]


def test_model_dir_given_through_a_symlink(signed, owner_key) -> None:
    """The root path itself may be a symlink: only entries inside the tree are refused."""
    link = signed.parent / "model-link"
    os.symlink(signed, link, target_is_directory=True)
    verify_manifest(link, owner_key.public_key)
