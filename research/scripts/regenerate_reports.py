"""Regenerate every committed robustness report and compare it with the committed files.

    .venv/bin/python research/scripts/regenerate_reports.py [--write]

For every results directory under ``research/results/`` and ``docs/`` that holds a
``suite.json`` (an attack run), writes the report (``report.json``, ``report.md``,
``report.html``, ``plots/*.svg``) from its ``results.jsonl`` into a temporary directory through
:func:`offswitch.report.robustness.write_report` — the code ``offswitch report`` runs — and
compares it byte for byte with the committed files. Prints one line per directory:
``identical``, or the files that differ, are new or are gone, with the first differing line of
each text file. Exit status 1 when any differs (the structure work's check that a refactor left
the reports unchanged), 0 otherwise. ``--write`` regenerates the committed reports in place.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from offswitch.report.robustness import write_report  # noqa: E402

REPORT_FILES = ("report.json", "report.md", "report.html")


def report_files(d: Path) -> dict[str, bytes]:
    names = [d / n for n in REPORT_FILES if (d / n).is_file()]
    names += sorted((d / "plots").glob("*.svg")) if (d / "plots").is_dir() else []
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in names}


def json_paths(a: object, b: object, at: str = "") -> list[str]:
    """Where two JSON values differ: ``+path`` (only in the new), ``-path`` (only in the old),
    ``~path`` (changed)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"+{at}.{k}" for k in b.keys() - a.keys()]
        out += [f"-{at}.{k}" for k in a.keys() - b.keys()]
        for k in sorted(a.keys() & b.keys()):
            out += json_paths(a[k], b[k], f"{at}.{k}")
        return sorted(out)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in json_paths(x, y, f"{at}[{i}]")]
    return [] if a == b else [f"~{at}"]


def first_difference(a: bytes, b: bytes) -> str:
    old, new = a.decode("utf-8", "replace").splitlines(), b.decode("utf-8", "replace").splitlines()
    for line in difflib.unified_diff(old, new, lineterm="", n=0):
        if line[:1] in "+-" and not line.startswith(("+++", "---")):
            return line[:160]
    return "(line endings or trailing bytes)"


def compare(d: Path) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="offswitch-regen-") as tmp:
        write_report(d, tmp)
        new = report_files(Path(tmp))
    old = report_files(d)
    out = []
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            out.append(f"{name}: not regenerated")
        elif name not in old:
            out.append(f"{name}: new")
        elif old[name] != new[name]:
            if name.endswith(".json"):
                paths = json_paths(json.loads(old[name]), json.loads(new[name]))
                generic = sorted({re.sub(r"\[\d+\]", "[*]", p) for p in paths})
                out.append(f"{name}: differs at {', '.join(generic) or 'formatting only'}")
            else:
                out.append(f"{name}: differs, first at {first_difference(old[name], new[name])}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="regenerate the reports in place")
    args = ap.parse_args(argv)
    dirs = sorted(
        p.parent for base in ("research/results", "docs") for p in (ROOT / base).rglob("suite.json")
    )
    differing = 0
    for d in dirs:
        rel = d.relative_to(ROOT).as_posix()
        if args.write:
            write_report(d)
            print(f"{rel}: written", flush=True)
            continue
        diffs = compare(d)
        differing += bool(diffs)
        print(f"{rel}: " + ("identical" if not diffs else f"{len(diffs)} file(s)"), flush=True)
        for line in diffs:
            print(f"    {line}", flush=True)
    if not args.write:
        print(f"{len(dirs) - differing} of {len(dirs)} reports regenerate byte-identical")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
