"""The operator contract every fused backend implements, and its autograd and fake (shape-only) registrations.

The math is in synthcl_fast/reference.py (module docstring). C++ backends define the ops in
csrc/bindings.cpp (TORCH_LIBRARY); Triton defines them as torch.library.custom_op with the same signatures.
A contrastive op has one "side" (the anchors' row losses) or two (the symmetric op, CLIP's loss: the row
losses and the column losses from the same tiles). For a k-sided op:

    forward(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps,
            compute_grad)
        -> (loss, *k x (max, log_sum, n_positive), grad_anchors, grad_candidates, grad_temperature)
    backward(*k x grad_side, anchors, candidates, anchor_labels, candidate_labels, temperature,
             *k x (max, log_sum, n_positive), exclude_self, eps, output_mask)
        -> (grad_anchors, grad_candidates, grad_temperature)

    contrastive_forward / contrastive_backward                      k = 1 (every fused backend)
    symmetric_contrastive_forward / symmetric_contrastive_backward  k = 2, loss = (row loss + column loss) / 2,
                                                                    each reduced over its own side ("none":
                                                                    R == K, elementwise); a declared
                                                                    capability (Backend.has_symmetric_op)

Per side and row: max = m_i, log_sum = log S_i (float32; float64 for float64 inputs), n_positive = |P(i)|
(int32): what the backward needs to recompute p_ij = exp((s_ij - m_i) - log S_i) to the loss's own accuracy.
grad_side: dLoss/dL_i for every row of that side (the reduction's weight folded in). compute_grad and
output_mask are gradient masks, three bools for (anchors, candidates, temperature): with compute_grad on (a
scalar loss only) the forward also returns those gradients of the loss, so the backward only scales them by
the upstream gradient; all off, the backward op recomputes the logits tile by tile and forms the gradients
output_mask asks for (autograd's needs_input_grad). A gradient that is off is an empty (0,) tensor and its
products are not run at all: a frozen tower (LiT), a MoCo queue or key, a float temperature cost nothing.
When the candidates are the anchors (one tensor) both roles are one gradient, on if either is asked for.

The variants of the general op (synthcl_fast/variants.py; the math: reference.contrastive_loss_variant), one
side, m_i and S_i over the negatives Neg(i) = N(i) minus P(i):

    contrastive_variant_forward(anchors, candidates, anchor_labels, candidate_labels, temperature,
                                positive_weight, denominator, exclude_self, reduction, eps, compute_grad)
        -> (loss, max, log_sum, n_positive, coef, positive_mean, grad_anchors, grad_candidates, grad_temperature)
    contrastive_variant_backward(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature,
                                 positive_weight, max, log_sum, n_positive, coef, denominator, exclude_self, eps,
                                 output_mask)
        -> (grad_anchors, grad_candidates, grad_temperature)

denominator: Denominator code (1 negatives, 2 per_positive); positive_weight: (R,) w'_i in the accumulation
dtype (ones for none); coef: c_i = mean_p sigmoid(lse_Neg(i) - s_ip) for per_positive, 1 otherwise;
positive_mean: mean_p s_ip (0 without positives), which gives positive_weight its gradient,
dL_i/dw'_i = -mean_p s_ip (computed here, in the autograd registration).

    hard_negative_stats_forward(anchors, candidates, anchor_labels, candidate_labels, temperature, beta,
                                exclude_self, eps)
        -> (lse (R, 3), positive_mean, n_negative, n_positive, reference (R, 3), log_sum (R, 3))
    hard_negative_stats_backward(grad_lse, grad_positive_mean, anchors, candidates, anchor_labels,
                                 candidate_labels, temperature, beta, n_negative, n_positive, reference, log_sum,
                                 exclude_self, eps, output_mask)
        -> (grad_anchors, grad_candidates, grad_temperature)

the row statistics of hard-negative reweighting and debiasing (HCL; beta / tau_plus): lse over Neg(i) of
(1 + beta) s and of beta s, lse over P(i) of s (-inf for an empty set), mean_p s_ip, |Neg(i)| and |P(i)|
(int32); reference and log_sum per set let the backward recompute each softmax (csrc/contrastive_cpu.cpp
states the gradient). The loss is formed from the statistics in torch (reference.hard_negative_row_loss).

    positive_pair_forward(a, b, target, mode, reduction, eps, compute_grad_a, compute_grad_b)
        -> (loss, cosine, grad_a, grad_b, grad_target)          (gradients always in forward: one pass)
"""

from __future__ import annotations

import enum
import sys

import torch


class Reduction(enum.IntEnum):
    """The `reduction` argument as the integer the op schemas take."""

    NONE = 0
    MEAN = 1
    SUM = 2


