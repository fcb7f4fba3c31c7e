"""Run an attack suite against one or more arms and record every point as it finishes.

A suite (``attacks/<name>.toml``) lists attacks, their budget points and settings. The runner
measures each arm's un-attacked model (the signed off-switch, the plain-trigger baseline;
attack ``none``), then, for every (attack, budget) and each arm in turn: reloads the
implanted model, runs the attack, and measures activation, false activation and utility.
Each finished point is appended to ``RESULTS/results.jsonl`` (flushed and fsynced), so an
interrupted run resumes without redoing finished points. A point whose attack raises is
recorded with its error and the suite goes on.

Beside the results, ``RESULTS/samples.jsonl`` logs per measured point a few scored
conversations per class with the model's greedy reply (``[measure] n_samples``, 0 for none;
:func:`offswitch.attacks.measure.sample_log`), appended the same way, before the point's
result row. The runner notes which planted slots an attack was given (``ctx.revealed()``):
only their commands may appear in it; every other planted command is redacted as it is
written.

With ``progress`` on, the runner says on stderr which point of how many it is on, with the
time spent and an estimate of the time left, and the attack's training loop and the
measurement show tqdm bars; :func:`plan_lines` is what ``offswitch attack`` prints before it
starts (points per arm, what is already done, the suite's expected time on 2 CPU cores).

One module although long: suite loading, the resumable results file and the point loop
share the suite's and the row's shapes; measuring is measure.py, the baseline's row cache
_rowcache.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .. import distributed as dist
from .._atomic import append_row, read_rows, repair_rows, write_atomic
from ..report.schema import RUN_FORMAT
from ..report.text import duration
from . import get
from ._rowcache import RowCache
from .base import Arm, AttackContext, AttackError
from .measure import MeasureConfig, measure, sample_log

#: The shipped suites as package data. ``offswitch/data/attacks`` is a symlink to the top-level
#: ``attacks/`` folder (the single source): a checkout or an editable install reads through it,
#: a wheel carries copies of the ``*.toml`` files (pyproject.toml ``package-data``).
SUITES_DIR: Traversable = resources.files("offswitch").joinpath("data/attacks")
#: How a multi-process launch divides a suite: whole points per process, or every training
#: step of every point over all the processes (docs/scaling.md).
SHARES = ("points", "steps")


@dataclass
class Entry:
    id: str
    attack: str
    budgets: list[Any]
    config: dict[str, Any] = field(default_factory=dict)
    #: steps at which a training attack's run is also measured on its way to each budget
    #: (the tamper-evidence curve: activation per slot and utility; no false activation)
    trajectory: list[int] = field(default_factory=list)


#: The arms a suite's ``expected_minutes_2cpu`` may name (those ``offswitch attack`` runs).
EXPECTED_ARMS = ("signed", "plain")
_SUITE_KEYS = {
    "name",
    "description",
    "measure",
    "attack",
    "expected_minutes_2cpu",
    "expected_basis",
}
_ENTRY_KEYS = {"name", "id", "budgets", "config", "trajectory"}


@dataclass
class Suite:
    name: str
    description: str
    measure: MeasureConfig
    entries: list[Entry]
    path: Traversable | None = None
    #: minutes of each arm's points (the un-attacked measurement included) on 2 CPU cores with
    #: the default model; ``None`` when the suite file gives no figure
    expected_minutes: dict[str, float] | None = None
    expected_basis: str = ""  # where the figure comes from (measured run, or how estimated)

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
    unknown = sorted(set(raw) - _SUITE_KEYS)
    if unknown:
        raise AttackError(
            f"suite {path.name}: unknown setting {unknown[0]!r} "
            f"(settings: {', '.join(sorted(_SUITE_KEYS))})"
        )
    mfields = {f.name for f in fields(MeasureConfig)}
    bad = set(raw.get("measure", {})) - mfields
    if bad:
        raise AttackError(f"suite {path.name}: unknown measure setting {sorted(bad)[0]!r}")
    entries, seen = [], set()
    for i, e in enumerate(raw.get("attack", [])):
        if "name" not in e or "budgets" not in e or not e["budgets"]:
            raise AttackError(f"suite {path.name}: attack #{i + 1} needs 'name' and 'budgets'")
        unknown = sorted(set(e) - _ENTRY_KEYS)
        if unknown:
            raise AttackError(
                f"suite {path.name}: attack #{i + 1} has an unknown key {unknown[0]!r} "
                f"(keys: {', '.join(sorted(_ENTRY_KEYS))})"
            )
        cls = get(e["name"])
        entry = Entry(e.get("id", e["name"]), e["name"], list(e["budgets"]), e.get("config", {}))
        entry.trajectory = _check_trajectory(e.get("trajectory", []), cls, path.name, i)
        if entry.id in seen:
            raise AttackError(f"suite {path.name}: two attacks have the id {entry.id!r}")
        seen.add(entry.id)
        for b in entry.budgets:  # validate every point before spending any time
            cls.make_config(entry.config, b)
        entries.append(entry)
    if not entries:
        raise AttackError(f"suite {path.name} lists no attacks")
    expected, basis = _expected(raw, path.name)
    return Suite(
        raw.get("name", Path(path.name).stem),
        raw.get("description", ""),
        MeasureConfig(**raw.get("measure", {})),
        entries,
        path,
        expected,
        basis,
    )


def _check_trajectory(steps: Any, cls: Any, file: str, i: int) -> list[int]:
    """An entry's ``trajectory``: ascending step counts ≥ 1, for an attack that trains."""
    if steps == []:
        return []
    where = f"suite {file}: attack #{i + 1} ({cls.name})"
    if not cls.trajectory:
        raise AttackError(f"{where} does not train step by step, so it has no trajectory")
    ok = isinstance(steps, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps
    )
    if not ok or steps != sorted(set(steps)):
        raise AttackError(f"{where}: trajectory must be a list of ascending step counts ≥ 1")
    return list(steps)


