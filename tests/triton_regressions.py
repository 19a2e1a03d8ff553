"""Failures of the Triton kernels seen with one triton release and not another: one small test each, run first
by the compatibility lanes (.ci/run) so that a new triton fails fast and names the cause. Like
tests/triton_internals.py it is not collected by a plain `pytest tests/`: tests/test_triton.py runs it in a
subprocess under TRITON_INTERPRET=1 (and on CUDA where a GPU is present).

    TRITON_INTERPRET=1 python -m pytest tests/triton_regressions.py
"""

import os

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast.backends import BACKENDS
from conftest import assert_close

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETER else "cpu")
REASON = BACKENDS["triton"].unavailable_reason(DEVICE, torch.float64)
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_over_several_feature_chunks(reduction, monkeypatch):
    """triton 3.9's interpreter rejected the backward kernel's store of sum_j G_ij s_ij (the temperature
    gradient's row sums), written by the first of several feature chunks only, when its mask combined the row
    mask with the scalar `pid_d == 0`: "mask has unsupported dtype". D = 40 in chunks of 16: three chunks."""
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", "block_m=16,block_n=16,block_d=16,block_do=16")
    generator = torch.Generator().manual_seed(16)
    anchors = torch.randn(19, 40, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    candidates = torch.randn(23, 40, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    labels = torch.randint(0, 5, (23,), generator=generator).to(DEVICE)
    temperature = torch.tensor(0.3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    inputs = [anchors, candidates, temperature]
    upstream = torch.rand(19 if reduction == "none" else (), generator=generator, dtype=torch.float64).to(DEVICE)

    def loss_and_grads(backend):
        loss = L.contrastive_loss(anchors, candidates, labels[:19], labels, temperature=temperature,
                                  reduction=reduction, backend=backend)
        return (loss, *torch.autograd.grad(loss, inputs, upstream))

    for got, expected, what in zip(loss_and_grads("triton"), loss_and_grads("reference"),
                                   ("loss", "anchor gradient", "candidate gradient", "temperature gradient")):
        assert_close(got, expected, 1e-10, what)