class PairMode(enum.IntEnum):
    """The positive-pair loss's `mode` as the integer the op schema takes."""

    TWO_SIDED = 0
    FLOOR = 1


class Denominator(enum.IntEnum):
    """The variants' `denominator` as the integer the variant op schemas take ("all" is the plain op)."""

    NEGATIVES = 1
    PER_POSITIVE = 2


def denominator_code(name: str) -> int:
    return int(Denominator[name.upper()])


def reduction_code(name: str) -> int:
    return int(Reduction[name.upper()])


def mode_code(name: str) -> int:
    return int(PairMode[name.upper()])


STATS_PER_SIDE = 3  # (max, log_sum, n_positive)


def assume_constant_result(fn):
    """torch.compiler.assume_constant_result without its `import torch._dynamo`: that import pulls in sympy
    and triton (~150 MB of resident memory) on the first CPU call. The decorator only sets this attribute
    (torch 2.4 .. 2.14), which dynamo reads when it meets the function; tests/test_compile.py's fullgraph
    tests fail if a torch release changes that."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_double_backward() -> None:
    # The saved gradients are constants: a second derivative through them would be silently wrong.
    if torch.is_grad_enabled():
        raise RuntimeError("synthcl_fast's fused losses are once-differentiable; for higher-order gradients "
                           "use backend='reference'")


def _fake_input_grads(anchors, candidates, temperature, mask):
    """Fake (grad_anchors, grad_candidates, grad_temperature) for a gradient mask: full-size where it is on,
    the empty placeholder the ops return where it is off."""
    one_tensor = candidates is anchors  # both roles are one gradient (as the kernels' GradMask)
    on_anchors, on_candidates = mask[0] or (one_tensor and mask[1]), mask[1] or (one_tensor and mask[0])
    return (torch.empty_like(anchors, memory_format=torch.contiguous_format) if on_anchors
            else anchors.new_empty((0,)),
            torch.empty_like(candidates, memory_format=torch.contiguous_format) if on_candidates
            else candidates.new_empty((0,)),
            temperature.new_empty(()) if mask[2] else temperature.new_empty((0,)))


def needed_grads(ctx) -> list[bool]:
    """The backward ops' output_mask from autograd: which of (anchors, candidates, temperature) need a gradient
    (inputs 0, 1 and 4 of every contrastive op)."""
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[4]]


def _scaled_saved_grads(saved, mask, grad_loss):
    """The gradients the forward computed (for upstream gradient 1), scaled; None where the mask is off."""
    return tuple(g * grad_loss if on else None for g, on in zip(saved, mask))


def _fake_side_stats(n: int, like: torch.Tensor):
    acc = accumulate_dtype(like.dtype)
    return like.new_empty((n,), dtype=acc), like.new_empty((n,), dtype=acc), like.new_empty((n,), dtype=torch.int32)


def row_weights(grad_loss, n_positive, reduction: int):
    """dLoss/dL_i for every row of one side from the upstream gradient of its reduced loss (the mean is over
    the rows that have a positive)."""
    if reduction == Reduction.NONE:
        return grad_loss
    if reduction == Reduction.MEAN:
        grad_loss = grad_loss / (n_positive > 0).sum().clamp_min(1)
    return grad_loss.expand(n_positive.shape[0])


def register_contrastive_op(forward_op, backward_op, sides: int) -> None:
    """Fake and autograd implementations of a backend's `sides`-sided contrastive forward and backward ops."""
    name, backward_name = _qualname(forward_op), _qualname(backward_op)
    n_stats = sides * STATS_PER_SIDE

    @torch.library.register_fake(name)
    def _(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps,
          compute_grad):
        n_rows = anchors.shape[0]
        loss = anchors.new_empty((n_rows,) if reduction == Reduction.NONE else (),
                                 dtype=accumulate_dtype(anchors.dtype))
        stats = _fake_side_stats(n_rows, anchors)
        if sides == 2:
            stats += _fake_side_stats(candidates.shape[0], anchors)
        return (loss, *stats, *_fake_input_grads(anchors, candidates, temperature, compute_grad))

    @torch.library.register_fake(backward_name)
    def _(*args):
        anchors, candidates, _, _, temperature = args[sides:sides + 5]
        return _fake_input_grads(anchors, candidates, temperature, args[-1])

    def setup_context(ctx, inputs, output):
        anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps, \
            compute_grad = inputs
        stats, grads = output[1:1 + n_stats], output[1 + n_stats:]
        ctx.compute_grad, ctx.reduction, ctx.exclude_self, ctx.eps = any(compute_grad), reduction, exclude_self, eps
        ctx.grad_mask = tuple(compute_grad)
        ctx.mark_non_differentiable(*stats, *grads)
        ctx.set_materialize_grads(False)  # no zero-filled input-sized "gradients" of the non-differentiable outputs
        if ctx.compute_grad:
            ctx.save_for_backward(*grads)
        else:
            ctx.save_for_backward(anchors, candidates, anchor_labels, candidate_labels, temperature, *stats)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        if grad_loss is None:  # only a non-differentiable output was differentiated (not materialized)
            return (None,) * 9
        if ctx.compute_grad:
            grads = _scaled_saved_grads(ctx.saved_tensors, ctx.grad_mask, grad_loss)
        else:
            inputs, stats = ctx.saved_tensors[:5], ctx.saved_tensors[5:]
            # loss = mean of the sides' losses: each side gets 1/sides of the upstream gradient
            share = grad_loss / sides if sides > 1 else grad_loss
            side_weights = [row_weights(share, stats[k * STATS_PER_SIDE + 2], ctx.reduction).contiguous()
                            for k in range(sides)]
            mask = needed_grads(ctx)
            grads = backward_op(*side_weights, *inputs, *stats, ctx.exclude_self, ctx.eps, mask)
            grads = tuple(g if on else None for g, on in zip(grads, mask))
        grad_anchors, grad_candidates, grad_temperature = grads
        return grad_anchors, grad_candidates, None, None, grad_temperature, None, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def register_variant_op(forward_op, backward_op) -> None:
    """Fake and autograd implementations of a backend's contrastive_variant_forward and _backward ops."""
    name, backward_name = _qualname(forward_op), _qualname(backward_op)

    @torch.library.register_fake(name)
    def _(anchors, candidates, anchor_labels, candidate_labels, temperature, positive_weight, denominator,
          exclude_self, reduction, eps, compute_grad):
        n_rows, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
        loss = anchors.new_empty((n_rows,) if reduction == Reduction.NONE else (), dtype=acc)
        stats = _fake_side_stats(n_rows, anchors)
        per_row = (anchors.new_empty((n_rows,), dtype=acc), anchors.new_empty((n_rows,), dtype=acc))
        return (loss, *stats, *per_row, *_fake_input_grads(anchors, candidates, temperature, compute_grad))

    @torch.library.register_fake(backward_name)
    def _(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, *rest):
        return _fake_input_grads(anchors, candidates, temperature, rest[-1])

    def setup_context(ctx, inputs, output):
        anchors, candidates, anchor_labels, candidate_labels, temperature, positive_weight, denominator, \
            exclude_self, reduction, eps, compute_grad = inputs
        max_, log_sum, n_positive, coef, positive_mean = output[1:6]
        grads = output[6:]
        ctx.compute_grad, ctx.reduction, ctx.exclude_self, ctx.eps = any(compute_grad), reduction, exclude_self, eps
        ctx.grad_mask = tuple(compute_grad)
        ctx.denominator = denominator
        ctx.mark_non_differentiable(max_, log_sum, n_positive, coef, positive_mean, *grads)
        ctx.set_materialize_grads(False)  # as in register_contrastive_op
        saved = (n_positive, positive_mean)
        if ctx.compute_grad:
            ctx.save_for_backward(*saved, *grads)
        else:
            ctx.save_for_backward(*saved, anchors, candidates, anchor_labels, candidate_labels, temperature,
                                  positive_weight, max_, log_sum, coef)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        if grad_loss is None:  # only a non-differentiable output was differentiated (not materialized)
            return (None,) * 11
        n_positive, positive_mean = ctx.saved_tensors[:2]
        weights = row_weights(grad_loss, n_positive, ctx.reduction)
        if ctx.compute_grad:
            grads = _scaled_saved_grads(ctx.saved_tensors[2:], ctx.grad_mask, grad_loss)
        else:
            anchors, candidates, anchor_labels, candidate_labels, temperature, positive_weight, max_, log_sum, \
                coef = ctx.saved_tensors[2:]
            mask = needed_grads(ctx)
            grads = backward_op(weights.contiguous(), anchors, candidates, anchor_labels, candidate_labels,
                                temperature, positive_weight, max_, log_sum, n_positive, coef, ctx.denominator,
                                ctx.exclude_self, ctx.eps, mask)
            grads = tuple(g if on else None for g, on in zip(grads, mask))
        # dL_i/dw'_i = -mean_p s_ip on rows with a positive (the others report 0 whatever w'_i)
        grad_weight = torch.where(n_positive > 0, -weights * positive_mean, torch.zeros_like(positive_mean))
        grad_anchors, grad_candidates, grad_temperature = grads
        return (grad_anchors, grad_candidates, None, None, grad_temperature, grad_weight, None, None, None, None,
                None)

    torch.library.register_autograd(name, backward, setup_context=setup_context)


