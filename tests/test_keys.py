"""Owner keys and public keys: OpenSSH files, interoperability with ssh-keygen, bad input."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from offswitch import _openssh
from offswitch.errors import (
    InvalidKeyError,
    KeyCommentError,
    KeyFileError,
    KeyPathError,
    OffswitchError,
    OutputExistsError,
    PassphraseError,
    WrongPassphraseError,
)
from offswitch.keys import DEFAULT_KDF_ROUNDS, OwnerKey, PublicKey, key_id_of, load_public

from .conftest import PASSPHRASE

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not on PATH")

PUB_LINE = re.compile(r"^ssh-ed25519 (AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43})(?: (.*))?$")


# --- helpers ----------------------------------------------------------------------------


def ssh_keygen(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert SSH_KEYGEN is not None
    return subprocess.run(
        [SSH_KEYGEN, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=check,
    )


def split_private(path: Path) -> tuple[str, str, bytes]:
    """(BEGIN line, END line, decoded binary body) of an OpenSSH private key file."""
    lines = path.read_text("ascii").strip().splitlines()
    return lines[0], lines[-1], base64.b64decode("".join(lines[1:-1]))


def join_private(begin: str, end: str, data: bytes) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return "\n".join([begin, *(b64[i : i + 70] for i in range(0, len(b64), 70)), end]) + "\n"


def header_fields(data: bytes) -> dict[str, object]:
    """Parse the clear header of an openssh-key-v1 blob; offsets of the fields, too."""
    assert data.startswith(_openssh.MAGIC)
    pos = len(_openssh.MAGIC)
    out: dict[str, object] = {}

    def string(name: str) -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from(">I", data, pos)
        out[name + "_at"] = pos + 4
        v = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        return v

    out["cipher"] = string("cipher").decode()
    out["kdf"] = string("kdf").decode()
    opts = string("kdfopts")
    if opts:
        (slen,) = struct.unpack_from(">I", opts, 0)
        out["salt"] = opts[4 : 4 + slen]
        (out["rounds"],) = struct.unpack_from(">I", opts, 4 + slen)
        out["rounds_at"] = int(out["kdfopts_at"]) + 4 + slen  # type: ignore[call-overload]
    pos += 4  # number of keys
    out["pubblob"] = string("pubblob")
    out["section"] = string("section")
    return out


def encodings_of(secret: bytes) -> list[str]:
    """Ways the secret could leak into text: hex (both cases), base64 variants."""
    b64 = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    return [
        secret.hex(),
        secret.hex().upper(),
        b64,
        b64.rstrip("="),
        url,
        url.rstrip("="),
        base64.b32encode(secret).decode(),
        repr(secret),
    ]


def assert_sensible(err: BaseException, path: Path, secret: str = PASSPHRASE) -> None:
    msg = str(err)
    assert isinstance(err, OffswitchError), repr(err)
    assert str(path) in msg, msg
    assert "\n" not in msg and msg.strip() == msg and msg, msg
    assert all(c.isprintable() for c in msg), msg
    assert secret not in msg


def non_ed25519_private(kind: str) -> bytes:
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )


def non_ed25519_public_line(kind: str) -> bytes:
    if kind == "rsa":
        pub = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    else:
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


# --- round trips ------------------------------------------------------------------------


def test_generate_gives_distinct_keys() -> None:
    a, b = OwnerKey.generate(), OwnerKey.generate()
    assert a != b and a.public_key != b.public_key and a.key_id != b.key_id


def test_encrypted_round_trip(key_files) -> None:
    key, path, pub = key_files
    assert OwnerKey.is_encrypted(path)
    loaded = OwnerKey.load(path, PASSPHRASE)
    assert loaded == key
    assert loaded.public_key == key.public_key == PublicKey.load(pub)
    assert loaded.key_id == key.key_id
    assert loaded.comment == "test-only key"
    msg = b"round trip"
    assert loaded.sign(msg) == key.sign(msg)
    key.public_key.verify(msg, loaded.sign(msg))
    # the passphrase may be given as bytes too
    assert OwnerKey.load(path, PASSPHRASE.encode()) == key


def test_unencrypted_round_trip(plain_key_files) -> None:
    key, path, pub = plain_key_files
    assert not OwnerKey.is_encrypted(path)
    loaded = OwnerKey.load(path)
    assert loaded == key and loaded.public_key == PublicKey.load(pub)
    assert loaded.comment == "test-only key"
    # an unneeded passphrase does no harm
    assert OwnerKey.load(path, "anything") == key


def test_encrypted_key_without_passphrase_is_refused(key_files) -> None:
    _, path, _ = key_files
    with pytest.raises(PassphraseError, match="encrypted") as exc:
        OwnerKey.load(path)
    assert_sensible(exc.value, path)


def test_non_ascii_passphrase_round_trip(tmp_path, owner_key) -> None:
    pw = "pässwörd ✓ 鍵"
    path, _ = owner_key.save(tmp_path / "k", pw, kdf_rounds=1)
    assert OwnerKey.load(path, pw) == owner_key
    assert OwnerKey.load(path, pw.encode("utf-8")) == owner_key
    with pytest.raises(WrongPassphraseError):
        OwnerKey.load(path, "passwort ✓ 鍵")


def test_encrypted_file_does_not_contain_the_seed(tmp_path, key_files) -> None:
    key, path, _ = key_files
    _, _, data = split_private(path)
    assert key._seed not in data
    hdr = header_fields(data)
    assert (hdr["cipher"], hdr["kdf"]) == ("aes256-ctr", "bcrypt")
    assert hdr["rounds"] == 1 and len(hdr["salt"]) == 16  # type: ignore[arg-type]
    # control: the unencrypted file does hold it in clear (so the check above can fail)
    plain, _ = key.save(tmp_path / "plain", None)
    _, _, plain_data = split_private(plain)
    assert key._seed in plain_data
    assert header_fields(plain_data)["cipher"] == "none"


def test_two_encryptions_differ(tmp_path, owner_key) -> None:
    a, _ = owner_key.save(tmp_path / "a", PASSPHRASE, kdf_rounds=1)
    b, _ = owner_key.save(tmp_path / "b", PASSPHRASE, kdf_rounds=1)
    assert a.read_bytes() != b.read_bytes()  # fresh salt and check bytes
    assert header_fields(split_private(a)[2])["salt"] != header_fields(split_private(b)[2])["salt"]


def test_kdf_rounds_are_recorded(tmp_path, owner_key) -> None:
    """The default is recorded in the file (its cost is benchmarked, not timed here)."""
    assert DEFAULT_KDF_ROUNDS >= 16  # never weaker than ssh-keygen's own default
    path, _ = owner_key.save(tmp_path / "d", PASSPHRASE)
    assert header_fields(split_private(path)[2])["rounds"] == DEFAULT_KDF_ROUNDS
    path, _ = owner_key.save(tmp_path / "five", PASSPHRASE, kdf_rounds=5)
    assert header_fields(split_private(path)[2])["rounds"] == 5
    with pytest.raises(ValueError):
        owner_key.save(tmp_path / "zero", PASSPHRASE, kdf_rounds=0)
    assert not (tmp_path / "zero").exists()


def test_save_returns_paths_and_comment_override(tmp_path, owner_key) -> None:
    path, pub = owner_key.save(tmp_path / "k", None, comment="other comment")
    assert (path, pub) == (tmp_path / "k", tmp_path / "k.pub")
    assert pub.read_text().rstrip("\n").endswith(" other comment")
    assert OwnerKey.load(path).comment == "other comment"


def test_empty_passphrase_is_refused(tmp_path, owner_key) -> None:
    with pytest.raises(PassphraseError, match="empty"):
        owner_key.save(tmp_path / "k", "")
    with pytest.raises(PassphraseError):
        owner_key.save(tmp_path / "k", b"")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "comment",
    [
        "two\nlines",
        "cr\rhere",
        "trailing newline\n",
        "vertical\x0btab",
        "form\x0cfeed",
        "ls\u2028x",
    ],
)
def test_comment_that_would_break_the_pub_line_is_refused(tmp_path, owner_key, comment) -> None:
    # every one of these splits the .pub file into two lines for str.splitlines()
    with pytest.raises(KeyCommentError, match="single line") as exc:
        owner_key.save(tmp_path / "k", None, comment=comment)
    assert isinstance(exc.value, OffswitchError) and isinstance(exc.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_comment_that_is_not_utf8_is_refused(tmp_path, owner_key) -> None:
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")  # how argv delivers it
    with pytest.raises(KeyCommentError, match="UTF-8"):
        owner_key.save(tmp_path / "k", None, comment=undecodable)
    assert list(tmp_path.iterdir()) == []


def test_unusual_but_single_line_comments_round_trip(tmp_path, owner_key) -> None:
    for n, comment in enumerate(["tab\there", "ünïcødé ✓", "user@host", "a  b"]):
        path, pub = owner_key.save(tmp_path / f"k{n}", None, comment=comment)
        assert PublicKey.load(pub).comment == comment
        assert OwnerKey.load(path).comment == comment


def test_passphrase_that_is_not_utf8_uses_its_raw_bytes(tmp_path, owner_key) -> None:
    raw = b"caf\xe9 latin-1"
    as_str = raw.decode("utf-8", "surrogateescape")  # how os.environ delivers it
    path, _ = owner_key.save(tmp_path / "k", as_str, kdf_rounds=1)
    assert OwnerKey.load(path, raw) == owner_key
    assert OwnerKey.load(path, as_str) == owner_key
    if SSH_KEYGEN is not None:  # and ssh-keygen, given the same bytes, agrees
        res = subprocess.run(
            [SSH_KEYGEN, "-y", "-f", os.fsencode(path), "-P", raw],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert res.stdout.split()[1] == owner_key.public_key.to_openssh().split()[1].encode()


# --- file modes and the .pub line ---------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_file_modes(tmp_path, owner_key, umask: int) -> None:
    old = os.umask(umask)
    try:
        path, pub = owner_key.save(tmp_path / "k", PASSPHRASE, kdf_rounds=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]  # no temp files left


def test_force_overwrite_resets_mode_to_0600(tmp_path, owner_key) -> None:
    path = tmp_path / "k"
    path.write_text("old")
    path.chmod(0o644)
    (tmp_path / "k.pub").write_text("old pub")
    owner_key.save(path, None, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OwnerKey.load(path) == owner_key
    assert PublicKey.load(tmp_path / "k.pub") == owner_key.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]


def test_pub_line_format(key_files) -> None:
    key, _, pub = key_files
    text = pub.read_text("ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    m = PUB_LINE.match(text.rstrip("\n"))
    assert m, text
    assert m.group(2) == "test-only key"
    blob = base64.b64decode(m.group(1))
    assert blob == b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(key.public_key)
    assert key.public_key.to_openssh() == text.rstrip("\n")


def test_pub_line_without_comment(tmp_path) -> None:
    key = OwnerKey.generate()
    _, pub = key.save(tmp_path / "k", None)
    text = pub.read_text("ascii")
    m = PUB_LINE.match(text.rstrip("\n"))
    assert m and m.group(2) is None, repr(text)
    assert text == text.rstrip("\n").rstrip() + "\n"  # no trailing space before the newline


def test_public_key_openssh_round_trip(owner_key) -> None:
    line = owner_key.public_key.to_openssh("a comment with  spaces")
    back = PublicKey.from_openssh(line)
    assert back == owner_key.public_key and back.comment == "a comment with  spaces"


# --- key id, equality, secrecy -------------------------------------------------------------


def test_key_id_is_sha256_prefix(owner_key) -> None:
    raw = bytes(owner_key.public_key)
    assert len(raw) == 32
    expected = hashlib.sha256(raw).digest()[:8].hex()
    assert owner_key.key_id == owner_key.public_key.key_id == key_id_of(raw) == expected
    assert re.fullmatch(r"[0-9a-f]{16}", expected)


def test_key_id_known_answer() -> None:
    # RFC 8032 TEST 1's public key
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert PublicKey(raw).key_id == hashlib.sha256(raw).hexdigest()[:16]


def test_owner_key_equality() -> None:
    seed = hashlib.sha256(b"equality").digest()
    a, b = OwnerKey(seed, "one"), OwnerKey(seed, "two")
    assert (a == b) is True and (a != b) is False  # the comment is not part of the key
    assert hash(a) == hash(b)
    for i in (0, 31):
        other = bytearray(seed)
        other[i] ^= 1
        c = OwnerKey(bytes(other))
        assert (a != c) is True and (a == c) is False
    assert a != a.public_key and a.public_key != a  # different kinds never compare equal
    assert a != seed and a != seed.hex()
    assert len({a, b, OwnerKey.generate()}) == 2


def test_public_key_equality() -> None:
    key = OwnerKey(hashlib.sha256(b"pub equality").digest())
    raw = bytes(key.public_key)
    a, b = PublicKey(raw, "x"), PublicKey(raw, "y")
    assert a == b == key.public_key and hash(a) == hash(b)
    other = OwnerKey.generate().public_key
    assert (a != other) is True and (a == other) is False
    assert a != raw
    assert len({a, b, other}) == 2


def test_repr_and_str_never_show_the_seed(owner_key) -> None:
    seed = owner_key._seed
    assert len(seed) == 32
    texts = [
        repr(owner_key),
        str(owner_key),
        f"{owner_key}",
        f"{owner_key!r}",
        format(owner_key, ""),
        repr([owner_key]),
        repr({"k": owner_key}),
        repr(owner_key.public_key),
        str(owner_key.public_key),
    ]
    for text in texts:
        for enc in encodings_of(seed):
            assert enc not in text, (text, enc)
    assert owner_key.key_id in repr(owner_key)
    assert not hasattr(owner_key, "__dict__")  # nothing stray for vars() to show


def test_pickling_and_copying_are_refused(owner_key) -> None:
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(owner_key, protocol=proto)
    with pytest.raises(TypeError):
        copy.copy(owner_key)
    with pytest.raises(TypeError):
        copy.deepcopy(owner_key)
    # public keys carry no secret: copying them is fine
    assert copy.deepcopy(owner_key.public_key) == owner_key.public_key


def test_wrong_seed_length_is_refused() -> None:
    for n in (0, 31, 33, 64):
        with pytest.raises(InvalidKeyError, match="32 bytes"):
            OwnerKey(bytes(n))


# --- interoperability with ssh-keygen -------------------------------------------------------


@needs_ssh_keygen
def test_ssh_keygen_reads_our_encrypted_key(key_files) -> None:
    _, path, pub = key_files
    res = ssh_keygen("-y", "-f", str(path), "-P", PASSPHRASE)
    ours = pub.read_text().split()
    theirs = res.stdout.split()
    assert theirs[:2] == ours[:2]  # key type and base64 blob
    assert " ".join(theirs[2:]) == " ".join(ours[2:]) == "test-only key"  # comment
    # ...and it really is encrypted under that passphrase
    bad = ssh_keygen("-y", "-f", str(path), "-P", "not the passphrase", check=False)
    assert bad.returncode != 0 and "ssh-ed25519" not in bad.stdout


@needs_ssh_keygen
def test_ssh_keygen_reads_our_default_rounds_and_plain_keys(tmp_path, owner_key) -> None:
    path, pub = owner_key.save(tmp_path / "d", PASSPHRASE)  # DEFAULT_KDF_ROUNDS
    assert ssh_keygen("-y", "-f", str(path), "-P", PASSPHRASE).stdout == pub.read_text()
    plain, plain_pub = owner_key.save(tmp_path / "p", None)
    assert ssh_keygen("-y", "-f", str(plain), "-P", "").stdout == plain_pub.read_text()


@needs_ssh_keygen
def test_ssh_keygen_fingerprint_matches(plain_key_files) -> None:
    _, _, pub = plain_key_files
    blob = base64.b64decode(pub.read_text().split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    out = ssh_keygen("-l", "-E", "sha256", "-f", str(pub)).stdout
    assert f"SHA256:{expected}" in out and "ED25519" in out


@needs_ssh_keygen
def test_ssh_keygen_can_rekey_our_file_and_we_read_it_back(key_files) -> None:
    key, path, _ = key_files
    ssh_keygen("-p", "-f", str(path), "-P", PASSPHRASE, "-N", "new passphrase", "-a", "2")
    assert OwnerKey.load(path, "new passphrase") == key
    with pytest.raises(WrongPassphraseError):
        OwnerKey.load(path, PASSPHRASE)


@needs_ssh_keygen
@pytest.mark.parametrize("cipher", ["aes256-ctr", "aes256-cbc", "aes256-gcm@openssh.com"])
def test_key_made_by_ssh_keygen_loads(tmp_path, cipher: str) -> None:
    path = tmp_path / "theirs"
    args = [
        "-q",
        "-t",
        "ed25519",
        "-N",
        "their passphrase",
        "-a",
        "2",
        "-Z",
        cipher,
        "-C",
        "theirs",
    ]
    ssh_keygen(*args, "-f", str(path))
    assert OwnerKey.is_encrypted(path)
    key = OwnerKey.load(path, "their passphrase")
    pub = PublicKey.load(tmp_path / "theirs.pub")
    assert key.public_key == pub == load_public(path)
    assert key.comment == pub.comment == "theirs"
    msg = b"signed by a key ssh-keygen made"
    pub.verify(msg, key.sign(msg))
    with pytest.raises(WrongPassphraseError) as exc:
        OwnerKey.load(path, "not their passphrase")
    assert_sensible(exc.value, path, "not their passphrase")


@needs_ssh_keygen
def test_unencrypted_key_made_by_ssh_keygen_loads(tmp_path) -> None:
    path = tmp_path / "theirs"
    ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "plain", "-f", str(path))
    assert not OwnerKey.is_encrypted(path)
    key = OwnerKey.load(path)
    assert key.public_key == PublicKey.load(tmp_path / "theirs.pub")
    assert key.comment == "plain"


@needs_ssh_keygen
def test_chacha20_key_made_by_ssh_keygen_is_refused_clearly(tmp_path) -> None:
    path = tmp_path / "theirs"
    args = [
        "-q",
        "-t",
        "ed25519",
        "-N",
        "their passphrase",
        "-a",
        "2",
        "-Z",
        "chacha20-poly1305@openssh.com",
    ]
    ssh_keygen(*args, "-f", str(path))
    with pytest.raises(KeyFileError, match="unsupported cipher") as exc:
        OwnerKey.load(path, "their passphrase")
    assert_sensible(exc.value, path, "their passphrase")
    assert PublicKey.load(tmp_path / "theirs.pub")  # its .pub is an ordinary Ed25519 key


@needs_ssh_keygen
@pytest.mark.parametrize("args", [["-t", "rsa", "-b", "2048"], ["-t", "ecdsa", "-b", "256"]])
def test_non_ed25519_key_made_by_ssh_keygen_is_refused(tmp_path, args: list[str]) -> None:
    path = tmp_path / "other"
    ssh_keygen("-q", *args, "-N", "their passphrase", "-a", "2", "-f", str(path))
    with pytest.raises(KeyFileError, match="not ssh-ed25519") as exc:
        OwnerKey.load(path, "their passphrase")
    assert_sensible(exc.value, path, "their passphrase")
    with pytest.raises(KeyFileError, match="not ssh-ed25519"):
        OwnerKey.is_encrypted(path)
    with pytest.raises(KeyFileError, match="not ssh-ed25519"):
        load_public(path)
    with pytest.raises(KeyFileError, match="not ssh-ed25519"):
        PublicKey.load(tmp_path / "other.pub")


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_non_ed25519_openssh_keys_are_refused(tmp_path, kind: str) -> None:
    """Same as above without ssh-keygen: OpenSSH files written by `cryptography`."""
    path = tmp_path / kind
    path.write_bytes(non_ed25519_private(kind))
    with pytest.raises(KeyFileError, match="not ssh-ed25519") as exc:
        OwnerKey.load(path, PASSPHRASE)
    assert_sensible(exc.value, path)
    pub = tmp_path / f"{kind}.pub"
    pub.write_bytes(non_ed25519_public_line(kind) + b"\n")
    with pytest.raises(KeyFileError, match="not ssh-ed25519") as exc:
        PublicKey.load(pub)
    assert_sensible(exc.value, pub)
    with pytest.raises(KeyFileError, match="not ssh-ed25519"):
        load_public(pub)


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.Raw],
    ids=["pkcs8-pem", "raw-32-bytes"],
)
def test_ed25519_key_in_another_container_is_refused(tmp_path, fmt) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    enc = serialization.Encoding.Raw if fmt is serialization.PrivateFormat.Raw else None
    data = key.private_bytes(enc or serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path = tmp_path / "k"
    path.write_bytes(data)
    with pytest.raises(KeyFileError) as exc:
        OwnerKey.load(path)
    assert_sensible(exc.value, path)


# --- refusing to overwrite ------------------------------------------------------------------


@pytest.mark.parametrize("existing", ["k", "k.pub", "both"])
def test_save_refuses_existing_outputs(tmp_path, owner_key, existing: str) -> None:
    names = ["k", "k.pub"] if existing == "both" else [existing]
    before = {}
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"precious %d\n" % i)
        before[name] = (tmp_path / name).read_bytes()
    for passphrase in (None, PASSPHRASE):
        with pytest.raises(OutputExistsError, match="already exists") as exc:
            owner_key.save(tmp_path / "k", passphrase, kdf_rounds=1)
        assert isinstance(exc.value, OffswitchError) and "--force" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # nothing created
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    owner_key.save(tmp_path / "k", None, force=True)
    assert OwnerKey.load(tmp_path / "k") == owner_key


def test_save_refuses_dangling_symlink(tmp_path, owner_key) -> None:
    (tmp_path / "k").symlink_to(tmp_path / "elsewhere")
    for force in (False, True):  # a symlink is never replaced, not even with force
        with pytest.raises(KeyPathError, match="symlink"):
            owner_key.save(tmp_path / "k", None, force=force)
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "k.pub").exists()


def test_save_refuses_existing_key_of_same_owner(key_files) -> None:
    key, path, pub = key_files
    before = (path.read_bytes(), pub.read_bytes())
    with pytest.raises(OutputExistsError):
        OwnerKey.generate().save(path, PASSPHRASE, kdf_rounds=1)
    assert (path.read_bytes(), pub.read_bytes()) == before
    assert OwnerKey.load(path, PASSPHRASE) == key


def test_save_into_missing_directory(tmp_path, owner_key) -> None:
    with pytest.raises(OffswitchError, match="does not exist"):
        owner_key.save(tmp_path / "missing" / "k", None)
    assert list(tmp_path.iterdir()) == []


# --- wrong passphrase, corrupted files ------------------------------------------------------


def test_wrong_passphrase(key_files) -> None:
    _, path, _ = key_files
    for wrong in ("an-entirely-different-one", PASSPHRASE + " ", PASSPHRASE.upper()):
        with pytest.raises(WrongPassphraseError, match="wrong passphrase") as exc:
            OwnerKey.load(path, wrong)
        assert_sensible(exc.value, path, wrong)
        assert isinstance(exc.value, KeyFileError)


@pytest.mark.parametrize("content", [b"", b"\n", b"   \n\t\n"], ids=["empty", "newline", "blank"])
def test_empty_key_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    for load in (lambda p: OwnerKey.load(p, PASSPHRASE), PublicKey.load, load_public):
        with pytest.raises(KeyFileError, match="empty") as exc:
            load(path)
        assert_sensible(exc.value, path)


def test_missing_and_directory_key_files(tmp_path) -> None:
    for load in (lambda p: OwnerKey.load(p, PASSPHRASE), PublicKey.load, load_public):
        with pytest.raises(KeyFileError, match="does not exist") as exc:
            load(tmp_path / "nope")
        assert_sensible(exc.value, tmp_path / "nope")
        with pytest.raises(KeyFileError, match="directory"):
            load(tmp_path)


def test_binary_garbage_key_file(tmp_path) -> None:
    path = tmp_path / "k"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(KeyFileError, match="not UTF-8 text") as exc:
        OwnerKey.load(path, PASSPHRASE)
    assert_sensible(exc.value, path)


def _truncations(text: str) -> dict[str, str]:
    lines = text.strip("\n").split("\n")
    body = lines[1:-1]
    return {
        "half": text[: len(text) // 2],
        "no-end-line": "\n".join(lines[:-1]) + "\n",
        "begin-only": lines[0] + "\n",
        "no-body": lines[0] + "\n" + lines[-1] + "\n",
        "last-body-line-dropped": "\n".join([lines[0], *body[:-1], lines[-1]]) + "\n",
        "middle-line-dropped": "\n".join([lines[0], *body[:2], *body[3:], lines[-1]]) + "\n",
        "first-body-line-dropped": "\n".join([lines[0], *body[1:], lines[-1]]) + "\n",
        "last-4-b64-chars": "\n".join([lines[0], *body[:-1], body[-1][:-4], lines[-1]]) + "\n",
        "one-char-short": text.rstrip("\n")[:-1] + "\n",
    }


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_truncated_private_key_files(tmp_path, owner_key, encrypted: bool) -> None:
    src, _ = owner_key.save(tmp_path / "src", PASSPHRASE if encrypted else None, kdf_rounds=1)
    text = src.read_text("ascii")
    assert len(text.strip().splitlines()) >= 6  # enough body lines for every cut below
    for name, cut in _truncations(text).items():
        path = tmp_path / f"cut-{name}"
        path.write_text(cut)
        with pytest.raises(KeyFileError) as exc:
            OwnerKey.load(path, PASSPHRASE)
        # a structurally broken file is never blamed on the passphrase
        assert not isinstance(exc.value, WrongPassphraseError), (name, exc.value)
        assert_sensible(exc.value, path)


def test_truncated_public_key_files(tmp_path, owner_key) -> None:
    kind, blob = owner_key.public_key.to_openssh("").split()
    cuts = [kind, f"{kind} {blob[:20]}", f"{kind} {blob[:-4]}", f"{kind} {blob[:-1]}"]
    for n, cut in enumerate(cuts):
        path = tmp_path / f"cut{n}.pub"
        path.write_text(cut + "\n")
        with pytest.raises(KeyFileError) as exc:
            PublicKey.load(path)
        assert_sensible(exc.value, path)


def _flip_positions(data: bytes, skip: range | None) -> list[int]:
    return [i for i in range(len(data)) if skip is None or i not in skip]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_every_single_bit_flip_in_the_binary_body_is_caught(tmp_path, encrypted: bool) -> None:
    """Flip one bit in each byte of the decoded file body: loading must never succeed.

    The key is saved with an empty comment, so every byte of the file matters. (Flips in the
    encrypted bcrypt `rounds` field are skipped: they can ask for 2^31 KDF rounds.)
    """
    key = OwnerKey(hashlib.sha256(b"bit flips").digest())
    src, _ = key.save(tmp_path / "src", PASSPHRASE if encrypted else None, comment="", kdf_rounds=1)
    begin, end, data = split_private(src)
    hdr = header_fields(data)
    skip = None
    if encrypted:
        at = int(hdr["rounds_at"])  # type: ignore[call-overload]
        skip = range(at, at + 4)
    path = tmp_path / "flipped"
    kinds: dict[str, int] = {}
    for i in _flip_positions(data, skip):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        path.write_text(join_private(begin, end, bytes(flipped)))
        with pytest.raises(OffswitchError) as exc:
            OwnerKey.load(path, PASSPHRASE)
        assert isinstance(exc.value, (KeyFileError, InvalidKeyError)), (i, exc.value)
        assert_sensible(exc.value, path)
        kinds[type(exc.value).__name__] = kinds.get(type(exc.value).__name__, 0) + 1
    # sanity: the unflipped file loads, and several kinds of damage were actually seen
    path.write_text(join_private(begin, end, data))
    assert OwnerKey.load(path, PASSPHRASE) == key
    assert {"KeyFileError", "InvalidKeyError"} <= set(kinds)
    if encrypted:
        assert "WrongPassphraseError" in kinds  # flips in the salt and check bytes


def test_bit_flips_in_the_text_are_caught(tmp_path, owner_key) -> None:
    """Flip bits in the armour lines and in the base64 characters of the body."""
    src, _ = owner_key.save(tmp_path / "src", PASSPHRASE, comment="", kdf_rounds=1)
    text = src.read_bytes()
    first_nl = text.index(b"\n")
    last_line = text.rstrip(b"\n").rindex(b"\n") + 1
    positions = [
        *range(0, first_nl),  # every character of -----BEGIN OPENSSH PRIVATE KEY-----
        *range(last_line, len(text) - 1),  # every character of the END line
        *range(first_nl + 1, last_line - 1, 7),  # a spread of base64 characters
    ]
    path = tmp_path / "flipped"
    for n, i in enumerate(positions):
        flipped = bytearray(text)
        flipped[i] ^= 1 << (n % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(OffswitchError) as exc:
            OwnerKey.load(path, PASSPHRASE)
        assert_sensible(exc.value, path)
        if i < first_nl or i >= last_line:
            assert isinstance(exc.value, KeyFileError)
            assert not isinstance(exc.value, WrongPassphraseError), (i, exc.value)


def test_flip_in_header_names_the_problem(tmp_path, plain_key_files) -> None:
    _, src, _ = plain_key_files
    begin, end, data = split_private(src)
    hdr = header_fields(data)
    cases = {
        "magic": (0, "openssh-key-v1"),
        "cipher": (int(hdr["cipher_at"]), "unsupported cipher"),  # type: ignore[call-overload]
        "key type": (int(hdr["pubblob_at"]) + 4, "not ssh-ed25519"),  # type: ignore[call-overload]
    }
    for name, (at, needle) in cases.items():
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        path = src.with_name(name.replace(" ", "-"))
        path.write_text(join_private(begin, end, bytes(flipped)))
        with pytest.raises(KeyFileError, match=needle) as exc:
            OwnerKey.load(path)
        assert_sensible(exc.value, path)


def test_control_characters_from_a_file_do_not_reach_the_message(tmp_path) -> None:
    path = tmp_path / "evil.pub"
    path.write_bytes(b"ssh-\x1b[31mrsa\x07 AAAA\n")
    with pytest.raises(KeyFileError) as exc:
        PublicKey.load(path)
    assert_sensible(exc.value, path)
    assert "\x1b" not in str(exc.value) and "\x07" not in str(exc.value)


# --- public where private is needed, and the reverse ---------------------------------------


def test_public_key_where_private_is_needed(key_files) -> None:
    _, _, pub = key_files
    with pytest.raises(KeyFileError, match="is a public key") as exc:
        OwnerKey.load(pub, PASSPHRASE)
    assert_sensible(exc.value, pub)
    with pytest.raises(KeyFileError, match="is a public key"):
        OwnerKey.is_encrypted(pub)


def test_private_key_where_public_is_needed(key_files) -> None:
    _, path, _ = key_files
    with pytest.raises(KeyFileError, match="is a private key") as exc:
        PublicKey.load(path)
    assert_sensible(exc.value, path)
    assert f"{path}.pub" in str(exc.value)  # says which file to give instead


def test_load_public_on_private_and_public_files(key_files) -> None:
    key, path, pub = key_files
    from_private = load_public(path)  # encrypted file: no passphrase needed
    from_pub = load_public(pub)
    assert from_private == from_pub == key.public_key
    assert from_private.key_id == from_pub.key_id == key.key_id
    assert from_private.comment == from_pub.comment == "test-only key"
    # with no .pub next to it, the private file alone is enough
    pub.unlink()
    assert load_public(path) == key.public_key


def test_public_key_file_with_two_lines_is_refused(tmp_path, owner_key) -> None:
    path = tmp_path / "two.pub"
    line = owner_key.public_key.to_openssh()
    path.write_text(line + "\n" + OwnerKey.generate().public_key.to_openssh() + "\n")
    with pytest.raises(KeyFileError, match="exactly one") as exc:
        PublicKey.load(path)
    assert_sensible(exc.value, path)
    path.write_text("\n" + line + "\n\n")  # blank lines around one key are fine
    assert PublicKey.load(path) == owner_key.public_key


@pytest.mark.parametrize(
    "line",
    [
        "ssh-ed25519",
        "ssh-ed25519 !!!notbase64",
        "ssh-ed25519 " + base64.b64encode(_openssh.public_blob(bytes(32))[:-1]).decode(),
        "ssh-ed25519 " + base64.b64encode(_openssh.public_blob(bytes(32)) + b"x").decode(),
        "ssh-ed25519 " + base64.b64encode(_openssh._string(b"ssh-rsa") + bytes(8)).decode(),
        "AAAAC3NzaC1lZDI1NTE5AAAAIDdy ssh-ed25519",
    ],
    ids=["no-blob", "bad-base64", "short-blob", "long-blob", "type-mismatch", "swapped"],
)
def test_malformed_public_key_lines(tmp_path, line: str) -> None:
    with pytest.raises(KeyFileError):
        PublicKey.from_openssh(line)
    path = tmp_path / "k.pub"
    path.write_text(line + "\n")
    with pytest.raises(KeyFileError) as exc:
        PublicKey.load(path)
    assert_sensible(exc.value, path)


def test_small_order_public_key_file_is_refused(tmp_path) -> None:
    identity = b"\x01" + bytes(31)
    path = tmp_path / "identity.pub"
    path.write_text(_openssh.public_line(identity, "forged") + "\n")
    with pytest.raises(InvalidKeyError, match="small order") as exc:
        PublicKey.load(path)
    assert_sensible(exc.value, path)
    with pytest.raises(InvalidKeyError):
        load_public(path)
    with pytest.raises(InvalidKeyError):
        PublicKey.from_openssh(_openssh.public_line(identity))


def test_private_file_with_small_order_public_part_is_refused(tmp_path) -> None:
    identity = b"\x01" + bytes(31)
    path = tmp_path / "identity"
    path.write_bytes(_openssh.serialize_private(bytes(32), identity, "", None, 1))
    for load in (OwnerKey.load, OwnerKey.is_encrypted, load_public):
        with pytest.raises(InvalidKeyError, match="small order") as exc:
            load(path)
        assert_sensible(exc.value, path)


def test_private_file_whose_public_part_belongs_to_another_key(tmp_path, owner_key) -> None:
    other = OwnerKey.generate()
    path = tmp_path / "mixed"
    # outer public blob and inner copy both name `other`, but the seed is owner_key's
    path.write_bytes(
        _openssh.serialize_private(owner_key._seed, bytes(other.public_key), "", None, 1)
    )
    with pytest.raises(KeyFileError, match="mismatch") as exc:
        OwnerKey.load(path)
    assert_sensible(exc.value, path)


def test_demo_keys_are_the_published_test_only_seeds() -> None:
    """keys/demo-test-only holds only keys anyone can recompute from a published string."""
    import tempfile

    folder = Path(__file__).resolve().parents[1] / "keys" / "demo-test-only"
    names = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".pub"))
    assert names == [f"demo-key-{n}" for n in range(1, 9)]
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, 9):
            copy = Path(tmp) / f"k{n}"
            shutil.copyfile(folder / f"demo-key-{n}", copy)
            os.chmod(copy, 0o600)
            seed = hashlib.sha256(f"offswitch TEST-ONLY demo key {n}".encode()).digest()
            assert OwnerKey.load(copy).key_id == OwnerKey(seed).key_id
            assert PublicKey.load(folder / f"demo-key-{n}.pub").key_id == OwnerKey(seed).key_id
