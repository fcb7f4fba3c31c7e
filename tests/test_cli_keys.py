"""`offswitch keygen`, `key-id`, `command` and `verify-command` through the CLI entry point:
keygen's passphrase sources, existing outputs and --force; key-id of every kind of key file;
making a command and verifying it (every reason a command is not genuine, slot numbers typed
wrong); key-file errors surfacing through `command`; real processes; the interactive prompt.

Elsewhere: the security-first cases (a failing --force, special files, short passphrases, key
files open to others, prompt failures) in test_cli_key_safety.py; `command` refusing spent or
unplanted slots in test_cli_slots_manifest.py; the default key location in
test_cli_usability.py.

Keys made by the CLI use DEFAULT_KDF_ROUNDS (≈ 0.25 s per encryption or decryption), so
tests that only need *a* key on disk use the 1-round `key_files` fixture instead.
"""

from __future__ import annotations

import base64
import os
import random
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from offswitch import commands as C
from offswitch.errors import WrongPassphraseError
from offswitch.keys import DEFAULT_KDF_ROUNDS, OwnerKey, PublicKey, load_public

from ._cli import ENV, MID, listing
from .conftest import PASSPHRASE, assert_clean_error, run_in_pty

KEY_ID_LINE = re.compile(r"^key id: ([0-9a-f]{16})\n$")


def _snapshot_with_modes(*paths: Path) -> dict[Path, tuple[bytes, int]]:
    """Each file's bytes and permission bits."""
    return {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in paths}


def _kdf_rounds(path: Path) -> int:
    """bcrypt rounds recorded in an encrypted OpenSSH private key file."""
    lines = path.read_text("ascii").strip().splitlines()
    data = base64.b64decode("".join(lines[1:-1]))
    marker = b"\x00\x00\x00\x06bcrypt\x00\x00\x00\x18\x00\x00\x00\x10"
    at = data.index(marker) + len(marker) + 16  # after the 16-byte salt
    return int.from_bytes(data[at : at + 4], "big")


def _keygen_ok(res, out: Path) -> str:
    """Check a successful keygen's output; return the key id it printed."""
    assert res.rc == 0, res.err
    m = KEY_ID_LINE.match(res.out)
    assert m, res.out
    assert "Traceback" not in res.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pub = out.with_name(out.name + ".pub")
    assert pub.read_text().startswith("ssh-ed25519 AAAA")
    assert load_public(out) == PublicKey.load(pub)
    assert m.group(1) == PublicKey.load(pub).key_id
    return m.group(1)


# --- keygen: passphrase sources --------------------------------------------------------------


def test_keygen_with_passphrase_file(cli, tmp_path) -> None:
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("from the file\n")  # one trailing newline is not part of it
    out = tmp_path / "owner"
    res = cli("keygen", "-o", out, "--comment", "ci key", "--passphrase-file", pw_file)
    key_id = _keygen_ok(res, out)
    assert "passphrase-encrypted" in res.err and "mode 0600" in res.err
    assert OwnerKey.is_encrypted(out)
    assert _kdf_rounds(out) == DEFAULT_KDF_ROUNDS
    key = OwnerKey.load(out, "from the file")
    assert key.key_id == key_id and key.comment == "ci key"
    assert (tmp_path / "owner.pub").read_text().rstrip("\n").endswith(" ci key")
    with pytest.raises(WrongPassphraseError):
        OwnerKey.load(out, "from the file\n")
    assert listing(tmp_path) == ["owner", "owner.pub", "pw.txt"]


