"""The slot ledger (``offswitch.slots``): semantics, storage beside the key, corruption,
other keys' ledgers, atomic writes and concurrent writers in separate processes."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from offswitch.commands import MAX_SLOT
from offswitch.errors import LedgerError, ModelIdError, OffswitchError, SlotError
from offswitch.keys import OwnerKey
from offswitch.slots import FORMAT, ModelSlots, SlotLedger, ledger_path_for_key

MID = "acme/chat-1"
OTHER = "acme/chat-2"


@pytest.fixture
def ledger(plain_key_files) -> SlotLedger:
    key, path, _ = plain_key_files
    return SlotLedger.for_key(path, key.key_id)


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# --- where the ledger lives ------------------------------------------------------------


def test_ledger_path_is_beside_the_private_key(tmp_path) -> None:
    key = tmp_path / "keys" / "owner"
    expected = tmp_path / "keys" / "owner.slots.json"
    assert ledger_path_for_key(key) == expected
    assert ledger_path_for_key(str(key)) == expected
    # given the public key file, still the private key's ledger
    assert ledger_path_for_key(tmp_path / "keys" / "owner.pub") == expected
    assert SlotLedger.for_key(tmp_path / "keys" / "owner.pub").path == expected
    # only a trailing ".pub" is stripped
    assert ledger_path_for_key(tmp_path / "my.pub.key") == tmp_path / "my.pub.key.slots.json"


def test_first_change_creates_the_file_beside_the_key(plain_key_files, ledger) -> None:
    key, path, pub = plain_key_files
    ledger_file = path.with_name("owner.slots.json")
    assert not ledger_file.exists()
    ledger.get(MID)  # reading creates nothing
    assert not ledger_file.exists()
    ledger.plant(MID, [3, 1])
    assert ledger_file.is_file()
    data = json.loads(ledger_file.read_text("utf-8"))
    assert data["format"] == FORMAT
    assert data["key_id"] == key.key_id
    assert data["models"][MID]["planted"] == [1, 3]
    assert data["models"][MID]["spent"] == {}
    # the ledger holds no private material: same text whatever the key's secret
    assert "PRIVATE" not in ledger_file.read_text("utf-8")
    # a ledger opened through the .pub path sees the same state
    via_pub = SlotLedger.for_key(pub, key.key_id)
    assert via_pub.path == ledger_file
    assert via_pub.get(MID).planted == (1, 3)


# --- plant / get / spend / next ----------------------------------------------------------


def test_empty_ledger(ledger) -> None:
    assert ledger.models() == []
    s = ledger.get(MID)
    assert s == ModelSlots()
    assert s.planted == () and s.spent == {} and s.unspent == ()


def test_plant_is_sorted_and_idempotent(ledger) -> None:
    s = ledger.plant(MID, [5, 0, 2])
    assert s.planted == (0, 2, 5) and s.unspent == (0, 2, 5) and s.spent == {}
    s = ledger.plant(MID, [2, 5])  # again: no duplicates
    assert s.planted == (0, 2, 5)
    s = ledger.plant(MID, iter([7, 0]))  # any iterable; union with what was there
    assert s.planted == (0, 2, 5, 7)
    assert ledger.get(MID) == s


def test_spend_records_time_and_next_rotates(ledger) -> None:
    ledger.plant(MID, [0, 1, 2, 3])
    assert ledger.next_unspent(MID) == 0
    before = datetime.now(UTC).replace(microsecond=0)
    s = ledger.spend(MID, 0)
    after = datetime.now(UTC)
    assert set(s.spent) == {0}
    when = datetime.fromisoformat(s.spent[0])
    assert when.tzinfo is not None
    assert before - timedelta(seconds=1) <= when <= after
    assert s.unspent == (1, 2, 3)
    assert ledger.next_unspent(MID) == 1
    # spending out of order: next is the lowest unspent, not "last + 1"
    ledger.spend(MID, 2)
    assert ledger.next_unspent(MID) == 1
    ledger.spend(MID, 1)
    assert ledger.next_unspent(MID) == 3
    assert ledger.get(MID).unspent == (3,)
    assert sorted(ledger.get(MID).spent) == [0, 1, 2]


def test_state_persists_across_ledger_objects(plain_key_files, ledger) -> None:
    key, path, _ = plain_key_files
    ledger.plant(MID, [0, 1])
    ledger.spend(MID, 1)
    fresh = SlotLedger.for_key(path, key.key_id)
    got = fresh.get(MID)
    assert got.planted == (0, 1) and set(got.spent) == {1} and got.unspent == (0,)
    # a ledger opened by path alone (no key id) reads it too
    assert SlotLedger(ledger.path).get(MID) == got


def test_models_are_independent(ledger) -> None:
    ledger.plant(OTHER, [0, 1])
    ledger.plant(MID, [0, 1])
    ledger.spend(MID, 0)
    assert ledger.models() == sorted([MID, OTHER])
    assert ledger.get(OTHER).spent == {}
    assert ledger.next_unspent(OTHER) == 0
    assert ledger.next_unspent(MID) == 1


def test_planting_a_spent_slot_keeps_it_spent(ledger) -> None:
    ledger.plant(MID, [0, 1])
    ledger.spend(MID, 0)
    s = ledger.plant(MID, [0, 2])
    assert s.planted == (0, 1, 2)
    assert set(s.spent) == {0}
    assert s.unspent == (1, 2)


def test_spend_unplanted_slot(ledger) -> None:
    with pytest.raises(SlotError, match="never planted"):
        ledger.spend(MID, 0)  # model unknown
    ledger.plant(MID, [0, 1])
    before = ledger.path.read_bytes()
    with pytest.raises(SlotError, match="never planted"):
        ledger.spend(MID, 2)
    with pytest.raises(SlotError, match="never planted"):
        ledger.spend(OTHER, 0)  # planted in another model only
    assert ledger.path.read_bytes() == before  # a refused change writes nothing


def test_spend_twice(ledger) -> None:
    ledger.plant(MID, [0, 1])
    ledger.spend(MID, 1)
    before = ledger.path.read_bytes()
    with pytest.raises(SlotError, match="already spent"):
        ledger.spend(MID, 1)
    assert ledger.path.read_bytes() == before


def test_next_unspent_when_none_left(ledger) -> None:
    with pytest.raises(SlotError, match="no slots"):
        ledger.next_unspent(MID)
    ledger.plant(MID, [4, 9])
    ledger.spend(MID, 9)
    ledger.spend(MID, 4)
    with pytest.raises(SlotError, match=r"all 2 planted slots .* are spent"):
        ledger.next_unspent(MID)


@pytest.mark.parametrize("bad", [-1, -65536, MAX_SLOT + 1, 2**32, 2**64])
def test_out_of_range_slots(ledger, bad: int) -> None:
    ledger.plant(MID, [0])
    before = ledger.path.read_bytes()
    with pytest.raises(SlotError, match="out of range"):
        ledger.plant(MID, [bad])
    # one bad slot among good ones: nothing of the batch is planted
    with pytest.raises(SlotError, match="out of range"):
        ledger.plant(MID, [1, 2, bad])
    with pytest.raises(SlotError, match="out of range"):
        ledger.spend(MID, bad)
    assert ledger.path.read_bytes() == before


@pytest.mark.parametrize("bad", [True, 1.0, "1", None])
def test_non_integer_slots(ledger, bad) -> None:
    with pytest.raises(SlotError):
        ledger.plant(MID, [bad])
    ledger.plant(MID, [1])
    with pytest.raises(SlotError):
        ledger.spend(MID, bad)
    assert ledger.get(MID).planted == (1,)


def test_edge_slots_are_accepted(ledger) -> None:
    assert ledger.plant(MID, [0, MAX_SLOT]).planted == (0, MAX_SLOT)
    assert MAX_SLOT in ledger.spend(MID, MAX_SLOT).spent


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 129, "new\nline"])
def test_invalid_model_id(ledger, bad_id: str) -> None:
    with pytest.raises(ModelIdError):
        ledger.plant(bad_id, [0])
    with pytest.raises(ModelIdError):
        ledger.spend(bad_id, 0)
    with pytest.raises(ModelIdError):
        ledger.next_unspent(bad_id)
    assert not ledger.path.exists()


# --- corrupted or foreign ledgers ------------------------------------------------------


CORRUPT = {
    "not json": b"{not json",
    "truncated": None,  # filled in from a real ledger
    "binary garbage": b"\xff\xfe\x00\x81garbage",
    "json list": b"[]",
    "json string": b'"offswitch-slots/1"',
    "wrong format": json.dumps({"format": "other/9", "models": {}}).encode(),
    "no models": json.dumps({"format": FORMAT}).encode(),
    "models not a dict": json.dumps({"format": FORMAT, "models": []}).encode(),
    "entry not a dict": json.dumps({"format": FORMAT, "models": {MID: [0, 1]}}).encode(),
    "planted has a string": json.dumps(
        {"format": FORMAT, "models": {MID: {"planted": ["0"], "spent": {}}}}
    ).encode(),
    "planted out of range": json.dumps(
        {"format": FORMAT, "models": {MID: {"planted": [-1], "spent": {}}}}
    ).encode(),
    "spent key not a number": json.dumps(
        {"format": FORMAT, "models": {MID: {"planted": [0], "spent": {"zero": "t"}}}}
    ).encode(),
    "spent is a list": json.dumps(
        {"format": FORMAT, "models": {MID: {"planted": [0], "spent": ["0"]}}}
    ).encode(),
    "planted is a dict": json.dumps(
        {"format": FORMAT, "models": {MID: {"planted": {"0": 1}, "spent": {}}}}
    ).encode(),
    "missing spent": json.dumps({"format": FORMAT, "models": {MID: {"planted": [0]}}}).encode(),
    "nested too deep": b"[" * 100_000,
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupted_ledger(ledger, case: str) -> None:
    ledger.plant(MID, [0, 1, 2])
    good = ledger.path.read_bytes()
    bad = good[: len(good) // 2] if CORRUPT[case] is None else CORRUPT[case]
    ledger.path.write_bytes(bad)
    for op in (
        lambda: ledger.get(MID),
        lambda: ledger.models(),
        lambda: ledger.plant(MID, [3]),
        lambda: ledger.spend(MID, 0),
        lambda: ledger.next_unspent(MID),
    ):
        with pytest.raises(LedgerError, match="corrupted") as exc:
            op()
        assert isinstance(exc.value, OffswitchError)
        assert str(ledger.path) in str(exc.value)
    # a corrupted ledger is never overwritten by a change (the owner must look at it)
    assert ledger.path.read_bytes() == bad


def test_ledger_of_another_key(tmp_path, plain_key_files, ledger) -> None:
    key, _, _ = plain_key_files
    other = OwnerKey.generate()
    other_path, _ = other.save(tmp_path / "other", None)
    ledger.plant(MID, [0, 1])
    # the owner's ledger copied beside another key
    foreign = ledger_path_for_key(other_path)
    foreign.write_bytes(ledger.path.read_bytes())
    theirs = SlotLedger.for_key(other_path, other.key_id)
    with pytest.raises(LedgerError, match="belongs to key") as exc:
        theirs.get(MID)
    assert key.key_id in str(exc.value) and other.key_id in str(exc.value)
    with pytest.raises(LedgerError, match="belongs to key"):
        theirs.spend(MID, 0)
    with pytest.raises(LedgerError, match="belongs to key"):
        theirs.plant(MID, [5])
    assert foreign.read_bytes() == ledger.path.read_bytes()  # untouched


def test_ledger_without_key_id_adopts_the_key(plain_key_files) -> None:
    key, path, _ = plain_key_files
    anon = SlotLedger.for_key(path)  # no key id known when it was first written
    anon.plant(MID, [0])
    assert json.loads(anon.path.read_text())["key_id"] is None
    owned = SlotLedger.for_key(path, key.key_id)
    owned.spend(MID, 0)  # the first keyed change records the key id
    assert json.loads(owned.path.read_text())["key_id"] == key.key_id
    with pytest.raises(LedgerError, match="belongs to key"):
        SlotLedger.for_key(path, OwnerKey.generate().key_id).get(MID)


# --- atomic writes ------------------------------------------------------------------------


def test_writes_leave_no_temp_files(plain_key_files, ledger) -> None:
    _, path, _ = plain_key_files
    ledger.plant(MID, range(10))
    for s in range(5):
        ledger.spend(MID, s)
    with pytest.raises(SlotError):
        ledger.spend(MID, 0)
    assert _temp_files(path.parent) == []
    names = {p.name for p in path.parent.iterdir()}
    assert names == {"owner", "owner.pub", "owner.slots.json", "owner.slots.json.lock"}
    # the ledger file is always complete JSON
    json.loads(ledger.path.read_text("utf-8"))


def _plant_with_file_size_limit(key_path: str, key_id: str, limit: int) -> None:
    import errno
    import resource

    # works as root, unlike permission bits: no write may grow a file past ``limit`` bytes
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        SlotLedger.for_key(key_path, key_id).plant(MID, range(100, 200))
    except OSError as e:
        raise SystemExit(7 if e.errno == errno.EFBIG else 8) from None
    raise SystemExit(0)


def test_failed_write_keeps_the_old_ledger(plain_key_files, ledger) -> None:
    """When the new ledger cannot be written, the old one stays whole and no temp is left."""
    key, path, _ = plain_key_files
    ledger.plant(MID, [0, 1])
    before = ledger.path.read_bytes()
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_plant_with_file_size_limit, args=(str(path), key.key_id, len(before)))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 7  # the write really failed (EFBIG) part-way through
    assert ledger.path.read_bytes() == before
    assert ledger.get(MID).planted == (0, 1)
    assert _temp_files(path.parent) == []


def test_stale_temp_file_of_same_name_is_not_a_problem(plain_key_files, ledger) -> None:
    """A temp file left by a crashed writer (same pid after a restart) does not block writes,
    and the writer deletes only files it created itself."""
    ledger.plant(MID, [0])
    stale = ledger.path.with_name(f".{ledger.path.name}.tmp-{os.getpid()}")
    stale.write_bytes(b"left by a crashed writer")
    ledger.plant(MID, [1])
    assert ledger.get(MID).planted == (0, 1)
    assert stale.read_bytes() == b"left by a crashed writer"


# --- concurrent writers ------------------------------------------------------------------

N_PROCS = 8
PER_PROC = 6


def _writer(key_path: str, key_id: str, index: int, barrier) -> None:
    ledger = SlotLedger.for_key(key_path, key_id)
    mine = range(index * PER_PROC, (index + 1) * PER_PROC)
    barrier.wait(timeout=60)
    for s in mine:  # one read-modify-write per slot, interleaved with the other processes
        ledger.plant(MID, [s])
        ledger.plant(f"{MID}-p{index}", [s])
    for s in mine:
        ledger.spend(MID, s)


def test_concurrent_writers_lose_no_update(plain_key_files) -> None:
    key, path, _ = plain_key_files
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCS)
    procs = [
        ctx.Process(target=_writer, args=(str(path), key.key_id, i, barrier))
        for i in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * N_PROCS
    ledger = SlotLedger.for_key(path, key.key_id)
    everything = tuple(range(N_PROCS * PER_PROC))
    s = ledger.get(MID)
    assert s.planted == everything
    assert tuple(sorted(s.spent)) == everything
    assert s.unspent == ()
    for i in range(N_PROCS):
        own = ledger.get(f"{MID}-p{i}")
        assert own.planted == tuple(range(i * PER_PROC, (i + 1) * PER_PROC))
    assert len(ledger.models()) == N_PROCS + 1
    assert _temp_files(path.parent) == []


def _plant_one(key_path: str, key_id: str, started) -> None:
    ledger = SlotLedger.for_key(key_path, key_id)
    started.set()
    ledger.plant(MID, [42])


def test_writer_waits_for_the_lock(plain_key_files, ledger) -> None:
    """A change waits while another process holds ``KEY.slots.json.lock``."""
    key, path, _ = plain_key_files
    ledger.plant(MID, [0])
    lock_path = ledger.path.with_name(ledger.path.name + ".lock")
    assert lock_path.exists()
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ctx = multiprocessing.get_context("spawn")
        started = ctx.Event()
        p = ctx.Process(target=_plant_one, args=(str(path), key.key_id, started))
        p.start()
        assert started.wait(timeout=60)
        time.sleep(0.7)  # ample time to finish a plant, were it not waiting for the lock
        assert p.is_alive()
        assert ledger.get(MID).planted == (0,)  # it has not written under our lock
    finally:
        os.close(fd)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert ledger.get(MID).planted == (0, 42)
