"""`compare`: train several methods with the same seeds (and data fractions), then tabulate the linear-probe,
few-label-probe and kNN accuracy over the seeds, with 95 % confidence intervals, and each method's difference to
the baseline paired by seed (runs of different methods with the same seed share the initial encoder and the data
order). Every table also holds the baselines of evaluate.py, measured by the same evaluation code: the raw pixels
and the randomly initialized encoder of each seed (cached in <output>/baselines/).

`compare --study NAME` runs a study of STUDIES (data-efficiency on digits, glyphs-calibration): fixed methods,
fractions, seeds and training settings, a table, what the study can see (its positive control and the smallest
difference its seeds detect), a CSV/JSON and a plot of accuracy against the fraction of training images.

Every run lives in its own folder under the comparison folder; a run that already finished there is
reused and an interrupted one is resumed, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from .checkpoint import atomic_write_bytes
from .config import ConfigError, TrainConfig
from .loop import Trainer


METRICS = ("probe_acc", "few_label_acc", "knn_acc")   # evaluate.py's primary metrics, in table order


@dataclass
class CompareRow:
    method: str
    train_fraction: float
    seeds: list[int]
    probe_acc: list[float]
    knn_acc: list[float]
    seconds: list[float]
    few_label_acc: list[float] = field(default_factory=list)
    baseline: bool = False       # a row of evaluate.BASELINES: no training (train_fraction is meaningless)


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
            return _with_last_evaluation(json.loads(result_file.read_text()), run_dir)
        Trainer.resume(run_dir, **trainer_kwargs).fit()
    else:
        Trainer.new(config, run_dir, **trainer_kwargs).fit()
    return _with_last_evaluation(json.loads(result_file.read_text()), run_dir) if result_file.exists() else {}


def _with_last_evaluation(result: dict, run_dir: Path) -> dict:
    """result.json's content plus the metrics of the run's last evaluation (metrics.json) that result.json does
    not hold (the few-label probe)."""
    history_file = run_dir / "metrics.json"
    if all(key in result for key in METRICS) or not history_file.exists():
        return result
    history = json.loads(history_file.read_text())
    last = next((row for row in reversed(history) if row.get("probe_acc") is not None), {})
    return {key: last.get(key) for key in METRICS} | result


def baseline_rows(base: TrainConfig, seeds: list[int], output_dir: Path) -> list[CompareRow]:
    """The rows of evaluate.BASELINES for `seeds`: raw pixels (one result, repeated for every seed: nothing in
    it depends on the seed) and the randomly initialized encoder of each seed. Each result is cached in
    output_dir/baselines/ (raw-pixels.json, random-encoder-seed<s>.json) with the settings it depends on, and
    recomputed if they change (the raw-pixel probe is slow: minutes on 32 x 32 RGB images)."""
    import torch

    from .data import load_data
    from .evaluate import BASELINES, evaluate, random_encoder, raw_pixel_metrics

    folder = Path(output_dir) / "baselines"
    # what the baselines depend on: the data (and its split), the encoder's shape, the kNN's k
    keys = ("dataset", "data_path", "image_size", "test_fraction", "split_seed", "width", "projection_dim",
            "knn_k")
    settings = {key: getattr(base, key) for key in keys}
    data = None

    def cached(path: Path, wanted: dict, measure: Callable[[], dict]) -> dict:
        nonlocal data
        stored = json.loads(path.read_text()) if path.exists() else None
        if stored is None or stored.get("settings") != wanted:
            start = time.perf_counter()
            if data is None:
                data = load_data(base.for_method("simclr", train_fraction=1.0))
            stored = {"settings": wanted, "metrics": measure(), "seconds": time.perf_counter() - start}
            atomic_write_bytes(path, (json.dumps(stored, indent=2) + "\n").encode())
        return stored["metrics"]

    rows = {name: CompareRow(name, 1.0, [], [], [], [], [], baseline=True) for name in BASELINES}
    raw = cached(folder / "raw-pixels.json", settings, lambda: raw_pixel_metrics(data, base.knn_k))
    for seed in seeds:
        config = base.for_method("simclr", seed=seed)
        results = {"raw-pixels": raw,
                   "random-encoder": cached(folder / f"random-encoder-seed{seed}.json", settings | {"seed": seed},
                                            lambda: evaluate(random_encoder(config, data.channels), data,
                                                             torch.device("cpu"), base.knn_k))}
        for name, metrics in results.items():
            row = rows[name]
            row.seeds.append(seed)
            for key in METRICS:
                getattr(row, key).append(metrics.get(key))
            row.seconds.append(0.0)
    return list(rows.values())


def compare(base: TrainConfig, methods: list[str], seeds: list[int], fractions: list[float], output_dir: Path,
            after_seed: Callable[[list[CompareRow]], None] | None = None, baselines: bool = True,
            **trainer_kwargs) -> list[CompareRow]:
    """Train every (seed, fraction, method) into output_dir/<method>-frac<f>-seed<s>; one row per
    (method, fraction), then (`baselines`) one row per evaluate.BASELINES. Runs of different methods with the
    same seed share the data order and initial encoder. Seeds are the outer loop, so a comparison stopped early
    holds whole seeds; `after_seed(rows so far)` is called after each."""
    output_dir = Path(output_dir)
    rows = {(m, f): CompareRow(m, f, [], [], [], []) for f in fractions for m in methods}
    dist = trainer_kwargs.get("dist")
    main_process = dist is None or dist.is_main
    extra: list[CompareRow] = []
    for index, seed in enumerate(seeds):
        for fraction in fractions:
            for method in methods:
                config = base.for_method(method, seed=seed, train_fraction=fraction)
                start = time.perf_counter()
                result = _run_one(config, output_dir / run_name(config), **trainer_kwargs)
                row = rows[(method, fraction)]
                row.seeds.append(seed)
                for key in METRICS:
                    getattr(row, key).append(result.get(key))
                # the training time the run recorded (a run finished by an earlier call is reused in ~0 s)
                row.seconds.append(result.get("train_seconds_this_process", time.perf_counter() - start))
        if baselines and main_process:  # evaluation only: the main process computes them
            extra = baseline_rows(base, list(seeds[:index + 1]), output_dir)
        if after_seed is not None:
            after_seed(list(rows.values()) + extra)
    return list(rows.values()) + extra


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class Interval:
    """A mean and its two-sided confidence interval [low, high] (NaN bounds with fewer than 2 values)."""
    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: list[float], confidence: float = 0.95) -> Interval:
    """Student's t interval of the mean: mean +- t_{(1+c)/2, n-1} * s / sqrt(n), s the sample standard
    deviation (ddof 1). Exact for normal values; with 5 seeds t_{0.975,4} = 2.776, a half-width of
    2.776 s / sqrt(5) = 1.24 s."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: CompareRow, b: CompareRow, key: str = "probe_acc", confidence: float = 0.95) -> Interval:
    """The mean of a - b over the seeds both rows ran (and finished), with its paired t interval: the
    interval of the per-seed differences, which removes what the seed (initial encoder, data order) does to
    both methods alike."""
    return t_interval(paired_differences(a, b, key), confidence)


