"""Read an attack run's results directory into typed, validated values.

An attack run (:mod:`offswitch.attacks.runner`) writes, into ``RESULTS/``:

- ``suite.json`` (format ``offswitch-attack-run/1``): the suite, the arms, provenance;
- ``results.jsonl``: one row per arm and attack point (metrics, or the error it raised);
- ``samples.jsonl`` (optional; runs before it existed have none): per arm and point a few
  prompt → reply pairs per class, already redacted by the runner.

:func:`load_results` checks all of it and returns a :class:`Run`; anything malformed raises
:class:`ReportError` with one sentence that names the file, the line and the field at fault.
Every free-form value (configs, findings, errors, sample text) passes through :func:`clean`,
which keeps private-key material out of anything a report prints.

One module although long: every field of the run format is validated here, once, so the
rest of the report can trust its input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import complete_lines
from ..errors import ReportError
from ..scoring import Rate

RUN_FORMAT = "offswitch-attack-run/1"
PROVENANCE_FIELDS = ("versions", "git_commit", "seed", "machine", "time_utc")
ARM_FIELDS = ("model_dir", "model_hash", "key_id", "planted_slots", "response", "trigger_kind")
RATE_FIELDS = ("value", "n", "k", "ci_low", "ci_high")
UTILITY_FIELDS = (
    "kl_to_base_nats_per_token",
    "perplexity_ratio",
    "greedy_token_agreement",
    "n_tokens",
)
#: Budget axes on which the lowest budget is the strongest attack, for results written
#: before attacks declared it themselves (``Attack.budget_stronger``, recorded per row).
LEGACY_LOWER_IS_STRONGER = frozenset({"bits"})
STRONGER = ("higher", "lower")
REDACTED = "[redacted: possible private key material]"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, private-key-looking values are redacted
    (a key named like ``private_key`` or ``passphrase``, or text holding ``PRIVATE KEY``)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = str(k)
            low = key.lower()
            out[key] = REDACTED if ("private_key" in low or "passphrase" in low) else clean(v)
        return out
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str) and "PRIVATE KEY" in obj.upper():
        return REDACTED
    return obj


# --- values ---------------------------------------------------------------------------------


# Rate: offswitch.scoring.Rate, the one rate type (k of n with its Wilson interval)


@dataclass(frozen=True)
class Metrics:
    """What the runner measured after one attack point."""

    activation: Rate
    by_slot: dict[str, Rate]
    false_activation: dict[str, Rate]
    utility: dict[str, float | None] | None
    sensitivity: list[float | None] | None

    @property
    def kl(self) -> float | None:
        return None if not self.utility else self.utility.get("kl_to_base_nats_per_token")


@dataclass(frozen=True)
class ResultRow:
    """One line of ``results.jsonl``: an arm at an attack point (``attack == "none"``: the
    un-attacked model)."""

    line: int  # 1-based line number in results.jsonl
    arm: str
    attack: str
    attack_id: str
    budget: float
    budget_name: str | None
    #: which end of the budget axis is the stronger attack, "higher" or "lower": as the
    #: attack declared it, else the legacy rule (only "bits" is lower-is-stronger)
    budget_stronger: str
    config: Any
    spend: Any
    seconds: float | None
    findings: dict[str, Any] | None
    error: str | None
    metrics: Metrics | None
    #: read-only attacks (trigger search, extraction, probe) reuse the un-attacked metrics
    weights_unchanged: bool
    #: a baseline row taken from the row cache: the seconds its measurement took then
    #: (``seconds`` is then the lookup's); None for a row measured in this run
    cached_seconds: float | None = None
    #: a training attack measured on its way to the budget (a suite entry's ``trajectory``):
    #: (steps done, metrics) in step order; empty for other rows
    trajectory: tuple[tuple[int, Metrics], ...] = ()

    @property
    def seed(self) -> Any:
        return self.config.get("seed") if isinstance(self.config, dict) else None


@dataclass(frozen=True)
class Sample:
    """One scored conversation and the model's greedy reply, as ``samples.jsonl`` holds it."""

    cls: str  # "planted", "clean" or a forgery class
    slot: int | None  # the planted slot (class "planted")
    placement: str | None
    messages: list[dict[str, str]]
    reply: str
    fired: bool | None  # did the reply give the shutdown response


@dataclass(frozen=True)
class SamplePoint:
    """The samples of one arm at one attack point."""

    line: int
    arm: str
    attack: str
    attack_id: str
    budget: float
    revealed_slots: tuple[int, ...]
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Run:
    """A validated attack-run directory."""

    dir: Path
    suite: dict[str, Any]  # suite.json as read (validated fields only are trusted)
    rows: tuple[ResultRow, ...]
    #: None when the run wrote no samples.jsonl; the last line per (arm, attack id, budget)
    samples: tuple[SamplePoint, ...] | None


# --- validation -----------------------------------------------------------------------------