HARD_SETS = 3  # hard_negative_stats: lse over Neg of (1 + beta) s, of beta s, and lse over P of s


def register_hard_negative_op(forward_op, backward_op) -> None:
    """Fake and autograd implementations of a backend's hard_negative_stats_forward and _backward ops: the row
    statistics (lse, mean_P s) are differentiable, the loss is formed from them by torch code
    (reference.hard_negative_row_loss), so autograd chains its gradient into the op's backward."""
    name = _qualname(forward_op)

    @torch.library.register_fake(name)
    def _(anchors, candidates, anchor_labels, candidate_labels, temperature, beta, exclude_self, eps):
        n_rows, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
        per_set = anchors.new_empty((n_rows, HARD_SETS), dtype=acc)
        counts = anchors.new_empty((n_rows,), dtype=torch.int32)
        return (per_set, anchors.new_empty((n_rows,), dtype=acc), counts, torch.empty_like(counts),
                torch.empty_like(per_set), torch.empty_like(per_set))

    @torch.library.register_fake(_qualname(backward_op))
    def _(grad_lse, grad_positive_mean, anchors, candidates, anchor_labels, candidate_labels, temperature, *rest):
        return _fake_input_grads(anchors, candidates, temperature, rest[-1])

    def setup_context(ctx, inputs, output):
        anchors, candidates, anchor_labels, candidate_labels, temperature, beta, exclude_self, eps = inputs
        _, _, n_negative, n_positive, reference, log_sum = output
        ctx.beta, ctx.exclude_self, ctx.eps = beta, exclude_self, eps
        ctx.mark_non_differentiable(n_negative, n_positive, reference, log_sum)
        ctx.save_for_backward(anchors, candidates, anchor_labels, candidate_labels, temperature, n_negative,
                              n_positive, reference, log_sum)

    def backward(ctx, grad_lse, grad_positive_mean, *_unused):
        _no_double_backward()
        anchors, candidates, anchor_labels, candidate_labels, temperature, n_negative, n_positive, reference, \
            log_sum = ctx.saved_tensors
        acc = accumulate_dtype(anchors.dtype)
        # Never None: this registration keeps autograd's default materialize_grads, so an output the loss does
        # not use arrives as zeros.
        mask = needed_grads(ctx)
        grads = backward_op(grad_lse.to(acc).contiguous(), grad_positive_mean.to(acc).contiguous(), anchors,
                            candidates, anchor_labels, candidate_labels, temperature, ctx.beta, n_negative,
                            n_positive, reference, log_sum, ctx.exclude_self, ctx.eps, mask)
        grad_anchors, grad_candidates, grad_temperature = (g if on else None for g, on in zip(grads, mask))
        return grad_anchors, grad_candidates, None, None, grad_temperature, None, None, None

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def register_positive_pair_op(forward_op) -> None:
    """Fake and autograd implementations of a backend's positive_pair_forward op."""
    name = _qualname(forward_op)

    @torch.library.register_fake(name)
    def _(a, b, target, mode, reduction, eps, compute_grad_a, compute_grad_b):
        n_rows, acc = a.shape[0], accumulate_dtype(a.dtype)
        loss = a.new_empty((n_rows,) if reduction == Reduction.NONE else (), dtype=acc)
        grad_a = torch.empty_like(a, memory_format=torch.contiguous_format) if compute_grad_a else a.new_empty((0,))
        grad_b = torch.empty_like(b, memory_format=torch.contiguous_format) if compute_grad_b else b.new_empty((0,))
        return loss, a.new_empty((n_rows,), dtype=acc), grad_a, grad_b, a.new_empty((n_rows,), dtype=acc)

    def setup_context(ctx, inputs, output):
        ctx.reduction, ctx.compute_grad_a, ctx.compute_grad_b = inputs[4], inputs[6], inputs[7]
        loss, cosine, grad_a, grad_b, grad_target = output
        ctx.mark_non_differentiable(cosine, grad_a, grad_b, grad_target)
        ctx.set_materialize_grads(False)  # else autograd zero-fills an R x D "gradient" of grad_a and of grad_b
        ctx.save_for_backward(grad_a, grad_b, grad_target)

    def backward(ctx, grad_loss, *_unused):
        _no_double_backward()
        if grad_loss is None:  # only a non-differentiable output was differentiated (not materialized)
            return (None,) * 8
        grad_a, grad_b, grad_target = ctx.saved_tensors
        row_scale = grad_loss.unsqueeze(1) if ctx.reduction == Reduction.NONE else grad_loss
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
