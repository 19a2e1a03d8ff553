"""Helpers of the drop-in, distributed and torch.compile tests: relative errors and loss + gradient runs."""

from __future__ import annotations

import torch

RTOL = 1e-5  # fp32 relative error, values and gradients (issue 6)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (inf if expected is all zero and actual is not)."""
    actual, expected = torch.as_tensor(actual).detach().double(), torch.as_tensor(expected).detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return 0.0
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    if scale == 0:
        return 0.0 if error == 0 else float("inf")
    return error / scale


def assert_close(actual, expected, what: str, rtol: float = RTOL) -> None:
    error = relative_error(actual, expected)
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:g}"


def loss_and_grads(loss_fn, *inputs: torch.Tensor):
    """loss_fn(*copies) and the gradients of the copies that require grad (fresh leaves, so two loss functions
    can be run on the same inputs)."""
    copies = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    loss = loss_fn(*copies)
    leaves = [x for x in copies if x.requires_grad]
    grads = torch.autograd.grad(loss, leaves) if leaves else ()
    return loss.detach(), grads


def assert_same_loss_and_grads(ours, theirs, *inputs: torch.Tensor) -> torch.Tensor:
    """Runs both loss functions on the same inputs; their values and gradients agree within RTOL."""
    our_loss, our_grads = loss_and_grads(ours, *inputs)
    their_loss, their_grads = loss_and_grads(theirs, *inputs)
    assert_close(our_loss, their_loss, "loss")
    for index, (our_grad, their_grad) in enumerate(zip(our_grads, their_grads)):
        assert_close(our_grad, their_grad, f"gradient of input {index}")
    return their_loss
