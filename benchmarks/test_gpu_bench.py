"""Every loss on a GPU (bfloat16): the reference, torch.compile of it, the fused triton and cuda backends and
the peer libraries (Inf-CL where installed), forward + backward, time (each call synchronized) and peak
memory, side by side in one run; skipped without a CUDA device. benchmarks/gpu_sweep.py adds the card's
ceilings and forward-only timings over the same cases (correctness: tests/test_conformance.py, marker gpu).

    pytest benchmarks/test_gpu_bench.py --benchmark-only
"""

import pytest
import torch

DEVICE = torch.device("cuda")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")


def test_loss_step(measure_loss_step, case, implementation):
    measure_loss_step(case, implementation, DEVICE)
