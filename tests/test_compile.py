"""torch.compile(fullgraph=True) of every loss (no graph break) and of a model plus our loss with the default
inductor backend, matching eager. (opcheck of every backend's ops: tests/test_conformance.py.)"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from ecosystem_helpers import RTOL
from synthcl_fast import losses
from synthcl_fast.backends.native import load_error

@pytest.fixture(scope="module")
def ops():
    assert load_error() is None, load_error()
    return torch.ops.synthcl_fast


def random(*shape, seed=0, requires_grad=True):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


LOSS_CALLS = {
    "nt_xent": lambda z, t: losses.nt_xent(z[:4], z[4:], temperature=t),
    "supcon": lambda z, t: losses.supcon(z, torch.tensor([0, 1, 0, 1, 2, 2, 0, 3]), temperature=t),
    "ppcl": lambda z, t: losses.ppcl(z[:4].reshape(2, 2, -1), z[4:].reshape(4, 1, -1), temperature=t),
    "info_nce": lambda z, t: losses.info_nce(z[:4], z[4:], temperature=t),
    "clip_loss": lambda z, t: losses.clip_loss(z[:4], z[4:], logit_scale=1 / t),
    "positive_pair_loss": lambda z, t: losses.positive_pair_loss(z[:4], z[4:].detach(), 0.5),
    # the variants (issue 15; computed by the reference until a fused backend takes them)
    "dcl": lambda z, t: losses.dcl(z[:4], z[4:], temperature=t, sigma=0.5),
    "nt_xent_hard_negatives": lambda z, t: losses.nt_xent(z[:4], z[4:], temperature=t, beta=0.5, tau_plus=0.1),
    "contrastive_per_positive": lambda z, t: losses.contrastive_loss(
        z, None, torch.tensor([0, 1, 0, 1, 2, 2, 0, 3]), temperature=t, denominator="per_positive"),
}


@pytest.mark.parametrize("loss", LOSS_CALLS)
def test_every_loss_traces_without_graph_break(ops, loss):
    explanation = torch._dynamo.explain(LOSS_CALLS[loss])(random(8, 6), torch.tensor(0.2, requires_grad=True))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_encoder_and_ntxent_match_eager(ops):
    """torch.compile(fullgraph=True) (default inductor backend) of encoder + NTXentLoss with a learned temperature:
    loss and every gradient equal eager's."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    temperature = torch.nn.Parameter(torch.tensor(0.5))
    loss_fn = losses.NTXentLoss(temperature=temperature)

    def step(view1, view2):
        return loss_fn(encoder(view1), encoder(view2))

    view1, view2 = random(16, 12, seed=6, requires_grad=False), random(16, 12, seed=7, requires_grad=False)
    parameters = [*encoder.parameters(), temperature]
    explanation = torch._dynamo.explain(step)(view1, view2)
    assert explanation.graph_break_count == 0, explanation.break_reasons

    eager_loss = step(view1, view2)
    eager_grads = torch.autograd.grad(eager_loss, parameters)
    torch._dynamo.reset()
    compiled_loss = torch.compile(step, fullgraph=True)(view1, view2)
    compiled_grads = torch.autograd.grad(compiled_loss, parameters)
    assert_close(compiled_loss, eager_loss, RTOL, "compiled loss")
    for index, (compiled, eager) in enumerate(zip(compiled_grads, eager_grads)):
        assert_close(compiled, eager, RTOL, f"compiled gradient of parameter {index}")
