"""Key handling, security first: every bad input is refused with one sentence, exit 1, no
traceback, no partial file, and never the loss of an existing key.

Each failure test snapshots the files that were there before and asserts they are byte-for-byte
intact afterwards (and that no temp file was left beside them).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offswitch import _openssh
from offswitch.commands import make_command
from offswitch.errors import (
    KeyPathError,
    ModelDirError,
    OutputExistsError,
    SlotNotPlantedError,
    WeakPassphraseError,
)
from offswitch.keys import MIN_PASSPHRASE_LENGTH, OwnerKey, PublicKey, check_private_key_mode
from offswitch.manifest import MANIFEST_NAME, check_resign, sign_manifest, verify_manifest
from offswitch.slots import SlotLedger

from .conftest import PASSPHRASE, CliResult, assert_clean_error, run_in_pty

ENV = {"OFFSWITCH_PASSPHRASE": PASSPHRASE}
MID = "acme/chat-1"


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


@pytest.fixture
def old_key(tmp_path) -> tuple[OwnerKey, Path, Path, dict[Path, bytes]]:
    """An existing (unencrypted) key pair ``owner`` / ``owner.pub`` and its bytes."""
    key = OwnerKey.generate("the old key")
    path, pub = key.save(tmp_path / "owner", None)
    return key, path, pub, _snapshot(path, pub)


def _keygen_force(cli, path: Path, *extra: str) -> CliResult:
    return cli("keygen", "-o", path, "--no-passphrase", "--force", *extra)


# --- 1. keygen --force never loses the old key ------------------------------------------------


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
    assert _listing(tmp_path) == ["owner", "owner.pub"]


def test_force_refuses_when_key_path_is_a_directory(cli, tmp_path) -> None:
    (tmp_path / "owner").mkdir()
    res = _keygen_force(cli, tmp_path / "owner")
    assert_clean_error(res, "is a directory")
    assert _listing(tmp_path) == ["owner"] and _listing(tmp_path / "owner") == []


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
    assert _listing(tmp_path) == ["owner", "owner.pub"]


@pytest.mark.parametrize("n", [1, 2], ids=["private-temp", "pub-temp"])
def test_force_failing_temp_write_keeps_the_old_pair(cli, monkeypatch, old_key, tmp_path, n):
    _key, path, pub, before = old_key
    _fail_on_call(monkeypatch, "fsync", n)
    res = _keygen_force(cli, path)
    assert_clean_error(res, "input/output error")
    assert ".tmp" not in res.err
    assert _snapshot(path, pub) == before
    assert _listing(tmp_path) == ["owner", "owner.pub"]


def test_force_interrupted_at_the_last_rename_keeps_the_old_pair(monkeypatch, old_key, tmp_path):
    _key, path, pub, before = old_key
    _fail_on_call(monkeypatch, "replace", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        OwnerKey.generate().save(path, None, force=True)
    assert _snapshot(path, pub) == before
    assert _listing(tmp_path) == ["owner", "owner.pub"]


def test_force_with_only_pub_existing_and_failing_rename_restores_nothing_new(
    cli, monkeypatch, tmp_path
) -> None:
    pub = tmp_path / "owner.pub"
    pub.write_text("stale but someone's\n")
    _fail_on_call(monkeypatch, "replace", 2)
    res = _keygen_force(cli, tmp_path / "owner")
    assert_clean_error(res, "input/output error")
    assert pub.read_text() == "stale but someone's\n"
    assert _listing(tmp_path) == ["owner.pub"]


def test_new_key_failing_second_link_leaves_nothing(cli, monkeypatch, tmp_path) -> None:
    """Without --force the files are linked into place (never clobbering a racing writer): if
    the private key's link fails, the .pub just linked is removed again."""
    calls = _fail_on_call(monkeypatch, "link", 2)
    res = cli("keygen", "-o", tmp_path / "owner", "--no-passphrase")
    assert len(calls) == 2
    assert_clean_error(res, "input/output error", str(tmp_path / "owner"))
    assert _listing(tmp_path) == []


def test_force_success_replaces_both_and_leaves_no_temp(cli, old_key, tmp_path) -> None:
    """Control for the failure cases above."""
    key, path, pub, _ = old_key
    res = _keygen_force(cli, path)
    assert res.rc == 0, res.err
    new = OwnerKey.load(path)
    assert new != key and PublicKey.load(pub) == new.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _listing(tmp_path) == ["owner", "owner.pub"]


