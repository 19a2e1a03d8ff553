"""Autograd formulas and fake (shape-only) implementations shared by every fused backend.

Every fused backend exposes the same three operators (C++ ones under the names of csrc/bindings.cpp,
Triton ones as torch.library.custom_op with the same signatures):

    contrastive_forward(anchors, candidates, anchor_labels, candidate_labels, temperature,
                        exclude_self, reduction, eps, compute_grad)
        -> (loss, row_lse, row_n_positive, grad_anchors, grad_candidates, grad_temperature)
    contrastive_backward(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature,
                         row_lse, row_n_positive, exclude_self, eps)
        -> (grad_anchors, grad_candidates, grad_temperature)
    positive_pair_forward(a, b, target, mode, reduction, eps, compute_grad_a, compute_grad_b)
        -> (loss, cosine, grad_a, grad_b, grad_target)

A backend may also offer the symmetric op (CLIP's loss, both directions from the same tiles; optional,
see Backend.symmetric_contrastive):

    symmetric_contrastive_forward(anchors, candidates, anchor_labels, candidate_labels, temperature,
                                  exclude_self, reduction, eps, compute_grad)
        -> (loss, row_lse, col_lse, row_n_positive, col_n_positive, grad_anchors, grad_candidates,
            grad_temperature)
        loss = (row loss + column loss) / 2, each reduced over its own side ("none": R == K, elementwise)
    symmetric_contrastive_backward(grad_rows, grad_cols, anchors, candidates, anchor_labels, candidate_labels,
                                   temperature, row_lse, col_lse, row_n_positive, col_n_positive, exclude_self,
                                   eps)
        -> (grad_anchors, grad_candidates, grad_temperature)

With compute_grad the forward also returns the gradients of the (scalar) loss, so the backward only
scales them by the upstream gradient; otherwise the backward recomputes the logits tile by tile.
"""

from __future__ import annotations

import torch

REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
MODE_CODES = {"two_sided": 0, "floor": 1}


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_double_backward() -> None:
    # The saved gradients are constants: a second derivative through them would be silently wrong.
    if torch.is_grad_enabled():
        raise RuntimeError("synthcl_fast's fused losses are once-differentiable; for higher-order gradients "
                           "use backend='reference'")


def _fake_input_grads(anchors, candidates, temperature, compute_grad=True):
    """Fake (grad_anchors, grad_candidates, grad_temperature): full-size, or the empty placeholders the ops
    return when the gradient is not computed in forward."""
    if compute_grad:
        return (torch.empty_like(anchors, memory_format=torch.contiguous_format),
                torch.empty_like(candidates, memory_format=torch.contiguous_format), temperature.new_empty(()))
    return anchors.new_empty((0,)), candidates.new_empty((0,)), temperature.new_empty((0,))


def _row_weights(grad_loss, n_positive, reduction):
    """dLoss/dL_i for every row from the upstream gradient of the reduced loss (the mean is over the rows
    that have a positive)."""
    if reduction == REDUCTION_CODES["none"]:
        return grad_loss
    if reduction == REDUCTION_CODES["mean"]:
        grad_loss = grad_loss / (n_positive > 0).sum().clamp_min(1)
    return grad_loss.expand(n_positive.shape[0])


