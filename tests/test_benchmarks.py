"""The benchmark machinery (benchmarks/cases.py, conftest.py, report.py, plot.py) without timing anything:
every implementation computes the loss it claims to, the memory estimates that decide what is skipped are
upper bounds of measured peaks, the address-space guard turns an overrun into an error, the sweeps hold the
issue's cases, and the suite runs end to end on tiny shapes into the long CSV, its table and its plot."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cases as C  # noqa: E402
from synthcl_fast.benchmarking import peak_memory_bytes  # noqa: E402

CPU = torch.device("cpu")
SMALL = [C.Case("nt_xent", 24, 16), C.Case("nt_xent_negatives", 32, 16), C.Case("supcon", 30, 16),
         C.Case("ppcl", 36, 16), C.Case("info_nce", 8, 16, queue=40), C.Case("clip", 12, 16),
         C.Case("positive_pair", 20, 16), C.Case("dcl", 24, 16), C.Case("dclw", 24, 16),
         C.Case("per_positive", 30, 16), C.Case("hcl", 24, 16)]


def _runnable(case):
    """Implementations of the case that run here, torch.compile left out (it is the reference, compiled: slow
    to build, and torch's to get right)."""
    return [name for name in C.implementations(case, "cpu")
            if name != "compiled" and C.unavailable_reason(case, name, CPU) is None]


@pytest.mark.parametrize("case", SMALL, ids=lambda c: c.id)
def test_every_implementation_computes_the_reference_loss(case):
    inputs = C.make_inputs(case, CPU, seed=3)
    inputs = {k: v.double().detach().requires_grad_(v.requires_grad) if v.is_floating_point() else v
              for k, v in inputs.items()}
    expected = C.make_loss(case, "reference")(inputs)
    expected_grads = torch.autograd.grad(expected, C.leaves(inputs))
    names = _runnable(case)
    assert "reference" in names and "cpu" in names
    for name in names:
        if name == "lightly" and case.family == "info_nce":
            continue  # MoCo's definition against its own memory bank (cases.make_loss): another number
        got = C.make_loss(case, name)(inputs)
        grads = torch.autograd.grad(got, C.leaves(inputs))
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9, msg=f"{name}: loss")
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-9, msg=f"{name}: gradient")


def test_lightly_memory_bank_runs_the_info_nce_case():
    case = C.Case("info_nce", 8, 16, queue=40)
    if C.unavailable_reason(case, "lightly", CPU) is not None:
        pytest.skip("lightly is not installed")
    loss = C.make_step(case, "lightly", CPU)()
    assert torch.isfinite(loss) and loss > 0


def _pml_ntxent(case, name):
    return name == "pml" and case.family in ("nt_xent", "nt_xent_negatives", "info_nce")


def _assert_estimate_bounds_peak(case, name):
    step = C.make_step(case, name, CPU)
    step()
    peak, estimate = peak_memory_bytes(step), C.memory_estimate_bytes(case, name)
    assert 0.3 * estimate <= peak <= estimate, f"{name}: peak {peak} bytes, estimate {estimate}"


@pytest.mark.parametrize("case", [C.Case("nt_xent", 1024, 32), C.Case("nt_xent_negatives", 1024, 32),
                                  C.Case("supcon", 1024, 32), C.Case("ppcl", 1020, 32),
                                  C.Case("info_nce", 256, 32, queue=8192), C.Case("clip", 1024, 32),
                                  C.Case("dclw", 1024, 32), C.Case("per_positive", 1024, 32)],
                         ids=lambda c: c.id)
def test_memory_estimates_bound_the_measured_peaks(case):
    """The estimates decide which runs are skipped as out of memory: each must bound the peak it stands for,
    and not by much (R K large against (R + K) D here, as where the estimates matter)."""
    for name in _runnable(case):
        if name not in C.FUSED and not _pml_ntxent(case, name):
            _assert_estimate_bounds_peak(case, name)