def _expected(raw: dict[str, Any], file: str) -> tuple[dict[str, float] | None, str]:
    """The suite's ``expected_minutes_2cpu`` table (arm → minutes) and its ``expected_basis``."""
    table, basis = raw.get("expected_minutes_2cpu"), raw.get("expected_basis")
    if table is None:
        if basis is not None:
            raise AttackError(f"suite {file}: expected_basis without expected_minutes_2cpu")
        return None, ""
    if not isinstance(table, dict) or not table:
        raise AttackError(
            f"suite {file}: expected_minutes_2cpu must be a table of arm = minutes, "
            "e.g. { signed = 42, plain = 29 }"
        )
    for arm, minutes in table.items():
        if arm not in EXPECTED_ARMS:
            raise AttackError(
                f"suite {file}: expected_minutes_2cpu names an unknown arm {arm!r} "
                f"(arms: {', '.join(EXPECTED_ARMS)})"
            )
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
            raise AttackError(
                f"suite {file}: expected_minutes_2cpu.{arm} must be a positive number of "
                f"minutes, got {minutes!r}"
            )
    if not isinstance(basis, str) or not basis.strip():
        raise AttackError(
            f"suite {file}: expected_minutes_2cpu needs expected_basis, a sentence saying "
            "where the figure comes from (a measured run, or how it was estimated)"
        )
    return {arm: float(m) for arm, m in table.items()}, basis.strip()


def _log(msg: str) -> None:
    print(f"[offswitch attack] {msg}", file=sys.stderr, flush=True)


def _done_points(results: Path, repair: bool = True) -> dict[tuple[str, str, str], float]:
    """Finished (arm, attack_id, budget) keys → the seconds each took; a torn last line left
    by a crash is ignored, and dropped from the file when ``repair``."""
    return {
        (row["arm"], row["attack_id"], json.dumps(row["budget"])): row.get("seconds", 0.0)
        for row in read_rows(results, repair)
    }


@dataclass
class _Context(AttackContext):
    """The attack's context, noting which planted slots it was given (revealed)."""

    revealed_slots: set[int] = field(default_factory=set)

    def revealed(self) -> tuple[int, str]:
        slot, command = super().revealed()
        self.revealed_slots.add(slot)
        return slot, command


def check_share(share: str) -> None:
    """Refuse an unknown ``share`` mode (before any work)."""
    if share not in SHARES:
        raise AttackError(f"share must be one of {', '.join(SHARES)}, got {share!r}")


def _plan(suite: Suite) -> list[tuple[str, str, Entry | None, Any]]:
    """(attack_id, attack, entry, budget) of every point, the un-attacked model first."""
    return [("none", "none", None, 0)] + [
        (e.id, e.attack, e, b) for e in suite.entries for b in e.budgets
    ]


