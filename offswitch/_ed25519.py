"""Minimal edwards25519 arithmetic for *strict* key and signature checks.

The actual signing and verifying is done by the ``cryptography`` package (OpenSSL). OpenSSL,
like several widely used bindings, accepts public keys of small order: with the identity
point as public key, the signature (R = identity, S = 0) verifies for *every* message. This
module supplies the checks that close that hole:

* public keys must be canonical encodings (y < p, no "negative zero") of points on the
  curve that are not of small order ([8]A != identity);
* a signature's R must be a canonical encoding and not one of the 8 small-order points;
* a signature's S must be < L (OpenSSL checks this too; we check it first so the error is
  precise).

Pure Python big-integer arithmetic: slow (≈ 0.1 ms per point decode), so public keys are
checked once, when loaded, and per-signature checks use only integer comparisons and a set.
"""

from __future__ import annotations

import functools
import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
_Y_MASK = (1 << 255) - 1

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z
IDENTITY: Point = (0, 1, 1, 0)


def _add(p1: Point, p2: Point) -> Point:
    # Unified addition for a = -1 twisted Edwards curves (also valid for doubling).
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k: int, pt: Point) -> Point:
    acc = IDENTITY
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        k >>= 1
    return acc


def _is_identity(pt: Point) -> bool:
    x, y, z, _ = pt
    return x % P == 0 and (y - z) % P == 0


def decode_point(raw: bytes) -> Point | None:
    """Strictly decode a 32-byte point encoding (RFC 8032 §5.1.3); None if invalid/non-canonical."""
    if len(raw) != 32:
        return None
    n = int.from_bytes(raw, "little")
    sign, y = n >> 255, n & _Y_MASK
    if y >= P:
        return None  # non-canonical y
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vx2 = v * x * x % P
    if vx2 == (-u) % P:
        x = x * SQRT_M1 % P
    elif vx2 != u:
        return None  # not on the curve
    if x == 0 and sign:
        return None  # "negative zero": non-canonical
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def encode_point(pt: Point) -> bytes:
    x, y, z, _ = pt
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def is_small_order(pt: Point) -> bool:
    return _is_identity(_mul(8, pt))


@functools.cache
def small_order_encodings() -> frozenset[bytes]:
    """Canonical encodings of the 8 points of order dividing 8 (the torsion subgroup)."""
    for i in range(2, 1000):
        y = int.from_bytes(hashlib.sha256(b"offswitch torsion %d" % i).digest(), "little") % P
        pt = decode_point(y.to_bytes(32, "little"))
        if pt is None:
            continue
        t = _mul(L, pt)  # the torsion component of pt
        if _is_identity(_mul(4, t)):
            continue  # order < 8; need a generator of the torsion group
        pts, acc = [], IDENTITY
        for _ in range(8):
            pts.append(encode_point(acc))
            acc = _add(acc, t)
        return frozenset(pts)
    raise AssertionError("no point with an order-8 torsion component found")  # pragma: no cover


def check_public_key(raw: bytes) -> str | None:
    """Return None if ``raw`` is an acceptable public key, else the reason it is not."""
    if len(raw) != 32:
        return f"an Ed25519 public key is 32 bytes, got {len(raw)}"
    pt = decode_point(raw)
    if pt is None:
        return "not a canonical encoding of a point on edwards25519"
    if is_small_order(pt):
        return "a point of small order (such a key accepts forged signatures)"
    return None


def check_signature_encoding(sig: bytes) -> str | None:
    """Cheap per-signature checks; None if acceptable, else the reason."""
    if len(sig) != 64:
        return f"an Ed25519 signature is 64 bytes, got {len(sig)}"
    if int.from_bytes(sig[32:], "little") >= L:
        return "signature scalar S is not reduced (S >= L)"
    n = int.from_bytes(sig[:32], "little")
    y = n & _Y_MASK
    if y >= P or (n >> 255 and y in (1, P - 1)):
        return "signature point R is not canonically encoded"
    if sig[:32] in small_order_encodings():
        return "signature point R has small order"
    return None
