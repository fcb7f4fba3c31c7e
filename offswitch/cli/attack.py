"""Researchers' commands: ``attack`` (a suite against an implanted model), ``report``
(write and summarise the robustness report) and ``compare`` (several implants side by side)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .._atomic import complete_lines
from ..errors import (
    UsageError,
)
from .common import (
    _add_device,
    _add_key,
    _add_passphrase_file,
    _load_owner_key,
    _sub,
    _use_key,
)


def cmd_attack(args: argparse.Namespace) -> int:
    from ..pipeline import run_attacks

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"model directory {model_dir} does not exist")
    _use_key(args, announce_now=True)
    paths = run_attacks(
        model_dir,
        key=_load_owner_key(args),
        suite_name=args.suite,
        out_dir=Path(args.out),
        baseline=not args.no_baseline,
        share=args.share,
        row_cache=not args.no_row_cache,
    )
    if paths:  # empty: a helper process of a multi-process launch
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.robustness import summary_lines, write_report

    paths = write_report(Path(args.results), Path(args.out) if args.out else None)
    with contextlib.suppress(OSError):
        _, cut = complete_lines((Path(args.results) / "results.jsonl").read_bytes())
        if cut:
            print(
                "offswitch: the last line of results.jsonl was cut short (a crash) and is left "
                "out; run the attacks again on the same directory to measure that point",
                file=sys.stderr,
            )
    report = json.loads(paths["json"].read_text("utf-8"))
    if args.markdown:
        print(paths["md"].read_text("utf-8"))
    else:
        print("\n".join(summary_lines(report, paths["md"])))
    wrote = ", ".join(str(p) for p in paths.values())
    if report["plots"]:
        wrote += f" and {len(report['plots'])} plots in {paths['md'].parent / 'plots'}"
    print(f"wrote {wrote}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..report.compare import compare_runs

    md = compare_runs(args.run, Path(args.out), args.reference)
    print(f"wrote {md}, {md.with_name('comparison.json')} and plots in {md.parent / 'plots'}",
          file=sys.stderr)  # fmt: skip
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this group's commands on ``sub``."""
    p = _sub(
        sub,
        "attack",
        "run an attack suite on an implanted model (and baseline)",
        "offswitch attack implanted --suite quick --no-baseline --out smoke   # a smoke run",
        "offswitch attack implanted --out results      # standard suite, ≈ 100 min, resumable",
        "offswitch report results                      # summary; report.md / .html",
        description="Run an attack suite against an implanted model and against a "
        "plain-trigger baseline (implanted into the same base model on first use), and "
        "write RESULTS/report.json, .md and .html. Interrupted runs resume where they "
        "stopped.\n\n"
        "The default suite is 'standard': on 2 CPU cores it takes ≈ 100 min (≈ 71 min of "
        "attack points plus a 29-min baseline implant the first time a base and recipe are "
        "attacked, cached after that; see 'offswitch help robustness'). "
        "For a first look use --suite quick (tiny budgets: a smoke run, not a measurement) "
        "with --no-baseline to skip the baseline implant: ≈ 9 min (estimated).\n\n"
        "Before any work it prints the points per arm and the suite's expected time on 2 CPU "
        "cores (and, on resume, how many points are done); while it runs, each point's number "
        "with the time spent and left, and progress bars for training and measuring.",
    )
    p.add_argument("model_dir", metavar="DIR", help="implanted model directory (signed manifest)")
    _add_key(p)
    p.add_argument(
        "--suite",
        default="standard",
        help="quick, standard (default; ≈ 100 min on 2 CPU cores), tamper (the "
        "tamper-evidence curves), full (≈ 19 h, estimated), or a suite .toml file "
        "('offswitch help attacks')",
    )
    p.add_argument("--out", required=True, metavar="RESULTS", help="results directory")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-trigger baseline arm")
    p.add_argument(
        "--no-row-cache",
        action="store_true",
        help="attack and measure the baseline at every point even where another results "
        "directory already did, with the same baseline, suite and code (reused by default)",
    )
    from ..attacks.runner import SHARES

    p.add_argument(
        "--share",
        choices=SHARES,
        default="points",
        help="under a multi-process launch ('offswitch help scaling'): 'points' (default) runs "
        "whole attack points on each process; 'steps' runs every point on all processes, sharing "
        "each training step (a step too large for one device, or a few long points)",
    )
    _add_passphrase_file(p)
    _add_device(p)
    p.set_defaults(func=cmd_attack)

    p = _sub(
        sub,
        "report",
        "write JSON, Markdown and HTML reports of attack results",
        "offswitch report results                 # writes results/report.*, prints verdicts",
        "offswitch report results --markdown      # prints the whole Markdown instead",
        "offswitch report results --out site",
        description="Write report.json (for programs), report.md and report.html (for people) "
        "from an attack results directory, and print a short summary: one verdict line per "
        "attack and where the full report is. --markdown prints the full Markdown instead.",
    )
    p.add_argument("results", metavar="RESULTS", help="results directory of offswitch attack")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS)")
    p.add_argument(
        "--markdown",
        "--print",
        dest="markdown",
        action="store_true",
        help="print the full Markdown report on stdout instead of the summary",
    )
    p.set_defaults(func=cmd_report)

    p = _sub(
        sub,
        "compare",
        "compare the attack results of several implants, point by point",
        'offswitch compare --run "default=results-a" --run "option=results-b" --out cmp',
        'offswitch compare --run "two seeds=results-s0+results-s1" --run '
        '"plain=results-a@plain" --reference plain --out cmp',
        description="Write OUT/comparison.md, comparison.json and plots: at every attack point "
        "some run measured, each run's activation with its interval, per slot, the hidden slots "
        "after unlearning, the highest keyless false activation and KL to the base model. "
        "DIR_A+DIR_B pools one recipe's seeds (counts summed); @ARM picks the plain baseline's "
        "arm (default signed); --reference adds the removal cost against that run.",
    )
    p.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=DIR[+DIR...][@ARM]",
        help="one run to compare: a label, then results directories of offswitch attack",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the comparison")
    p.add_argument(
        "--reference",
        metavar="LABEL",
        help="the run whose removals the others' cost is measured against (the plain backdoor)",
    )
    p.set_defaults(func=cmd_compare)
