"""Helpers of the drop-in, distributed and torch.compile tests: one loss and its gradients, two losses compared."""

from __future__ import annotations

import torch

from conftest import assert_close

RTOL = 1e-5  # fp32 relative error, values and gradients (issue 6)


def loss_and_grads(loss_fn, *inputs: torch.Tensor):
    """loss_fn(*copies) and the gradients of the copies that require grad (fresh leaves, so two loss functions
    can be run on the same inputs)."""
    copies = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    loss = loss_fn(*copies)
    leaves = [x for x in copies if x.requires_grad]
    grads = torch.autograd.grad(loss, leaves) if leaves else ()
    return loss.detach(), grads


def assert_same_loss_and_grads(ours, theirs, *inputs: torch.Tensor) -> None:
    """Runs both loss functions on the same inputs; their values and gradients agree within RTOL."""
    our_loss, our_grads = loss_and_grads(ours, *inputs)
    their_loss, their_grads = loss_and_grads(theirs, *inputs)
    assert_close(our_loss, their_loss, RTOL, "loss")
    for index, (our_grad, their_grad) in enumerate(zip(our_grads, their_grads)):
        assert_close(our_grad, their_grad, RTOL, f"gradient of input {index}")
