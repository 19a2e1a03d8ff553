"""Plots a GPU sweep (benchmarks/gpu_sweep.py's JSON): effective TFLOP/s of one forward + backward step per
case and variant against the card's measured bf16 matrix rate, and peak extra memory (log scale).

    python benchmarks/plot_gpu_sweep.py benchmarks/results/gpu_sweep.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANT_ORDER = ["triton", "cuda", "triton_one_direction", "reference", "compiled", "inf_cl", "inf_cl_one_direction"]


def plot(result: dict, out: Path) -> Path:
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    if not rows:
        raise SystemExit("no measured rows to plot")
    cases = list(dict.fromkeys(r["case"] for r in rows))
    variants = [v for v in VARIANT_ORDER if any(r["variant"] == v for r in rows)]
    by_key = {(r["case"], r["variant"]): r for r in rows}
    width = 0.8 / len(variants)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(10, 1.1 * len(cases)), 9), sharex=True)
    for i, variant in enumerate(variants):
        xs = [c + (i - (len(variants) - 1) / 2) * width for c in range(len(cases))]
        nan = float("nan")  # not measured (skipped, out of memory): no bar
        tflops = [by_key[(case, variant)]["step_tflops"] if (case, variant) in by_key else nan for case in cases]
        memory = [max(by_key[(case, variant)]["peak_extra_mb"], 1e-3) if (case, variant) in by_key else nan
                  for case in cases]
        top.bar(xs, tflops, width, label=variant)
        bottom.bar(xs, memory, width, label=variant)
    ceiling = (result.get("ceilings") or {}).get("bf16_matmul_tflops")
    if ceiling:
        top.axhline(ceiling, color="black", linestyle="--", linewidth=1,
                    label=f"bf16 matrix product, measured ({ceiling:.0f})")
        top.axhline(0.6 * ceiling, color="gray", linestyle=":", linewidth=1, label="60% of it (issue 3 target)")
    top.set_ylabel("TFLOP/s, 8RKD per fwd+bwd")
    top.legend(fontsize=8, ncol=2)
    bottom.set_yscale("log")
    bottom.set_ylabel("peak extra memory, MiB")
    bottom.set_xticks(range(len(cases)))
    bottom.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
    env = result["environment"]
    fig.suptitle(f"synthcl_fast GPU sweep: {env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}, "
                 f"{env.get('date_utc')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__)
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".png")
    print(f"wrote {plot(json.loads(source.read_text()), out)}")


if __name__ == "__main__":
    main()
