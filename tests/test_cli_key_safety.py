"""Key handling, security first: every bad input is refused with one sentence, exit 1, no
traceback, no partial file, and never the loss of an existing key — keygen --force that fails
part-way, special files where a key goes, unsafe passphrase choices, private key files open to
others, and the passphrase prompt's failures.

Each failure test snapshots the files that were there before and asserts they are byte-for-byte
intact afterwards (and that no temp file was left beside them). The success case the failing
--force cases stand against is test_cli_keys.py::test_keygen_force_overwrites.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from offswitch import _openssh
from offswitch.commands import make_command
from offswitch.errors import KeyPathError, WeakPassphraseError
from offswitch.keys import MIN_PASSPHRASE_LENGTH, OwnerKey, PublicKey, check_private_key_mode
from offswitch.slots import SlotLedger

from ._cli import ENV, MID, listing
from .conftest import CliResult, assert_clean_error, run_in_pty


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    """Each file's bytes."""
    return {p: p.read_bytes() for p in paths}


@pytest.fixture
def old_key(tmp_path) -> tuple[OwnerKey, Path, Path, dict[Path, bytes]]:
    """An existing (unencrypted) key pair ``owner`` / ``owner.pub`` and its bytes."""
    key = OwnerKey.generate("the old key")
    path, pub = key.save(tmp_path / "owner", None)
    return key, path, pub, _snapshot(path, pub)


def _keygen_force(cli, path: Path, *extra: str) -> CliResult:
    return cli("keygen", "-o", path, "--no-passphrase", "--force", *extra)


# --- 1. keygen --force never loses the old key -----------------------------------------------


def test_force_refuses_when_pub_path_is_a_directory(cli, old_key, tmp_path) -> None:
    key, path, pub, before = old_key
    pub.unlink()
    pub.mkdir()
    (pub / "inside").write_text("keep me")
    res = _keygen_force(cli, path)
    assert_clean_error(res, str(pub), "is a directory")
    assert res.out == ""
    assert path.read_bytes() == before[path]  # the old private key is untouched
    assert OwnerKey.load(path) == key
    assert (pub / "inside").read_text() == "keep me"
    assert listing(tmp_path) == ["owner", "owner.pub"]


def test_force_refuses_when_key_path_is_a_directory(cli, tmp_path) -> None:
    (tmp_path / "owner").mkdir()
    res = _keygen_force(cli, tmp_path / "owner")
    assert_clean_error(res, "is a directory")
    assert listing(tmp_path) == ["owner"] and listing(tmp_path / "owner") == []


def _fail_on_call(monkeypatch, name: str, n: int, exc: BaseException | None = None) -> list:
    """Make ``os.<name>`` raise on its n-th call (1-based), like a full or failing disk."""
    real = getattr(os, name)
    calls: list = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise exc or OSError(errno.EIO, "Input/output error", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fake)
    return calls


@pytest.mark.parametrize("n", [1, 2], ids=["pub-rename", "private-rename"])
def test_force_failing_rename_keeps_the_old_pair(cli, monkeypatch, old_key, tmp_path, n) -> None:
    """keygen writes both temp files, renames .pub then the private key: a failure at either
    rename leaves the old pair exactly as it was (the .pub is put back)."""
    key, path, pub, before = old_key
    calls = _fail_on_call(monkeypatch, "replace", n)
    res = _keygen_force(cli, path)
    assert len(calls) >= n  # the failure really happened
    assert_clean_error(res, "input/output error")
    assert f"cannot use {pub if n == 1 else path}: " in res.err
    assert ".tmp" not in res.err  # names the user's file, not an internal temp file
    assert res.out == ""
    assert _snapshot(path, pub) == before
    assert OwnerKey.load(path) == key and PublicKey.load(pub) == key.public_key
    assert listing(tmp_path) == ["owner", "owner.pub"]


@pytest.mark.parametrize("n", [1, 2], ids=["private-temp", "pub-temp"])
def test_force_failing_temp_write_keeps_the_old_pair(cli, monkeypatch, old_key, tmp_path, n):
    _key, path, pub, before = old_key
    _fail_on_call(monkeypatch, "fsync", n)
    res = _keygen_force(cli, path)
    assert_clean_error(res, "input/output error")
    assert ".tmp" not in res.err
    assert _snapshot(path, pub) == before
    assert listing(tmp_path) == ["owner", "owner.pub"]


