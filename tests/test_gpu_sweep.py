"""benchmarks/gpu_sweep.py without a GPU: the plan covers the issue's shapes, and --smoke walks every code
path of the script (inputs, losses, timing, ratios, tables, JSON, the long CSV, the plot) on tiny CPU shapes
under Triton's interpreter. The GPU numbers themselves are measured by running the script on a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthcl_fast.backends import triton_support

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "benchmarks" / "gpu_sweep.py"


def _load():
    if "gpu_sweep" in sys.modules:
        return sys.modules["gpu_sweep"]
    spec = importlib.util.spec_from_file_location("gpu_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_sweep"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_plan_covers_the_issue_shapes():
    sweep = _load()
    plan = sweep.main(["--dry-run", "--memory-gib", "80"])["plan"]
    entries = {(p["case"], p["variant"]): p["skip"] for p in plan}
    for n in (4096, 16384, 65536):
        for dim in (128, 256):
            assert (f"nt_xent R=K={n} D={dim} bfloat16", "triton") in entries
    assert ("info_nce R=256 K=65792 D=128 bfloat16", "triton") in entries  # 256 keys + a 65536-row queue
    for b in (16384, 65536):
        for dim in (512, 768):
            assert entries[(f"clip B={b} D={dim} bfloat16", "triton")] is None
            assert (f"clip B={b} D={dim} bfloat16", "inf_cl") in entries
    assert entries[("nt_xent R=K=262144 D=128 bfloat16", "triton")] is None
    # The CUDA backend on the same shapes (skipped, with the reason, where it is not built), and the
    # memory-bound positive-pair loss on 2^20 rows of D = 256.
    for n in (4096, 16384, 65536):
        assert (f"nt_xent R=K={n} D=128 bfloat16", "cuda") in entries
    assert ("info_nce R=256 K=65792 D=128 bfloat16", "cuda") in entries
    assert ("clip B=65536 D=768 bfloat16", "cuda") in entries
    for variant in ("triton", "cuda", "reference"):
        assert ("positive_pair R=1048576 D=256 bfloat16", variant) in entries
    # The reference runs where its logits fit in 80 GiB and is skipped, with the reason, where not.
    assert entries[("nt_xent R=K=16384 D=256 bfloat16", "reference")] is None
    assert "GiB" in entries[("nt_xent R=K=65536 D=128 bfloat16", "reference")]
    # The suites' cases (benchmarks/cases.py) with the peer libraries, where a user would pick them.
    for case, variant in (("nt_xent R=K=4096 D=128 bfloat16", "lightly"), ("nt_xent R=K=4096 D=128 bfloat16", "solo"),
                          ("nt_xent_negatives R=2048 K=2304 D=128 bfloat16", "pml"),
                          ("supcon R=K=2048 D=128 bfloat16", "pml"), ("ppcl R=K=3072 D=128 bfloat16", "pml"),
                          ("clip B=4096 D=512 bfloat16", "open_clip")):
        assert (case, variant) in entries, (case, variant)
    # pytorch-metric-learning's NTXentLoss needs R^3 memory: skipped as out of memory from R = 4096 (where it is
    # installed: the GPU machine lacks it, and the sweep there says so)
    pml = entries[("nt_xent R=K=4096 D=128 bfloat16", "pml")]
    assert "out of memory" in pml or pml == "pytorch_metric_learning is not installed"
    assert sweep.C.memory_estimate_bytes(sweep.Case("nt_xent", 4096, 128, "bfloat16"), "pml") > 0.7 * 80 * 2**30


def test_dry_run_plan_holds_issue_22s_cases_first():
    """Every loss and variant family on main, fused (triton, cuda) against the reference, at the headline shape;
    the float64 exp-sum against float32; and what issue 22 asks of the one GPU run planned before the rest, so
    that a run stopped by its time limit has measured it."""
    sweep = _load()
    plan = sweep.main(["--dry-run", "--memory-gib", "80"])["plan"]
    entries = {(p["case"], p["variant"]): p["skip"] for p in plan}
    headline = "nt_xent R=K=16384 D=256 bfloat16"
    for variant in ("triton", "cuda", "reference", "triton_fp32_expsum"):
        assert entries[(headline, variant)] is None, variant
    assert entries[("info_nce R=256 K=65792 D=128 bfloat16", "triton_fp32_expsum")] is None
    for family in ("dcl", "dclw", "per_positive", "hcl"):
        for variant in ("triton", "cuda", "reference"):
            assert entries[(f"{family} R=K=16384 D=256 bfloat16", variant)] is None, (family, variant)
    families = {p["case"].split()[0] for p in plan}
    assert families == set(sweep.C.FAMILY_IMPLEMENTATIONS)
    for option in ("denominator='negatives'", "denominator='per_positive'", "positive_weight", "beta", "tau_plus"):
        assert any(option in options for options in sweep.C.FAMILY_VARIANT_OPTIONS.values()), option
    issue = ["nt_xent R=K=16384 D=256 bfloat16", "info_nce R=256 K=65792 D=128 bfloat16", "clip B=16384 D=512 bfloat16",
             "nt_xent R=K=65536 D=256 bfloat16", "nt_xent R=K=262144 D=128 bfloat16",
             "positive_pair R=1048576 D=256 bfloat16"]
    order = list(dict.fromkeys(p["case"] for p in plan))
    assert order[:len(issue)] == issue
    assert entries[("clip B=16384 D=512 bfloat16", "inf_cl")] in (None, "inf_cl is not installed")
    assert entries[("nt_xent R=K=65536 D=256 bfloat16", "triton")] is None
    assert entries[("nt_xent R=K=262144 D=128 bfloat16", "cuda")] is None


def test_inf_cl_head_dim():
    sweep = _load()
    assert [sweep.C.inf_cl_head_dim(d) for d in (128, 256, 512, 768, 100)] == [128, 256, 256, 256, None]


@pytest.mark.skipif(triton_support.triton_import_error() is not None, reason="needs triton (interpreter)")
def test_smoke_run_and_plot(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("SYNTHCL_FAST_TRITON_TILES", None)
    out, results_csv = tmp_path / "sweep", tmp_path / "benchmarks.csv"
    done = subprocess.run([sys.executable, str(SWEEP), "--smoke", "--out", str(out), "--csv", str(results_csv)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-10000:] + done.stderr[-5000:]
    result = json.loads(out.with_suffix(".json").read_text())
    measured = {(r["family"], r["variant"]) for r in result["rows"] if r["status"] == "ok"}
    assert {("nt_xent", "triton"), ("nt_xent", "reference"), ("info_nce", "triton"), ("clip", "triton"),
            ("clip", "triton_one_direction"), ("nt_xent", "triton_fp32_expsum"), ("info_nce", "triton_fp32_expsum"),
            ("dclw", "triton"), ("per_positive", "triton"), ("hcl", "triton")} <= measured
    for family in ("nt_xent", "info_nce"):  # the float32 sum computes the same loss here (losses far from 0)
        rows = {r["variant"]: r for r in result["rows"] if r["family"] == family}
        fp32 = rows["triton_fp32_expsum"]
        assert fp32["loss"] == pytest.approx(rows["triton"]["loss"], rel=1e-5)
        assert fp32["float64_expsum_cost"] == pytest.approx(rows["triton"]["forward_ms"] / fp32["forward_ms"] - 1)
    clip = next(r for r in result["rows"] if r["family"] == "clip" and r["variant"] == "triton")
    assert clip["speedup_vs_reference"] is not None and clip["memory_vs_reference"] is not None
    # the long CSV: one row per pass (fwd, fwd+bwd) of each measured entry, one per skipped entry
    lines = results_csv.read_text().splitlines()
    n_ok = sum(r["status"] == "ok" for r in result["rows"])
    assert len(lines) == 1 + 2 * n_ok + (len(result["rows"]) - n_ok)
    assert all(result["run_id"] in line for line in lines[1:])
    assert "| case | variant |" in out.with_suffix(".md").read_text()
    plotted = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot.py"), str(results_csv), "--out",
                              str(out.with_suffix(".png"))], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert plotted.returncode == 0, plotted.stderr
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_memory_bound_case_and_ratios():
    """positive_pair is timed on the bytes it must move; cuda rows get their speed relative to triton."""
    sweep = _load()
    pair = sweep.Case("positive_pair", 1 << 20, 256, "bfloat16")
    assert pair.bytes_step == 3 * (1 << 20) * 256 * 2 and pair.flops_step == 0
    assert sweep.Case("nt_xent", 8, 4).bytes_step == 0
    rows = [sweep.Row(pair.name, pair.family, variant, pair.rows, pair.cols, pair.dim, pair.dtype, step_ms=ms,
                      step_tflops=0.0, step_gb_per_s=pair.bytes_step / (ms * 1e-3) / 1e9)
            for variant, ms in (("triton", 1.0), ("cuda", 0.8))]
    sweep.add_ratios(rows, {"copy_gb_per_s": 3000.0, "bf16_matmul_tflops": 800.0})
    triton, cuda = rows
    assert cuda.speed_vs_triton == pytest.approx(1.25) and triton.speed_vs_triton is None
    assert cuda.fraction_of_copy == pytest.approx(cuda.step_gb_per_s / 3000.0)
    assert cuda.fraction_of_bf16_matmul is None  # no matrix work to compare with the matrix rate
    case = sweep.Case("nt_xent", 16384, 256, "bfloat16")
    rows = [sweep.Row(case.name, case.family, variant, case.rows, case.cols, case.dim, case.dtype, forward_ms=ms,
                      step_ms=2 * ms) for variant, ms in (("triton", 1.2), ("triton_fp32_expsum", 1.0))]
    sweep.add_ratios(rows, {})
    assert rows[1].float64_expsum_cost == pytest.approx(0.2) and rows[0].float64_expsum_cost is None