def test_keygen_with_env_passphrase(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    key_id = _keygen_ok(cli("keygen", "-o", out, env={"OFFSWITCH_PASSPHRASE": "from env"}), out)
    assert OwnerKey.load(out, "from env").key_id == key_id


def test_passphrase_file_takes_precedence_over_env(cli, tmp_path) -> None:
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("file wins")
    out = tmp_path / "owner"
    res = cli("keygen", "-o", out, "--passphrase-file", pw_file, env={"OFFSWITCH_PASSPHRASE": "e"})
    key_id = _keygen_ok(res, out)
    assert OwnerKey.load(out, "file wins").key_id == key_id
    with pytest.raises(WrongPassphraseError):
        OwnerKey.load(out, "e")


@pytest.mark.parametrize("env", [None, {"OFFSWITCH_PASSPHRASE": ""}], ids=["unset", "empty"])
def test_keygen_without_passphrase_source_or_terminal(cli, tmp_path, env) -> None:
    out = tmp_path / "owner"
    res = cli("keygen", "-o", out, env=env)  # stdin is not a terminal here
    assert_clean_error(res, "passphrase", "--passphrase-file", "OFFSWITCH_PASSPHRASE")
    assert res.out == ""
    assert listing(tmp_path) == []  # nothing written, not even a temp file


@pytest.mark.parametrize("content", [None, "", "\n"], ids=["missing", "empty", "newline-only"])
def test_keygen_with_unusable_passphrase_file(cli, tmp_path, content) -> None:
    pw_file = tmp_path / "pw.txt"
    if content is not None:
        pw_file.write_text(content)
    res = cli("keygen", "-o", tmp_path / "owner", "--passphrase-file", pw_file, env=ENV)
    assert_clean_error(res, "passphrase file", str(pw_file))
    assert listing(tmp_path) == ([] if content is None else ["pw.txt"])


@pytest.mark.parametrize("content", ["pw-long-enough\n\n", "pw-long-enough\nsecond line\n"])
def test_a_passphrase_file_of_several_lines_is_refused(cli, tmp_path, content) -> None:
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text(content)
    res = cli("keygen", "-o", tmp_path / "owner", "--passphrase-file", pw_file, env=ENV)
    assert_clean_error(res, "more than one line")
    assert listing(tmp_path) == ["pw.txt"]  # no key made with a newline in its passphrase


def test_keygen_no_passphrase(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    res = cli("keygen", "-o", out, "--no-passphrase", env=ENV)  # env is not used
    key_id = _keygen_ok(res, out)
    assert "unencrypted" in res.err
    assert not OwnerKey.is_encrypted(out)
    assert OwnerKey.load(out).key_id == key_id


# --- keygen: existing outputs, --force, unwritable places, comments --------------------------


@pytest.mark.parametrize("existing", ["owner", "owner.pub", "both"])
@pytest.mark.parametrize("no_passphrase", [False, True], ids=["encrypted", "plain"])
def test_keygen_refuses_existing_outputs(cli, tmp_path, existing, no_passphrase) -> None:
    names = ["owner", "owner.pub"] if existing == "both" else [existing]
    for name in names:
        (tmp_path / name).write_bytes(b"precious " + name.encode() + b"\n")
        (tmp_path / name).chmod(0o640)
    before = _snapshot_with_modes(*(tmp_path / n for n in names))
    args = ["keygen", "-o", tmp_path / "owner"] + (["--no-passphrase"] if no_passphrase else [])
    res = cli(*args, env=ENV)
    assert_clean_error(res, "already exists", "--force")
    assert res.out == ""
    assert listing(tmp_path) == sorted(names)
    assert _snapshot_with_modes(*before) == before  # byte-for-byte and mode unchanged


def test_keygen_refuses_existing_outputs_before_asking_for_a_passphrase(cli, tmp_path) -> None:
    (tmp_path / "owner").write_bytes(b"precious")
    res = cli("keygen", "-o", tmp_path / "owner")  # no passphrase source either
    assert_clean_error(res, "already exists")
    assert (tmp_path / "owner").read_bytes() == b"precious"


def test_keygen_refuses_existing_real_key(cli, key_files) -> None:
    key, path, pub = key_files
    before = _snapshot_with_modes(path, pub)
    res = cli("keygen", "-o", path, "--no-passphrase")
    assert_clean_error(res, "already exists")
    assert _snapshot_with_modes(path, pub) == before
    assert OwnerKey.load(path, PASSPHRASE) == key


def test_keygen_force_overwrites(cli, tmp_path) -> None:
    """Also the success case the failing --force cases of test_cli_key_safety.py stand
    against."""
    out = tmp_path / "owner"
    first = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase"), out)
    out.chmod(0o644)
    second = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--force"), out)
    assert first != second
    assert OwnerKey.load(out).key_id == second
    assert listing(tmp_path) == ["owner", "owner.pub"]  # no temp files left


def test_keygen_force_with_only_pub_existing(cli, tmp_path) -> None:
    (tmp_path / "owner.pub").write_text("stale\n")
    out = tmp_path / "owner"
    key_id = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--force"), out)
    assert PublicKey.load(tmp_path / "owner.pub").key_id == key_id


def test_keygen_into_missing_directory(cli, tmp_path) -> None:
    out = tmp_path / "missing" / "owner"
    res = cli("keygen", "-o", out, "--no-passphrase")
    assert_clean_error(res, "does not exist", str(out.parent))
    assert listing(tmp_path) == []


def test_keygen_under_a_regular_file(cli, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    res = cli("keygen", "-o", tmp_path / "file" / "owner", "--no-passphrase")
    assert_clean_error(res)
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: permission bits do not stop writes (missing dir tested instead)",
)
def test_keygen_into_unwritable_directory(cli, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = cli("keygen", "-o", locked / "owner", "--no-passphrase")
        assert_clean_error(res, "not writable", str(locked))
        assert listing(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("comment", ["two\nlines", "vt\x0bhere"], ids=["newline", "vtab"])
def test_keygen_multiline_comment_is_a_clean_error(cli, tmp_path, comment) -> None:
    res = cli("keygen", "-o", tmp_path / "owner", "--no-passphrase", "--comment", comment)
    assert_clean_error(res, "comment", "single line")
    assert listing(tmp_path) == []


def test_keygen_utf8_comment_round_trips(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--comment", "José's key ✓"), out)
    assert PublicKey.load(tmp_path / "owner.pub").comment == "José's key ✓"
    res = cli("key-id", tmp_path / "owner.pub")
    assert res.rc == 0, res.err


# --- key-id ----------------------------------------------------------------------------------


def test_key_id_of_cli_made_files(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    key_id = _keygen_ok(cli("keygen", "-o", out, env={"OFFSWITCH_PASSPHRASE": "x y z w v"}), out)
    # the private file is encrypted, yet no passphrase is needed (none is available here)
    from_private = cli("key-id", out)
    from_pub = cli("key-id", tmp_path / "owner.pub")
    assert from_private.rc == from_pub.rc == 0, (from_private.err, from_pub.err)
    assert from_private.out == from_pub.out == key_id + "\n"
    assert from_private.err == from_pub.err == ""


def test_key_id_of_encrypted_and_plain_files(cli, key_files, tmp_path) -> None:
    key, path, pub = key_files
    plain, plain_pub = key.save(tmp_path / "plain", None)
    for p in (path, pub, plain, plain_pub):
        res = cli("key-id", p)
        assert (res.rc, res.out, res.err) == (0, key.key_id + "\n", ""), p
    other = OwnerKey.generate()
    other.save(tmp_path / "other", None)
    assert cli("key-id", tmp_path / "other").out == other.key_id + "\n" != key.key_id + "\n"


def test_key_id_bad_inputs(cli, tmp_path) -> None:
    res = cli("key-id", tmp_path / "nope")
    assert_clean_error(res, "does not exist")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_clean_error(cli("key-id", empty), "empty")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(64) + b"\xff")
    assert_clean_error(cli("key-id", garbage), str(garbage))
    ecdsa_pub = tmp_path / "ec.pub"
    ecdsa_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    assert_clean_error(cli("key-id", ecdsa_pub), "not ssh-ed25519")
    assert_clean_error(cli("key-id", tmp_path), "directory")


def test_other_key_type_message_has_no_article_error(cli, tmp_path) -> None:
    pub = tmp_path / "ec.pub"
    pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    res = cli("key-id", pub)
    assert_clean_error(res, "holds a key of type 'ecdsa-sha2-nistp256', not ssh-ed25519")
    assert "a ecdsa" not in res.err
    priv = tmp_path / "ec"
    priv.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    priv.chmod(0o600)
    res = cli("command", "--key", priv, "--model-id", MID, "--slot", "0", "--allow-unplanted")
    assert_clean_error(res, "key of type 'ecdsa-sha2-nistp256'")


# --- command and verify-command --------------------------------------------------------------


def _plant(cli, key, *slots: int) -> None:
    res = cli("slots", "plant", "--key", key, "--model-id", MID, *map(str, slots))
    assert res.rc == 0, res.err


def test_command_then_verify(cli, key_files) -> None:
    key, path, pub = key_files
    _plant(cli, path, 2)
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "2", env=ENV)
    assert res.rc == 0, res.err
    cmd = res.out.strip()
    assert res.out.count("\n") == 1 and cmd == C.make_command(key, MID, 2)
    again = cli("command", "--key", path, "--model-id", MID, "--slot", "2", env=ENV)
    assert again.out == res.out  # deterministic
    ok = cli("verify-command", "--pubkey", pub, "--model-id", MID, cmd)
    assert ok.rc == 0 and key.key_id in ok.out and "slot 2" in ok.out
    # from stdin, with the line ending a shell pipe adds
    ok = cli("verify-command", "--pubkey", pub, "--model-id", MID, "-", stdin=cmd + "\n")
    assert ok.rc == 0, ok.err


def test_command_with_passphrase_file(cli, key_files, tmp_path) -> None:
    key, path, _ = key_files
    _plant(cli, path, 0)
    pf = tmp_path / "pass.txt"
    pf.write_text(PASSPHRASE + "\n")
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "0", "--passphrase-file", pf)
    assert res.rc == 0 and res.out.strip() == C.make_command(key, MID, 0)


def test_unencrypted_key_needs_no_passphrase(cli, plain_key_files) -> None:
    key, path, _ = plain_key_files
    _plant(cli, path, 1)
    res = cli("command", "--key", path, "--model-id", MID, "--slot", "1")
    assert res.rc == 0 and res.out.strip() == C.make_command(key, MID, 1)


def test_verify_reasons(cli, plain_key_files, tmp_path) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 0)
    cases = {
        "malformed": cmd[:-3],
        "with key": C.make_command(C.OwnerKey.generate(), MID, 0),
        "another model id": C.make_command(key, "other-model", 0),
        "forged or altered": C.format_command(
            key.key_id, MID, 0, C.random_signature(random.Random(3))
        ),
    }
    for reason, text in cases.items():
        res = cli("verify-command", "--pubkey", pub, "--model-id", MID, text)
        assert res.rc == 1, (reason, res)
        assert_clean_error(res, "not genuine", reason)
        assert res.out == ""


def test_surrounding_whitespace_is_malformed(cli, plain_key_files) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 0)
    res = cli("verify-command", "--pubkey", pub, "--model-id", MID, f" {cmd} ")
    assert_clean_error(res, "whitespace")


def test_command_bad_inputs(cli, key_files, tmp_path) -> None:
    _, path, pub = key_files
    _plant(cli, path, 0)
    assert_clean_error(
        cli("command", "--key", path, "--model-id", "", "--slot", "0", env=ENV), "model id"
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "-1", env=ENV), "no sign"
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "70000", env=ENV),
        "out of range",
    )
    assert_clean_error(
        cli("command", "--key", path, "--model-id", MID, "--slot", "0"), "passphrase"
    )
    assert_clean_error(
        cli("command", "--key", tmp_path / "nope", "--model-id", MID, "--slot", "0"),
        "does not exist",
    )
    assert_clean_error(
        cli("verify-command", "--pubkey", path, "--model-id", MID, "x"), "private key"
    )
    assert_clean_error(
        cli("verify-command", "--pubkey", pub, "--model-id", "bad id", "x"), "model id"
    )
    # a slot is typed in ASCII digits, no sign, separator or leading zero (int() takes all)
    for text, needle in (
        ("two", "not a number"),
        ("+1", "no sign"),
        ("1_0", "separator"),
        ("\u0661", "U+0661 ARABIC-INDIC DIGIT ONE"),
        ("01", "leading zero: write it as 1"),
        (" 1", "not a number"),
    ):
        res = cli("command", "--key", path, "--model-id", MID, "--slot", text, env=ENV)
        assert_clean_error(res, needle)
        assert res.out == ""


