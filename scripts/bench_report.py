"""Summarize a pytest-benchmark JSON of benchmarks/ as Markdown tables: the crypto core
(benchmarks/test_bench_crypto.py) and/or the model benchmarks (benchmarks/test_bench_model.py),
whichever the file holds.

.venv/bin/python scripts/bench_report.py docs/results/bench-crypto.json
.venv/bin/python scripts/bench_report.py docs/results/bench-model.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from offswitch.evaluate import wilson


def model_tables(by_name: dict[str, dict], info: dict[str, dict]) -> None:
    peak = info.get("test_fp32_matmul_peak", {})
    imp = info.get("test_implant_step_throughput", {})
    if peak or imp:
        print("| measure | value |")
        print("|---|---|")
        if peak:
            print(
                f"| fp32 matmul peak (2048², {peak['threads']} threads) | "
                f"{peak['gflops_best']:.1f} GFLOP/s |"
            )
        if imp:
            print(
                f"| implant step throughput | {imp['tokens_per_second']:.0f} tokens/s "
                f"({imp['tokens_per_step']:.0f} tokens/step) |"
            )
            print(f"| implant model FLOP rate | {imp['model_gflops_per_second']:.1f} GFLOP/s |")
            if imp.get("fraction_of_peak") is not None:
                print(f"| share of the measured peak | {imp['fraction_of_peak']:.0%} |")
        print()
    tf = by_name.get("test_scoring_teacher_forced")
    if tf:
        n = info["test_scoring_teacher_forced"]["conversations"]
        print("| scoring | s / conversation | speedup of teacher forcing | verdict agreement |")
        print("|---|---|---|---|")
        print(f"| teacher-forced | {tf['min'] / n:.3f} | 1 | — |")
        for name, label in (
            ("test_scoring_generation", "generation, response length"),
            ("test_scoring_generation_full_reply", "generation, whole reply"),
        ):
            if name in by_name:
                i = info[name]
                ci = wilson(i["agree"], i["conversations"])
                print(
                    f"| {label} | {by_name[name]['min'] / n:.3f} | "
                    f"{i['speedup_teacher_forced']:.1f}x | {i['agree']}/{i['conversations']} "
                    f"[{ci.ci_low:.3f}, {ci.ci_high:.3f}] |"
                )


def main(path: str) -> int:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_name = {b["name"]: b["stats"] for b in data["benchmarks"]}
    info = {b["name"]: b.get("extra_info", {}) for b in data["benchmarks"]}
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, ", end="")
    print(f"python {data['machine_info']['python_version']}, {data['datetime']}\n")
    if "test_make_raw" not in by_name:
        model_tables(by_name, info)
        return 0
    print("| operation | raw ops/s | offswitch ops/s | overhead (median ratio) |")
    print("|---|---|---|---|")
    for group in ("make", "verify", "roundtrip"):
        raw, ours = by_name[f"test_{group}_raw"], by_name[f"test_{group}_offswitch"]
        ratio = ours["median"] / raw["median"]
        print(f"| {group} | {1 / raw['median']:,.0f} | {1 / ours['median']:,.0f} | {ratio:.2f}x |")
    print("\n| key file | median s | min s | rounds |")
    print("|---|---|---|---|")
    for name in ("test_kdf_encrypt", "test_kdf_decrypt"):
        s = by_name[name]
        print(f"| {name[9:]} | {s['median']:.3f} | {s['min']:.3f} | {s['rounds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