def register_contrastive_autograd(forward_op, backward_op) -> None:
    """Registers fake and autograd implementations for a backend's contrastive_forward op."""
    name = _qualname(forward_op)
    backward_name = _qualname(backward_op)

    @torch.library.register_fake(name)
    def _(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps,
          compute_grad):
        n_rows, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
        loss = anchors.new_empty((n_rows,) if reduction == 0 else (), dtype=acc)
        lse = anchors.new_empty((n_rows,), dtype=acc)
        n_positive = anchors.new_empty((n_rows,), dtype=torch.int32)
        grads = _fake_input_grads(anchors, candidates, temperature, compute_grad)
        return (loss, lse, n_positive, *grads)

    @torch.library.register_fake(backward_name)
    def _(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, row_n_positive,
          exclude_self, eps):
        return _fake_input_grads(anchors, candidates, temperature)

    def setup_context(ctx, inputs, output):
        anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps, \
            compute_grad = inputs
        loss, row_lse, row_n_positive, grad_anchors, grad_candidates, grad_temperature = output
        ctx.compute_grad, ctx.reduction, ctx.exclude_self, ctx.eps = compute_grad, reduction, exclude_self, eps
        ctx.mark_non_differentiable(row_lse, row_n_positive, grad_anchors, grad_candidates, grad_temperature)
        if compute_grad:
            ctx.save_for_backward(grad_anchors, grad_candidates, grad_temperature)
        else:
            ctx.save_for_backward(anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse,
                                  row_n_positive)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        if ctx.compute_grad:
            grad_anchors, grad_candidates, grad_temperature = ctx.saved_tensors
            grads = (grad_anchors * grad_loss, grad_candidates * grad_loss, grad_temperature * grad_loss)
        else:
            anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, row_n_positive = \
                ctx.saved_tensors
            grad_rows = _row_weights(grad_loss, row_n_positive, ctx.reduction)
            grads = backward_op(grad_rows.contiguous(), anchors, candidates, anchor_labels, candidate_labels,
                                temperature, row_lse, row_n_positive, ctx.exclude_self, ctx.eps)
        grad_anchors, grad_candidates, grad_temperature = grads
        return grad_anchors, grad_candidates, None, None, grad_temperature, None, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def register_symmetric_contrastive_autograd(forward_op, backward_op) -> None:
    """Registers fake and autograd implementations for a backend's symmetric_contrastive_forward op."""
    name = _qualname(forward_op)
    backward_name = _qualname(backward_op)

    @torch.library.register_fake(name)
    def _(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps,
          compute_grad):
        n_rows, n_cols, acc = anchors.shape[0], candidates.shape[0], accumulate_dtype(anchors.dtype)
        loss = anchors.new_empty((n_rows,) if reduction == 0 else (), dtype=acc)
        stats = (anchors.new_empty((n_rows,), dtype=acc), anchors.new_empty((n_cols,), dtype=acc),
                 anchors.new_empty((n_rows,), dtype=torch.int32), anchors.new_empty((n_cols,), dtype=torch.int32))
        grads = _fake_input_grads(anchors, candidates, temperature, compute_grad)
        return (loss, *stats, *grads)

    @torch.library.register_fake(backward_name)
    def _(grad_rows, grad_cols, anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, col_lse,
          row_n_positive, col_n_positive, exclude_self, eps):
        return _fake_input_grads(anchors, candidates, temperature)

    def setup_context(ctx, inputs, output):
        anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps, \
            compute_grad = inputs
        loss, row_lse, col_lse, row_n_positive, col_n_positive, grad_anchors, grad_candidates, grad_temperature = \
            output
        ctx.compute_grad, ctx.reduction, ctx.exclude_self, ctx.eps = compute_grad, reduction, exclude_self, eps
        ctx.mark_non_differentiable(row_lse, col_lse, row_n_positive, col_n_positive, grad_anchors, grad_candidates,
                                    grad_temperature)
        if compute_grad:
            ctx.save_for_backward(grad_anchors, grad_candidates, grad_temperature)
        else:
            ctx.save_for_backward(anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, col_lse,
                                  row_n_positive, col_n_positive)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        if ctx.compute_grad:
            grad_anchors, grad_candidates, grad_temperature = ctx.saved_tensors
            grads = (grad_anchors * grad_loss, grad_candidates * grad_loss, grad_temperature * grad_loss)
        else:
            anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, col_lse, row_n_positive, \
                col_n_positive = ctx.saved_tensors
            # loss = (row part + column part) / 2: each side's loss gets half the upstream gradient
            half = grad_loss / 2
            grads = backward_op(_row_weights(half, row_n_positive, ctx.reduction).contiguous(),
                                _row_weights(half, col_n_positive, ctx.reduction).contiguous(),
                                anchors, candidates, anchor_labels, candidate_labels, temperature, row_lse, col_lse,
                                row_n_positive, col_n_positive, ctx.exclude_self, ctx.eps)
        grad_anchors, grad_candidates, grad_temperature = grads
        return grad_anchors, grad_candidates, None, None, grad_temperature, None, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def register_positive_pair_autograd(forward_op) -> None:
    """Registers fake and autograd implementations for a backend's positive_pair_forward op."""
    name = _qualname(forward_op)

    @torch.library.register_fake(name)
    def _(a, b, target, mode, reduction, eps, compute_grad_a, compute_grad_b):
        n_rows, acc = a.shape[0], accumulate_dtype(a.dtype)
        loss = a.new_empty((n_rows,) if reduction == 0 else (), dtype=acc)
        grad_a = torch.empty_like(a, memory_format=torch.contiguous_format) if compute_grad_a else a.new_empty((0,))
        grad_b = torch.empty_like(b, memory_format=torch.contiguous_format) if compute_grad_b else b.new_empty((0,))
        return loss, a.new_empty((n_rows,), dtype=acc), grad_a, grad_b, a.new_empty((n_rows,), dtype=acc)

    def setup_context(ctx, inputs, output):
        ctx.reduction, ctx.compute_grad_a, ctx.compute_grad_b = inputs[4], inputs[6], inputs[7]
        loss, cosine, grad_a, grad_b, grad_target = output
        ctx.mark_non_differentiable(cosine, grad_a, grad_b, grad_target)
        ctx.save_for_backward(grad_a, grad_b, grad_target)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        grad_a, grad_b, grad_target = ctx.saved_tensors
        row_scale = grad_loss.unsqueeze(1) if ctx.reduction == REDUCTION_CODES["none"] else grad_loss
        return (grad_a * row_scale if ctx.compute_grad_a else None,
                grad_b * row_scale if ctx.compute_grad_b else None,
                grad_target * grad_loss, None, None, None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def _qualname(op) -> str:
    if isinstance(op, str):
        return op
    for attribute in ("_qualname", "_qualified_op_name"):  # CustomOpDef, OpOverloadPacket
        if hasattr(op, attribute):
            return getattr(op, attribute)
    return op.name()  # OpOverload
