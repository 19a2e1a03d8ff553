"""The Triton and CUDA kernels against the materializing reference on a GPU, as pytest-benchmark entries
(skipped without a CUDA device; a fused backend that cannot run here is skipped with its reason). Forward +
backward of one loss step, bf16.

    pytest benchmarks/test_gpu_bench.py --benchmark-only --benchmark-json=benchmarks/results/gpu.json
    python benchmarks/report.py benchmarks/results/gpu.json > benchmarks/results/gpu.md

Each timed round ends with torch.cuda.synchronize() (pytest-benchmark's wall-clock timer would otherwise see
only the launches) and rounds rotate over 3 input sets. Peak extra memory and the effective TFLOP/s (8RKD over
the median; positive_pair: GB/s on the bytes it must move) go to each entry's extra_info. benchmarks/gpu_sweep.py is the full sweep with CUDA events,
ceilings, torch.compile and Inf-CL; this file shares its cases and loss builders.
"""

import itertools

import pytest
import torch

from gpu_sweep import N_ROTATE, Case, backend_unavailable, leaves, make_inputs, make_loss
from synthcl_fast.benchmarking import environment, peak_memory_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")

CASES = [Case("simclr", 16384, 16384, 256), Case("moco", 256, 65536, 128), Case("clip", 16384, 16384, 512),
         Case("positive_pair", 1 << 20, 1, 256)]


@pytest.mark.parametrize("backend", ["triton", "cuda", "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name.replace(" ", "_"))
def test_loss_step(benchmark, case, backend):
    device = torch.device("cuda")
    reason = backend_unavailable(backend, case, device) if backend != "reference" else None
    if reason is not None:
        pytest.skip(reason)
    inputs = [make_inputs(case, device, seed) for seed in range(N_ROTATE)]
    loss_fn = make_loss(case, backend)
    rotation = itertools.cycle(range(N_ROTATE))

    def step():
        x = inputs[next(rotation)]
        torch.autograd.grad(loss_fn(x), leaves(x))
        torch.cuda.synchronize()

    benchmark.group = f"{case.name} fwd+bwd"
    benchmark.extra_info.update(environment())
    benchmark.extra_info["peak_extra_memory_bytes"] = peak_memory_bytes(step, device)
    benchmark.pedantic(step, rounds=20, warmup_rounds=3)
    median = benchmark.stats.stats.median
    benchmark.extra_info["effective_tflops"] = case.flops_step / median / 1e12
    benchmark.extra_info["gb_per_s"] = case.bytes_step / median / 1e9  # positive_pair: the bytes it must move
