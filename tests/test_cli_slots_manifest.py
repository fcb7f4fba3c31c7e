"""`offswitch slots ...`, the slot ledger as `offswitch command` consults it, and `offswitch
manifest sign|verify`, through the real CLI entry point: what each prints, every bad input
refused in one sentence, and a refused or failing change that leaves the ledger or the manifest
as it was, with no lock or temp file behind."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offswitch.commands import make_command
from offswitch.errors import ModelDirError, OutputExistsError, SlotNotPlantedError
from offswitch.keys import OwnerKey
from offswitch.manifest import MANIFEST_NAME, check_resign, sign_manifest, verify_manifest
from offswitch.slots import SlotLedger

from ._cli import ENV, MID, listing
from .conftest import PASSPHRASE, CliResult, assert_clean_error
from .test_manifest import BIG, EXPECTED_PATHS, make_model_dir


def _hidden(directory: Path) -> list[str]:
    """Temp files an atomic write could leave behind (they start with a dot)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path / "model")


# --- slots -----------------------------------------------------------------------------------


def test_slots_round_trip(cli, key_files) -> None:
    """plant / next / spend / list; an encrypted key needs no passphrase for the ledger."""
    _, path, pub = key_files
    res = cli("slots", "list", "--key", path)
    assert (res.rc, res.out, res.err) == (0, "no slots recorded\n", "")

    res = cli("slots", "plant", "--key", path, "--model-id", MID, "3", "1", "0", "2")
    assert res.rc == 0, res.err
    assert res.out == f"{MID}: planted slots 0, 1, 2, 3\n"
    assert path.with_name("owner.slots.json").is_file()

    res = cli("slots", "next", "--key", path, "--model-id", MID)
    assert (res.rc, res.out) == (0, "0\n")

    res = cli("slots", "spend", "--key", path, "--model-id", MID, "0")
    assert (res.rc, res.out) == (0, f"{MID}: slot 0 marked spent\n")

    res = cli("slots", "next", "--key", path, "--model-id", MID)
    assert (res.rc, res.out) == (0, "1\n")

    res = cli("slots", "spend", "--key", path, "--model-id", MID, "2")
    assert res.rc == 0
    res = cli("slots", "list", "--key", path)
    assert (res.rc, res.out) == (0, f"{MID}: planted slots 0, 1, 2, 3; unspent 1, 3; spent 0, 2\n")

    # the .pub path reaches the same ledger
    via_pub = cli("slots", "list", "--key", pub)
    assert via_pub.out == res.out
    res = cli("slots", "spend", "--key", pub, "--model-id", MID, "1")
    assert res.rc == 0
    res = cli("slots", "next", "--key", path, "--model-id", MID)
    assert res.out == "3\n"
    assert _hidden(path.parent) == []


def test_a_symlinked_ledger_is_followed_never_replaced(cli, plain_key_files, tmp_path) -> None:
    _, path, _ = plain_key_files
    elsewhere = tmp_path / "vault"
    elsewhere.mkdir()
    real = elsewhere / "ledger.json"
    link = path.with_name("owner.slots.json")
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0", "1").rc == 0
    link.rename(real)
    link.symlink_to(real)
    assert cli("slots", "spend", "--key", path, "--model-id", MID, "0").rc == 0
    assert link.is_symlink()  # still the link, and the linked ledger has the spend
    assert json.loads(real.read_text())["models"][MID]["spent"].keys() == {"0"}
    res = cli("slots", "next", "--key", path, "--model-id", MID)
    assert res.out == "1\n"  # slot 0 is not handed out again
    assert _hidden(path.parent) == [] and _hidden(elsewhere) == []


