"""Summarize a pytest-benchmark JSON of benchmarks/test_bench_crypto.py as a Markdown table.

.venv/bin/python scripts/bench_report.py docs/results/bench-crypto.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> int:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_name = {b["name"]: b["stats"] for b in data["benchmarks"]}
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, ", end="")
    print(f"python {data['machine_info']['python_version']}, {data['datetime']}\n")
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