@pytest.mark.parametrize("case", [C.Case("nt_xent", 128, 32), C.Case("nt_xent_negatives", 128, 32),
                                  C.Case("info_nce", 32, 32, queue=1024)], ids=lambda c: c.id)
def test_pml_ntxent_memory_estimate(case):
    """pytorch-metric-learning's NTXentLoss holds R^3 bytes (17 GiB at R = 1024): measured at small R."""
    if C.unavailable_reason(case, "pml", CPU) is not None:
        pytest.skip("pytorch-metric-learning is not installed")
    _assert_estimate_bounds_peak(case, "pml")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the guard reads /proc")
def test_memory_guard_turns_an_overrun_into_an_error():
    with pytest.raises(Exception) as caught:
        with C.cpu_memory_guard(CPU, 64 * 2**20):
            torch.ones(2**28)  # 1 GiB
    assert C.is_out_of_memory(caught.value)
    assert torch.ones(2**26).sum() == 2**26  # the limit is lifted again


def test_estimated_out_of_memory_is_a_recorded_reason():
    case = C.Case("nt_xent", 65536)
    assert C.unavailable_reason(case, "cpu", CPU, budget_bytes=2**30) is None
    assert "out of memory (estimated)" in C.unavailable_reason(case, "reference", CPU, budget_bytes=2**34)


def test_sweeps_hold_the_issue_cases():
    full = {c.name for c in C.cases("cpu", "full")}
    for n in (512, 1024, 2048, 4096, 8192, 16384, 65536):
        assert f"nt_xent R=K={n} D=128 float32" in full
    assert "info_nce R=256 K=65792 D=128 float32" in full          # a 65536-row queue
    assert "clip B=4096 D=512 float32" in full
    assert "positive_pair R=65536 D=128 float32" in full
    negatives = next(c for c in C.cases("cpu") if c.family == "nt_xent_negatives")
    assert negatives.cols - negatives.rows == negatives.rows // 2 // 4  # M = N/4 generated rows
    ppcl = C.make_inputs(next(c for c in C.cases("cpu") if c.family == "ppcl"), CPU)
    assert ppcl["real"].shape[0] == 2 and ppcl["synthetic"].shape[0] == 4
    assert ppcl["synthetic"].shape[1] * 4 == ppcl["real"].shape[1]  # M = N/4
    labels = C.make_inputs(C.Case("supcon", 2048), CPU)["labels"]
    assert labels.unique().numel() == C.SUPCON_CLASSES
    default = C.cases("cpu")
    assert {c.family for c in default} == set(C.FAMILY_IMPLEMENTATIONS) and len(default) < len(C.cases("cpu", "full"))


def test_results_csv_appends_across_column_changes(tmp_path):
    """One long CSV for every run: a file from an older column list is widened, its rows keep their values."""
    path = tmp_path / "results.csv"
    old_fields = [f for f in C.CSV_FIELDS if f != "load_1m"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_fields)
        writer.writeheader()
        writer.writerow({"run_id": "old", "case": "nt_xent R=K=8 D=4 float32", "median_ms": "1.5"})
    C.append_rows([{"run_id": "new", "median_ms": 2.5, "load_1m": 0.25}], path)
    C.append_rows([{"run_id": "newer", "median_ms": 3.5}], path)
    rows = C.read_rows(path)
    assert [(r["run_id"], r["median_ms"], r["load_1m"]) for r in rows] == [
        ("old", "1.5", ""), ("new", "2.5", "0.25"), ("newer", "3.5", "")]
    assert rows[0]["case"] == "nt_xent R=K=8 D=4 float32"


def test_percentiles():
    timing = C.percentiles_ms([i / 1000 for i in range(1, 11)])  # 1 .. 10 ms
    assert timing["median_ms"] == pytest.approx(5.5)
    assert timing["p20_ms"] == pytest.approx(2.8) and timing["p80_ms"] == pytest.approx(8.2)


