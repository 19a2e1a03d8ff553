"""Markdown tables of one benchmark run from the long results CSV: for every case, synthcl_fast's fastest fused
backend against the fastest peer (every implementation that is not a synthcl_fast fused backend: the
reference, torch.compile of it, the peer libraries), and every entry with its ratios to that peer.

    python benchmarks/report.py                                   # newest run in benchmarks/results/benchmarks.csv
    python benchmarks/report.py results.csv --run RUN_ID --device cpu --out benchmarks/results/benchmarks_cpu.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as C  # noqa: E402


def select_run(rows: list[dict], run_id: str | None = None, device: str | None = None,
               step_pass: str = "fwd+bwd") -> list[dict]:
    """The rows of one run (default: the newest, the last one appended) on one device type."""
    if device:
        rows = [r for r in rows if r["device"] == device]
    if not rows:
        raise SystemExit(f"no rows{' for device ' + device if device else ''}")
    run_id = run_id or rows[-1]["run_id"]
    chosen = [r for r in rows if r["run_id"] == run_id and r["pass"] == step_pass]
    if not chosen:
        raise SystemExit(f"no {step_pass} rows of run {run_id!r}")
    return chosen


def by_case(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["case"], []).append(row)
    return out


def fastest(rows: list[dict], fused: bool) -> dict | None:
    """The fastest measured row among the fused backends (fused=True) or among the peers (the other
    implementations of the same loss; the sweep's one-direction CLIP variants are neither)."""
    def kind(row):
        if row["implementation"] in C.FUSED:
            return True
        return False if row["implementation"] in C.FAMILY_IMPLEMENTATIONS[row["family"]] else None

    measured = [r for r in rows if r["status"] == "ok" and kind(r) is fused]
    return min(measured, key=lambda r: float(r["median_ms"]), default=None)


def _ms(value) -> str:
    value = float(value)
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _mib(row) -> str:
    return f"{float(row['peak_mb']):.1f}" if row.get("peak_mb") not in (None, "") else "-"


def header(rows: list[dict]) -> str:
    r = rows[0]
    where = f"{r['cpu']} ({r['cpu_count']} logical cores, {r['torch_threads']} torch threads, load {r.get('load_1m') or '-'} " \
            "at the start)"
    if r.get("gpu"):
        where = f"{r['gpu']} (CUDA {r['cuda']}), host {where}"
    suites = ", ".join(sorted({row["suite"] for row in rows}))
    return (f"Run `{r['run_id']}`, {r['date_utc']} UTC, suites {suites}: {where}; torch {r['torch']}, "
            f"triton {r['triton'] or '-'}, python {r['python']}, commit {r['commit']}. Forward + backward of one "
            "loss; median of the timed calls; peak = extra memory allocated during one call.")


def summary_table(rows: list[dict]) -> str:
    """Per case: the fastest fused backend against the fastest peer (the README's table)."""
    lines = ["| case | synthcl_fast | ms | fastest peer | ms | speed-up | peak MiB (ours / peer's) | out of memory |",
             "|---|---|---|---|---|---|---|---|"]
    for case, entries in by_case(rows).items():
        ours, peer = fastest(entries, True), fastest(entries, False)
        oom = ", ".join(sorted({r["implementation"] for r in entries if r["status"].startswith(
            ("out of memory", "skipped: out of memory"))})) or "-"
        if ours is None:
            continue
        if peer is None:
            lines.append(f"| {case} | {ours['implementation']} | {_ms(ours['median_ms'])} | - | - | - | "
                         f"{_mib(ours)} / - | {oom} |")
            continue
        speed = float(peer["median_ms"]) / float(ours["median_ms"])
        lines.append(f"| {case} | {ours['implementation']} | {_ms(ours['median_ms'])} | "
                     f"{C.LABELS.get(peer['implementation'], peer['implementation'])} | {_ms(peer['median_ms'])} | "
                     f"{speed:.2f}x | {_mib(ours)} / {_mib(peer)} | {oom} |")
    return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
    """Every entry, with its time and memory relative to the case's fastest peer."""
    lines = ["| case | implementation | median ms | p20-p80 ms | peak MiB | speed vs fastest peer | "
             "memory vs fastest peer | status |", "|---|---|---|---|---|---|---|---|"]
    for case, entries in by_case(rows).items():
        peer = fastest(entries, False)
        for r in entries:
            if r["status"] != "ok":
                lines.append(f"| {case} | {r['implementation']} | - | - | - | - | - | {r['status']} |")
                continue
            speed = memory = "-"
            if peer is not None:
                speed = f"{float(peer['median_ms']) / float(r['median_ms']):.2f}x"
                if float(peer["peak_mb"] or 0) > 0:
                    memory = f"{float(r['peak_mb']) / float(peer['peak_mb']):.1%}"
            lines.append(f"| {case} | {r['implementation']} | {_ms(r['median_ms'])} | {_ms(r['p20_ms'])}-"
                         f"{_ms(r['p80_ms'])} | {_mib(r)} | {speed} | {memory} | ok |")
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    return "\n\n".join([header(rows), summary_table(rows), "All entries:", detail_table(rows)]) + "\n"


def parse_run_args(argv, description: str, out_help: str) -> tuple[argparse.Namespace, list[dict]]:
    """The arguments report.py and plot.py share (which CSV, which run, which device, where to) and the rows."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", default=str(C.RESULTS_CSV))
    parser.add_argument("--run", default=None, help="run id (default: the newest)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the newest run's rows, any device)")
    parser.add_argument("--out", default=None, help=out_help)
    args = parser.parse_args(argv)
    return args, select_run(C.read_rows(args.csv), args.run, args.device)


def main(argv=None) -> str:
    args, rows = parse_run_args(argv, __doc__, "also write the markdown here")
    text = render(rows)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
