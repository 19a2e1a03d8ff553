"""The compare table's statistics: t intervals of the mean and seed-paired differences, checked against
scipy's one-sample and paired t tests (an independent implementation) on random values, and by the
coverage of the true mean in repeated normal samples."""

import math

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from synthcl_fast.trainer.compare import (CompareRow, detectable_difference, format_table,  # noqa: E402
                                          paired_difference, power_summary, study_summary, t_interval)


def row(method, seeds, probe, knn=None, fraction=1.0):
    return CompareRow(method, fraction, list(seeds), list(probe), list(knn if knn is not None else probe),
                      [1.0] * len(seeds))


@pytest.mark.parametrize("n", [2, 3, 5, 7, 12])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_interval_matches_scipy_one_sample_t_test(n, confidence):
    rng = np.random.default_rng(n * 1000 + round(confidence * 100))
    for _ in range(5):
        values = rng.normal(rng.uniform(-1, 1), rng.uniform(0.001, 0.1), size=n)
        interval = t_interval(values.tolist(), confidence)
        expected = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
        assert interval.n == n and interval.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
        assert interval.low == pytest.approx(expected.low, rel=1e-10)
        assert interval.high == pytest.approx(expected.high, rel=1e-10)


def test_t_interval_by_hand_for_five_seeds():
    # mean 0.97, s = 0.01 * sqrt(2.5) (deviations -2, -1, 0, 1, 2 hundredths), t_{0.975, 4} = 2.7764451
    interval = t_interval([0.95, 0.96, 0.97, 0.98, 0.99])
    half = 2.7764451051977987 * 0.01 * math.sqrt(2.5) / math.sqrt(5)
    assert interval.mean == pytest.approx(0.97) and interval.half_width() == pytest.approx(half, rel=1e-9)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials, n = 4000, 5
    samples = rng.normal(0.3, 2.0, size=(trials, n))
    covered = sum(t.low <= 0.3 <= t.high for t in (t_interval(s.tolist()) for s in samples))
    # binomial standard deviation sqrt(0.95 * 0.05 / 4000) = 0.0034: 4 of them either side
    assert abs(covered / trials - 0.95) < 4 * math.sqrt(0.95 * 0.05 / trials)


def test_t_interval_edge_cases():
    one = t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero
    none = t_interval([None, None])
    assert none.n == 0 and math.isnan(none.mean)
    assert t_interval([0.2, None, 0.4]).n == 2  # unfinished runs are left out
    flat = t_interval([0.1, 0.1, 0.1])          # no spread: a zero-width interval at the mean
    assert flat.low == pytest.approx(0.1) and flat.high == pytest.approx(0.1) and flat.excludes_zero
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.0)


def test_paired_difference_matches_scipy_paired_t_test_and_pairs_by_seed():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.9, 0.05, size=6)           # what a seed does to both methods alike
    a = seed_effect + 0.01 + rng.normal(0, 0.003, size=6)
    b = seed_effect + rng.normal(0, 0.003, size=6)
    seeds = [10, 11, 12, 13, 14, 15]
    order = [3, 0, 5, 1, 4, 2]                            # the baseline's seeds listed in another order
    method = row("synthcl", seeds, a)
    baseline = row("simclr", [seeds[i] for i in order], b[order])
    interval = paired_difference(method, baseline)
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert interval.mean == pytest.approx((a - b).mean(), rel=1e-12)
    assert interval.low == pytest.approx(expected.low, rel=1e-10)
    assert interval.high == pytest.approx(expected.high, rel=1e-10)
    # pairing removes the seed effect: the unpaired interval would include zero, the paired one does not
    unpaired = stats.ttest_ind(a, b).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high and interval.excludes_zero
    # a seed only one method finished is left out of the pairs
    method.probe_acc[2] = None
    partial = paired_difference(method, baseline)
    keep = [0, 1, 3, 4, 5]
    assert partial.n == 5
    assert partial.low == pytest.approx(stats.ttest_rel(a[keep], b[keep]).confidence_interval(0.95).low, rel=1e-10)


