"""Count the bad inputs the CLI tests try: run ``tests/test_cli_*`` with every ``offswitch``
call logged (tests/conftest.py, ``OFFSWITCH_TEST_CLI_LOG``), then summarise — calls, calls
that ended non-zero (bad input or usage), and of those how many gave more than one stderr line
or a traceback.

    .venv/bin/python research/scripts/bad_inputs.py [--out research/results/bad-inputs.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the summary here as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "calls.jsonl"
        env = {**os.environ, "OFFSWITCH_TEST_CLI_LOG": str(log)}
        tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cli_*.py"))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    bad = [r for r in rows if r["rc"] != 0]
    by_rc = collections.Counter(r["rc"] for r in bad)
    loud = [r for r in bad if r["rc"] == 1 and (r["stderr_lines"] != 1 or r["traceback"])]
    summary = {
        "pytest": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "test_files": tests,
        "calls": len(rows),
        "non_zero": len(bad),
        "by_exit_status": {str(k): v for k, v in sorted(by_rc.items())},
        "exit_1_not_one_line": len(loud),
        "tracebacks": sum(r["traceback"] for r in rows),
        "commands": dict(collections.Counter(r["command"] for r in bad).most_common()),
        "exit_1_not_one_line_examples": loud[:10],
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
