"""The fused ops as PyTorch operators: torch.library.opcheck, and torch.compile(fullgraph=True) of a model plus
our loss with no graph break, matching eager."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from ecosystem_helpers import RTOL
from synthcl_fast import losses
from synthcl_fast.backends._ops import MODE_CODES, REDUCTION_CODES
from synthcl_fast.backends.native import load_error

EPS = 1e-12


@pytest.fixture(scope="module")
def ops():
    assert load_error() is None, load_error()
    return torch.ops.synthcl_fast


def random(*shape, seed=0, requires_grad=True):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


def contrastive_args(exclude_self, reduction, compute_grad, rows=5, cols=9, dim=7):
    """Anchors (rows) against candidates (cols); with exclude_self the anchors are the first candidates."""
    candidates = random(cols, dim, seed=1)
    anchors = candidates[:rows].detach().clone().requires_grad_() if exclude_self else random(rows, dim, seed=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, -1, 3, 1])
    return (anchors, candidates, labels[:rows], labels[:cols], torch.tensor(0.3, requires_grad=True), exclude_self,
            REDUCTION_CODES[reduction], EPS, compute_grad)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("reduction, compute_grad", [("mean", True), ("sum", False), ("none", False)])
def test_opcheck_contrastive_forward(ops, exclude_self, reduction, compute_grad):
    torch.library.opcheck(ops.contrastive_forward, contrastive_args(exclude_self, reduction, compute_grad))


def test_opcheck_contrastive_backward(ops):
    anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, _, eps, _ = \
        contrastive_args(True, "none", False)
    with torch.no_grad():
        _, row_lse, row_n_positive, *_ = ops.contrastive_forward(
            anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, REDUCTION_CODES["none"],
            eps, False)
    torch.library.opcheck(ops.contrastive_backward, (
        random(anchors.shape[0], seed=3, requires_grad=False), anchors.detach(), candidates.detach(), anchor_labels,
        candidate_labels, temperature.detach(), row_lse, row_n_positive, exclude_self, eps))


@pytest.mark.parametrize("mode", ["two_sided", "floor"])
@pytest.mark.parametrize("reduction, grad_a, grad_b", [("mean", True, False), ("none", True, True),
                                                        ("sum", False, True)])
def test_opcheck_positive_pair_forward(ops, mode, reduction, grad_a, grad_b):
    a, b = random(6, 5, seed=4, requires_grad=grad_a), random(6, 5, seed=5, requires_grad=grad_b)
    target = torch.full((6,), 0.4)
    torch.library.opcheck(ops.positive_pair_forward,
                          (a, b, target, MODE_CODES[mode], REDUCTION_CODES[reduction], EPS, grad_a, grad_b))


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