def detectable_difference(differences: list[float], power: float = 0.8, confidence: float = 0.95) -> float:
    """The smallest true mean difference that a paired two-sided t test over these seeds detects with probability
    `power` at level 1 - confidence, with the spread of these differences as the planning value:
    (t_{(1+c)/2, n-1} + t_{power, n-1}) * s / sqrt(n), s their sample standard deviation (the usual normal-shift
    approximation of the noncentral t; with 5 seeds (2.776 + 0.941) s / sqrt(5) = 1.66 s). NaN below 2 values."""
    values = np.asarray([v for v in differences if v is not None], dtype=np.float64)
    n = values.size
    if n < 2:
        return math.nan
    quantiles = stats.t.ppf((1 + confidence) / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * values.std(ddof=1) / math.sqrt(n))


def paired_differences(a: CompareRow, b: CompareRow, key: str = "probe_acc") -> list[float]:
    """a - b per seed, over the seeds both rows ran (and finished)."""
    b_by_seed = dict(zip(b.seeds, getattr(b, key)))
    return [value - b_by_seed[seed] for seed, value in zip(a.seeds, getattr(a, key))
            if value is not None and b_by_seed.get(seed) is not None]


def _pct(interval: Interval) -> str:
    """'mean [low, high]' in percent."""
    if interval.n == 0:
        return "n/a"
    if interval.n < 2:
        return f"{100 * interval.mean:.2f}"
    return f"{100 * interval.mean:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def _difference_cell(interval: Interval) -> str:
    if interval.n < 2:
        return "" if interval.n == 0 else f"{100 * interval.mean:+.2f} (1 seed)"
    verdict = "excludes 0" if interval.excludes_zero else "includes 0"
    return f"{100 * interval.mean:+.2f} [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}] {verdict}"


