"""Crypto-core benchmarks (pytest-benchmark). Not part of the test suite; run with

    .venv/bin/python -m pytest benchmarks --benchmark-json=research/results/bench-crypto.json
    .venv/bin/python scripts/bench_report.py research/results/bench-crypto.json

Each offswitch operation is measured beside the raw ``cryptography`` call it wraps, in the
same run, so the overhead ratio is immune to machine speed. Groups:

* ``make``: ``OwnerKey``-level ``make_command`` vs raw ``Ed25519PrivateKey.sign``;
* ``verify``: ``verify_command`` (parse + strict checks + verify) vs raw
  ``Ed25519PublicKey.verify``;
* ``roundtrip``: make + verify vs raw sign + verify;
* ``kdf``: encrypting (save) and decrypting (load) a key at ``DEFAULT_KDF_ROUNDS``.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from offswitch.commands import command_message, make_command, verify_command
from offswitch.keys import DEFAULT_KDF_ROUNDS, OwnerKey

MID = "acme/chat-1"


@pytest.fixture(scope="module")
def key() -> OwnerKey:
    return OwnerKey.generate()


@pytest.fixture(scope="module")
def raw(key: OwnerKey):
    priv = Ed25519PrivateKey.from_private_bytes(key._seed)
    return priv, priv.public_key()


@pytest.mark.benchmark(group="make")
def test_make_raw(benchmark, raw) -> None:
    priv, _ = raw
    msg = command_message(MID, 3)
    benchmark(priv.sign, msg)


@pytest.mark.benchmark(group="make")
def test_make_offswitch(benchmark, key) -> None:
    benchmark(make_command, key, MID, 3)


@pytest.mark.benchmark(group="verify")
def test_verify_raw(benchmark, raw) -> None:
    priv, pub = raw
    msg = command_message(MID, 3)
    sig = priv.sign(msg)
    benchmark(pub.verify, sig, msg)


@pytest.mark.benchmark(group="verify")
def test_verify_offswitch(benchmark, key) -> None:
    cmd = make_command(key, MID, 3)
    benchmark(verify_command, cmd, key.public_key, MID)


@pytest.mark.benchmark(group="roundtrip")
def test_roundtrip_raw(benchmark, raw) -> None:
    priv, pub = raw

    def run() -> None:
        msg = command_message(MID, 3)
        pub.verify(priv.sign(msg), msg)

    benchmark(run)


@pytest.mark.benchmark(group="roundtrip")
def test_roundtrip_offswitch(benchmark, key) -> None:
    benchmark(lambda: verify_command(make_command(key, MID, 3), key.public_key, MID))


@pytest.mark.benchmark(group="kdf")
def test_kdf_encrypt(benchmark, key, tmp_path) -> None:
    path = tmp_path / "k"
    benchmark.pedantic(
        key.save, args=(path, "bench passphrase"), kwargs={"force": True}, rounds=5, iterations=1
    )
    benchmark.extra_info["kdf_rounds"] = DEFAULT_KDF_ROUNDS


@pytest.mark.benchmark(group="kdf")
def test_kdf_decrypt(benchmark, key, tmp_path) -> None:
    path = tmp_path / "k"
    key.save(path, "bench passphrase")
    loaded = benchmark.pedantic(
        OwnerKey.load, args=(path, "bench passphrase"), rounds=5, iterations=1
    )
    assert loaded == key
    benchmark.extra_info["kdf_rounds"] = DEFAULT_KDF_ROUNDS