def test_force_interrupted_at_the_last_rename_keeps_the_old_pair(monkeypatch, old_key, tmp_path):
    _key, path, pub, before = old_key
    _fail_on_call(monkeypatch, "replace", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        OwnerKey.generate().save(path, None, force=True)
    assert _snapshot(path, pub) == before
    assert listing(tmp_path) == ["owner", "owner.pub"]


def test_force_with_only_pub_existing_and_failing_rename_restores_nothing_new(
    cli, monkeypatch, tmp_path
) -> None:
    pub = tmp_path / "owner.pub"
    pub.write_text("stale but someone's\n")
    _fail_on_call(monkeypatch, "replace", 2)
    res = _keygen_force(cli, tmp_path / "owner")
    assert_clean_error(res, "input/output error")
    assert pub.read_text() == "stale but someone's\n"
    assert listing(tmp_path) == ["owner.pub"]


def test_new_key_failing_second_link_leaves_nothing(cli, monkeypatch, tmp_path) -> None:
    """Without --force the files are linked into place (never clobbering a racing writer): if
    the private key's link fails, the .pub just linked is removed again."""
    calls = _fail_on_call(monkeypatch, "link", 2)
    res = cli("keygen", "-o", tmp_path / "owner", "--no-passphrase")
    assert len(calls) == 2
    assert_clean_error(res, "input/output error", str(tmp_path / "owner"))
    assert listing(tmp_path) == []


# --- 2. only regular files (or new paths) are ever replaced ----------------------------------


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _dir(p: Path) -> Path:
    p.mkdir()
    return p


def _file(p: Path) -> Path:
    p.write_text("a regular file elsewhere")
    return p


SPECIAL = {  # what to put at the key path (never /dev/null itself: tests must not touch it)
    "fifo": lambda d, name: _fifo(d / name),
    "symlink to fifo": lambda d, name: (d / name).symlink_to(_fifo(d / "a-fifo")),
    "symlink to dir": lambda d, name: (d / name).symlink_to(_dir(d / "a-dir")),
    "symlink to file": lambda d, name: (d / name).symlink_to(_file(d / "a-file")),
    "dangling symlink": lambda d, name: (d / name).symlink_to(d / "nowhere"),
}


@pytest.mark.parametrize("target", ["owner", "owner.pub"])
@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_keygen_never_replaces_special_files(cli, tmp_path, old_key, target, kind, force):
    _key, path, pub, _ = old_key
    victim = tmp_path / target
    victim.unlink()
    SPECIAL[kind](tmp_path, target)
    link_before = os.readlink(victim) if victim.is_symlink() else None
    mode_before = os.lstat(victim).st_mode
    kept = {p: p.read_bytes() for p in (path, pub) if p != victim}
    names = listing(tmp_path)
    res = cli("keygen", "-o", path, "--no-passphrase", *(["--force"] if force else []))
    assert_clean_error(res, str(victim))
    assert "symlink" in res.err or "special file" in res.err
    assert os.lstat(victim).st_mode == mode_before  # still a FIFO / still a symlink
    assert (os.readlink(victim) if link_before else None) == link_before
    assert _snapshot(*kept) == kept
    assert listing(tmp_path) == names


def test_library_save_refuses_a_fifo(tmp_path) -> None:
    fifo = _fifo(tmp_path / "k")
    with pytest.raises(KeyPathError, match="special file"):
        OwnerKey.generate().save(fifo, None, force=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["k"]


# --- 3. unsafe combinations ------------------------------------------------------------------


def test_no_passphrase_with_passphrase_file_is_refused(cli, old_key, tmp_path) -> None:
    _, path, pub, before = old_key
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase\n")
    for out, force in ((tmp_path / "new", []), (path, ["--force"])):
        res = cli("keygen", "-o", out, "--no-passphrase", "--passphrase-file", pw, *force)
        assert_clean_error(res, "--no-passphrase", "--passphrase-file")
    assert _snapshot(path, pub) == before
    assert listing(tmp_path) == ["owner", "owner.pub", "pw"]


SHORT = "x" * (MIN_PASSPHRASE_LENGTH - 1)
JUST = "y" * MIN_PASSPHRASE_LENGTH


@pytest.mark.parametrize("source", ["file", "env"])
def test_short_passphrase_is_refused(cli, old_key, tmp_path, source) -> None:
    _, path, pub, before = old_key
    pw = tmp_path / "pw"
    pw.write_text(SHORT + "\n")
    args = ["--passphrase-file", pw] if source == "file" else []
    env = {"OFFSWITCH_PASSPHRASE": SHORT} if source == "env" else None
    for out, force in ((tmp_path / "new", []), (path, ["--force"])):
        res = cli("keygen", "-o", out, *args, *force, env=env)
        assert_clean_error(res, "too short", f"at least {MIN_PASSPHRASE_LENGTH}")
        assert SHORT not in res.err
    assert _snapshot(path, pub) == before
    assert listing(tmp_path) == ["owner", "owner.pub", "pw"]


def test_passphrase_length_counts_characters(cli, tmp_path) -> None:
    out = tmp_path / "k"
    res = cli("keygen", "-o", out, env={"OFFSWITCH_PASSPHRASE": JUST})
    assert res.rc == 0, res.err
    wide = "鍵" * (MIN_PASSPHRASE_LENGTH - 1)  # 21 bytes, 7 characters: too short
    with pytest.raises(WeakPassphraseError):
        OwnerKey.generate().save(tmp_path / "w", wide, kdf_rounds=1)
    assert not (tmp_path / "w").exists()
    OwnerKey.generate().save(tmp_path / "w", wide + "鍵", kdf_rounds=1)


def test_existing_key_with_short_passphrase_still_loads(cli, tmp_path) -> None:
    """The minimum applies to new keys: a key made elsewhere (e.g. ssh-keygen) stays usable."""
    key = OwnerKey.generate()
    data = _openssh.serialize_private(bytes(key._seed), bytes(key.public_key), "", b"short", 1)
    path = tmp_path / "theirs"
    path.write_bytes(data)
    path.chmod(0o600)
    res = cli(
        "command", "--key", path, "--model-id", MID, "--slot", "0", "--allow-unplanted",
        env={"OFFSWITCH_PASSPHRASE": "short"},
    )  # fmt: skip
    assert res.rc == 0, res.err
    assert res.out.strip() == make_command(key, MID, 0)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602])
