"""CUDA backend forward + backward under pytest-benchmark (skipped without a GPU), on two of the sweep's
shapes; each step synchronizes, so the timer sees the kernels and not only their launch.

    pytest benchmarks/test_cuda_bench.py --benchmark-only --benchmark-json=benchmarks/results/cuda.json

The full shape sweep with TFLOP/s and bandwidth is benchmarks/cuda_sweep.py.
"""

import pytest
import torch

from synthcl_fast.backends import BACKENDS
from synthcl_fast.benchmarking import environment, peak_memory_bytes

from cuda_sweep import Case, bytes_moved, flops, make_step

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32),
    reason="needs a CUDA device and the cuda backend")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", [Case("simclr", 16384, 16384, 128), Case("positive_pair", 1 << 20, 1, 256)],
                         ids=lambda c: c.name)
def test_cuda_forward_backward(benchmark, case, dtype):
    step = make_step(case, "cuda", dtype)

    def synchronized():
        step()
        torch.cuda.synchronize()

    benchmark.group = f"{case.name} {dtype}"
    benchmark.extra_info.update(environment())
    benchmark.extra_info.update(flops=flops(case), bytes_moved=bytes_moved(case, dtype),
                                peak_extra_memory_bytes=peak_memory_bytes(step, "cuda"))
    benchmark.pedantic(synchronized, rounds=20, warmup_rounds=3)
