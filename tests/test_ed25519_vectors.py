"""Strict Ed25519: Wycheproof, RFC 8032 known answers, small-order and non-canonical inputs.

Everything goes through the public API (``PublicKey(raw).verify``, ``OwnerKey(seed).sign``);
the raw ``cryptography`` binding is used only to document the hole offswitch closes.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from offswitch import _ed25519
from offswitch.errors import BadSignatureError, InvalidKeyError, OffswitchError
from offswitch.keys import OwnerKey, PublicKey

from .conftest import ROOT, SHARED

WYCHEPROOF = SHARED / "vectors/wycheproof/ed25519_test.json"
RFC8032 = ROOT / "keys/rfc8032-vectors.json"

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
IDENTITY = b"\x01" + bytes(31)

# The 8 canonical encodings of the points of order 1, 2, 4 and 8 (the torsion subgroup),
# as listed in libsodium's blocklist and in "Taming the many EdDSAs" (Brendel et al., 2020).
# Written out here so the test does not depend on how offswitch derives them.
KNOWN_SMALL_ORDER = {
    bytes.fromhex(h)
    for h in [
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    ]
}


# --- Wycheproof -------------------------------------------------------------------------


def _wycheproof_cases() -> list:
    if not WYCHEPROOF.is_file():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"Wycheproof vectors not found at {WYCHEPROOF} (the shared "
                    "checkout ../shared/vectors is absent)"
                ),
                id="wycheproof-missing",
            )
        ]
    data = json.loads(WYCHEPROOF.read_text("utf-8"))
    cases = []
    for group in data["testGroups"]:
        pk = group["publicKey"]["pk"]
        for t in group["tests"]:
            case = (pk, t["msg"], t["sig"], t["result"], t["comment"], t["flags"])
            cases.append(pytest.param(case, id=f"tc{t['tcId']}"))
    return cases


WYCHEPROOF_CASES = _wycheproof_cases()


@pytest.mark.skipif(not WYCHEPROOF.is_file(), reason=f"{WYCHEPROOF} is absent")
def test_wycheproof_file_has_151_cases() -> None:
    data = json.loads(WYCHEPROOF.read_text("utf-8"))
    assert data["algorithm"] == "EDDSA"
    assert data["numberOfTests"] == 151
    tc_ids = [t["tcId"] for g in data["testGroups"] for t in g["tests"]]
    assert len(tc_ids) == 151 == len(set(tc_ids))
    assert len(WYCHEPROOF_CASES) == 151
    # every case has a definite label: no "acceptable" middle ground to hide behind
    results = {t["result"] for g in data["testGroups"] for t in g["tests"]}
    assert results == {"valid", "invalid"}


def _offswitch_accepts(pk_hex: str, msg_hex: str, sig_hex: str) -> bool:
    try:
        pub = PublicKey(bytes.fromhex(pk_hex))
    except InvalidKeyError:
        return False  # a refused key makes every one of its signatures invalid
    try:
        pub.verify(bytes.fromhex(msg_hex), bytes.fromhex(sig_hex))
    except BadSignatureError:
        return False
    return True


@pytest.mark.parametrize("case", WYCHEPROOF_CASES)
def test_wycheproof(case) -> None:
    pk, msg, sig, result, comment, flags = case
    got = _offswitch_accepts(pk, msg, sig)
    assert got == (result == "valid"), f"expected {result}: {comment} {flags}"


# --- RFC 8032 known answers -------------------------------------------------------------


def _rfc_vectors() -> list[dict]:
    data = json.loads(RFC8032.read_text("utf-8"))
    assert data["public_test_vectors"] is True
    return data["vectors"]


def test_rfc8032_file_holds_tests_1_to_3() -> None:
    names = [v["name"] for v in _rfc_vectors()]
    assert names == ["TEST 1", "TEST 2", "TEST 3"]


@pytest.mark.parametrize("vec", _rfc_vectors(), ids=lambda v: v["name"].replace(" ", ""))
def test_rfc8032_known_answers(vec: dict) -> None:
    seed = bytes.fromhex(vec["secret_key"])
    msg = bytes.fromhex(vec["message"])
    expected_sig = bytes.fromhex(vec["signature"])
    key = OwnerKey(seed)
    assert bytes(key.public_key).hex() == vec["public_key"]
    sig = key.sign(msg)
    assert sig == expected_sig
    assert key.sign(msg) == sig  # Ed25519 is deterministic
    # and the published signature verifies through a public key built from raw bytes
    pub = PublicKey(bytes.fromhex(vec["public_key"]))
    assert pub == key.public_key
    pub.verify(msg, expected_sig)
    with pytest.raises(BadSignatureError):
        pub.verify(msg + b"\x00", expected_sig)
    flipped = bytearray(expected_sig)
    flipped[0] ^= 1
    with pytest.raises(BadSignatureError):
        pub.verify(msg, bytes(flipped))


# --- small-order and non-canonical public keys ------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [b"", b"shutdown", b"\x00" * 1000, bytes(range(256))],
    ids=["empty", "shutdown", "zeros", "all-bytes"],
)
def test_identity_key_hole_in_raw_binding_is_closed(msg: bytes) -> None:
    trivial_sig = IDENTITY + bytes(32)  # R = identity, S = 0
    # The raw binding (OpenSSL via `cryptography`) accepts the identity public key and the
    # trivial signature for every message: anyone could "sign" anything under that key.
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(trivial_sig, msg)
    # offswitch refuses the key itself, so the forgery can never be checked against it.
    with pytest.raises(InvalidKeyError, match="small order"):
        PublicKey(IDENTITY)


def test_small_order_encodings_are_the_known_eight() -> None:
    assert set(_ed25519.small_order_encodings()) == KNOWN_SMALL_ORDER


@pytest.mark.parametrize("raw", sorted(KNOWN_SMALL_ORDER), ids=lambda b: b.hex()[:8] + b.hex()[-2:])
def test_small_order_public_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidKeyError, match="small order") as exc:
        PublicKey(raw)
    assert isinstance(exc.value, OffswitchError)


def test_library_small_order_set_is_refused_too() -> None:
    encodings = _ed25519.small_order_encodings()
    assert len(encodings) == 8
    for raw in encodings:
        with pytest.raises(InvalidKeyError):
            PublicKey(raw)


@pytest.mark.parametrize("y", [3, 4, 5, 14, 18])
@pytest.mark.parametrize("sign", [0, 1])
def test_non_canonical_public_key_is_refused(y: int, sign: int) -> None:
    canonical = (y | sign << 255).to_bytes(32, "little")
    non_canonical = ((y + P) | sign << 255).to_bytes(32, "little")  # same point, y >= p
    PublicKey(canonical)  # the canonical encoding of that point is a fine key...
    with pytest.raises(InvalidKeyError, match="canonical"):
        PublicKey(non_canonical)  # ...but the alias is not


@pytest.mark.parametrize(
    "raw",
    [
        (1 | 1 << 255).to_bytes(32, "little"),  # identity with "negative zero" x
        ((P - 1) | 1 << 255).to_bytes(32, "little"),  # (0, -1) with "negative zero" x
        (P + 1).to_bytes(32, "little"),  # identity with y = p + 1
        b"\xff" * 32,  # y = 2^255 - 1 >= p
    ],
    ids=["neg-zero-identity", "neg-zero-order2", "y=p+1", "all-ff"],
)
def test_non_canonical_small_order_aliases_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        PublicKey(raw)


def test_point_not_on_curve_is_refused() -> None:
    # y = 2: (y^2 - 1) / (d y^2 + 1) is not a square mod p, so no x exists
    raw = (2).to_bytes(32, "little")
    with pytest.raises(InvalidKeyError, match="point on edwards25519"):
        PublicKey(raw)


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_public_key_of_wrong_length_is_refused(n: int) -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        PublicKey(bytes(range(n)))


# --- malleable and small-order signatures ------------------------------------------------


@pytest.fixture(scope="module")
def signed() -> tuple[OwnerKey, bytes, bytes]:
    key = OwnerKey(hashlib.sha256(b"offswitch test_ed25519_vectors").digest())
    msg = b"offswitch strictness test"
    return key, msg, key.sign(msg)


def test_valid_signature_verifies(signed) -> None:
    key, msg, sig = signed
    key.public_key.verify(msg, sig)


@pytest.mark.parametrize("k", [1, 2, 15])
def test_signature_with_s_plus_multiple_of_l_is_refused(signed, k: int) -> None:
    key, msg, sig = signed
    s = int.from_bytes(sig[32:], "little")
    assert s < L
    malleated = sig[:32] + (s + k * L).to_bytes(32, "little")  # same S mod L
    with pytest.raises(BadSignatureError, match=r"S >= L"):
        key.public_key.verify(msg, malleated)


def test_signature_with_s_equal_l_is_refused(signed) -> None:
    key, msg, sig = signed
    with pytest.raises(BadSignatureError, match=r"S >= L"):
        key.public_key.verify(msg, sig[:32] + L.to_bytes(32, "little"))


def _clamped_scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(h, "little")


def test_identity_r_signature_accepted_by_raw_binding_is_refused(signed) -> None:
    """With R = identity and S = H(R||A||M)·a, cofactorless verification succeeds.

    The raw binding accepts it (SB - kA = identity = R); offswitch refuses small-order R.
    """
    key, msg, _ = signed
    seed = key._seed
    a = _clamped_scalar(seed)
    pub = bytes(key.public_key)
    k = int.from_bytes(hashlib.sha512(IDENTITY + pub + msg).digest(), "little") % L
    sig = IDENTITY + (k * a % L).to_bytes(32, "little")
    Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)  # the raw binding: accepted
    with pytest.raises(BadSignatureError, match="small order"):
        key.public_key.verify(msg, sig)


@pytest.mark.parametrize("r", sorted(KNOWN_SMALL_ORDER), ids=lambda b: b.hex()[:8] + b.hex()[-2:])
def test_signature_with_small_order_r_is_refused(signed, r: bytes) -> None:
    key, msg, sig = signed
    with pytest.raises(BadSignatureError, match="small order"):
        key.public_key.verify(msg, r + sig[32:])


@pytest.mark.parametrize("y", [P, P + 3, 2**255 - 1])
def test_signature_with_non_canonical_r_is_refused(signed, y: int) -> None:
    key, msg, sig = signed
    with pytest.raises(BadSignatureError, match="canonical"):
        key.public_key.verify(msg, y.to_bytes(32, "little") + sig[32:])


@pytest.mark.parametrize("n", [0, 63, 65, 128])
def test_signature_of_wrong_length_is_refused(signed, n: int) -> None:
    key, msg, sig = signed
    bad = (sig * 2)[:n]
    with pytest.raises(BadSignatureError, match="64 bytes"):
        key.public_key.verify(msg, bad)


def test_signature_under_other_key_is_refused(signed) -> None:
    _, msg, sig = signed
    other = OwnerKey(hashlib.sha256(b"another key").digest())
    with pytest.raises(BadSignatureError, match="does not verify"):
        other.public_key.verify(msg, sig)
    with pytest.raises(InvalidSignature):  # sanity: the raw binding agrees here
        Ed25519PublicKey.from_public_bytes(bytes(other.public_key)).verify(sig, msg)
