"""Rows of the plain baseline, cached across results directories.

The plain-trigger baseline's rows depend only on its weights (and the base model it is
compared with), the point (attack, budget, settings), the measurement settings, the run's
seed, the data (the attacker's clean prompts and replies, the evaluation's), the device and
the code that attacked and measured it — not on the signed model under test. So a second
results directory with the same baseline reuses them instead of attacking the baseline
again: comparing implants costs the signed arm's points only (docs/attacks.md, "Baseline
arm"). The baseline is the same when the plain recipe is (``plain_config``): another
owner key or another decoy setting shares it; any other recipe setting (seed, step count,
learning rate, truncations, ``adversary_*``: the plain arm gets the same persistence term)
trains another baseline, so its rows are measured once more.

A row is found under ``$OFFSWITCH_CACHE/rows/<arm key>/<point key>.json`` (with its sample
log), written atomically after the point's row is in the results. The point key includes a
digest of the data, the device (for a GPU, its name and CUDA build), offswitch's own source
files and the versions of Python and of every library on the attack and measurement path, so
a change of code, data, library or machine kind never serves an old row. The cache is a
convenience: a cache that cannot be read or written is reported and the run goes on without
it. The baseline is identified by the weights hash its arm records (``offswitch-plain-arm.json``);
a ``plain-model/`` edited by hand keeps that hash — delete it, or use ``offswitch attack
--no-row-cache``, which turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .._atomic import write_atomic
from ..models import cache_dir

FORMAT = "offswitch-cached-row/1"
LIBRARIES = (  # what trains, quantizes, tokenizes, loads and measures
    "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy", "gguf",
)  # fmt: skip
log = logging.getLogger(__name__)


@functools.cache
def code_digest() -> str:
    """16 hex digits over offswitch's source files, the Python version and the versions of
    the libraries that train, quantize and measure (with torch, its CUDA build)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    files = (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"python={platform.python_version()}\0".encode())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none\0".encode())
    import torch

    h.update(f"cuda={torch.version.cuda}\0".encode())
    return h.hexdigest()[:16]


class RowCache:
    """Cached rows of the arms that carry a ``row_key`` (the plain baseline)."""

    def __init__(
        self, measure: dict[str, Any], seed: int, data: Any, root: Path | None = None
    ) -> None:
        """``data``: everything else the rows depend on (JSON-able: the prompts and replies,
        the device); only its digest is kept."""
        self.measure, self.seed = measure, seed
        blob = json.dumps(data, sort_keys=True).encode()
        self.data = hashlib.sha256(blob).hexdigest()[:24]
        self.root = root or cache_dir() / "rows"

    def _path(self, row_key: str, point: dict[str, Any]) -> Path:
        spec = {"point": point, "measure": self.measure, "seed": self.seed, "data": self.data}
        spec["code"] = code_digest()
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / row_key / f"{digest}.json"

    def get(self, row_key: str, point: dict[str, Any]) -> dict[str, Any] | None:
        """``{"row", "samples", "revealed_slots"}`` of a cached point, or None (also for an
        unreadable entry: the point is then run again and the entry rewritten)."""
        try:
            entry = json.loads(self._path(row_key, point).read_text("utf-8"))
        except FileNotFoundError:
            return None
        except Exception as e:  # a cache that cannot be read: run the point
            log.warning("row cache not read (%s: %s); running the point", type(e).__name__, e)
            return None
        ok = (
            isinstance(entry, dict)
            and entry.get("format") == FORMAT
            and isinstance(entry.get("row"), dict)
            and isinstance(entry["row"].get("seconds"), int | float)
            and isinstance(entry.get("revealed_slots"), list)
            and (entry.get("samples") is None or isinstance(entry["samples"], list))
        )
        return entry if ok else None

    def put(
        self,
        row_key: str,
        point: dict[str, Any],
        row: dict[str, Any],
        samples: list[dict[str, Any]] | None,
        revealed_slots: list[int],
    ) -> None:
        """Store a measured point: its row, its sample log and the slots its attack revealed.
        A failure is logged, never raised: the row is already in the results."""
        try:
            path = self._path(row_key, point)
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = {"format": FORMAT, "row": row, "samples": samples}
            entry["revealed_slots"] = revealed_slots
            write_atomic(path, (json.dumps(entry, sort_keys=True) + "\n").encode())
        except Exception as e:
            log.warning("the row was not cached (%s: %s)", type(e).__name__, e)
