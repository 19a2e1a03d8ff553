"""Fused CPU kernels against the materializing reference, forward + backward, side by side in one run.

    pytest benchmarks/test_cpu_bench.py --benchmark-only --benchmark-json=benchmarks/results/cpu.json

Each pair (reference, cpu) shares a benchmark group, so pytest-benchmark prints them together; peak extra
memory (allocator peak during one forward + backward) is stored in each entry's extra_info.
"""

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast.backends import resolve_backend
from synthcl_fast.benchmarking import environment, peak_memory_bytes

DIM = 128


def _inputs(n_rows, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n_rows // 2, DIM, generator=generator, dtype=dtype).requires_grad_()
    z2 = torch.randn(n_rows // 2, DIM, generator=generator, dtype=dtype).requires_grad_()
    return z1, z2


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("n_rows", [1024, 4096])
def test_nt_xent_forward_backward(benchmark, n_rows, backend):
    """NT-Xent over R = K = n_rows rows (two views of n_rows/2 images), D = 128, fp32."""
    resolve_backend(backend, torch.device("cpu"), torch.float32)  # fails loudly if the kernels are missing
    z1, z2 = _inputs(n_rows)

    def step():
        torch.autograd.grad(L.nt_xent(z1, z2, temperature=0.1, backend=backend), (z1, z2))

    benchmark.group = f"nt_xent fwd+bwd R=K={n_rows} D={DIM} fp32"
    benchmark.extra_info.update(environment())
    benchmark.extra_info["peak_extra_memory_bytes"] = peak_memory_bytes(step)
    benchmark.pedantic(step, rounds=10 if n_rows <= 1024 else 5, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_positive_pair_forward_backward(benchmark, backend):
    """Positive-pair loss on 65536 rows of D = 128, fp32 (memory bound)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(65536, DIM, generator=generator).requires_grad_()
    b = torch.randn(65536, DIM, generator=generator)

    def step():
        torch.autograd.grad(L.positive_pair_loss(a, b, 0.5, backend=backend), a)

    benchmark.group = f"positive_pair fwd+bwd R=65536 D={DIM} fp32"
    benchmark.extra_info.update(environment())
    benchmark.extra_info["peak_extra_memory_bytes"] = peak_memory_bytes(step)
    benchmark.pedantic(step, rounds=10, warmup_rounds=1)