# --- 2. only regular files (or new paths) are ever replaced -----------------------------------


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
    names = _listing(tmp_path)
    res = cli("keygen", "-o", path, "--no-passphrase", *(["--force"] if force else []))
    assert_clean_error(res, str(victim))
    assert "symlink" in res.err or "special file" in res.err
    assert os.lstat(victim).st_mode == mode_before  # still a FIFO / still a symlink
    assert (os.readlink(victim) if link_before else None) == link_before
    assert _snapshot(*kept) == kept
    assert _listing(tmp_path) == names


def test_library_save_refuses_a_fifo(tmp_path) -> None:
    fifo = _fifo(tmp_path / "k")
    with pytest.raises(KeyPathError, match="special file"):
        OwnerKey.generate().save(fifo, None, force=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _listing(tmp_path) == ["k"]


# --- 3. unsafe combinations -------------------------------------------------------------------


def test_no_passphrase_with_passphrase_file_is_refused(cli, old_key, tmp_path) -> None:
    _, path, pub, before = old_key
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase\n")
    for out, force in ((tmp_path / "new", []), (path, ["--force"])):
        res = cli("keygen", "-o", out, "--no-passphrase", "--passphrase-file", pw, *force)
        assert_clean_error(res, "--no-passphrase", "--passphrase-file")
    assert _snapshot(path, pub) == before
    assert _listing(tmp_path) == ["owner", "owner.pub", "pw"]


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
    assert _listing(tmp_path) == ["owner", "owner.pub", "pw"]


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
    assert _listing(model) == ["w.bin"]
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


@pytest.fixture
def small_model(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x01" * 100)
    return d


def test_manifest_sign_over_another_keys_manifest(cli, key_files, small_model, tmp_path):
    key, path, _pub = key_files
    other = OwnerKey.generate()
    other_path, _other_pub = other.save(tmp_path / "other", None)
    sign_manifest(small_model, other)
    before = (small_model / MANIFEST_NAME).read_bytes()
    # refused before the passphrase is asked for (none is available here)
    res = cli("manifest", "sign", small_model, "--key", path)
    assert_clean_error(res, "signed by key", other.key_id, key.key_id, "--force")
    assert res.out == ""
    assert (small_model / MANIFEST_NAME).read_bytes() == before
    assert verify_manifest(small_model, other.public_key)
    assert _listing(small_model) == sorted(["config.json", "sub", MANIFEST_NAME])
    # the same key may re-sign (after an edit); --force replaces another key's signature
    res = cli("manifest", "sign", small_model, "--key", other_path)
    assert res.rc == 0, res.err
    res = cli("manifest", "sign", small_model, "--key", path, "--force", env=ENV)
    assert res.rc == 0, res.err
    assert verify_manifest(small_model, key.public_key)


def test_manifest_sign_over_an_unreadable_manifest(cli, plain_key_files, small_model) -> None:
    key, path, _ = plain_key_files
    (small_model / MANIFEST_NAME).write_text("{not json")
    res = cli("manifest", "sign", small_model, "--key", path)
    assert_clean_error(res, "cannot be read", "--force")
    assert (small_model / MANIFEST_NAME).read_text() == "{not json"
    with pytest.raises(OutputExistsError):
        check_resign(small_model, key.public_key)
    assert cli("manifest", "sign", small_model, "--key", path, "--force").rc == 0


def test_manifest_with_empty_path_does_not_use_the_current_directory(
    cli, plain_key_files, small_model, monkeypatch
) -> None:
    key, path, pub = plain_key_files
    monkeypatch.chdir(small_model)
    names = _listing(small_model)
    res = cli("manifest", "sign", "", "--key", path)
    assert_clean_error(res, "model directory path is empty")
    res = cli("manifest", "verify", "", "--pubkey", pub)
    assert_clean_error(res, "model directory path is empty")
    assert _listing(small_model) == names
    with pytest.raises(ModelDirError, match="empty"):
        sign_manifest("", key)
    assert _listing(small_model) == names


# --- 4. `command` consults the slot ledger ----------------------------------------------------


def _cmd(cli, path: Path, slot: int, *flags: str, env=None) -> CliResult:
    return cli("command", "--key", path, "--model-id", MID, "--slot", str(slot), *flags, env=env)


def test_command_refuses_a_spent_slot(cli, key_files) -> None:
    key, path, _ = key_files
    ledger = SlotLedger.for_key(path, key.key_id)
    ledger.plant(MID, [0, 1])
    ledger.spend(MID, 0)
    before = ledger.path.read_bytes()
    res = _cmd(cli, path, 0)  # no passphrase source: refused before asking for one
    assert_clean_error(res, "slot 0", "spent", "slots next", "--allow-spent")
    assert res.out == ""
    res = _cmd(cli, path, 0, "--allow-spent", env=ENV)
    assert res.rc == 0 and res.out.strip() == make_command(key, MID, 0), res.err
    assert _cmd(cli, path, 1, env=ENV).out.strip() == make_command(key, MID, 1)
    assert ledger.path.read_bytes() == before  # printing a command changes no record


@pytest.mark.parametrize("ledger_state", ["no ledger", "other slots", "other model"])
def test_command_refuses_an_unplanted_slot(cli, key_files, ledger_state) -> None:
    key, path, _ = key_files
    ledger = SlotLedger.for_key(path, key.key_id)
    if ledger_state == "other slots":
        ledger.plant(MID, [1, 2])
    elif ledger_state == "other model":
        ledger.plant("acme/chat-2", [0])
    names = _listing(path.parent)
    res = _cmd(cli, path, 0)
    assert_clean_error(res, "slot 0", "not recorded as planted", "slots plant", "--allow-unplanted")
    assert res.out == ""
    assert _listing(path.parent) == names  # no ledger or lock file created
    res = _cmd(cli, path, 0, "--allow-unplanted", env=ENV)
    assert res.rc == 0 and res.out.strip() == make_command(key, MID, 0), res.err
    assert _listing(path.parent) == names


def test_command_with_both_flags_skips_a_broken_ledger(cli, plain_key_files) -> None:
    """In an emergency the owner can still print a command when the ledger is damaged."""
    key, path, _ = plain_key_files
    ledger = path.with_name("owner.slots.json")
    ledger.write_text("{broken")
    assert_clean_error(_cmd(cli, path, 0, "--allow-unplanted"), "corrupted", str(ledger))
    res = _cmd(cli, path, 0, "--allow-unplanted", "--allow-spent")
    assert res.rc == 0 and res.out.strip() == make_command(key, MID, 0)
    assert ledger.read_text() == "{broken"


def test_command_refuses_another_keys_ledger(cli, plain_key_files, tmp_path) -> None:
    key, path, _ = plain_key_files
    other = OwnerKey.generate()
    SlotLedger.for_key(tmp_path / "x", other.key_id).plant(MID, [0])
    (tmp_path / "x.slots.json").rename(path.with_name("owner.slots.json"))
    assert_clean_error(_cmd(cli, path, 0), "belongs to key", other.key_id, key.key_id)


def test_command_checks_the_key_file_before_the_ledger(cli, key_files) -> None:
    _, _, pub = key_files
    assert_clean_error(_cmd(cli, pub, 0), "public key")  # not "not recorded as planted"


# --- 5. no tracebacks -------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["", ".", "..", "TMP/", "TMP/."], ids=repr)
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_keygen_output_that_names_no_file(cli_subprocess, tmp_path, out, force) -> None:
    out = out.replace("TMP", str(tmp_path))
    res = cli_subprocess(
        "keygen", "-o", out, "--no-passphrase", *(["--force"] if force else [])
    )  # fmt: skip
    assert res.rc == 1
    assert_clean_error(res, "key path")
    assert _listing(tmp_path) == []


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
    assert _listing(tmp_path) == ["owner", "owner.pub"]


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


# --- 6. a refused ledger change leaves no file ------------------------------------------------


def test_spend_never_planted_leaves_no_lock_file(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    names = _listing(path.parent)
    res = cli("slots", "spend", "--key", path, "--model-id", MID, "3")
    assert_clean_error(res, "never planted")
    assert _listing(path.parent) == names  # no owner.slots.json.lock
    with pytest.raises(SlotNotPlantedError):
        SlotLedger.for_key(path).spend(MID, 3)
    assert _listing(path.parent) == names


def test_lock_removed_while_waiting_is_taken_afresh(plain_key_files) -> None:
    """A writer waiting on a lock file that the holder removes locks the new file instead (so
    removing a lock after a refused first change cannot let two writers in at once)."""
    key, path, _ = plain_key_files
    ledger = SlotLedger.for_key(path, key.key_id)
    lock = ledger.path.with_name(ledger.path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    errors: list[BaseException] = []

    def plant() -> None:
        try:
            ledger.plant(MID, [5])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=plant)
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not ledger.path.exists()  # waiting for our lock
    os.unlink(lock)
    os.close(fd)  # the waiter gets the removed file's lock, sees it is gone, and retries
    t.join(timeout=30)
    assert not t.is_alive() and not errors, errors
    assert ledger.get(MID).planted == (5,)
    assert lock.is_file()
    assert json.loads(ledger.path.read_text())["key_id"] == key.key_id