def _check_rate(rate: Any, where: str, what: str) -> Rate:
    if not isinstance(rate, dict) or not all(_is_number(rate.get(f)) for f in RATE_FIELDS):
        raise ReportError(
            f"{where}: {what} is missing or not a rate object with numeric {', '.join(RATE_FIELDS)}"
        )
    return Rate(**{f: rate[f] for f in RATE_FIELDS})


def _check_rates(rates: Any, where: str, what: str) -> dict[str, Rate]:
    if rates is None:
        return {}
    if not isinstance(rates, dict):
        raise ReportError(f"{where}: {what} must be an object of rates")
    return {str(k): _check_rate(v, where, f"{what}.{k}") for k, v in rates.items()}


def _check_metrics(metrics: Any, where: str) -> Metrics:
    if not isinstance(metrics, dict):
        raise ReportError(f"{where}: 'metrics' is not a JSON object")
    utility = metrics.get("utility")
    if utility is not None:
        if not isinstance(utility, dict):
            raise ReportError(f"{where}: metrics.utility is not a JSON object or null")
        utility = {
            k: (v if _is_number(v) and math.isfinite(v) else None)
            for k, v in utility.items()
            if k in UTILITY_FIELDS or _is_number(v)
        }
    sens = metrics.get("sensitivity")
    if sens is not None:
        if not isinstance(sens, list) or not all(v is None or _is_number(v) for v in sens):
            raise ReportError(f"{where}: metrics.sensitivity is not a list of numbers")
        sens = clean([float(v) if v is not None else None for v in sens])
    return Metrics(
        activation=_check_rate(metrics.get("activation_rate"), where, "metrics.activation_rate"),
        by_slot=_check_rates(
            metrics.get("activation_by_slot"), where, "metrics.activation_by_slot"
        ),
        false_activation=_check_rates(
            metrics.get("false_activation_rate"), where, "metrics.false_activation_rate"
        ),
        utility=utility,
        sensitivity=sens,
    )