def _check_same_suite(suite: Suite, out: Path) -> dict[str, Any]:
    """The run header in ``out`` (empty if none); refuses results of another suite."""
    suite_file = out / "suite.json"
    previous = json.loads(suite_file.read_text("utf-8")) if suite_file.is_file() else {}
    if previous and previous.get("suite") != suite.name:
        raise AttackError(
            f"{out} holds results of suite {previous.get('suite')!r}, not {suite.name!r}; "
            "choose another output directory"
        )
    return previous


def plan_lines(suite: Suite, arm_names: list[str], out_dir: str | os.PathLike[str]) -> list[str]:
    """What a run of ``suite`` on ``arm_names`` into ``out_dir`` will cost, for people: the
    points per arm, the suite's expected time on 2 CPU cores (or that it is unknown), and how
    much a resumed run has already done. Reads ``out_dir``, writes nothing; refuses an output
    directory that holds another suite's results."""
    out = Path(out_dir)
    _check_same_suite(suite, out)
    per_arm = suite.points() + 1
    total = per_arm * len(arm_names)
    arms = f"arm{'s' if len(arm_names) != 1 else ''} {', '.join(arm_names)}"
    lines = [
        f"suite {suite.name!r}: {suite.points()} attack points per arm + the un-attacked "
        f"model; {arms}: {total} points in all"
    ]
    known = suite.expected_minutes or {}
    estimated = bool(arm_names) and all(a in known for a in arm_names)
    if estimated:
        parts = " + ".join(f"{a} {known[a]:.0f}" for a in arm_names)
        lines.append(
            f"expected ≈ {duration(60 * sum(known[a] for a in arm_names))} of points on 2 CPU "
            f"cores with the default model ({parts} min; {suite.expected_basis}); other "
            "models and machines differ"
        )
    else:
        lacking = [a for a in arm_names if a not in known]
        reason = (
            f"suite {suite.name!r} has no expected_minutes_2cpu (a measured time)"
            if not known
            else f"suite {suite.name!r}'s expected_minutes_2cpu has no figure for "
            f"{', '.join(lacking)}"
        )
        lines.append(
            f"expected time unknown: {reason}; the run is {total} points of attack and measurement"
        )
    keys = {(a, pid, json.dumps(b)) for pid, _, _, b in _plan(suite) for a in arm_names}
    done = {k: s for k, s in _done_points(out / "results.jsonl", repair=False).items() if k in keys}
    if done:
        whole = "; the expected time above is for the whole suite" if estimated else ""
        lines.append(
            f"resuming: {len(done)} of the {total} points are already done in {out} (they took "
            f"{duration(sum(done.values()))}){whole}"
        )
    return lines


def _curve_measure(cfg: MeasureConfig) -> MeasureConfig:
    """What a trajectory step measures: activation per slot and utility, as the point does,
    without the false-activation classes, the word map or the sample log."""
    return replace(cfg, n_per_class=0, n_sensitivity=0, n_samples=0)


def _curve_recorder(
    curve: list[dict[str, Any]], steps: list[int], budget: Any, measure_fn: Any
) -> Any:
    """``ctx.on_step`` for a point: at each of ``steps`` below ``budget`` (the point itself
    is measured after the attack), the model's metrics appended to ``curve``; None when
    there is no such step."""
    at = {s for s in steps if s < budget}
    if not at:
        return None

    def on_step(model: Any, done: int) -> None:
        if done not in at:
            return
        t0 = time.time()
        training = model.training
        model.eval()
        try:
            metrics = measure_fn(model)
        finally:
            model.train(training)
        curve.append({"step": done, "metrics": metrics, "seconds": time.time() - t0})

    return on_step


def _unattacked_metrics(results: Path, arm: str) -> dict[str, Any]:
    for row in read_rows(results):  # whole lines only: another process may be appending
        if row["arm"] == arm and row["attack_id"] == "none" and row.get("metrics"):
            return row["metrics"]
    raise AttackError(f"no measurement of the un-attacked {arm} model to reuse")