# --- key-file errors through `offswitch command` (and an empty path anywhere) ----------------


def _command(cli, key: Path, **kw):
    # --allow-unplanted: these tests are about the key file, not the slot ledger
    return cli("command", "--key", key, "--model-id", "m", "--slot", "0", "--allow-unplanted", **kw)


def test_command_works_with_the_fixture_key(cli, key_files) -> None:
    """Control for the error cases below: the same call with good inputs succeeds."""
    _, path, _ = key_files
    res = _command(cli, path, env=ENV)
    assert res.rc == 0 and res.out.count("\n") == 1, res.err


def test_command_wrong_passphrase(cli, key_files, tmp_path) -> None:
    _, path, _ = key_files
    res = _command(cli, path, env={"OFFSWITCH_PASSPHRASE": "not it"})
    assert_clean_error(res, "wrong passphrase", str(path))
    assert res.out == "" and "not it" not in res.err
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("also not it\n")
    res = cli(
        "command", "--key", path, "--model-id", "m", "--slot", "0", "--passphrase-file", pw_file,
        "--allow-unplanted",
    )  # fmt: skip
    assert_clean_error(res, "wrong passphrase")


def test_command_encrypted_key_without_passphrase_source(cli, key_files) -> None:
    _, path, _ = key_files
    assert_clean_error(_command(cli, path), "passphrase", "OFFSWITCH_PASSPHRASE")


