"""Run an attack suite against one or more arms and record every point as it finishes.

A suite (``attacks/<name>.toml``) lists attacks, their budget points and settings. The runner
measures each arm's un-attacked model (the signed off-switch, the plain-trigger baseline;
attack ``none``), then, for every (attack, budget) and each arm in turn: reloads the
implanted model, runs the attack, and measures activation, false activation and utility.
Each finished point is appended to ``RESULTS/results.jsonl`` (flushed and fsynced), so an
interrupted run resumes without redoing finished points. A point whose attack raises is
recorded with its error and the suite goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .._atomic import write_atomic
from . import get
from .base import Arm, AttackContext, AttackError
from .measure import MeasureConfig, measure

#: The shipped suites as package data. ``offswitch/data/attacks`` is a symlink to the top-level
#: ``attacks/`` folder (the single source): a checkout or an editable install reads through it,
#: a wheel carries copies of the ``*.toml`` files (pyproject.toml ``package-data``).
SUITES_DIR: Traversable = resources.files("offswitch").joinpath("data/attacks")
RUN_FORMAT = "offswitch-attack-run/1"


@dataclass
class Entry:
    id: str
    attack: str
    budgets: list[Any]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    description: str
    measure: MeasureConfig
    entries: list[Entry]
    path: Traversable | None = None

    def points(self) -> int:
        return sum(len(e.budgets) for e in self.entries)


def shipped_suites() -> list[str]:
    """Names of the suites shipped with offswitch (``quick``, ``standard``, ``full``)."""
    if not SUITES_DIR.is_dir():
        return []
    return sorted(p.name[: -len(".toml")] for p in SUITES_DIR.iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str | os.PathLike[str]) -> Suite:
    """A suite by name (``quick``, ``standard``, ``full``) or from a TOML file."""
    path: Traversable = Path(name_or_path)
    if not Path(name_or_path).suffix:
        path = SUITES_DIR.joinpath(f"{name_or_path}.toml")
        if not path.is_file() and not shipped_suites():
            raise AttackError(
                f"the shipped attack suites are missing from {SUITES_DIR}: this offswitch "
                "install is incomplete (or a checkout lost the offswitch/data/attacks symlink); "
                "reinstall it, or give the path of a suite file"
            )
    if not path.is_file():
        known = ", ".join(shipped_suites())
        raise AttackError(f"no attack suite {str(name_or_path)!r} (known: {known})")
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AttackError(f"suite file {path} is not valid TOML: {e}") from None
    mfields = {f.name for f in fields(MeasureConfig)}
    bad = set(raw.get("measure", {})) - mfields
    if bad:
        raise AttackError(f"suite {path.name}: unknown measure setting {sorted(bad)[0]!r}")
    entries, seen = [], set()
    for i, e in enumerate(raw.get("attack", [])):
        if "name" not in e or "budgets" not in e or not e["budgets"]:
            raise AttackError(f"suite {path.name}: attack #{i + 1} needs 'name' and 'budgets'")
        cls = get(e["name"])
        entry = Entry(e.get("id", e["name"]), e["name"], list(e["budgets"]), e.get("config", {}))
        if entry.id in seen:
            raise AttackError(f"suite {path.name}: two attacks have the id {entry.id!r}")
        seen.add(entry.id)
        for b in entry.budgets:  # validate every point before spending any time
            cls.make_config(entry.config, b)
        entries.append(entry)
    if not entries:
        raise AttackError(f"suite {path.name} lists no attacks")
    return Suite(
        raw.get("name", Path(path.name).stem),
        raw.get("description", ""),
        MeasureConfig(**raw.get("measure", {})),
        entries,
        path,
    )


def _log(msg: str) -> None:
    print(f"[offswitch attack] {msg}", file=sys.stderr, flush=True)


def _done_points(results: Path) -> set[tuple[str, str, str]]:
    """Finished (arm, attack_id, budget) keys; drops a torn last line left by a crash."""
    if not results.is_file():
        return set()
    data = results.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        results.write_bytes(keep)
    done = set()
    for line in keep.decode("utf-8").splitlines():
        row = json.loads(line)
        done.add((row["arm"], row["attack_id"], json.dumps(row["budget"])))
    return done


def _unattacked_metrics(results: Path, arm: str) -> dict[str, Any]:
    for line in results.read_text("utf-8").splitlines():
        row = json.loads(line)
        if row["arm"] == arm and row["attack_id"] == "none" and row.get("metrics"):
            return row["metrics"]
    raise AttackError(f"no measurement of the un-attacked {arm} model to reuse")


def _append(results: Path, row: dict[str, Any]) -> None:
    with results.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_suite(
    suite: Suite,
    arms: list[Arm],
    *,
    tokenizer: Any,
    base_loader: Any,
    train_prompts: list[str],
    train_replies: dict[str, str],
    eval_prompts: list[str],
    eval_replies: dict[str, str],
    out_dir: str | os.PathLike[str],
    arm_info: dict[str, dict[str, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Run (or resume) ``suite`` on ``arms``; returns the results directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = _done_points(results)
    suite_file = out / "suite.json"
    previous = json.loads(suite_file.read_text("utf-8")) if suite_file.is_file() else {}
    if previous and previous.get("suite") != suite.name:
        raise AttackError(
            f"{out} holds results of suite {previous.get('suite')!r}, not {suite.name!r}; "
            "choose another output directory"
        )
    header = {
        "format": RUN_FORMAT,
        "suite": suite.name,
        "description": suite.description,
        "measure": asdict(suite.measure),
        "provenance": provenance or {},
        "arms": arm_info or {a.name: {"trigger_kind": a.trigger_kind} for a in arms},
    }
    t_start = time.time()

    def save_header() -> None:
        header["wall_seconds"] = previous.get("wall_seconds", 0.0) + time.time() - t_start
        write_atomic(suite_file, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())

    save_header()
    base = base_loader()
    total = (suite.points() + 1) * len(arms)
    n = len(done)
    ctxs = {
        arm.name: AttackContext(
            tokenizer, arm, train_prompts, train_replies, base_loader, seed, progress=False
        )
        for arm in arms
    }
    plan = [("none", "none", None, 0)] + [
        (e.id, e.attack, e, b) for e in suite.entries for b in e.budgets
    ]
    # point-major: every arm at a point before the next point, so that an interrupted run
    # still compares the arms side by side on the points it finished
    for attack_id, name, entry, budget in plan:
        for arm in arms:
            ctx = ctxs[arm.name]
            if (arm.name, attack_id, json.dumps(budget)) in done:
                continue
            n += 1
            t0 = time.time()
            row: dict[str, Any] = {"arm": arm.name, "attack": name, "attack_id": attack_id}
            row["budget"] = budget
            try:
                model = arm.load()
                if entry is None:
                    row.update(budget_name=None, config={}, spend={}, findings={})
                else:
                    cls = get(name)
                    cfg = cls.make_config(entry.config, budget)
                    row.update(budget_name=cls.budget, config=asdict(cfg))
                    result = cls().run(model, ctx, cfg)
                    model = result.model
                    row.update(spend=result.spend.to_dict(), findings=result.findings)
                if entry is not None and not get(name).modifies_weights:
                    # the weights are those of the un-attacked model: reuse its metrics
                    row["metrics"] = _unattacked_metrics(results, arm.name)
                    row["metrics_note"] = "weights unchanged: the un-attacked model's metrics"
                else:
                    row["metrics"] = measure(
                        model, tokenizer, arm, eval_prompts, eval_replies, base, suite.measure
                    )
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # record and go on: one broken attack must not sink a suite
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = time.time() - t0
            _append(results, row)
            msg = row.get("error") or "AR {:.2f}".format(row["metrics"]["activation_rate"]["value"])
            secs = row["seconds"]
            _log(f"[{n}/{total}] {arm.name} {attack_id} budget={budget}: {msg} ({secs:.0f} s)")
            save_header()  # after every point: an interrupted run keeps the time it spent
    save_header()
    return out