def test_table_and_summary_report_each_difference_with_its_interval():
    rows = [row("simclr", [0, 1, 2], [0.90, 0.92, 0.94], fraction=0.5),
            row("synthcl", [0, 1, 2], [0.91, 0.93, 0.95], [0.85, 0.95, 0.90], fraction=0.5),
            row("simclr", [0, 1, 2], [0.95, 0.96, 0.97])]
    table = format_table(rows)
    lines = table.splitlines()
    # probe: every seed +1.00 exactly: a zero-width interval excluding 0; kNN: -5, +3, -4 -> includes 0
    assert "| synthcl | 50% | 3 | 93.00 [" in lines[3]
    assert "+1.00 [+1.00, +1.00] excludes 0" in lines[3]
    knn = paired_difference(rows[1], rows[0], "knn_acc")
    assert f"{100 * knn.mean:+.2f} [{100 * knn.low:+.2f}, {100 * knn.high:+.2f}] includes 0" in lines[3]
    assert "excludes 0" not in lines[2] and "excludes 0" not in lines[4]  # baselines: no difference column
    summary = {(r["method"], r["train_fraction"]): r for r in study_summary(rows)}
    record = summary[("synthcl", 0.5)]
    assert record["probe_acc_minus_simclr"] == pytest.approx(0.01)
    assert record["probe_acc_minus_simclr_excludes_zero"] is True
    assert record["knn_acc_minus_simclr_excludes_zero"] is False
    assert record["knn_acc_minus_simclr_ci_low"] == pytest.approx(knn.low)
    assert "probe_acc_minus_simclr" not in summary[("simclr", 1.0)]


@pytest.mark.parametrize("n", [3, 5, 10, 30])
def test_detectable_difference_has_about_80_percent_power_by_the_noncentral_t(n):
    differences = np.random.default_rng(n).normal(0.01, 0.02, size=n)
    detectable = detectable_difference(differences.tolist())
    s = differences.std(ddof=1)
    # the power of the two-sided paired t test at level 0.05 when the true mean difference is `detectable` and the
    # spread is s: exact by the noncentral t distribution (the formula is its usual normal-shift approximation)
    noncentrality = detectable / (s / math.sqrt(n))
    critical = stats.t.ppf(0.975, n - 1)
    power = stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.cdf(-critical, n - 1, noncentrality)
    assert 0.76 < power < 0.81
    assert detectable == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * s / math.sqrt(n))
    assert math.isnan(detectable_difference([0.1])) and math.isnan(detectable_difference([]))


def test_detectable_difference_by_hand_for_five_seeds():
    # s = 0.01 * sqrt(2.5); t_{0.975, 4} = 2.7764451, t_{0.8, 4} = 0.94096458
    expected = (2.7764451051977987 + 0.9409645772351816) * 0.01 * math.sqrt(2.5) / math.sqrt(5)
    assert detectable_difference([0.95, 0.96, 0.97, 0.98, 0.99]) == pytest.approx(expected, rel=1e-9)


def test_power_summary_has_the_positive_control_first_then_each_method_against_the_baseline():
    simclr_few = row("simclr", [0, 1, 2], [0.40, 0.42, 0.41], fraction=0.25)
    simclr_all = row("simclr", [0, 1, 2], [0.45, 0.48, 0.44])
    synthcl_few = row("synthcl", [0, 1, 2], [0.41, 0.42, 0.40], fraction=0.25)
    raw = CompareRow("raw-pixels", 1.0, [0, 1, 2], [0.1] * 3, [0.1] * 3, [0.0] * 3, [0.1] * 3, baseline=True)
    records = power_summary([simclr_few, simclr_all, synthcl_few, raw], control_fraction=0.25)
    assert [(r["kind"], r["method"], r["train_fraction"], r["versus_fraction"]) for r in records] == [
        ("positive control", "simclr", 1.0, 0.25), ("method", "synthcl", 0.25, 0.25)]
    control = records[0]
    expected = stats.ttest_rel([0.45, 0.48, 0.44], [0.40, 0.42, 0.41]).confidence_interval(0.95)
    assert control["probe_acc"] == pytest.approx(0.04666666666)
    assert control["probe_acc_ci_low"] == pytest.approx(expected.low) and control["probe_acc_excludes_zero"] is True
    assert control["probe_acc_detectable"] == pytest.approx(detectable_difference([0.05, 0.06, 0.03]))
    assert records[1]["probe_acc"] == pytest.approx(0.0) and records[1]["probe_acc_excludes_zero"] is False
    # no control without its two rows, nor when none is asked for
    assert [r["kind"] for r in power_summary([simclr_few, synthcl_few], control_fraction=0.25)] == ["method"]
    assert [r["kind"] for r in power_summary([simclr_few, simclr_all], control_fraction=None)] == []