def test_command_empty_key_file(cli, tmp_path) -> None:
    path = tmp_path / "owner"
    path.write_bytes(b"")
    assert_clean_error(_command(cli, path, env=ENV), "empty", str(path))


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_command_truncated_key_file(cli, key_files, keep: float) -> None:
    _, path, _ = key_files
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    res = _command(cli, path, env=ENV)
    assert_clean_error(res, str(path))
    assert "wrong passphrase" not in res.err


@pytest.mark.parametrize("where", ["armour", "header", "encrypted-section"])
def test_command_bit_flipped_key_file(cli, key_files, where: str) -> None:
    _, path, _ = key_files
    text = path.read_text("ascii")
    lines = text.strip().splitlines()
    data = bytearray(base64.b64decode("".join(lines[1:-1])))
    if where == "armour":
        flipped = text.replace("BEGIN OPENSSH", "BEGIN OPENSSI", 1)
    else:
        at = 20 if where == "header" else len(data) - 40  # in "aes256-ctr" / in the secret
        data[at] ^= 0x04
        b64 = base64.b64encode(bytes(data)).decode()
        flipped = "\n".join([lines[0], *(b64[i : i + 70] for i in range(0, len(b64), 70))])
        flipped += "\n" + lines[-1] + "\n"
    assert flipped != text
    path.write_text(flipped)
    res = _command(cli, path, env=ENV)
    assert_clean_error(res, str(path))
    assert res.out == ""


