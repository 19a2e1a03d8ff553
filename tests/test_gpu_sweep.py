"""benchmarks/gpu_sweep.py without a GPU: the plan covers the issue's shapes, and --smoke walks every code
path of the script (inputs, losses, timing, ratios, tables, CSV/JSON, plot) on tiny CPU shapes under
Triton's interpreter. The GPU numbers themselves are measured by running the script on a GPU."""

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
            assert (f"simclr R=K={n} D={dim} bfloat16", "triton") in entries
    assert ("moco R=256 K=65536 D=128 bfloat16", "triton") in entries
    for b in (16384, 65536):
        for dim in (512, 768):
            assert entries[(f"clip B={b} D={dim} bfloat16", "triton")] is None
            assert (f"clip B={b} D={dim} bfloat16", "inf_cl") in entries
    assert entries[("scale R=K=262144 D=128 bfloat16", "triton")] is None
    # The CUDA backend on the same shapes (skipped, with the reason, where it is not built), and the
    # memory-bound positive-pair loss on 2^20 rows of D = 256.
    for n in (4096, 16384, 65536):
        assert (f"simclr R=K={n} D=128 bfloat16", "cuda") in entries
    assert ("moco R=256 K=65536 D=128 bfloat16", "cuda") in entries
    assert ("clip B=65536 D=768 bfloat16", "cuda") in entries
    for variant in ("triton", "cuda", "reference"):
        assert ("positive_pair R=1048576 D=256 bfloat16", variant) in entries
    # The reference runs where its logits fit in 80 GiB and is skipped, with the reason, where not.
    assert entries[("simclr R=K=16384 D=256 bfloat16", "reference")] is None
    assert "GiB" in entries[("simclr R=K=65536 D=128 bfloat16", "reference")]


def test_inf_cl_head_dim():
    sweep = _load()
    assert [sweep.inf_cl_head_dim(d) for d in (128, 256, 512, 768, 100)] == [128, 256, 256, 256, None]


@pytest.mark.skipif(triton_support.triton_import_error() is not None, reason="needs triton (interpreter)")
def test_smoke_run_and_plot(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("SYNTHCL_FAST_TRITON_TILES", None)
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(SWEEP), "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-10000:] + done.stderr[-5000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["checks"] and all(c["passed"] for c in result["checks"]), result["checks"]
    measured = {(r["family"], r["variant"]) for r in result["rows"] if r["status"] == "ok"}
    assert {("simclr", "triton"), ("simclr", "reference"), ("moco", "triton"), ("clip", "triton"),
            ("clip", "triton_one_direction")} <= measured
    clip = next(r for r in result["rows"] if r["family"] == "clip" and r["variant"] == "triton")
    assert clip["speedup_vs_reference"] is not None and clip["memory_vs_reference"] is not None
    assert out.with_suffix(".csv").read_text().count("\n") == len(result["rows"]) + 1
    assert "| case | variant |" in out.with_suffix(".md").read_text()
    plotted = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_gpu_sweep.py"),
                              str(out.with_suffix(".json"))], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert plotted.returncode == 0, plotted.stderr
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_memory_bound_case_and_ratios():
    """positive_pair is timed on the bytes it must move; cuda rows get their speed relative to triton."""
    sweep = _load()
    pair = sweep.Case("positive_pair", 1 << 20, 1, 256)
    assert pair.bytes_step == 3 * (1 << 20) * 256 * 2 and pair.flops_step == 0
    assert sweep.Case("simclr", 8, 8, 4).bytes_step == 0
    rows = [sweep.Row(pair.name, pair.family, variant, pair.rows, pair.cols, pair.dim, pair.dtype, step_ms=ms,
                      step_tflops=0.0, step_gb_per_s=pair.bytes_step / (ms * 1e-3) / 1e9)
            for variant, ms in (("triton", 1.0), ("cuda", 0.8))]
    sweep.add_ratios(rows, {"copy_gb_per_s": 3000.0, "bf16_matmul_tflops": 800.0})
    triton, cuda = rows
    assert cuda.speed_vs_triton == pytest.approx(1.25) and triton.speed_vs_triton is None
    assert cuda.fraction_of_copy == pytest.approx(cuda.step_gb_per_s / 3000.0)
    assert cuda.fraction_of_bf16_matmul is None  # no matrix work to compare with the matrix rate
