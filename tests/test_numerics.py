"""Numerics that break other libraries: very large or small norms, near-duplicate rows, zero rows, low
temperatures in fp16/bf16. Where the float64 reference is finite (and representable in the output
dtype), no backend may return NaN or Inf, and values stay close to the reference."""

import itertools

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from conftest import assert_close, fused_cpu_backends, relative_error

BACKENDS = fused_cpu_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no fused CPU backend available")

# Scales each dtype can hold (fp16: 6e-8 .. 65504).
SCALES = {torch.float32: [1e-30, 1e-8, 1.0, 1e30], torch.bfloat16: [1e-30, 1.0, 1e30],
          torch.float16: [1e-2, 1.0, 1e3]}


def _features(kind, n, dim, dtype, scale, generator):
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if kind == "near_duplicates":
        x = x[:1] + 1e-4 * x  # every row within 1e-4 of the first
    elif kind == "zero_rows":
        x[::3] = 0
    return (x * scale).to(dtype)


def _finite_where_representable(grad, expected, dtype, what):
    """NaN never; Inf only where the exact value is itself beyond the output dtype's range."""
    limit = torch.finfo(dtype).max / 2
    assert not torch.isnan(grad).any(), f"{what}: NaN gradient"
    representable = expected.abs() < limit
    assert torch.isfinite(grad[representable]).all(), f"{what}: Inf where the reference is representable"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["random", "near_duplicates", "zero_rows"])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 10.0])
def test_contrastive_grid(backend, dtype, kind, temperature, generator):
    for scale in SCALES[dtype]:
        z = _features(kind, 48, 24, dtype, scale, generator).requires_grad_()
        labels = torch.arange(48) // 2
        loss = L.supcon(z, labels, temperature=temperature, backend=backend)
        z64 = z.detach().double().requires_grad_()
        expected = ref.supcon(z64, labels, temperature=temperature)
        what = f"{kind} scale={scale:g} t={temperature}"
        assert torch.isfinite(expected), f"{what}: reference not finite"
        assert torch.isfinite(loss), f"{what}: loss {loss.item()}"
        # fp32 logits carry an absolute error ~ 1e-7 sqrt(D) / t: the bound scales with 1/t.
        assert_close(loss, expected, 1e-5 * max(1.0, 0.05 / temperature), f"{what} value")
        (grad,), (grad64,) = torch.autograd.grad(loss, z), torch.autograd.grad(expected, z64)
        _finite_where_representable(grad, grad64, dtype, what)
        if kind == "zero_rows":
            assert torch.count_nonzero(grad[::3]) == 0, f"{what}: zero rows must get no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_positive_pair_grid(backend, dtype, generator):
    for scale, kind, mode in itertools.product(SCALES[dtype], ["random", "near_duplicates", "zero_rows"],
                                               ["two_sided", "floor"]):
        a = _features(kind, 40, 16, dtype, scale, generator).requires_grad_()
        b = _features(kind, 40, 16, dtype, scale, generator)
        loss = L.positive_pair_loss(a, b, 0.7, mode=mode, backend=backend)
        a64 = a.detach().double().requires_grad_()
        expected = ref.positive_pair_loss(a64, b.double(), 0.7, mode=mode)
        what = f"{kind} scale={scale:g} {mode}"
        assert torch.isfinite(loss) and relative_error(loss, expected) < 1e-5, what
        (grad,), (grad64,) = torch.autograd.grad(loss, a), torch.autograd.grad(expected, a64)
        _finite_where_representable(grad, grad64, dtype, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_norms_do_not_overflow_fp32(backend, generator):
    """|x| = 1e25: x^2 overflows fp32, so the norm must be accumulated wider; the direction is kept."""
    z = torch.randn(30, 8, generator=generator) * 1e25
    small = z / 1e25
    assert_close(L.nt_xent(z[:15], z[15:], backend=backend), L.nt_xent(small[:15], small[15:], backend=backend),
                 1e-6, "scaled by 1e25")