def test_a_key_reached_through_a_symlink_uses_the_real_keys_ledger(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    link = path.with_name("alias")
    link.symlink_to(path)
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0", "1").rc == 0
    assert cli("slots", "spend", "--key", path, "--model-id", MID, "0").rc == 0
    res = cli("command", "--key", link, "--model-id", MID, "--slot", "0")
    assert_clean_error(res, "spent")
    assert res.out == ""
    assert cli("slots", "next", "--key", link, "--model-id", MID).out == "1\n"
    assert not link.with_name("alias.slots.json").exists()


def test_a_read_only_ledger_is_refused_and_keeps_its_mode(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0", "1").rc == 0
    ledger = path.with_name("owner.slots.json")
    ledger.chmod(0o444)
    before = ledger.read_bytes()
    assert_clean_error(cli("slots", "spend", "--key", path, "--model-id", MID, "0"), "read-only")
    assert ledger.read_bytes() == before and (ledger.stat().st_mode & 0o777) == 0o444
    assert cli("slots", "next", "--key", path, "--model-id", MID).out == "0\n"  # reads work
    ledger.chmod(0o600)  # a writable ledger keeps its own mode across a change
    assert cli("slots", "spend", "--key", path, "--model-id", MID, "0").rc == 0
    assert (ledger.stat().st_mode & 0o777) == 0o600


def test_a_fifo_where_a_file_is_meant_is_refused_without_hanging(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    ledger = path.with_name("owner.slots.json")
    os.mkfifo(ledger)
    assert_clean_error(
        cli("slots", "plant", "--key", path, "--model-id", MID, "0"), "FIFO, device or socket"
    )
    fifo_key = path.with_name("fifo-key")
    os.mkfifo(fifo_key)
    assert_clean_error(cli("key-id", fifo_key), "FIFO, device or socket")
    assert_clean_error(cli("verify-command", "--pubkey", fifo_key, "--model-id", MID, "x"), "FIFO")
    assert_clean_error(cli("command", "--key", fifo_key, "--model-id", MID, "--slot", "0"), "FIFO")


def test_an_unsupported_ledger_version_is_named_not_called_corrupted(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    path.with_name("owner.slots.json").write_text(
        json.dumps({"format": "offswitch-slots/2", "models": {}})
    )
    res = cli("slots", "list", "--key", path)
    assert_clean_error(res, "offswitch-slots/2", "upgrade")
    assert "corrupted" not in res.err


def test_slots_list_several_models(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    assert cli("slots", "plant", "--key", path, "--model-id", "zeta/m", "5").rc == 0
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0", "1").rc == 0
    res = cli("slots", "list", "--key", path)
    assert res.out.splitlines() == [
        f"{MID}: planted slots 0, 1; unspent 0, 1; spent none",
        "zeta/m: planted slots 5; unspent 5; spent none",
    ]
    res = cli("slots", "list", "--key", path, "--model-id", "zeta/m")
    assert res.out == "zeta/m: planted slots 5; unspent 5; spent none\n"
    res = cli("slots", "list", "--key", path, "--model-id", "unknown")
    assert res.out == "unknown: planted slots none; unspent none; spent none\n"


def test_slots_next_when_all_spent(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    cli("slots", "plant", "--key", path, "--model-id", MID, "7")
    cli("slots", "spend", "--key", path, "--model-id", MID, "7")
    res = cli("slots", "next", "--key", path, "--model-id", MID)
    assert_clean_error(res, "spent")
    assert res.out == ""
    res = cli("slots", "list", "--key", path, "--model-id", MID)
    assert res.out == f"{MID}: planted slots 7; unspent none; spent 7\n"


SLOT_ERRORS = {
    "unplanted": (["spend", "--model-id", MID, "9"], "never planted"),
    "unknown model": (["spend", "--model-id", "other", "0"], "never planted"),
    "spent twice": (["spend", "--model-id", MID, "1"], "already spent"),
    "negative spend": (["spend", "--model-id", MID, "-1"], "no sign"),
    "negative plant": (["plant", "--model-id", MID, "2", "-3"], "no sign"),
    "too large plant": (["plant", "--model-id", MID, "65536"], "out of range"),
    "too large spend": (["spend", "--model-id", MID, "4294967296"], "out of range"),
    "next nothing planted": (["next", "--model-id", "other"], "no slots"),
    "bad model id": (["plant", "--model-id", "has space", "1"], "model id"),
    "empty model id": (["next", "--model-id", ""], "model id is empty"),
}


@pytest.mark.parametrize("case", sorted(SLOT_ERRORS))
def test_slots_bad_input(cli, plain_key_files, case: str) -> None:
    _, path, _ = plain_key_files
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0", "1").rc == 0
    assert cli("slots", "spend", "--key", path, "--model-id", MID, "1").rc == 0
    ledger = path.with_name("owner.slots.json")
    before = ledger.read_bytes()
    argv, needle = SLOT_ERRORS[case]
    res = cli("slots", argv[0], "--key", path, *argv[1:])
    assert res.rc == 1
    assert_clean_error(res, needle)
    assert res.out == ""
    assert ledger.read_bytes() == before  # nothing changed
    assert _hidden(path.parent) == []


def test_slots_non_integer_is_refused(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    res = cli("slots", "spend", "--key", path, "--model-id", MID, "two")
    assert_clean_error(res, "slot 'two' is not a number")
    assert_clean_error(cli("slots", "plant", "--key", path, "--model-id", MID, "1", "07"), "07")


def test_slots_missing_key(cli, tmp_path) -> None:
    res = cli("slots", "list", "--key", tmp_path / "nope")
    assert_clean_error(res, "does not exist")
    assert not (tmp_path / "nope.slots.json").exists()


@pytest.mark.parametrize("content", [b"{broken", b"\xff\xfe\x00", b"[]"])
def test_slots_corrupted_ledger(cli, plain_key_files, content: bytes) -> None:
    _, path, _ = plain_key_files
    ledger = path.with_name("owner.slots.json")
    ledger.write_bytes(content)
    for argv in (
        ["list"],
        ["plant", "--model-id", MID, "0"],
        ["spend", "--model-id", MID, "0"],
        ["next", "--model-id", MID],
    ):
        res = cli("slots", argv[0], "--key", path, *argv[1:])
        assert_clean_error(res, "corrupted", str(ledger))
    assert ledger.read_bytes() == content


def test_slots_ledger_of_another_key(cli, tmp_path, plain_key_files) -> None:
    key, path, _ = plain_key_files
    other = OwnerKey.generate()
    other_path, other_pub = other.save(tmp_path / "other", None)
    assert cli("slots", "plant", "--key", path, "--model-id", MID, "0").rc == 0
    other_path.with_name("other.slots.json").write_bytes(
        path.with_name("owner.slots.json").read_bytes()
    )
    res = cli("slots", "next", "--key", other_pub, "--model-id", MID)
    assert_clean_error(res, "belongs to key", key.key_id, other.key_id)


# --- slots: a refused ledger change leaves no file -------------------------------------------


def test_spend_never_planted_leaves_no_lock_file(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    names = listing(path.parent)
    res = cli("slots", "spend", "--key", path, "--model-id", MID, "3")
    assert_clean_error(res, "never planted")
    assert listing(path.parent) == names  # no owner.slots.json.lock
    with pytest.raises(SlotNotPlantedError):
        SlotLedger.for_key(path).spend(MID, 3)
    assert listing(path.parent) == names


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


# --- `command` consults the slot ledger ------------------------------------------------------


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
    names = listing(path.parent)
    res = _cmd(cli, path, 0)
    assert_clean_error(res, "slot 0", "not recorded as planted", "slots plant", "--allow-unplanted")
    assert res.out == ""
    assert listing(path.parent) == names  # no ledger or lock file created
    res = _cmd(cli, path, 0, "--allow-unplanted", env=ENV)
    assert res.rc == 0 and res.out.strip() == make_command(key, MID, 0), res.err
    assert listing(path.parent) == names


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


# --- manifest: success -----------------------------------------------------------------------


def test_manifest_sign_and_verify(cli, key_files, model_dir) -> None:
    key, path, pub = key_files
    res = cli("manifest", "sign", model_dir, "--key", path, env=ENV)
    assert res.rc == 0, res.err
    assert res.out == ""  # stdout is for results; what was written is said on stderr
    assert f"wrote {model_dir / MANIFEST_NAME} (signed by key id {key.key_id})\n" in res.err
    assert (model_dir / MANIFEST_NAME).is_file()
    assert _hidden(model_dir) == []
    res = cli("manifest", "verify", model_dir, "--pubkey", pub)
    assert res.rc == 0, res.err
    assert res.out == (
        f"OK: {len(EXPECTED_PATHS)} files match the manifest signed by key id {key.key_id}\n"
    )
    assert res.err == ""


def test_manifest_sign_with_passphrase_file_and_metadata(cli, key_files, model_dir, tmp_path):
    key, path, pub = key_files
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    meta = {"base_model": "test/tiny", "metrics": {"asr": 0.99}, "slots": [0, 1, 2]}
    mf = tmp_path / "meta.json"
    mf.write_text(json.dumps(meta))
    res = cli(
        "manifest", "sign", model_dir, "--key", path, "--passphrase-file", pf, "--metadata", mf
    )
    assert res.rc == 0, res.err
    data = json.loads((model_dir / MANIFEST_NAME).read_text())
    assert data["metadata"] == meta
    assert data["key_id"] == key.key_id
    assert cli("manifest", "verify", model_dir, "--pubkey", pub).rc == 0


def test_manifest_plain_key_and_moved_dir(cli, plain_key_files, model_dir, tmp_path) -> None:
    _, path, pub = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    moved = tmp_path / "moved" / "somewhere-else"
    moved.parent.mkdir()
    model_dir.rename(moved)
    res = cli("manifest", "verify", moved, "--pubkey", pub)
    assert res.rc == 0, res.err


# --- manifest: verification failures ---------------------------------------------------------


def test_manifest_verify_names_each_changed_added_missing_file(cli, plain_key_files, model_dir):
    _, path, pub = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    with (model_dir / BIG).open("r+b") as fh:
        fh.seek(2 * (1 << 20) + 3)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0x80]))
    (model_dir / "sub" / "added.bin").write_bytes(b"new")
    (model_dir / "tokenizer.json").unlink()
    res = cli("manifest", "verify", model_dir, "--pubkey", pub)
    assert res.rc == 1
    assert res.out == ""
    assert "Traceback" not in res.err
    lines = res.err.splitlines()
    assert "verification failed" in lines[0] and "3 file(s)" in lines[0]
    assert [ln.strip() for ln in lines[1:]] == [
        f"changed file: {BIG}",
        "added file: sub/added.bin",
        "missing file: tokenizer.json",
    ]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: (d / "config.json").write_text("{}"), "changed file: config.json"),
        (lambda d: (d / "sub" / "deeper" / "x").write_text("x"), "added file: sub/deeper/x"),
        (lambda d: (d / "empty.txt").unlink(), "missing file: empty.txt"),
    ],
    ids=["changed", "added", "missing"],
)
def test_manifest_verify_single_problem(cli, plain_key_files, model_dir, change, expected):
    _, path, pub = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    change(model_dir)
    res = cli("manifest", "verify", model_dir, "--pubkey", pub)
    assert res.rc == 1 and res.out == ""
    assert "Traceback" not in res.err
    assert expected in res.err
    assert len(res.err.splitlines()) == 2  # the summary and the one file


# --- manifest: bad input, one clear line each ------------------------------------------------


def _tamper_metadata(d: Path) -> None:
    p = d / MANIFEST_NAME
    data = json.loads(p.read_text())
    data["metadata"]["base_model"] = "evil/model"
    p.write_text(json.dumps(data))


def _manifest_text(text: str):
    return lambda d: (d / MANIFEST_NAME).write_text(text)


def _manifest_field(**fields):
    def edit(d: Path) -> None:
        p = d / MANIFEST_NAME
        data = json.loads(p.read_text())
        data.update(fields)
        p.write_text(json.dumps(data))

    return edit


VERIFY_ERRORS = {
    "missing manifest": (lambda d: (d / MANIFEST_NAME).unlink(), "never signed"),
    "tampered manifest": (_tamper_metadata, "signature is not valid"),
    "manifest not json": (_manifest_text("this is not json"), "not valid JSON"),
    "manifest empty": (_manifest_text(""), "not valid JSON"),
    "manifest a list": (_manifest_text("[1]"), "malformed"),
    "public key not text": (_manifest_field(public_key=123), "malformed"),
    "non-finite metadata": (
        lambda d: (d / MANIFEST_NAME).write_text(
            (d / MANIFEST_NAME).read_text().replace('"metadata": {', '"metadata": {"x": NaN, ')
        ),
        "malformed",
    ),
    "fifo": (lambda d: os.mkfifo(d / "pipe"), "special file pipe"),
    "symlink": (lambda d: os.symlink(d / "config.json", d / "sub" / "ln"), "symlink sub/ln"),
}


@pytest.mark.parametrize("case", sorted(VERIFY_ERRORS))
def test_manifest_verify_bad_input(cli, plain_key_files, model_dir, case: str) -> None:
    _, path, pub = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path, "--metadata", _meta(model_dir)).rc == 0
    change, needle = VERIFY_ERRORS[case]
    change(model_dir)
    res = cli("manifest", "verify", model_dir, "--pubkey", pub)
    assert res.rc == 1
    assert_clean_error(res, "verification failed", needle)
    assert res.out == ""


def _meta(model_dir: Path) -> Path:
    p = model_dir.parent / "meta.json"
    p.write_text('{"base_model": "test/tiny"}')
    return p


def test_manifest_verify_missing_model_dir(cli, plain_key_files, tmp_path) -> None:
    _, _, pub = plain_key_files
    res = cli("manifest", "verify", tmp_path / "no-such-model", "--pubkey", pub)
    assert_clean_error(res, "does not exist", "no-such-model")


def test_manifest_verify_with_private_key_as_pubkey(cli, plain_key_files, model_dir) -> None:
    _, path, _ = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    res = cli("manifest", "verify", model_dir, "--pubkey", path)
    assert_clean_error(res, "private key", ".pub")
    assert "PRIVATE" not in res.err


def test_manifest_verify_with_another_key(cli, plain_key_files, model_dir, tmp_path) -> None:
    key, path, _ = plain_key_files
    other = OwnerKey.generate()
    _, other_pub = other.save(tmp_path / "other", None)
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    res = cli("manifest", "verify", model_dir, "--pubkey", other_pub)
    assert_clean_error(res, "signed by key", key.key_id, other.key_id)


def test_manifest_verify_missing_pubkey(cli, plain_key_files, model_dir, tmp_path) -> None:
    _, path, _ = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    res = cli("manifest", "verify", model_dir, "--pubkey", tmp_path / "nope.pub")
    assert_clean_error(res, "does not exist")


def _sign_errors(tmp_path: Path) -> dict[str, tuple[list, dict, str]]:
    """case -> (extra argv, env, needle); 'KEY' / 'PUB' are replaced by the key paths."""
    not_json = tmp_path / "not-json.json"
    not_json.write_text("{'single': 'quotes'}")
    a_list = tmp_path / "list.json"
    a_list.write_text("[1, 2]")
    nan = tmp_path / "nan.json"
    nan.write_text('{"asr": NaN}')
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not the passphrase")
    return {
        "metadata not json": (["--key", "KEY", "--metadata", not_json], ENV, "not valid JSON"),
        "metadata not utf-8": (["--key", "KEY", "--metadata", binary], ENV, "not valid JSON"),
        "metadata a list": (["--key", "KEY", "--metadata", a_list], ENV, "JSON object"),
        "metadata NaN": (["--key", "KEY", "--metadata", nan], ENV, "plain JSON"),
        "metadata missing": (
            ["--key", "KEY", "--metadata", tmp_path / "nope.json"],
            ENV,
            "does not exist",
        ),
        "no passphrase": (["--key", "KEY"], {}, "passphrase"),
        "wrong passphrase": (["--key", "KEY", "--passphrase-file", wrong], {}, "wrong passphrase"),
        "public key as key": (["--key", "PUB"], ENV, "public key"),
        "missing key": (["--key", tmp_path / "nope"], ENV, "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "metadata not json",
        "metadata not utf-8",
        "metadata a list",
        "metadata NaN",
        "metadata missing",
        "no passphrase",
        "wrong passphrase",
        "public key as key",
        "missing key",
    ],
)
def test_manifest_sign_bad_input(cli, key_files, model_dir, tmp_path, case: str) -> None:
    _, path, pub = key_files
    argv, env, needle = _sign_errors(tmp_path)[case]
    argv = [path if a == "KEY" else pub if a == "PUB" else a for a in argv]
    res = cli("manifest", "sign", model_dir, *argv, env=env)
    assert res.rc == 1
    assert_clean_error(res, needle)
    assert res.out == ""
    assert not (model_dir / MANIFEST_NAME).exists()
    assert _hidden(model_dir) == []


def test_manifest_sign_missing_model_dir(cli, key_files, tmp_path) -> None:
    _, path, _ = key_files
    res = cli("manifest", "sign", tmp_path / "no-such-model", "--key", path, env=ENV)
    assert_clean_error(res, "does not exist", "no-such-model")
    assert not (tmp_path / "no-such-model").exists()


@pytest.mark.parametrize(
    "add, needle",
    [
        (lambda d: os.symlink(d.parent / "elsewhere", d / "sub" / "ln"), "symlink sub/ln"),
        (lambda d: os.mkfifo(d / "sub" / "deeper" / "pipe"), "special file sub/deeper/pipe"),
    ],
    ids=["symlink", "fifo"],
)
def test_manifest_sign_refuses_special_entries(cli, key_files, model_dir, add, needle) -> None:
    _, path, _ = key_files
    add(model_dir)
    res = cli("manifest", "sign", model_dir, "--key", path, env=ENV)
    assert_clean_error(res, needle)
    assert not (model_dir / MANIFEST_NAME).exists()
    assert _hidden(model_dir) == []


# --- manifest: signing over a manifest already there, an empty path --------------------------


@pytest.fixture
def small_model(tmp_path) -> Path:
    """A model directory of two files (the tests below list its names)."""
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
    assert listing(small_model) == sorted(["config.json", "sub", MANIFEST_NAME])
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
    names = listing(small_model)
    res = cli("manifest", "sign", "", "--key", path)
    assert_clean_error(res, "model directory path is empty")
    res = cli("manifest", "verify", "", "--pubkey", pub)
    assert_clean_error(res, "model directory path is empty")
    assert listing(small_model) == names
    with pytest.raises(ModelDirError, match="empty"):
        sign_manifest("", key)
    assert listing(small_model) == names


# --- manifest: failing writes leave nothing behind -------------------------------------------


def test_manifest_sign_when_manifest_path_is_a_directory(cli, plain_key_files, model_dir):
    """The final rename fails (works as root): one clear line, no temp file left."""
    _, path, _ = plain_key_files
    blocker = model_dir / MANIFEST_NAME
    blocker.mkdir()
    (blocker / "inside").write_text("keep me")
    res = cli("manifest", "sign", model_dir, "--key", path)
    assert_clean_error(res, "directory", MANIFEST_NAME)
    assert ".tmp" not in res.err  # names the user's path, not an internal temp file
    assert res.out == ""
    assert _hidden(model_dir) == []
    assert sorted(p.name for p in blocker.iterdir()) == ["inside"]
    assert (blocker / "inside").read_text() == "keep me"


def _run_with_file_size_limit(limit: int, *argv) -> CliResult:
    """A real ``offswitch`` process in which no write may grow a file past ``limit`` bytes
    (RLIMIT_FSIZE binds root too; Python ignores SIGXFSZ, so the write fails with EFBIG)."""

    def limit_fsize() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {k: v for k, v in os.environ.items() if k != "OFFSWITCH_PASSPHRASE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    p = subprocess.run(
        [sys.executable, "-m", "offswitch.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limit_fsize,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def test_manifest_sign_failing_write_keeps_old_manifest(cli, plain_key_files, model_dir):
    """A write that fails part-way (file too large) leaves the old manifest intact."""
    _, path, pub = plain_key_files
    assert cli("manifest", "sign", model_dir, "--key", path).rc == 0
    old = (model_dir / MANIFEST_NAME).read_bytes()
    meta = model_dir.parent / "big-meta.json"
    meta.write_text(json.dumps({"notes": "x" * 5000}))
    res = _run_with_file_size_limit(
        len(old), "manifest", "sign", model_dir, "--key", path, "--metadata", meta
    )
    assert res.rc == 1
    assert_clean_error(res, "too large", MANIFEST_NAME)
    assert (model_dir / MANIFEST_NAME).read_bytes() == old
    assert _hidden(model_dir) == []
    assert cli("manifest", "verify", model_dir, "--pubkey", pub).rc == 0


def test_manifest_sign_failing_write_leaves_no_manifest(plain_key_files, model_dir) -> None:
    _, path, _ = plain_key_files
    res = _run_with_file_size_limit(100, "manifest", "sign", model_dir, "--key", path)
    assert_clean_error(res, "too large")
    assert not (model_dir / MANIFEST_NAME).exists()
    assert _hidden(model_dir) == []


# --- real processes --------------------------------------------------------------------------


def test_real_process(cli_subprocess, key_files, model_dir, tmp_path) -> None:
    key, path, pub = key_files
    ok = cli_subprocess("manifest", "sign", model_dir, "--key", path, env=ENV)
    assert ok.rc == 0, ok.err
    assert ok.out == "" and key.key_id in ok.err  # "wrote …" is a message: stderr
    ok = cli_subprocess("manifest", "verify", model_dir, "--pubkey", pub)
    assert ok.rc == 0 and ok.out.startswith("OK: ")

    (model_dir / "sub" / "adapter.bin").write_bytes(b"swapped")
    bad = cli_subprocess("manifest", "verify", model_dir, "--pubkey", pub)
    assert bad.rc == 1 and "Traceback" not in bad.err
    assert "changed file: sub/adapter.bin" in bad.err

    _tamper_metadata(model_dir)
    bad = cli_subprocess("manifest", "verify", model_dir, "--pubkey", pub)
    assert_clean_error(bad, "signature is not valid")
    assert bad.rc == 1

    nan = tmp_path / "nan.json"
    nan.write_text('{"x": Infinity}')
    bad = cli_subprocess("manifest", "sign", model_dir, "--key", path, "--metadata", nan, env=ENV)
    assert_clean_error(bad, "plain JSON")

    res = cli_subprocess("slots", "plant", "--key", pub, "--model-id", MID, "0")
    assert res.rc == 0
    bad = cli_subprocess("slots", "spend", "--key", pub, "--model-id", MID, "-5")
    assert_clean_error(bad, "no sign")
    assert bad.rc == 1
    bad = cli_subprocess("slots", "spend", "--key", pub, "--model-id", MID, "4")
    assert_clean_error(bad, "never planted")