def _samples(
    model: Any,
    tokenizer: Any,
    arm: Arm,
    prompts: list[str],
    replies: dict[str, str],
    suite: Suite,
    revealed: set[int],
    progress: bool,
) -> list[dict[str, Any]] | None:
    """The point's sample log, or None when the suite logs none; a failure to log samples is
    reported and does not fail a measured point."""
    if suite.measure.n_samples <= 0:
        return None
    try:
        return sample_log(model, tokenizer, arm, prompts, replies, suite.measure, revealed)
    except Exception as e:  # the point's metrics stand without samples
        if progress:
            _log(f"no samples logged for this point: {type(e).__name__}: {e}")
        return None


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
    share: str = "points",
    row_cache: bool = True,
) -> Path:
    """Run (or resume) ``suite`` on ``arms``; returns the results directory.

    With ``progress``, says on stderr which point of how many is running, and after each its
    result, the time spent and an estimate of the time left, while the attack's training loop
    and the measurement show tqdm bars; without it, prints nothing.

    Launched on N processes (``accelerate launch``, docs/scaling.md), the main process first
    measures every arm un-attacked (the query-only attacks reuse those metrics), then the
    other points are dealt out round-robin, each process running whole points and appending
    its rows to the one ``results.jsonl`` under a lock; only the main process writes
    ``suite.json``. The rows are the same as one process's, in another order. With
    ``share="steps"`` every process runs every point instead, a training attack sharing each
    of its steps over the processes (as the implant does), and the main process measures and
    writes: for a point whose training step is too large for one device, or a few long
    points; an error in a point then stops the launch (resumable) instead of being recorded,
    since the other processes may be waiting in that point's steps.

    With ``row_cache`` (not when sharing steps), the rows of an arm that carries a
    ``row_key`` (the plain baseline) are taken from, and stored in, the row cache
    (:mod:`offswitch.attacks._rowcache`): another results directory for the same baseline
    reuses them; such a row records ``cached``."""
    check_share(share)
    n_proc, rank = dist.world()
    steps_shared = share == "steps" and n_proc > 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    samples = out / "samples.jsonl"
    if rank == 0:  # one process repairs a torn tail, the others read after it
        repair_rows(results)
        repair_rows(samples)
    dist.barrier()
    done = _done_points(results, repair=False)
    suite_file = out / "suite.json"
    previous = _check_same_suite(suite, out)
    header = {
        "format": RUN_FORMAT,
        "suite": suite.name,
        "description": suite.description,
        "measure": asdict(suite.measure),
        "provenance": provenance or {},
        "arms": arm_info or {a.name: {"trigger_kind": a.trigger_kind} for a in arms},
    }
    t_start = time.time()
    rows = None
    if row_cache and not steps_shared:
        from ..models import resolve_device

        device = resolve_device()
        if device.startswith("cuda"):  # rounding differs between GPU kinds
            import torch

            device = f"{device}:{torch.cuda.get_device_name()}"
        data = [train_prompts, train_replies, eval_prompts, eval_replies, device]
        rows = RowCache(asdict(suite.measure), seed, data)

    def save_header() -> None:
        if rank != 0:
            return
        header["wall_seconds"] = previous.get("wall_seconds", 0.0) + time.time() - t_start
        write_atomic(suite_file, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())

    save_header()
    base = base_loader() if rank == 0 or not steps_shared else None  # the measuring process
    plan = _plan(suite)
    keys = [(arm.name, pid, json.dumps(b)) for pid, _, _, b in plan for arm in arms]
    total = len(keys)
    n = sum(k in done for k in keys)
    # this process's points: the un-attacked ones on the main process, the rest round-robin;
    # sharing steps, every point on every process
    mine = {
        k
        for i, k in enumerate(keys)
        if steps_shared or (rank == 0 if k[1] == "none" else i % n_proc == rank)
    }
    todo = sum(k not in done for k in keys if k in mine)
    who = f"process {rank + 1}/{n_proc} " if n_proc > 1 and not steps_shared else ""
    progress = progress and (rank == 0 or not steps_shared)  # one voice per point
    measured = False  # past the barrier after the un-attacked points
    ran, t_run = 0, time.time()  # points run (and time spent) in this session, for the ETA
    ctxs = {
        arm.name: _Context(
            tokenizer,
            arm,
            train_prompts,
            train_replies,
            base_loader,
            seed,
            progress=progress,
            share_steps=steps_shared,
        )
        for arm in arms
    }
    # point-major: every arm at a point before the next point, so that an interrupted run
    # still compares the arms side by side on the points it finished
    for attack_id, name, entry, budget in plan:
        if attack_id != "none" and not measured:
            dist.barrier()  # the others wait for the un-attacked metrics
            measured = True
        for arm in arms:
            ctx = ctxs[arm.name]
            key = (arm.name, attack_id, json.dumps(budget))
            if key in done or key not in mine:
                continue
            n += 1
            point = f"{who}[{n}/{total}] {arm.name} {attack_id} budget={budget}"
            if progress:
                _log(f"{point}: running")
            t0 = time.time()
            row: dict[str, Any] = {"arm": arm.name, "attack": name, "attack_id": attack_id}
            row["budget"] = budget
            ctx.revealed_slots = set()
            logged: list[dict[str, Any]] | None = None
            spec = {"attack_id": attack_id, "attack": name, "budget": budget}
            spec["config"] = entry.config if entry is not None else {}
            if entry is not None and entry.trajectory:
                spec["trajectory"] = entry.trajectory
            hit = rows.get(arm.row_key, spec) if rows is not None and arm.row_key else None
            samples_lost = False  # a measured point whose sample log failed: never cached
            if hit is not None:  # the same baseline, point, measurement and code: reuse it
                row = {**hit["row"], "cached": {"seconds": hit["row"]["seconds"]}}
                logged = hit["samples"]
                ctx.revealed_slots = set(hit["revealed_slots"])
            else:
                try:
                    model = arm.load()
                    if entry is None:
                        row.update(budget_name=None, config={}, spend={}, findings={})
                    else:
                        cls = get(name)
                        cfg = cls.make_config(entry.config, budget)
                        row.update(budget_name=cls.budget, budget_stronger=cls.budget_stronger)
                        row.update(config=asdict(cfg))
                        curve: list[dict[str, Any]] = []
                        if not steps_shared:  # measured by the process that trains
                            ctx.on_step = _curve_recorder(
                                curve, entry.trajectory, budget, lambda m, arm=arm: measure(
                                    m, tokenizer, arm, eval_prompts, eval_replies, base,
                                    _curve_measure(suite.measure),
                                ),
                            )  # fmt: skip
                        try:
                            result = cls().run(model, ctx, cfg)
                        finally:
                            ctx.on_step = None
                        model = result.model
                        row.update(spend=result.spend.to_dict(), findings=result.findings)
                        if curve:  # the attack's own time leaves out the measurements
                            row["trajectory"] = curve
                            row["spend"]["seconds"] = max(
                                0.0,
                                row["spend"].get("seconds", 0.0) - sum(c["seconds"] for c in curve),
                            )
                    if steps_shared and rank != 0:
                        pass  # a helper of a shared point: the main process measures and writes
                    elif entry is not None and not get(name).modifies_weights:
                        # the weights are those of the un-attacked model: reuse its metrics
                        row["metrics"] = _unattacked_metrics(results, arm.name)
                        row["weights_unchanged"] = True
                        row["metrics_note"] = "weights unchanged: the un-attacked model's metrics"
                    else:
                        row["metrics"] = measure(
                            model,
                            tokenizer,
                            arm,
                            eval_prompts,
                            eval_replies,
                            base,
                            suite.measure,
                            progress=progress,
                        )
                        logged = _samples(
                            model,
                            tokenizer,
                            arm,
                            eval_prompts,
                            eval_replies,
                            suite,
                            ctx.revealed_slots,
                            progress,
                        )
                        samples_lost = logged is None and suite.measure.n_samples > 0
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as e:  # record and go on: one broken attack must not sink a suite
                    if steps_shared:  # ...unless the others may be waiting in this point's steps:
                        raise  # stop the launch (it resumes at this point)
                    row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = time.time() - t0
            if steps_shared:
                dist.barrier()  # the point is done on every process before the next one
                if rank != 0:
                    continue
            if logged is not None:  # before the row: a finished point has its samples
                where = {k: row[k] for k in ("arm", "attack", "attack_id", "budget")}
                append_row(
                    samples,
                    {**where, "revealed_slots": sorted(ctx.revealed_slots), "samples": logged},
                )
            append_row(results, row)
            cacheable = hit is None and "error" not in row and not samples_lost
            if rows is not None and arm.row_key and cacheable:
                # after the row is in: a failed cache write loses nothing of the run
                rows.put(arm.row_key, spec, row, logged, sorted(ctx.revealed_slots))
            ran += 1
            if progress:
                msg = row.get("error") or "AR {:.2f}".format(
                    row["metrics"]["activation_rate"]["value"]
                )
                spent = time.time() - t_run
                eta = ""
                if ran < todo:  # the mean so far: points differ, training ones cost most
                    left = spent / ran * (todo - ran)
                    eta = f", ≈ {duration(left)} left at {spent / ran:.0f} s/point so far"
                _log(f"{point}: {msg} ({row['seconds']:.0f} s; elapsed {duration(spent)}{eta})")
            save_header()  # after every point: an interrupted run keeps the time it spent
    dist.barrier()  # every process's rows are in before the report is written
    save_header()
    return out
