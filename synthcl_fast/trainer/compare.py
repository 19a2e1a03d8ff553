"""`compare`: train several methods with the same seeds (and data fractions), then tabulate the linear-probe
and kNN accuracy as mean +- standard deviation over the seeds.

Every run lives in its own folder under the comparison folder; a run that already finished there is
reused and an interrupted one is resumed, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_write_bytes
from .config import ConfigError, TrainConfig
from .loop import Trainer


@dataclass
class CompareRow:
    method: str
    train_fraction: float
    seeds: list[int]
    probe_acc: list[float]
    knn_acc: list[float]
    seconds: list[float]


def run_name(config: TrainConfig) -> str:
    return f"{config.method}-frac{config.train_fraction:g}-seed{config.seed}"


def _run_one(config: TrainConfig, run_dir: Path, **trainer_kwargs) -> dict:
    """Train (or resume, or reuse) one run; returns its result.json content."""
    result_file = run_dir / "result.json"
    if (run_dir / "config.json").exists():
        saved = TrainConfig.load(run_dir / "config.json")
        if saved != config:
            raise ConfigError(f"{run_dir} holds a run with another configuration; use another --output-dir")
        if result_file.exists():
            return json.loads(result_file.read_text())
        Trainer.resume(run_dir, **trainer_kwargs).fit()
    else:
        Trainer.new(config, run_dir, **trainer_kwargs).fit()
    return json.loads(result_file.read_text()) if result_file.exists() else {}


def compare(base: TrainConfig, methods: list[str], seeds: list[int], fractions: list[float], output_dir: Path,
            **trainer_kwargs) -> list[CompareRow]:
    """Train every (fraction, seed, method) into output_dir/<method>-frac<f>-seed<s>; one row per
    (method, fraction). Runs of different methods with the same seed share the data order and initial encoder."""
    output_dir = Path(output_dir)
    rows = {(m, f): CompareRow(m, f, [], [], [], []) for f in fractions for m in methods}
    for fraction in fractions:
        for seed in seeds:
            for method in methods:
                config = base.for_method(method, seed=seed, train_fraction=fraction)
                start = time.perf_counter()
                result = _run_one(config, output_dir / run_name(config), **trainer_kwargs)
                row = rows[(method, fraction)]
                row.seeds.append(seed)
                row.probe_acc.append(result.get("probe_acc"))
                row.knn_acc.append(result.get("knn_acc"))
                row.seconds.append(time.perf_counter() - start)
    return list(rows.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def format_table(rows: list[CompareRow], baseline: str = "simclr") -> str:
    """A markdown table in percent; the last column is the difference to the baseline method on all the
    training images."""
    reference = next((r for r in rows if r.method == baseline and r.train_fraction == 1.0), None)
    lines = ["| method | train images | linear probe acc (%) | kNN acc (%) | probe vs "
             f"{baseline} (all images) | per-seed probe (%) | train s/run |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        probe, probe_std = mean_std(row.probe_acc)
        knn, knn_std = mean_std(row.knn_acc)
        delta = "" if reference is None or row is reference else \
            f"{100 * (probe - mean_std(reference.probe_acc)[0]):+.2f}"
        per_seed = ", ".join("n/a" if v is None else f"{100 * v:.2f}" for v in row.probe_acc)
        lines.append(f"| {row.method} | {row.train_fraction:.0%} | {100 * probe:.2f} +- {100 * probe_std:.2f} | "
                     f"{100 * knn:.2f} +- {100 * knn_std:.2f} | {delta} | {per_seed} | "
                     f"{mean_std(row.seconds)[0]:.0f} |")
    return "\n".join(lines)


def write_report(rows: list[CompareRow], output_dir: Path, header: str) -> str:
    """compare.md (header + table) and compare.json in output_dir; returns the markdown."""
    table = format_table(rows)
    text = f"{header}\n\n{table}\n"
    atomic_write_bytes(Path(output_dir) / "compare.md", text.encode())
    atomic_write_bytes(Path(output_dir) / "compare.json",
                       (json.dumps([vars(r) for r in rows], indent=2) + "\n").encode())
    return text
