"""Slot ledger: which slots of a (key, model id) were planted, and which are spent.

A slot's command is public once used, so the owner rotates to a fresh one. The ledger is a
JSON file beside the key, ``KEY.slots.json`` (``KEY`` = the private key path, also when the
``.pub`` path is given), so it travels with the key and needs no private material.

Every change is a read-modify-write under an exclusive ``flock`` on ``KEY.slots.json.lock``,
and the new file is written atomically (temp file, fsync, rename): two concurrent writers
never lose each other's changes, and a crash never leaves a half-written ledger. A refused
change while no ledger exists removes the lock file again (still holding it; a waiting writer
notices the file is gone and locks the new one), so it leaves no file behind.

>>> ledger = SlotLedger.for_key("owner")           # doctest: +SKIP
>>> ledger.plant("acme/chat-1", [0, 1, 2, 3])       # doctest: +SKIP
>>> ledger.next_unspent("acme/chat-1")              # doctest: +SKIP
0
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ._atomic import read_regular, write_atomic
from .commands import validate_model_id, validate_slot
from .errors import (
    LedgerError,
    SlotError,
    SlotNotPlantedError,
    SlotSpentError,
    SpecialFileError,
)

FORMAT = "offswitch-slots/1"


@dataclass(frozen=True)
class ModelSlots:
    """Slots of one model id: planted numbers and spent ones (slot -> ISO time spent)."""

    planted: tuple[int, ...] = ()
    spent: dict[int, str] = field(default_factory=dict)

    @property
    def unspent(self) -> tuple[int, ...]:
        return tuple(s for s in self.planted if s not in self.spent)


def ledger_path_for_key(key_path: str | os.PathLike[str]) -> Path:
    """``KEY.slots.json`` beside the key file itself: a key reached through a symlink keeps
    its ledger beside the real file, so every path to one key finds the one ledger."""
    p = Path(os.path.realpath(key_path))
    if p.name.endswith(".pub"):
        p = p.with_name(p.name[: -len(".pub")])
    return p.with_name(p.name + ".slots.json")


class SlotLedger:
    """The ledger file of one owner key."""

    def __init__(self, path: str | os.PathLike[str], key_id: str | None = None) -> None:
        self.path = Path(path)
        self.key_id = key_id

    @classmethod
    def for_key(cls, key_path: str | os.PathLike[str], key_id: str | None = None) -> SlotLedger:
        return cls(ledger_path_for_key(key_path), key_id)

    # --- storage -----------------------------------------------------------------------

    def _file(self) -> Path:
        """The ledger file itself: a symlinked ledger is followed (its target is read, locked
        and replaced; the link stays), never replaced by a regular file."""
        return Path(os.path.realpath(self.path))

    def _read(self) -> dict:
        try:
            raw = read_regular(self._file())
        except FileNotFoundError:
            return {"format": FORMAT, "key_id": self.key_id, "models": {}}
        except SpecialFileError:
            raise LedgerError(
                f"slot ledger {self.path} is a FIFO, device or socket, not a regular file"
            ) from None
        except IsADirectoryError:
            raise LedgerError(f"slot ledger {self.path} is a directory, not a file") from None
        except PermissionError:
            raise LedgerError(f"slot ledger {self.path} is not readable") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError
            fmt = data.get("format")
            if isinstance(fmt, str) and fmt.startswith("offswitch-slots/") and fmt != FORMAT:
                raise LedgerError(
                    f"slot ledger {self.path} has format {fmt!r}, which this version of "
                    f"offswitch does not read (it reads {FORMAT!r}); upgrade offswitch"
                )
            if fmt != FORMAT or not isinstance(data.get("models"), dict):
                raise ValueError
            for entry in data["models"].values():
                if not isinstance(entry["planted"], list) or not isinstance(entry["spent"], dict):
                    raise ValueError
                [validate_slot(s) for s in entry["planted"]]
                [validate_slot(int(s)) for s in entry["spent"]]
        except LedgerError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, SlotError):
            raise LedgerError(f"slot ledger {self.path} is corrupted") from None
        if self.key_id and data.get("key_id") and data["key_id"] != self.key_id:
            raise LedgerError(
                f"slot ledger {self.path} belongs to key {data['key_id']}, not {self.key_id}"
            )
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock; if the body fails while no ledger exists, remove the lock
        file again (a refused first change leaves no file behind)."""
        file = self._file()
        lock_path = file.with_name(file.name + ".lock")
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise LedgerError(f"cannot lock slot ledger {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # a holder may have removed the file while we waited: lock the one on disk
                on_disk = os.stat(lock_path)
                held = os.fstat(fd)
                if (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        except BaseException:
            if not file.exists():
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)  # still held: waiters see a new inode and retry
            raise
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Raise :class:`LedgerError` unless a change could be recorded (the ledger is
        readable and valid, and not read-only): checked before long work that ends by
        recording one, such as an implant."""
        self._read()
        self._mode()

    def _mode(self) -> int:
        """The mode a new ledger file gets: an existing ledger's own (a read-only ledger is
        refused, not made writable), else 0644."""
        try:
            mode = stat.S_IMODE(os.stat(self._file()).st_mode)
        except FileNotFoundError:
            return 0o644
        if not mode & stat.S_IWUSR:  # mode bits, not access: root may write anything
            raise LedgerError(
                f"slot ledger {self.path} is read-only (mode {mode:04o}); make it writable "
                "(chmod u+w) to record the change"
            )
        return mode

    def _update(self, change) -> dict:
        with self._locked():
            data = self._read()
            mode = self._mode()
            if self.key_id and not data.get("key_id"):
                data["key_id"] = self.key_id
            change(data)
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            write_atomic(self._file(), text.encode("utf-8"), mode=mode)
            return data

    # --- queries and changes -----------------------------------------------------------

    def get(self, model_id: str) -> ModelSlots:
        validate_model_id(model_id)
        entry = self._read()["models"].get(model_id)
        if entry is None:
            return ModelSlots()
        return ModelSlots(
            tuple(sorted(entry["planted"])), {int(k): v for k, v in entry["spent"].items()}
        )

    def models(self) -> list[str]:
        return sorted(self._read()["models"])

    def plant(self, model_id: str, slots: Iterable[int]) -> ModelSlots:
        """Record ``slots`` as planted in ``model_id`` (idempotent)."""
        validate_model_id(model_id)
        new = {validate_slot(s) for s in slots}

        def change(data: dict) -> None:
            entry = data["models"].setdefault(model_id, {"planted": [], "spent": {}})
            entry["planted"] = sorted(set(entry["planted"]) | new)

        self._update(change)
        return self.get(model_id)

    def spend(self, model_id: str, slot: int) -> ModelSlots:
        """Mark a planted slot spent (its command has been revealed)."""
        validate_model_id(model_id)
        validate_slot(slot)

        def change(data: dict) -> None:
            entry = data["models"].get(model_id)
            if entry is None or slot not in entry["planted"]:
                raise SlotNotPlantedError(f"slot {slot} was never planted in model {model_id!r}")
            if str(slot) in entry["spent"]:
                raise SlotSpentError(f"slot {slot} of model {model_id!r} is already spent")
            entry["spent"][str(slot)] = datetime.now(UTC).isoformat(timespec="seconds")

        self._update(change)
        return self.get(model_id)

    def next_unspent(self, model_id: str) -> int:
        """The lowest planted slot not yet spent."""
        slots = self.get(model_id)
        if not slots.planted:
            raise SlotError(f"no slots are recorded as planted in model {model_id!r}")
        if not slots.unspent:
            raise SlotError(
                f"all {len(slots.planted)} planted slots of model {model_id!r} are spent; "
                "implant fresh slots"
            )
        return slots.unspent[0]