def test_command_non_ed25519_key(cli, tmp_path) -> None:
    path = tmp_path / "ecdsa"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    assert_clean_error(_command(cli, path, env=ENV), "not ssh-ed25519")


def test_command_pubkey_given_as_key(cli, key_files) -> None:
    _, _, pub = key_files
    assert_clean_error(_command(cli, pub, env=ENV), "public key", "private key")


def test_verify_command_private_key_given_as_pubkey(cli, key_files) -> None:
    _, path, _ = key_files
    res = cli("verify-command", "--pubkey", path, "--model-id", "m", "anything")
    assert_clean_error(res, "is a private key", f"{path}.pub")


def test_an_empty_path_is_called_empty_not_dot(cli, key_files) -> None:
    _ = key_files
    assert_clean_error(cli("key-id", ""), "path is empty")
    assert_clean_error(cli("verify-command", "--pubkey", "", "--model-id", "m", "x"), "empty")
    for res in (
        cli("command", "--key", "", "--model-id", "m", "--slot", "0", "--allow-unplanted"),
        cli("slots", "list", "--key", ""),
    ):
        assert_clean_error(res, "empty")
        assert " . " not in res.err


# --- real processes --------------------------------------------------------------------------


def test_real_process_exit_codes(cli_subprocess, plain_key_files) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 4)
    ok = cli_subprocess("verify-command", "--pubkey", pub, "--model-id", MID, "-", stdin=cmd)
    assert ok.rc == 0 and "slot 4" in ok.out
    bad = cli_subprocess("verify-command", "--pubkey", pub, "--model-id", MID, cmd + " word")
    assert_clean_error(bad, "48 words")


