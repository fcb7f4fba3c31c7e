"""Does the tiny-model implant reach its thresholds on every CPU? Run the matrix and count.

Cells: (key, seed) pairs × torch threads × PyTorch CPU kernels (``ATEN_CPU_CAPABILITY``:
``default``, ``avx2``, and ``avx512`` where this CPU has it). The kernels round differently,
as another machine's would, so a recipe that passes every cell here passes on other x86-64
CPUs too. Each cell implants a fresh tiny model (:func:`offswitch.testing.tiny_implant`) and
checks it with :func:`offswitch.testing.check_tiny`, the same check the tests use.

    .venv/bin/python research/scripts/tiny_matrix.py  # 10 pairs, every kernel, 1 and 2 threads
    .venv/bin/python research/scripts/tiny_matrix.py --pairs 2 --out /tmp/m

Rows go to ``OUT/cells.jsonl`` as each cell finishes (a killed run resumes, skipping finished
cells); the summary (``N passed, M failed``) is printed and written to ``OUT/summary.txt``.
One-thread cells run two at a time on a 2-core machine (they do not share cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pair_key(i: int) -> bytes:
    """The test-only key seed of pair ``i``: 0 and 1 are the keys the tests use."""
    if i == 0:
        return bytes(range(32))  # tests/conftest.py (attack tests)
    if i == 1:
        return bytes(range(1, 33))  # tests/test_implant.py
    return hashlib.sha256(f"offswitch tiny-matrix test-only key {i}".encode()).digest()


def worker(pairs: list[int], threads: int) -> None:
    """Run the cells of one (kernel, threads) setting; one JSON line per cell on stdout."""
    import torch

    torch.set_num_threads(threads)
    from offswitch.evaluate import git_commit
    from offswitch.keys import OwnerKey
    from offswitch.models import load_default_tokenizer
    from offswitch.testing import check_tiny, tiny_implant, tiny_metrics

    tok = load_default_tokenizer()
    commit = git_commit()
    for i in pairs:
        key = OwnerKey(pair_key(i))
        t0 = time.time()
        res = tiny_implant(tok, key, seed=1 if i < 2 else i)
        m = tiny_metrics(res.model, tok, key)
        failures = check_tiny(m)
        row = {
            "commit": commit,
            "pair": i,
            "key_id": key.key_id,
            "seed": 1 if i < 2 else i,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "seconds": round(time.time() - t0, 1),
            "passed": not failures,
            "failures": failures,
            "activation": m["activation_rate"]["value"],
            "activation_by_slot": {s: r["value"] for s, r in m["activation_by_slot"].items()},
            "false_activation_max": max(r["value"] for r in m["false_activation_rate"].values()),
            "near_copy_curve": {k: r["value"] for k, r in m["near_copy"]["curve"].items()},
            "final_loss": round(res.loss_history[-1], 4),
        }
        print(json.dumps(row), flush=True)


def native_capabilities() -> list[str]:
    import torch

    caps = ["default", "avx2"]
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        caps.append("avx512")
    return caps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10, help="number of (key, seed) pairs")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--caps", default=None, help="kernels (default: every one this CPU has)")
    ap.add_argument("--out", type=Path, default=ROOT / "research" / "results" / "tiny-matrix")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pair-list", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker([int(x) for x in args.pair_list.split(",")], int(args.threads))
        return 0

    caps = args.caps.split(",") if args.caps else native_capabilities()
    threads = [int(t) for t in args.threads.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    cells_path = args.out / "cells.jsonl"
    rows = []
    if cells_path.is_file():
        for line in cells_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line: that cell runs again
    done = {(r["pair"], r["cap"], r["threads"]) for r in rows}
    jobs = []
    for cap in caps:
        for t in threads:
            todo = [i for i in range(args.pairs) if (i, cap, t) not in done]
            if todo:
                jobs.append((cap, t, todo))
    cores = os.cpu_count() or 1
    running: list[tuple[subprocess.Popen, str, int]] = []
    total = args.pairs * len(caps) * len(threads)
    t0 = time.time()

    def collect(proc: subprocess.Popen, cap: str, t: int) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            row = {**json.loads(line), "cap": cap}
            rows.append(row)
            with cells_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            verdict = "pass" if row["passed"] else "FAIL " + "; ".join(row["failures"])
            print(
                f"[{len(rows)}/{total}] pair {row['pair']} {cap}/{row['capability']} "
                f"{t} thread(s): {verdict} ({row['seconds']} s)",
                flush=True,
            )
        if proc.wait() != 0:
            print(f"worker {cap}/{t} exited with {proc.returncode}", file=sys.stderr)

    # one-thread workers in parallel up to the core count; wider ones alone
    for cap, t, todo in sorted(jobs, key=lambda j: j[1]):
        while running and sum(r[2] for r in running) + t > cores:
            proc, c, tt = running.pop(0)
            collect(proc, c, tt)
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(t)}
        cmd = [sys.executable, __file__, "--worker", "--threads", str(t)]
        cmd += ["--pair-list", ",".join(map(str, todo))]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        running.append((proc, cap, t))
    for proc, c, tt in running:
        collect(proc, c, tt)

    passed = sum(r["passed"] for r in rows)
    failed = len(rows) - passed
    missing = total - len(rows)
    import torch

    from offswitch.evaluate import git_commit

    summary = [
        f"{passed} passed, {failed} failed" + (f", {missing} missing" if missing else ""),
        f"cells: {args.pairs} (key, seed) pairs x threads {threads} x kernels {caps}",
        f"cpu: {_cpu_name()}; native kernel {torch.backends.cpu.get_cpu_capability()}",
        f"torch {torch.__version__}; commit {git_commit()}; this run {time.time() - t0:.0f} s; "
        f"cells took {sum(r['seconds'] for r in rows):.0f} s in all (implant + check each)",
    ]
    worst = min(rows, key=lambda r: r["activation"]) if rows else None
    if worst:
        summary.append(
            f"lowest activation {worst['activation']:.3f} (pair {worst['pair']}, {worst['cap']}, "
            f"{worst['threads']} threads); highest false activation "
            f"{max(r['false_activation_max'] for r in rows):.3f}"
        )
    text = "\n".join(summary)
    print(text)
    (args.out / "summary.txt").write_text(text + "\n")
    return 0 if failed == 0 and missing == 0 else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
