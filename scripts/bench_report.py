"""Summarize a pytest-benchmark JSON of benchmarks/ as Markdown tables: the crypto core
(benchmarks/test_bench_crypto.py) and/or the model benchmarks (benchmarks/test_bench_model.py),
whichever the file holds.

.venv/bin/python scripts/bench_report.py research/results/bench-crypto.json
.venv/bin/python scripts/bench_report.py research/results/bench-model.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from offswitch.scoring import wilson


def model_tables(by_name: dict[str, dict], info: dict[str, dict]) -> None:
    peaks = {k: v for k, v in info.items() if k.startswith("test_matmul_peak")}
    steps = {k: v for k, v in info.items() if k.startswith("test_implant_step_throughput")}
    if peaks or steps:
        print("| measure | value |")
        print("|---|---|")
        for name, peak in peaks.items():
            dtype = name.partition("[")[2].rstrip("]") or "fp32"
            print(
                f"| {dtype} matmul peak (2048², {peak['threads']} threads) | "
                f"{peak['gflops_best']:.1f} GFLOP/s |"
            )
        for imp in steps.values():
            prec = imp.get("precision", "fp32")
            print(
                f"| implant step, {prec} | {imp['tokens_per_second']:.0f} tokens/s, "
                f"{imp.get('seconds_per_step', 0):.1f} s/step "
                f"({imp['tokens_per_step']:.0f} tokens/step) |"
            )
            rate = imp["model_gflops_per_second"]
            print(f"| implant model FLOP rate, {prec} | {rate:.1f} GFLOP/s |")
            if imp.get("fraction_of_peak") is not None:
                print(f"| share of the {prec} peak | {imp['fraction_of_peak']:.0%} |")
        print()
    tfs = {k: v for k, v in by_name.items() if k.startswith("test_scoring_teacher_forced")}
    if tfs:
        print("| scoring | s / conversation | speedup of teacher forcing | verdict agreement |")
        print("|---|---|---|---|")
        base_n = None
        for name, tf in tfs.items():
            i = info[name]
            n = i["conversations"]
            base_n = base_n or n
            prec = i.get("precision", "fp32")
            agree = "—"
            if "agree_fp32" in i:
                ci = wilson(i["agree_fp32"], n)
                agree = f"{i['agree_fp32']}/{n} with fp32 [{ci.ci_low:.3f}, {ci.ci_high:.3f}]"
            print(f"| teacher-forced, {prec} | {tf['min'] / n:.3f} | 1 | {agree} |")
        for name, label in (
            ("test_scoring_generation", "generation, response length"),
            ("test_scoring_generation_full_reply", "generation, whole reply"),
        ):
            if name in by_name:
                i = info[name]
                ci = wilson(i["agree"], i["conversations"])
                print(
                    f"| {label} | {by_name[name]['min'] / i['conversations']:.3f} | "
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