def _references(rows: list[CompareRow], baseline: str) -> dict:
    """For each row, the row of the baseline method it is compared with: the baseline method's row on the same
    training images; for the rows of evaluate.BASELINES (no training), its row on the most images."""
    by_fraction = {r.train_fraction: r for r in rows if r.method == baseline and not r.baseline}
    most = by_fraction[max(by_fraction)] if by_fraction else None
    references = {}
    for row in rows:
        reference = most if row.baseline else by_fraction.get(row.train_fraction)
        if reference is not None and reference is not row:
            references[id(row)] = reference
    return references


def format_table(rows: list[CompareRow], baseline: str = "simclr") -> str:
    """A markdown table in percent: mean and 95 % t interval over the seeds of the linear-probe, few-label-probe
    and kNN accuracy, and the difference to the baseline method on the same training images, paired by seed, with
    its 95 % interval and whether that excludes zero. The rows of evaluate.BASELINES (raw pixels, the random
    encoder: 'none' trained on) are compared with the baseline method on the most training images."""
    references = _references(rows, baseline)
    most = next((r.train_fraction for r in references.values() if r.method == baseline), None)
    lines = ["| method | train images | seeds | linear probe acc (%) [95 % CI] | "
             f"few-label probe acc (%), {_few_labels()} labels/class [95 % CI] | kNN acc (%) [95 % CI] | "
             f"probe - {baseline}, same images, paired [95 % CI] | few-label - {baseline}, paired [95 % CI] | "
             f"kNN - {baseline}, paired [95 % CI] | per-seed probe (%) | train s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        reference = references.get(id(row))
        deltas = [_difference_cell(paired_difference(row, reference, key)) if reference is not None else ""
                  for key in METRICS]
        per_seed = ", ".join("n/a" if v is None else f"{100 * v:.2f}" for v in row.probe_acc)
        images = f"none (vs {baseline} at {most:.0%})" if row.baseline and most is not None else \
            "none" if row.baseline else f"{row.train_fraction:.0%}"
        cells = " | ".join(_pct(t_interval(getattr(row, key))) for key in METRICS)
        lines.append(f"| {row.method} | {images} | {len(row.seeds)} | {cells} | {' | '.join(deltas)} | "
                     f"{per_seed} | {mean_std(row.seconds)[0]:.0f} |")
    return "\n".join(lines)


def _few_labels() -> int:
    from .evaluate import FEW_LABELS

    return FEW_LABELS


def write_report(rows: list[CompareRow], output_dir: Path, header: str) -> str:
    """compare.md (header + table) and compare.json in output_dir; returns the markdown."""
    table = format_table(rows)
    text = f"{header}\n\n{table}\n"
    atomic_write_bytes(Path(output_dir) / "compare.md", text.encode())
    atomic_write_bytes(Path(output_dir) / "compare.json",
                       (json.dumps([vars(r) for r in rows], indent=2) + "\n").encode())
    return text


# --- the data-efficiency study ------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """A comparison whose every setting is fixed here, before any of its results was seen."""
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    config: dict = field(default_factory=dict)   # TrainConfig changes, the same for every method
    why: str = ""
    # the positive control: the baseline method on the most images minus on these few (equal steps): a difference
    # the study must see, or it cannot see data efficiency at all
    control_fraction: float | None = None


STUDIES = {
    "data-efficiency": Study(
        # the two ablations were first cut for the CPU budget and run afterwards with these same settings
        # (benchmarks/results/study/README.md); the study now lists them, so one command reproduces all four
        methods=("simclr", "synthcl", "synthcl-no-hard-pairs", "synthcl-no-hard-samples"),
        fractions=(0.05, 0.1, 0.25, 0.5, 1.0),
        seeds=(0, 1, 2, 3, 4),
        # batch 64: the smallest fraction holds 67 digits training images (batch 128 would not fit). 15 epochs
        # (+ synthcl's 5 GAN warm-up epochs): the budget of the 2-core machine, chosen from one timed run of
        # each method before any study result existed. The same for every method and fraction.
        config={"epochs": 15, "batch_size": 64, "eval_every": 5},
        control_fraction=0.25,
        why="simclr vs synthcl and its two ablations (no hard pairs, no hard samples) at 5, 10, 25, 50 and 100 % of "
            "the digits training images (the linear probe and kNN always use all the labeled training images), "
            "5 seeds"),
    "glyphs-calibration": Study(
        # issue 23: simclr alone on the glyphs test bed, before any synthcl run on it, with the budget of its study
        # ({simclr, synthcl} x 3 fractions x 5 seeds within 90 minutes on the 2-core machine): 10 epochs of 60
        # steps at every fraction (the GAN's 5 warm-up epochs are 300 steps), evaluated at 300 and 600 steps
        methods=("simclr",),
        fractions=(0.1, 0.25, 1.0),
        seeds=(0, 1, 2, 3, 4),
        config={"dataset": "glyphs", "epochs": 10, "epoch_steps": 60, "eval_every": 5},
        control_fraction=0.25,
        why="simclr at 10, 25 and 100 % of the glyphs training images (whole fonts; equal steps), 5 seeds, beside "
            "the raw pixels and the randomly initialized encoder: the calibration of the test bed"),
}


def study_summary(rows: list[CompareRow], baseline: str = "simclr") -> list[dict]:
    """One record per (method, fraction): accuracy means and 95 % intervals, and the paired difference to
    the baseline at the same fraction."""
    references = _references(rows, baseline)
    records = []
    for row in rows:
        record = {"method": row.method, "train_fraction": None if row.baseline else row.train_fraction,
                  "seeds": row.seeds}
        for key in METRICS:
            interval = t_interval(getattr(row, key))
            record.update({key: interval.mean, f"{key}_ci_low": interval.low, f"{key}_ci_high": interval.high,
                           f"{key}_per_seed": getattr(row, key)})
            reference = references.get(id(row))
            if reference is not None:
                delta = paired_difference(row, reference, key)
                record.update({f"{key}_minus_{baseline}": delta.mean, f"{key}_minus_{baseline}_ci_low": delta.low,
                               f"{key}_minus_{baseline}_ci_high": delta.high,
                               f"{key}_minus_{baseline}_excludes_zero": delta.excludes_zero if delta.n > 1 else None})
        records.append(record)
    return records


def plot_study(rows: list[CompareRow], path: Path, title: str) -> None:
    """Accuracy against the fraction of training images, one line per method, 95 % intervals as bars; the
    baselines (no training) as horizontal dashed lines."""
    from .plots import plt, _save

    figure, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    methods = list(dict.fromkeys(r.method for r in rows if not r.baseline))
    panels = ((axes[0], "probe_acc", "linear probe"), (axes[1], "few_label_acc", f"few-label probe ({_few_labels()}/class)"),
              (axes[2], "knn_acc", "kNN"))
    for axis, key, name in panels:
        for row in rows:
            interval = t_interval(getattr(row, key))
            if row.baseline and interval.n:
                axis.axhline(100 * interval.mean, linestyle="--", linewidth=1, color="gray")
                axis.annotate(row.method, (0, 100 * interval.mean), xycoords=("axes fraction", "data"), fontsize=7,
                              color="gray", va="bottom")
        for offset, method in enumerate(methods):
            points = sorted(((r.train_fraction, t_interval(getattr(r, key))) for r in rows
                             if r.method == method and not r.baseline), key=lambda p: p[0])
            points = [(f, i) for f, i in points if i.n]
            if not points:
                continue
            # methods side by side (a small multiplicative shift on the log axis) so the bars do not overlap
            x = np.array([f for f, _ in points]) * (1 + 0.04 * (offset - (len(methods) - 1) / 2))
            mean = np.array([100 * i.mean for _, i in points])
            half = np.array([0 if i.n < 2 else 100 * i.half_width() for _, i in points])
            axis.errorbar(x, mean, yerr=half, marker="o", capsize=3, label=method)
        axis.set_xscale("log")
        fractions = sorted({r.train_fraction for r in rows if not r.baseline})
        axis.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
        axis.minorticks_off()
        axis.set_xlabel("fraction of the training images used for contrastive training")
        axis.set_ylabel(f"{name} accuracy on the test split (%)")
        axis.set_title(f"{name}: mean over seeds, 95 % t interval", fontsize=10)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    _save(figure, path)


MECHANISM_KEYS = ("hardness_gap", "pair_cosine", "pair_target", "sample_confidence", "sample_classes",
                  "real_confidence")


def mechanism_summary(rows: list[CompareRow], output_dir: Path) -> list[dict]:
    """The mechanism at the last epoch of each generator run (metrics.json in its folder), mean and 95 %
    interval over the seeds per (method, fraction): hardness_gap = the main model's PPCL loss on the
    synthetic rows minus on the real rows, the pair cosine of (G(z), G_ema(z)) and its target, and the pixel
    classifier's confidence on G(z) (and on real test images) and the classes the samples cover."""
    records = []
    for row in rows:
        finals = []
        for seed in row.seeds:
            path = Path(output_dir) / f"{row.method}-frac{row.train_fraction:g}-seed{seed}" / "metrics.json"
            history = json.loads(path.read_text()) if path.exists() else []
            if history and history[-1].get("sample_confidence") is not None:
                last = dict(history[-1])
                if last.get("loss_synthetic_rows") is not None:
                    last["hardness_gap"] = last["loss_synthetic_rows"] - last["loss_real_rows"]
                finals.append(last)
        if not finals:
            continue
        record = {"method": row.method, "train_fraction": row.train_fraction, "runs": len(finals)}
        for key in MECHANISM_KEYS:
            interval = t_interval([f.get(key) for f in finals])
            record.update({key: interval.mean, f"{key}_ci_low": interval.low, f"{key}_ci_high": interval.high})
        records.append(record)
    return records


def format_mechanism_table(records: list[dict]) -> str:
    def cell(record, key, scale=1.0, digits=3):
        if record[key] is None or math.isnan(record[key]):
            return "n/a"
        if math.isnan(record[f"{key}_ci_low"]):
            return f"{scale * record[key]:.{digits}f}"
        return (f"{scale * record[key]:.{digits}f} [{scale * record[f'{key}_ci_low']:.{digits}f}, "
                f"{scale * record[f'{key}_ci_high']:.{digits}f}]")

    lines = ["| method | train images | runs | hardness: PPCL loss G(z) rows - real rows | pair cosine "
             "(G(z), G_ema(z)) | its target | classifier confidence on G(z) | on real test images | classes "
             "covered by G(z) (of 10) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['train_fraction']:.0%} | {r['runs']} | {cell(r, 'hardness_gap')} | "
                     f"{cell(r, 'pair_cosine')} | {cell(r, 'pair_target')} | {cell(r, 'sample_confidence')} | "
                     f"{cell(r, 'real_confidence')} | {cell(r, 'sample_classes', digits=2)} |")
    return "\n".join(lines)


def power_summary(rows: list[CompareRow], control_fraction: float | None, baseline: str = "simclr") -> list[dict]:
    """What the study can see. First the positive control (when `control_fraction` is set and both rows ran): the
    baseline method on the most training images minus on `control_fraction` of them, paired by seed, which must
    exclude 0 on the primary metrics; then every method's paired difference to the baseline method at the same
    fraction. Each with its 95 % interval and the smallest difference detectable with 80 % power by its seeds."""
    trained = [r for r in rows if not r.baseline]
    by_fraction = {r.train_fraction: r for r in trained if r.method == baseline}
    pairs = []
    if control_fraction is not None and control_fraction in by_fraction and len(by_fraction) > 1:
        most = by_fraction[max(by_fraction)]
        if most.train_fraction != control_fraction:
            pairs.append(("positive control", most, by_fraction[control_fraction]))
    pairs += [("method", r, by_fraction[r.train_fraction]) for r in trained
              if r.method != baseline and r.train_fraction in by_fraction]
    records = []
    for kind, a, b in pairs:
        record = {"kind": kind, "method": a.method, "train_fraction": a.train_fraction, "versus": b.method,
                  "versus_fraction": b.train_fraction}
        for key in METRICS:
            differences = paired_differences(a, b, key)
            interval = t_interval(differences)
            record.update({key: interval.mean, f"{key}_ci_low": interval.low, f"{key}_ci_high": interval.high,
                           f"{key}_seeds": interval.n,
                           f"{key}_excludes_zero": interval.excludes_zero if interval.n > 1 else None,
                           f"{key}_detectable": detectable_difference(differences)})
        records.append(record)
    return records


def format_power_table(records: list[dict]) -> str:
    def cell(record, key):
        if record[f"{key}_seeds"] < 2:
            return "n/a"
        verdict = "excludes 0" if record[f"{key}_excludes_zero"] else "includes 0"
        return (f"{100 * record[key]:+.2f} [{100 * record[f'{key}_ci_low']:+.2f}, {100 * record[f'{key}_ci_high']:+.2f}]"
                f" {verdict}; detectable {100 * record[f'{key}_detectable']:.2f}")

    lines = ["| comparison (paired by seed) | seeds | linear probe (points) | few-label probe | kNN |", "|---|---|---|---|---|"]
    for r in records:
        what = (f"positive control: {r['method']} {r['train_fraction']:.0%} - {r['versus_fraction']:.0%} of the images"
                if r["kind"] == "positive control" else
                f"{r['method']} - {r['versus']}, {r['train_fraction']:.0%} of the images")
        lines.append(f"| {what} | {r['probe_acc_seeds']} | {cell(r, 'probe_acc')} | {cell(r, 'few_label_acc')} | "
                     f"{cell(r, 'knn_acc')} |")
    return "\n".join(lines)


def write_study_report(rows: list[CompareRow], output_dir: Path, header: str, baseline: str = "simclr",
                       control_fraction: float | None = None) -> str:
    """study.md (header, table, what the study can see, the mechanism), study.json (per-run results and the
    summaries), study.csv (the summary) and study.png (accuracy against the fraction) in output_dir; returns the
    markdown."""
    import csv
    import io

    output_dir = Path(output_dir)
    summary = study_summary(rows, baseline)
    power = power_summary(rows, control_fraction, baseline)
    mechanism = mechanism_summary(rows, output_dir)
    text = f"{header}\n\n{format_table(rows, baseline)}\n"
    if power:
        text += ("\nWhat the study can see: each paired difference in points with its 95 % t interval, and the smallest "
                 "difference its seeds detect with 80 % power at the 5 % level ((t_0.975 + t_0.8) s / sqrt(n), s the "
                 "spread of the per-seed differences). The positive control must exclude 0: a study that cannot see "
                 "the baseline method's own gain from more images cannot see data efficiency. A null result reads "
                 "\"no effect larger than the detectable difference\".\n\n" + format_power_table(power) + "\n")
    if mechanism:
        text += ("\nThe mechanism at the last epoch (mean and 95 % t interval over the runs; per epoch in each "
                 "run's metrics.csv and curves.png):\n\n" + format_mechanism_table(mechanism) + "\n")
    atomic_write_bytes(output_dir / "study.md", text.encode())
    atomic_write_bytes(output_dir / "study.json", (json.dumps({"runs": [vars(r) for r in rows], "summary": summary,
                                                              "power": power, "mechanism": mechanism},
                                                              indent=2) + "\n").encode())
    columns = list(dict.fromkeys(k for record in summary for k in record if not isinstance(record[k], list)))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary)
    atomic_write_bytes(output_dir / "study.csv", buffer.getvalue().encode())
    plot_study(rows, output_dir / "study.png", header.splitlines()[0].lstrip("# "))
    return text