def test_study_report_writes_table_csv_json_plot_and_the_mechanism(tmp_path):
    import json

    from synthcl_fast.trainer.compare import write_study_report

    rows = [row("simclr", [0, 1], [0.90, 0.92], fraction=0.1), row("synthcl", [0, 1], [0.91, 0.95], fraction=0.1),
            row("simclr", [0, 1], [0.95, 0.96]), row("synthcl", [0, 1], [0.96, 0.96])]
    for fraction, gaps in ((0.1, (0.2, 0.4)), (1.0, (0.1, 0.3))):
        for seed, gap in enumerate(gaps):
            run = tmp_path / f"synthcl-frac{fraction:g}-seed{seed}"
            run.mkdir()
            last = {"loss_real_rows": 4.0, "loss_synthetic_rows": 4.0 + gap, "pair_cosine": 0.8, "pair_target": 0.5,
                    "sample_confidence": 0.5 + seed / 10, "sample_classes": 9.0, "real_confidence": 0.82}
            (run / "metrics.json").write_text(json.dumps([{"sample_confidence": 0.1}, last]))
    text = write_study_report(rows, tmp_path, "# a study\n\nheader", control_fraction=0.1)
    assert {p.name for p in tmp_path.glob("study.*")} == {"study.md", "study.json", "study.csv", "study.png"}
    assert (tmp_path / "study.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((tmp_path / "study.json").read_text())
    mechanism = {r["train_fraction"]: r for r in saved["mechanism"]}
    assert [r["method"] for r in saved["mechanism"]] == ["synthcl", "synthcl"]  # simclr has no generator
    expected = stats.ttest_1samp([0.2, 0.4], 0.0).confidence_interval(0.95)
    assert mechanism[0.1]["hardness_gap"] == pytest.approx(0.3)
    assert mechanism[0.1]["hardness_gap_ci_low"] == pytest.approx(expected.low)
    assert mechanism[1.0]["sample_confidence"] == pytest.approx(0.55)
    assert "| synthcl | 10% | 2 | 0.300 [" in text
    assert "| positive control: simclr 100% - 10% of the images | 2 | +4.50 [" in text
    assert [r["kind"] for r in saved["power"]] == ["positive control", "method", "method"]
    csv_lines = (tmp_path / "study.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,train_fraction,probe_acc,probe_acc_ci_low") and len(csv_lines) == 5


def test_data_efficiency_study_lists_every_method_and_its_settings_are_valid_for_each():
    """The study runs simclr, synthcl and both ablations (they were run with its settings; see
    benchmarks/results/study/README.md), and its config is a valid TrainConfig for every method."""
    from synthcl_fast.trainer.compare import STUDIES
    from synthcl_fast.trainer.config import METHODS, TrainConfig

    study = STUDIES["data-efficiency"]
    assert set(study.methods) == set(METHODS) and study.methods[0] == "simclr"  # the baseline first
    assert "left out" not in study.why and all(m in study.why for m in ("no hard pairs", "no hard samples"))
    base = TrainConfig.from_dict(study.config)
    for method in study.methods:
        config = base.for_method(method, seed=study.seeds[0], train_fraction=min(study.fractions))
        assert (config.epochs, config.batch_size) == (15, 64)
