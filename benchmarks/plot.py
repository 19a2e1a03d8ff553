"""Time and peak memory against batch size (log-log) for one benchmark run, one line per implementation, one
column per loss; from the long results CSV (the pytest suites' and the GPU sweep's rows alike).

    python benchmarks/plot.py                          # newest run -> benchmarks/results/benchmarks_<device>.png
    python benchmarks/plot.py results.csv --run RUN_ID --device cpu --out plot.png

Runs that could not happen are marked where they would be: "x" on the top edge for out of memory (measured
or estimated against the budget).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as C  # noqa: E402
from report import parse_run_args  # noqa: E402

ORDER = ["cpu", "triton", "cuda", "reference", "compiled", "lightly", "pml", "solo", "open_clip", "inf_cl"]
STYLE = {name: (f"C{i}", "o-" if name in C.FUSED else "s--") for i, name in enumerate(ORDER)}
TITLES = {"nt_xent": "NT-Xent (K = R)", "nt_xent_negatives": "NT-Xent + R/8 generated", "supcon": "SupCon, 10 classes",
          "ppcl": "PPCL (2N real + 4M synthetic)", "info_nce": "InfoNCE, R queries vs R keys + queue", "clip": "CLIP symmetric",
          "positive_pair": "positive pair", "dcl": "DCL (positive out of the sum)",
          "dclw": "DCLW (DCL, positive_weight)", "per_positive": "SupCon, per_positive denominator",
          "hcl": "HCL (beta 1, tau+ 0.1)"}


def plot(rows: list[dict], out: Path) -> Path:
    families = [f for f in C.FAMILY_IMPLEMENTATIONS if any(r["family"] == f for r in rows)]
    fig, axes = plt.subplots(2, len(families), figsize=(3.2 * len(families), 6.4), squeeze=False)
    for column, family in enumerate(families):
        time_ax, memory_ax = axes[0][column], axes[1][column]
        entries = [r for r in rows if r["family"] == family]
        dims = sorted({r["dim"] for r in entries})
        queues = sorted({int(r["cols"]) - int(r["rows"]) for r in entries}) if family == "info_nce" else []
        detail = f"D={'/'.join(dims)}" + (f", queue {'/'.join(map(str, queues))}" if queues else "")
        time_ax.set_title(f"{TITLES.get(family, family)}\n{detail}", fontsize=9)
        for name in sorted({r["implementation"] for r in entries}, key=lambda n: ORDER.index(n) if n in ORDER else 99):
            color, style = STYLE.get(name, ("black", "^:"))
            ok = sorted((int(r["rows"]), float(r["median_ms"]), float(r["peak_mb"] or "nan"))
                        for r in entries if r["implementation"] == name and r["status"] == "ok")
            label = C.LABELS.get(name, name)
            if ok:
                x, ms, mb = zip(*ok)
                time_ax.plot(x, ms, style, color=color, label=label, markersize=4)
                memory_ax.plot(x, [max(m, 1e-3) for m in mb], style, color=color, label=label, markersize=4)
            oom = [int(r["rows"]) for r in entries if r["implementation"] == name and "out of memory" in r["status"]]
            if oom:
                time_ax.plot(oom, [0.97] * len(oom), "x", color=color, markersize=7, clip_on=False,
                             transform=time_ax.get_xaxis_transform(), label=None if ok else label)
        for ax in (time_ax, memory_ax):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        memory_ax.set_xlabel("batch size R (rows)")
    axes[0][0].set_ylabel("forward + backward, ms")
    axes[1][0].set_ylabel("peak extra memory, MiB")
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    r = rows[0]
    where = r["gpu"] or f"{r['cpu']}, {r['torch_threads']} threads"
    fig.suptitle(f"synthcl_fast vs peers: {where}; torch {r['torch']}; run {r['run_id']} (x: out of memory)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    args, rows = parse_run_args(argv, __doc__, "PNG path (default: benchmarks/results/benchmarks_<device>.png)")
    # one point per (case, implementation) against batch size: the thread-count and load rows (contention
    # suite) are a table, not a curve
    rows = [r for r in rows if r["suite"] != "contention"] or rows
    out = Path(args.out) if args.out else C.RESULTS_CSV.with_name(f"benchmarks_{rows[0]['device']}.png")
    print(f"wrote {plot(rows, out)}")
    return out


if __name__ == "__main__":
    main()
