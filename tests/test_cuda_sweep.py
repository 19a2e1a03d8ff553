"""The GPU sweep script's plain-Python parts (shapes, flop and byte counts, CSV rows) work without a GPU."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("cuda_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cases_are_the_issue_shapes(sweep):
    names = {c.name for c in sweep.cases()}
    for n in (4096, 16384, 65536):
        for d in (128, 256):
            assert f"simclr R={n} K={n} D={d}" in names
    assert "moco R=256 K=65536 D=128" in names
    for b in (16384, 65536):
        for d in (512, 768):
            assert f"clip R={b} K={b} D={d}" in names
    assert "positive_pair R=1048576 K=1 D=256" in names


def test_flops_and_bytes(sweep):
    assert sweep.flops(sweep.Case("simclr", 4096, 4096, 128)) == 8 * 4096 * 4096 * 128
    assert sweep.flops(sweep.Case("clip", 100, 100, 8)) == 2 * 8 * 100 * 100 * 8
    pair = sweep.Case("positive_pair", 1 << 20, 1, 256)
    assert sweep.bytes_moved(pair, torch.bfloat16) == 3 * (1 << 20) * 256 * 2
    assert sweep.bytes_moved(pair, torch.float32) == 3 * (1 << 20) * 256 * 4


def test_rows_and_csv(sweep, tmp_path):
    env = {"gpu": "Test GPU", "torch": "x", "cuda": "13.0", "triton": "3.8.0"}
    pair = sweep.Case("positive_pair", 1 << 20, 1, 256)
    row = sweep.summarize(pair, "cuda", torch.bfloat16, [1.0, 2.0, 3.0, 4.0, 5.0], copy_gbps=3000.0, env=env)
    assert row["median_ms"] == 3.0 and row["p20_ms"] == 2.0 and row["p80_ms"] == 4.0
    assert row["gbytes_per_s"] == pytest.approx(3 * (1 << 20) * 256 * 2 / 3.0 / 1e6, rel=1e-3)
    assert row["fraction_of_copy"] == pytest.approx(row["gbytes_per_s"] / 3000.0, abs=1e-3)
    simclr = sweep.summarize(sweep.Case("simclr", 4096, 4096, 128), "cuda", torch.float32, [2.0], 3000.0, env)
    assert simclr["tflops"] == round(8 * 4096 * 4096 * 128 / 2.0 / 1e9, 2)
    skipped = sweep.summarize(pair, "triton", torch.float32, None, 3000.0, env, status="unavailable: no GPU")
    path = tmp_path / "sweep.csv"
    sweep.write_csv([row, simclr, skipped], path)
    with open(path) as f:
        written = list(csv.DictReader(f))
    assert [r["backend"] for r in written] == ["cuda", "cuda", "triton"]
    assert written[0]["gpu"] == "Test GPU" and written[2]["status"] == "unavailable: no GPU"
    assert list(written[0]) == sweep.COLUMNS


def test_sweep_refuses_to_run_without_gpu(sweep):
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        sweep.sweep()
