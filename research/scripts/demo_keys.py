"""The main job on the eight fixed demo keys: one recorded row per key.

    .venv/bin/python research/scripts/demo_keys.py --keys 1-8 [--precision auto|fp32] [--tag NAME]
        [--set NAME=VALUE ...]

For each key N (``keys/demo-test-only/demo-key-N``, test-only, published seeds): copies the
key to ``runs/demo-keys/<tag>/key-N/owner-demo`` (mode 0600; the demo reuses it), runs
``offswitch demo --out runs/demo-keys/<tag>/key-N`` under ``/usr/bin/time -v`` with ``HOME``
an empty temporary directory (empty model and reply caches, as a new user: the GGUF
conversion and the self-distillation are part of the time), and appends one row to
``research/results/demo-keys/rows.jsonl``: key, key id, commit, precision, CPU, wall time, peak
RSS, training steps and how training ended, and every figure of the check with its verdict.
The check's Markdown and JSON and the run's log (planted commands redacted) are copied to
``research/results/demo-keys/<tag>/key-N/``. A key whose (tag, key) row exists is skipped, so a
killed chain resumes with the next key; one job runs at a time.

Setup (README command 1's first half) is the same for every key and is timed once, on a
fresh clone; this script times the job itself. It runs the package under its own checkout
(``PYTHONPATH``), so a chain of keys can run from a git worktree of one commit,
``.venv/bin/python WORKTREE/research/scripts/demo_keys.py``, while work goes on elsewhere.

``--resume-from STATE --set max_steps=N`` continues a key's run from a checkpoint saved by an
earlier run of the default recipe (``model/.offswitch-checkpoint/state.pt``, copied before that
run ended) under a longer cap: the cap decides only when training ends, never a step before
it, so the continued run is the run the longer cap would have made, for the cost of the steps
past the checkpoint. Only ``max_steps`` may differ; the checkpoint's settings fingerprint must
be the default recipe's, and is rewritten to the new recipe's. The row's times then cover
only the continuation (``resumed_from_step``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's package, as the job it runs
from offswitch._atomic import append_row, read_rows  # noqa: E402

KEYS = ROOT / "keys" / "demo-test-only"
RESULTS = ROOT / "research" / "results" / "demo-keys"
ROWS = RESULTS / "rows.jsonl"


def parse_keys(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    if not out or any(not 1 <= k <= 8 for k in out):
        raise SystemExit("--keys: numbers 1-8, e.g. 1-8 or 1,3,5")
    return out


def done(tag: str) -> set[int]:
    return {r["key"] for r in read_rows(ROWS) if r["tag"] == tag}


def time_v(text: str) -> dict[str, float]:
    """Wall seconds and peak RSS (GiB) from ``/usr/bin/time -v``."""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    h, m, s = (float(x) if x else 0.0 for x in wall.groups()) if wall else (0, 0, 0)
    return {
        "wall_seconds": round(h * 3600 + m * 60 + s, 1),
        "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None,
    }


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*: (.*)", info)
    flags = set(re.search(r"flags\s*: (.*)", info).group(1).split()) if "flags" in info else set()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{name.group(1) if name else '?'}{', native bf16' if native else ''}"


RESUMABLE = {"max_steps"}  # settings that change nothing before the cap


def place_checkpoint(state_path: Path, out: Path, settings: list[str]) -> int:
    """Copy a default-recipe checkpoint into ``out``'s model directory with its settings
    fingerprint rewritten to the recipe of ``settings``; the step it resumes from."""
    import torch

    from offswitch.demo import main_job_configs
    from offswitch.implant.train import CHECKPOINT_DIR
    from offswitch.models import DEFAULT_MODEL

    names = {s.partition("=")[0] for s in settings}
    if not names or not names <= RESUMABLE:
        raise SystemExit(f"--resume-from: only {sorted(RESUMABLE)} may be set, got {sorted(names)}")
    state = torch.load(state_path, weights_only=False, map_location="cpu")
    default, new = (main_job_configs(DEFAULT_MODEL, settings=s)[0] for s in ([], settings))
    if state["meta"]["config"] != default.fingerprint():
        raise SystemExit(f"--resume-from: {state_path} is not a checkpoint of the default recipe")
    if state["step"] >= default.max_steps:
        raise SystemExit("--resume-from: the checkpoint is at the cap already")
    state["meta"]["config"] = new.fingerprint()
    dest = out / "model" / CHECKPOINT_DIR
    dest.mkdir(parents=True)
    torch.save(state, dest / "state.pt")
    return int(state["step"])


def run_key(
    n: int, tag: str, precision: str, settings: list[str], resume: Path | None = None
) -> dict:
    out = ROOT / "runs" / "demo-keys" / tag / f"key-{n}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    resumed = place_checkpoint(resume, out, settings) if resume else None
    key = out / "owner-demo"
    shutil.copyfile(KEYS / f"demo-key-{n}", key)
    os.chmod(key, 0o600)
    shutil.copyfile(KEYS / f"demo-key-{n}.pub", out / "owner-demo.pub")
    home = tempfile.mkdtemp(prefix="offswitch-home-")
    env = {**os.environ, "HOME": home}
    env.pop("OFFSWITCH_CACHE", None)
    # the package under ROOT, whatever the interpreter's own install points at: a chain run
    # from a worktree of one commit keeps running that commit while the checkout moves on
    env["PYTHONPATH"] = str(ROOT)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "offswitch", "demo", "--out", str(out)]
    if precision != "auto":
        cmd += ["--precision", precision]
    for s in settings:
        cmd += ["--set", s]
    commit = subprocess.run(  # the code the job runs: taken before it starts
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    shutil.rmtree(home, ignore_errors=True)
    log = re.sub(r"offswitch v1 \S[^\n…]*", "offswitch v1 [redacted]", proc.stdout + proc.stderr)
    dest = RESULTS / tag / f"key-{n}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "run.log").write_text(log)
    report = json.loads((out / "model-check.json").read_text()) if proc.returncode == 0 else None
    if report is not None:
        shutil.copyfile(out / "model-check.json", dest / "model-check.json")
        shutil.copyfile(out / "model-check.md", dest / "model-check.md")
    imp = (report or {}).get("implant", {})
    return {
        "tag": tag,
        "key": n,
        "key_id": report["provenance"]["key_id"] if report else None,
        "commit": commit,
        "cpu": cpu(),
        "precision": imp.get("precision"),
        "settings": settings,
        **({"resumed_from_step": resumed} if resumed is not None else {}),
        "exit": proc.returncode,
        **time_v(proc.stderr),
        "script_seconds": round(time.time() - t0, 1),
        "train_seconds": round(imp.get("train_seconds", 0), 1),
        "tokens_per_second": round(imp.get("tokens_per_second", 0), 1),
        "steps": (imp.get("stop") or {}).get("steps", imp.get("steps_done")),
        "stopped": (imp.get("stop") or {}).get("stopped"),
        "scoring_seconds": round(report["metrics"]["scoring"]["teacher_forced_seconds"], 1)
        if report
        else None,
        "usable": report.get("usable") if report else False,
        "figures": report.get("figures") if report else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", default="1-8")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--tag", default=None, help="row group (default: the precision)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an implant setting changed from the recipe (a new tag for each)",
    )
    ap.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        metavar="STATE",
        help="continue one key from a default-recipe checkpoint under a longer max_steps",
    )
    args = ap.parse_args(argv)
    tag = args.tag or args.precision
    if args.resume_from and len(parse_keys(args.keys)) != 1:
        raise SystemExit("--resume-from: one key at a time (--keys N)")
    skip = done(tag)
    for n in parse_keys(args.keys):
        if n in skip:
            print(f"key {n}: recorded under {tag!r}, skipped", flush=True)
            continue
        print(f"key {n}: running the main job ({tag})", flush=True)
        row = run_key(n, tag, args.precision, args.set, args.resume_from)
        append_row(ROWS, row)
        missed = [f["name"] for f in row["figures"] or [] if not f["met"]]
        print(
            f"key {n}: exit {row['exit']}, {row['wall_seconds']:.0f} s, {row['peak_rss_gib']} GiB, "
            f"{row['steps']} steps ({row['stopped']}), usable {row['usable']}"
            + (f", missed: {', '.join(missed)}" if missed else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