def test_run_all_smoke_suite_report_plot_profile(tmp_path):
    """benchmarks/run_all.py --smoke: pytest benchmarks/ on tiny shapes (torch.compile left out: minutes to
    build) into the long CSV, then the report, the plot and the trainer step profile of that run."""
    env = {k: v for k, v in os.environ.items() if k != "SYNTHCL_FAST_POISON_OUTPUTS"}
    done = subprocess.run([sys.executable, "benchmarks/run_all.py", "--smoke", "--results-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    with open(tmp_path / "benchmarks.csv", newline="") as f:
        all_rows = list(csv.DictReader(f))
    assert len({r["run_id"] for r in all_rows}) == 1
    # the contention suite: the fused kernel at 1 and the default threads and the reference, quiet and loaded
    contention = [r for r in all_rows if r["suite"] == "contention"]
    threads = torch.get_num_threads()
    assert sorted(r["implementation"] for r in contention) == sorted(
        f"{name}/{n} thread{'s' if n > 1 else ''}/{load}" for name, n in {("cpu", 1), ("cpu", threads),
                                                                          ("reference", threads)}
        for load in ("quiet", "one busy process"))
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 for r in contention)
    rows = [r for r in all_rows if r["suite"] != "contention"]
    expected = [(c.name, name) for c in C.cases("cpu", "smoke") for name in C.implementations(c, "cpu")
                if name != "compiled"]
    assert sorted((r["case"], r["implementation"]) for r in rows) == sorted(expected)
    for row in rows:
        assert row["commit"] and row["torch"] and row["cpu"] and row["load_1m"]
        if row["status"] == "ok":
            assert 0 < float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
            assert float(row["peak_mb"]) > 0
        else:
            assert row["status"].startswith("skipped: ")  # a peer library that is not installed
    assert sum(r["status"] == "ok" for r in rows) >= len(C.cases("cpu", "smoke")) * 2  # cpu and reference
    assert "| nt_xent R=K=64 D=32 float32 | cpu |" in (tmp_path / "benchmarks_cpu.md").read_text()
    assert (tmp_path / "benchmarks_cpu.png").stat().st_size > 10_000
    _check_step_profile((tmp_path / "trainer_step_profile.md").read_text())


def _check_step_profile(text):
    """The trainer step profile (a small synthcl step): each stage gets its forward and its backward (the
    augmentation's backward carries the loss into G, so it is not zero), the Adam steps, and shares that add up."""
    rows = {m.group(1): [float(v) for v in m.groups()[1:5]] + [float(m.group(6))]
            for m in re.finditer(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+)% \|$", text, re.M)}
    assert set(rows) == {"encoder", "generator", "discriminator", "augmentation", "loss", "other"}, text
    for stage in ("encoder", "generator", "discriminator", "augmentation"):
        forward, backward, _, total, _ = rows[stage]
        assert forward > 0 and backward > 0 and total > 0, (stage, rows[stage])
    assert rows["encoder"][2] > 0 and rows["generator"][2] > 0  # Adam steps
    assert 97 <= sum(r[4] for r in rows.values()) <= 103


def test_a_fused_backend_without_the_variant_is_skipped_with_its_reason(monkeypatch):
    """The GPU sweep's cuda rows of every family run (the cuda kernels fuse DCL's and HCL's options); a backend
    that lacks a family's options is recorded as skipped, naming them, not a crash mid-sweep."""
    import synthcl_fast.variants as variants
    from synthcl_fast.backends import BACKENDS

    monkeypatch.setattr(BACKENDS["cuda"], "unavailable_reason", lambda device, dtype: None)
    for family in ("hcl", "dcl", "nt_xent"):
        assert C.unavailable_reason(C.Case(family, 64, 32), "cuda", CPU) is None, family
    monkeypatch.setitem(variants.FUSED_OPTIONS, "cuda", variants.FUSED_OPTIONS["cuda"] - {"beta", "tau_plus"})
    assert C.unavailable_reason(C.Case("hcl", 64, 32), "cuda", CPU) == "backend 'cuda' does not fuse beta, tau_plus"
    assert C.unavailable_reason(C.Case("dcl", 64, 32), "cuda", CPU) is None
