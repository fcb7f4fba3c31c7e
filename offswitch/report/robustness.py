"""Robustness report of an attack run: the public entry points.

``offswitch report RESULTS`` (and ``offswitch attack`` when it finishes) call
:func:`write_report`, which reads ``RESULTS/suite.json``, ``results.jsonl`` and, if the run
recorded one, ``samples.jsonl``, and writes beside them (or into ``out_dir``):

- ``report.json``: format ``offswitch-robustness/1``, for programs;
- ``report.md``: for people, plots linked from ``plots/``;
- ``report.html``: the same, self-contained (plots inline as SVG, no script);
- ``plots/*.svg``: the plots (matplotlib), only those with data.

Bad input raises :class:`ReportError` (one sentence) before anything is written. How the
verdicts are decided: :mod:`offswitch.report.summary`; what the reader sees, in order:
:mod:`offswitch.report.document`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .._atomic import write_atomic
from . import plots
from .html import format_html
from .markdown import format_markdown
from .schema import ReportError, load_results
from .summary import FORMAT, build_report

#: Plot files this module writes (and may replace or remove) in ``plots/``.
_OURS = re.compile(r"(frontier|false-activation|sensitivity|activation-[a-z0-9-]+)\.svg")


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.svg`` atomically
    into ``out_dir`` (default: ``results_dir``, created if missing). Returns the report paths
    under the keys ``json``, ``md`` and ``html``.

    Everything is rendered in memory first, so bad input or a failing plot leaves no file.
    Plots are written before the pages that link them; a plot of an earlier report that
    this one no longer has is removed."""
    report = build_report(results_dir)
    svgs = plots.render(report)
    texts = {
        "json": json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
        "md": format_markdown(report),
        "html": format_html(report, svgs),
    }
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    plot_dir = out / "plots"
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    # every target is checked before the first is written: a directory or special file in
    # the way of any of them leaves no file written (not plots without their pages)
    for target in [plot_dir, *paths.values(), *(plot_dir / f"{n}.svg" for n in svgs)]:
        try:
            mode = os.stat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        if target == plot_dir:
            if not stat.S_ISDIR(mode):
                raise ReportError(f"{target} is in the way: it must be the plots directory")
        elif not stat.S_ISREG(mode):
            raise ReportError(
                f"{target} is a directory or special file, not a report file; nothing was written"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        if svgs:
            plot_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create output directory {e.filename}: {e.strerror}") from None
    for name, svg in svgs.items():
        write_atomic(plot_dir / f"{name}.svg", svg.encode("utf-8"))
    if plot_dir.is_dir():
        for old in plot_dir.iterdir():
            if _OURS.fullmatch(old.name) and old.stem not in svgs:
                old.unlink()
    for key, path in paths.items():
        write_atomic(path, texts[key].encode("utf-8"))
    return paths


__all__ = [
    "FORMAT",
    "ReportError",
    "build_report",
    "format_html",
    "format_markdown",
    "load_results",
    "write_report",
]


def summary_lines(report: dict, md: Path) -> list[str]:
    """A few lines: each arm flagged if the switch already fails before any attack, one
    verdict line per attack (the report's headline), then where to read on."""
    src = report["source"]
    lines = [
        f"suite {src['suite'] or '?'}: {len(report['attacks'])} attacks, {src['n_rows']} "
        f"results ({src['n_errors']} failed). Did each attack remove the off-switch?"
    ]
    for arm, v in report.get("verdicts", {}).items():
        b = v["before"]
        if not b.get("measured"):
            continue
        flags = []
        if b["fails_survived_test"]:
            flags.append("its un-attacked activation already fails the survived test")
        if b["false_activation_above_limit"]:
            n, total = len(b["false_activation_above_limit"]), len(b["false_activation"])
            limit = report["thresholds"]["false_activation"]
            flags.append(f"false activation above {limit} in {n} of {total} classes")
        if flags:
            lines.append(f"  ! {arm}: {'; '.join(flags)}")
    for s in report["summary"]:
        parts = []
        for arm, x in s["arms"].items():
            v = x["verdict"]
            if v == "removed":
                at, name = x["removed_at_budget"], s["budget_name"]
                v = f"removed at {name} = {at}" if name else f"removed at budget {at}"
            elif v == "error":
                v = "failed"
            elif v == "weights unchanged":  # what a read-only attack found instead
                v = next(
                    (
                        r["cells"][arm]["outcome"]
                        for r in report.get("matrix", [])
                        if r["attack"] == s["attack"] and (r["cells"].get(arm) or {}).get("outcome")
                    ),
                    v,
                )
            parts.append(f"{arm} {v}")
        lines.append(f"  {s['attack']}: {'; '.join(parts)}")
    lines.append(f"full report: {md} (or add --markdown to print it here)")
    return lines
