"""`offswitch keygen` and `offswitch key-id` (and key errors surfacing through `command`).

Keys made by the CLI use DEFAULT_KDF_ROUNDS (≈ 0.25 s per encryption or decryption), so
tests that only need *a* key on disk use the 1-round `key_files` fixture instead.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from offswitch.errors import WrongPassphraseError
from offswitch.keys import DEFAULT_KDF_ROUNDS, OwnerKey, PublicKey, load_public

from .conftest import PASSPHRASE, assert_clean_error, run_in_pty

ENV = {"OFFSWITCH_PASSPHRASE": PASSPHRASE}
KEY_ID_LINE = re.compile(r"^key id: ([0-9a-f]{16})\n$")


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _snapshot(*paths: Path) -> dict[Path, tuple[bytes, int]]:
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


# --- keygen: passphrase sources ---------------------------------------------------------------


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
    assert _listing(tmp_path) == ["owner", "owner.pub", "pw.txt"]


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
    assert _listing(tmp_path) == []  # nothing written, not even a temp file


@pytest.mark.parametrize("content", [None, "", "\n"], ids=["missing", "empty", "newline-only"])
def test_keygen_with_unusable_passphrase_file(cli, tmp_path, content) -> None:
    pw_file = tmp_path / "pw.txt"
    if content is not None:
        pw_file.write_text(content)
    res = cli("keygen", "-o", tmp_path / "owner", "--passphrase-file", pw_file, env=ENV)
    assert_clean_error(res, "passphrase file", str(pw_file))
    assert _listing(tmp_path) == ([] if content is None else ["pw.txt"])


@pytest.mark.parametrize("content", ["pw-long-enough\n\n", "pw-long-enough\nsecond line\n"])
def test_a_passphrase_file_of_several_lines_is_refused(cli, tmp_path, content) -> None:
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text(content)
    res = cli("keygen", "-o", tmp_path / "owner", "--passphrase-file", pw_file, env=ENV)
    assert_clean_error(res, "more than one line")
    assert _listing(tmp_path) == ["pw.txt"]  # no key made with a newline in its passphrase


def test_an_empty_home_gives_no_default_key_under_root(cli, tmp_path) -> None:
    env = {"HOME": "", "OFFSWITCH_KEY": ""}
    for argv in (("keygen", "--no-passphrase"), ("key-id",), ("slots", "list")):
        res = cli(*argv, env=env)
        assert_clean_error(res, "$HOME is empty", "OFFSWITCH_KEY")
        assert "/.offswitch" not in res.err.replace("~/.offswitch", "")


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


def test_keygen_no_passphrase(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    res = cli("keygen", "-o", out, "--no-passphrase", env=ENV)  # env is not used
    key_id = _keygen_ok(res, out)
    assert "unencrypted" in res.err
    assert not OwnerKey.is_encrypted(out)
    assert OwnerKey.load(out).key_id == key_id


# --- keygen: existing outputs, --force, unwritable places ------------------------------------


@pytest.mark.parametrize("existing", ["owner", "owner.pub", "both"])
@pytest.mark.parametrize("no_passphrase", [False, True], ids=["encrypted", "plain"])
def test_keygen_refuses_existing_outputs(cli, tmp_path, existing, no_passphrase) -> None:
    names = ["owner", "owner.pub"] if existing == "both" else [existing]
    for name in names:
        (tmp_path / name).write_bytes(b"precious " + name.encode() + b"\n")
        (tmp_path / name).chmod(0o640)
    before = _snapshot(*(tmp_path / n for n in names))
    args = ["keygen", "-o", tmp_path / "owner"] + (["--no-passphrase"] if no_passphrase else [])
    res = cli(*args, env=ENV)
    assert_clean_error(res, "already exists", "--force")
    assert res.out == ""
    assert _listing(tmp_path) == sorted(names)
    assert _snapshot(*before) == before  # byte-for-byte and mode unchanged


def test_keygen_refuses_existing_outputs_before_asking_for_a_passphrase(cli, tmp_path) -> None:
    (tmp_path / "owner").write_bytes(b"precious")
    res = cli("keygen", "-o", tmp_path / "owner")  # no passphrase source either
    assert_clean_error(res, "already exists")
    assert (tmp_path / "owner").read_bytes() == b"precious"


def test_keygen_refuses_existing_real_key(cli, key_files) -> None:
    key, path, pub = key_files
    before = _snapshot(path, pub)
    res = cli("keygen", "-o", path, "--no-passphrase")
    assert_clean_error(res, "already exists")
    assert _snapshot(path, pub) == before
    assert OwnerKey.load(path, PASSPHRASE) == key


def test_keygen_force_overwrites(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    first = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase"), out)
    out.chmod(0o644)
    second = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--force"), out)
    assert first != second
    assert OwnerKey.load(out).key_id == second
    assert _listing(tmp_path) == ["owner", "owner.pub"]  # no temp files left


def test_keygen_force_with_only_pub_existing(cli, tmp_path) -> None:
    (tmp_path / "owner.pub").write_text("stale\n")
    out = tmp_path / "owner"
    key_id = _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--force"), out)
    assert PublicKey.load(tmp_path / "owner.pub").key_id == key_id


def test_keygen_into_missing_directory(cli, tmp_path) -> None:
    out = tmp_path / "missing" / "owner"
    res = cli("keygen", "-o", out, "--no-passphrase")
    assert_clean_error(res, "does not exist", str(out.parent))
    assert _listing(tmp_path) == []


def test_keygen_under_a_regular_file(cli, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    res = cli("keygen", "-o", tmp_path / "file" / "owner", "--no-passphrase")
    assert_clean_error(res)
    assert _listing(tmp_path) == ["file"]


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
        assert _listing(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("comment", ["two\nlines", "vt\x0bhere"], ids=["newline", "vtab"])
def test_keygen_multiline_comment_is_a_clean_error(cli, tmp_path, comment) -> None:
    res = cli("keygen", "-o", tmp_path / "owner", "--no-passphrase", "--comment", comment)
    assert_clean_error(res, "comment", "single line")
    assert _listing(tmp_path) == []


def test_keygen_utf8_comment_round_trips(cli, tmp_path) -> None:
    out = tmp_path / "owner"
    _keygen_ok(cli("keygen", "-o", out, "--no-passphrase", "--comment", "José's key ✓"), out)
    assert PublicKey.load(tmp_path / "owner.pub").comment == "José's key ✓"
    res = cli("key-id", tmp_path / "owner.pub")
    assert res.rc == 0, res.err


# --- key-id ---------------------------------------------------------------------------------


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


# --- key errors through `offswitch command` --------------------------------------------------


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


# --- real processes ---------------------------------------------------------------------------


def test_subprocess_keygen_without_passphrase_source(cli_subprocess, tmp_path) -> None:
    res = cli_subprocess("keygen", "-o", tmp_path / "owner")  # stdin/stderr are pipes
    assert res.rc == 1
    assert_clean_error(res, "passphrase", "--passphrase-file")
    assert _listing(tmp_path) == []


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


# --- the interactive prompt, through a real terminal ------------------------------------------


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
    assert _listing(tmp_path) == []