def test_subprocess_keygen_without_passphrase_source(cli_subprocess, tmp_path) -> None:
    res = cli_subprocess("keygen", "-o", tmp_path / "owner")  # stdin/stderr are pipes
    assert res.rc == 1
    assert_clean_error(res, "passphrase", "--passphrase-file")
    assert listing(tmp_path) == []


def test_subprocess_wrong_passphrase_and_bad_files(cli_subprocess, key_files, tmp_path) -> None:
    _, path, pub = key_files
    res = cli_subprocess(
        "command",
        "--key",
        path,
        "--model-id",
        "m",
        "--slot",
        "0",
        "--allow-unplanted",
        env={"OFFSWITCH_PASSPHRASE": "no"},
    )
    assert res.rc == 1 and res.out == ""
    assert_clean_error(res, "wrong passphrase")
    res = cli_subprocess(
        "command", "--key", pub, "--model-id", "m", "--slot", "0", "--allow-unplanted", env=ENV
    )
    assert_clean_error(res, "public key")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_clean_error(cli_subprocess("key-id", empty), "empty")


def test_subprocess_keygen_and_key_id(cli_subprocess, tmp_path) -> None:
    out = tmp_path / "owner"
    res = cli_subprocess("keygen", "-o", out, "--no-passphrase", "--comment", "proc")
    key_id = _keygen_ok(res, out)
    again = cli_subprocess("key-id", out)
    assert (again.rc, again.out) == (0, key_id + "\n")


# --- the interactive prompt, through a real terminal -----------------------------------------


def _run_in_pty(argv: list[str], answers: list[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run `offswitch ARGV` on a pseudo-terminal, typing each answer (and Enter) after each
    prompt."""
    return run_in_pty(argv, [x.encode() + b"\n" for x in answers], timeout)


def test_interactive_prompt_asks_twice(tmp_path) -> None:
    out = tmp_path / "owner"
    rc, text = _run_in_pty(["keygen", "-o", str(out)], ["typed secret", "typed secret"])
    assert rc == 0, text
    assert "Repeat passphrase" in text and "typed secret" not in text  # not echoed
    assert OwnerKey.load(out, "typed secret").key_id in text


def test_interactive_prompt_mismatch_writes_nothing(tmp_path) -> None:
    argv = ["keygen", "-o", str(tmp_path / "owner")]
    rc, text = _run_in_pty(argv, ["first secret", "second secret"])
    assert rc == 1, text
    assert "differ" in text and "Traceback" not in text
    assert listing(tmp_path) == []