def test_private_key_open_to_others_is_refused(cli, key_files, tmp_path, mode) -> None:
    key, path, pub = key_files
    SlotLedger.for_key(path, key.key_id).plant(MID, [0])
    path.chmod(mode)
    before = _snapshot(path, pub)
    # no passphrase source: the refusal comes before any passphrase is asked for
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "0")
    assert_clean_error(res, f"permissions {mode:04o} for '{path}' are too open")
    assert res.out == ""
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    res = cli("manifest", "sign", model, "--key", path, env=ENV)
    assert_clean_error(res, "too open")
    assert listing(model) == ["w.bin"]
    assert _snapshot(path, pub) == before
    assert stat.S_IMODE(path.stat().st_mode) == mode  # we do not "fix" it behind the owner


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_key_for_owner_only_is_accepted(cli, key_files, mode) -> None:
    _key, path, _ = key_files
    path.chmod(mode)
    check_private_key_mode(path)
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "0", "--allow-unplanted",
              env=ENV)  # fmt: skip
    assert res.rc == 0, res.err


# --- 4. no tracebacks ------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["", ".", "..", "TMP/", "TMP/."], ids=repr)
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_keygen_output_that_names_no_file(cli_subprocess, tmp_path, out, force) -> None:
    out = out.replace("TMP", str(tmp_path))
    res = cli_subprocess(
        "keygen", "-o", out, "--no-passphrase", *(["--force"] if force else [])
    )  # fmt: skip
    assert res.rc == 1
    assert_clean_error(res, "key path")
    assert listing(tmp_path) == []


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "offswitch: error:" in ln]


@pytest.mark.parametrize(
    "answers, needle",
    [
        ([b"\x04"], "end of input"),  # Ctrl-D at the first prompt
        ([JUST.encode() + b"\n", b"\x04"], "end of input"),  # ...at "Repeat passphrase"
        ([b"abc\n"], "too short"),  # refused before asking to repeat it
        ([b"caf\xe9 latin-1 bytes\n"], "not valid UTF-8"),
    ],
    ids=["eof", "eof-at-repeat", "short", "not-utf8"],
)
def test_prompt_failures_are_one_sentence(tmp_path, old_key, answers, needle) -> None:
    _, path, pub, before = old_key
    rc, text = run_in_pty(["keygen", "-o", str(path), "--force"], answers)
    assert rc == 1, text
    assert "Traceback" not in text
    assert len(_error_lines(text)) == 1 and needle in text, text
    assert _snapshot(path, pub) == before
    assert listing(tmp_path) == ["owner", "owner.pub"]


def test_prompt_eof_when_loading_a_key(key_files) -> None:
    _, path, _ = key_files
    argv = ["command", "--key", str(path), "--model-id", MID, "--slot", "0", "--allow-unplanted"]
    rc, text = run_in_pty(argv, [b"\x04"])
    assert rc == 1 and "Traceback" not in text, text
    assert "end of input" in text and len(_error_lines(text)) == 1


def test_non_utf8_stdin_is_one_sentence(plain_key_files) -> None:
    """A command piped in as bytes that are not UTF-8, with a strict stdin decoder."""
    _, _, pub = plain_key_files
    env = {k: v for k, v in os.environ.items() if k != "OFFSWITCH_PASSPHRASE"}
    env["PYTHONIOENCODING"] = "utf-8"
    p = subprocess.run(
        [sys.executable, "-m", "offswitch.cli", "verify-command", "--pubkey", str(pub),
         "--model-id", MID, "-"],
        input=b"offswitch v1 \xff\xfe\n",
        capture_output=True,
        env=env,
        timeout=120,
    )  # fmt: skip
    res = CliResult(p.returncode, p.stdout.decode(), p.stderr.decode("utf-8", "replace"))
    assert res.rc == 1
    assert_clean_error(res, "not UTF-8")
