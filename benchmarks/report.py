"""Turns a pytest-benchmark JSON file into a markdown table: each group's entries side by side, with
speed-up and peak-memory ratios against the group's reference entry.

    pytest benchmarks/test_cpu_bench.py --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/report.py benchmarks/results/cpu.json > benchmarks/results/cpu.md
"""

import json
import sys
from collections import defaultdict


def backend_of(bench: dict) -> str:
    return bench["params"].get("backend", bench["name"])


def render(data: dict) -> str:
    env = data["benchmarks"][0]["extra_info"]
    lines = [f"Measured {data['datetime'][:16]} UTC on {env.get('cpu')} ({env.get('cpu_count')} cores, "
             f"{env.get('torch_threads')} torch threads), torch {env.get('torch')}, python {env.get('python')}"
             + (f", GPU {env['gpu']}" if "gpu" in env else "") + ".", "",
             "| benchmark | backend | median ms | min ms | peak extra MB | speed-up vs reference | memory vs reference |",
             "|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    for group, benches in groups.items():
        base = next((b for b in benches if backend_of(b) == "reference"), None)
        for b in benches:
            median, memory = b["stats"]["median"], b["extra_info"]["peak_extra_memory_bytes"]
            speed = f"{base['stats']['median'] / median:.2f}x" if base else "-"
            mem = f"{memory / base['extra_info']['peak_extra_memory_bytes']:.1%}" if base else "-"
            lines.append(f"| {group} | {backend_of(b)} | {median * 1e3:.1f} | {b['stats']['min'] * 1e3:.1f} | "
                         f"{memory / 1e6:.2f} | {speed} | {mem} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.load(f)))