def _check_row(row: Any, where: str, line: int) -> ResultRow:
    if not isinstance(row, dict):
        raise ReportError(f"{where} is not a JSON object")
    for name in ("arm", "attack"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise ReportError(f"{where}: '{name}' is missing or not a non-empty string")
    budget = row.get("budget")
    if not _is_number(budget) or not math.isfinite(budget):
        raise ReportError(f"{where}: 'budget' is missing or not a finite number")
    budget_name = row.get("budget_name") if isinstance(row.get("budget_name"), str) else None
    stronger = row.get("budget_stronger")
    if stronger is not None and stronger not in STRONGER:
        raise ReportError(f"{where}: 'budget_stronger' must be 'higher' or 'lower'")
    if stronger is None:
        stronger = "lower" if budget_name in LEGACY_LOWER_IS_STRONGER else "higher"
    findings = row.get("findings")
    if findings is not None:
        findings = clean(findings if isinstance(findings, dict) else {"value": findings})
    error = str(clean(str(row["error"]))) if row.get("error") is not None else None
    metrics = row.get("metrics")
    if metrics is None and error is None:
        raise ReportError(f"{where}: the row has neither 'metrics' nor 'error'")
    return ResultRow(
        line=line,
        arm=row["arm"],
        attack=row["attack"],
        attack_id=str(row.get("attack_id") or row["attack"]),
        budget=budget,
        budget_name=budget_name,
        budget_stronger=stronger,
        config=clean(row.get("config")),
        spend=clean(row.get("spend")),
        seconds=row.get("seconds") if _is_number(row.get("seconds")) else None,
        findings=findings or None,
        error=error,
        metrics=None if metrics is None else _check_metrics(metrics, where),
        # the runner records it; runs before it only left the free-text note
        weights_unchanged=(
            row["weights_unchanged"] is True
            if isinstance(row.get("weights_unchanged"), bool)
            else bool(row.get("metrics_note"))
        ),
        cached_seconds=_cached_seconds(row.get("cached")),
        trajectory=_check_trajectory(row.get("trajectory"), where),
    )


def _check_trajectory(curve: Any, where: str) -> tuple[tuple[int, Metrics], ...]:
    if curve is None:
        return ()
    if not isinstance(curve, list):
        raise ReportError(f"{where}: 'trajectory' is not a list")
    out = []
    for i, c in enumerate(curve):
        step = c.get("step") if isinstance(c, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise ReportError(f"{where}: trajectory entry {i + 1} has no step count ≥ 1")
        out.append((step, _check_metrics(c.get("metrics"), f"{where}, trajectory step {step}")))
    return tuple(sorted(out, key=lambda sm: sm[0]))


def _cached_seconds(cached: Any) -> float | None:
    if not isinstance(cached, dict):
        return None
    s = cached.get("seconds")
    return float(s) if _is_number(s) and math.isfinite(s) else 0.0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}") from None


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank complete line of ``path``; a last line
    without its newline (a writer killed mid-line) is left out, as the runner drops it on
    resume (:func:`offswitch._atomic.complete_lines`, the one rule for both)."""
    try:
        raw, _ = complete_lines(path.read_bytes())
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}") from None
    lines = raw.split(b"\n")
    out = []
    for n, line in enumerate(lines, start=1):
        where = f"{path} line {n}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ReportError(f"{where} is not UTF-8 text") from None
        if not text.strip():
            continue
        try:
            out.append((n, json.loads(text)))
        except json.JSONDecodeError as e:
            raise ReportError(f"{where} is not valid JSON ({e.msg} at column {e.colno})") from None
    return out


def _check_sample(s: Any, where: str) -> Sample:
    if not isinstance(s, dict) or not isinstance(s.get("class"), str):
        raise ReportError(f"{where}: a sample is not an object with a 'class'")
    messages = s.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise ReportError(f"{where}: a sample's 'messages' is not a list of role/content objects")
    if not isinstance(s.get("reply"), str):
        raise ReportError(f"{where}: a sample's 'reply' is missing or not text")
    slot = s.get("slot")
    fired = s.get("fired")
    placement = s.get("placement")
    return Sample(
        cls=s["class"],
        slot=slot if isinstance(slot, int) and not isinstance(slot, bool) else None,
        placement=placement if isinstance(placement, str) else None,
        messages=[
            {"role": str(clean(m["role"])), "content": str(clean(m["content"]))} for m in messages
        ],
        reply=str(clean(s["reply"])),
        fired=fired if isinstance(fired, bool) else None,
    )


def load_samples(path: Path) -> tuple[SamplePoint, ...]:
    """Read ``samples.jsonl``: the last record per (arm, attack id, budget) wins (a point
    that was interrupted after its samples were written runs, and writes them, again)."""
    points: dict[tuple[str, str, float], SamplePoint] = {}
    for n, obj in _json_lines(path):
        where = f"{path} line {n}"
        if not isinstance(obj, dict):
            raise ReportError(f"{where} is not a JSON object")
        for name in ("arm", "attack"):
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise ReportError(f"{where}: '{name}' is missing or not a non-empty string")
        budget = obj.get("budget")
        if not _is_number(budget) or not math.isfinite(budget):
            raise ReportError(f"{where}: 'budget' is missing or not a finite number")
        samples = obj.get("samples")
        if not isinstance(samples, list):
            raise ReportError(f"{where}: 'samples' is missing or not a list")
        revealed = obj.get("revealed_slots") or []
        if not isinstance(revealed, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in revealed
        ):
            raise ReportError(f"{where}: 'revealed_slots' is not a list of slot numbers")
        attack_id = str(obj.get("attack_id") or obj["attack"])
        points[(obj["arm"], attack_id, budget)] = SamplePoint(
            line=n,
            arm=obj["arm"],
            attack=obj["attack"],
            attack_id=attack_id,
            budget=budget,
            revealed_slots=tuple(sorted(set(revealed))),
            samples=tuple(_check_sample(s, where) for s in samples),
        )
    return tuple(points.values())


def load_results(results_dir: str | Path) -> Run:
    """Read and validate ``suite.json``, ``results.jsonl`` and (if present) ``samples.jsonl``
    from an attack-run directory. Raises :class:`ReportError` on bad input."""
    d = Path(results_dir)
    if not d.exists():
        raise ReportError(f"results directory {d} does not exist")
    if not d.is_dir():
        raise ReportError(f"{d} is not a directory (expected an attack-run results directory)")
    suite_path = d / "suite.json"
    if not suite_path.is_file():
        raise ReportError(f"{suite_path} is missing, so {d} is not an attack-run results directory")
    suite = _read_json(suite_path)
    if not isinstance(suite, dict):
        raise ReportError(f"{suite_path} is not a JSON object")
    if suite.get("format") != RUN_FORMAT:
        raise ReportError(
            f"{suite_path} has unknown format {suite.get('format')!r} (expected {RUN_FORMAT!r})"
        )
    arms = suite.get("arms")
    if (
        not isinstance(arms, dict)
        or not arms
        or not all(isinstance(a, dict) for a in arms.values())
    ):
        raise ReportError(f"{suite_path}: 'arms' must be a non-empty object of arm objects")
    if not isinstance(suite.get("provenance", {}), dict):
        raise ReportError(f"{suite_path}: 'provenance' is not a JSON object")

    results_path = d / "results.jsonl"
    if not results_path.is_file():
        raise ReportError(f"{results_path} is missing")
    rows = tuple(
        _check_row(obj, f"{results_path} line {n}", n) for n, obj in _json_lines(results_path)
    )
    if not rows:
        raise ReportError(f"{results_path} has no result rows")
    samples_path = d / "samples.jsonl"
    samples = load_samples(samples_path) if samples_path.is_file() else None
    return Run(dir=d, suite=suite, rows=rows, samples=samples)


__all__ = [
    "Metrics",
    "Rate",
    "ReportError",
    "ResultRow",
    "Run",
    "Sample",
    "SamplePoint",
    "clean",
    "load_results",
    "load_samples",
]
