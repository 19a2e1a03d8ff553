"""Triton kernel for the similarity-controlled positive-pair loss (math: synthcl_fast/reference.py).

In the kernel's terms, for paired rows a_k, b_k and target s*_k (each row first scaled by a power of two,
a~ = a 2^-k with max|a~| in [1, 2): exact, and the sums of squares cannot overflow fp32 for rows of norm 1e30):

    c_k = (a . b) / (max(||a||, eps) max(||b||, eps))
    dL_k/dc_k = 2 (c_k - s*_k) ("two_sided") or -2 relu(s*_k - c_k) ("floor");   dL/ds*_k = -dL_k/dc_k
    dc/da = b / (||a|| ||b||) - c a / ||a||^2    (0 where ||a|| <= eps: a constant row), symmetric for b

Memory-bound: one program per BLOCK_M rows reads a and b once (the whole row in registers when
D <= BLOCK_D, else chunk by chunk, the later passes from L2), computes the three dot products, and writes the
loss, the cosine and the gradients of the reduced loss (rows are independent, so they are final in
forward: the backward only scales them by the upstream gradient, backends/_ops.py).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import PairMode, Reduction, accumulate_dtype, register_positive_pair_op
from .triton_common import TL_DTYPES, cast_output, reduce_rows, round_by_hand
from .triton_support import empty_output, next_power_of_2, split_float

_MAX_WHOLE_ROW = 1024  # features kept in registers in one pass


@triton.jit
def _load_chunk(X_ptr, stride_x, offs_m, mask_m, d0, dim, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = d0 + tl.arange(0, BLOCK_D)
    return tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :],
                   mask=mask_m[:, None] & (offs_d[None, :] < dim), other=0.0).to(ACC)


@triton.jit
def _pow2_scale(amax, PRESCALE: tl.constexpr):
    """2^-k with 2^k at or below amax (|k| <= 126; 1 for a zero row or without PRESCALE)."""
    if PRESCALE:
        k = tl.minimum(tl.maximum(tl.floor(tl.log2(tl.where(amax > 0, amax, 1.0))), -126.0), 126.0)
        return tl.exp2(-k)
    else:
        return tl.full(amax.shape, 1.0, amax.dtype)


@triton.jit
def _store_grads(GA_ptr, GB_ptr, a, b, cross_a, cross_b, radial_a, radial_b, offs_m, mask_m, d0, dim,
                 GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, ROUND_BY_HAND: tl.constexpr, BLOCK_D: tl.constexpr):
    """ga = cross_a b~ - radial_a a~ and gb = cross_b a~ - radial_b b~ on features [d0, d0 + BLOCK_D)."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offsets = offs_m[:, None] * dim + offs_d[None, :]
    mask = mask_m[:, None] & (offs_d[None, :] < dim)
    if GRAD_A:
        ga = cross_a[:, None] * b - radial_a[:, None] * a
        tl.store(GA_ptr + offsets, cast_output(ga, GA_ptr.dtype.element_ty, ROUND_BY_HAND), mask=mask)
    if GRAD_B:
        gb = cross_b[:, None] * a - radial_b[:, None] * b
        tl.store(GB_ptr + offsets, cast_output(gb, GB_ptr.dtype.element_ty, ROUND_BY_HAND), mask=mask)


@triton.jit
def _positive_pair_forward_kernel(
        A_ptr, B_ptr, stride_a, stride_b, TARGET_ptr, LOSS_ptr, COS_ptr, GA_ptr, GB_ptr, GT_ptr,
        n_rows, dim, eps_hi, eps_lo, weight_hi, weight_lo,
        MODE: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, PRESCALE: tl.constexpr, ACC: tl.constexpr,
        ROUND_BY_HAND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, WHOLE_ROW: tl.constexpr):
    """Rows [pid*BLOCK_M, +BLOCK_M): LOSS (per row), COS, GT = dL/ds*, and GA/GB (a's and b's dtype) scaled by
    the reduction weight (1/R for mean, 1 otherwise; the per-row loss is reduced by the caller).
    PRESCALE (fp32/bf16 rows): the rows are scaled by powers of two sa, sb first (float16 rows cannot overflow
    an fp32 sum of squares; float64 rows are summed in float64)."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    weight = tl.cast(weight_hi, ACC) + tl.cast(weight_lo, ACC)
    if WHOLE_ROW:  # the rows stay in registers for the gradient
        a = _load_chunk(A_ptr, stride_a, offs_m, mask_m, 0, dim, ACC, BLOCK_D)
        b = _load_chunk(B_ptr, stride_b, offs_m, mask_m, 0, dim, ACC, BLOCK_D)
        sa = _pow2_scale(tl.max(tl.abs(a), axis=1), PRESCALE)
        sb = _pow2_scale(tl.max(tl.abs(b), axis=1), PRESCALE)
        a = a * sa[:, None]
        b = b * sb[:, None]
        aa = tl.sum(a * a, axis=1)
        bb = tl.sum(b * b, axis=1)
        ab = tl.sum(a * b, axis=1)
    else:
        amax = tl.zeros([BLOCK_M], dtype=ACC)
        bmax = tl.zeros([BLOCK_M], dtype=ACC)
        if PRESCALE:
            for d0 in range(0, dim, BLOCK_D):
                amax = tl.maximum(amax, tl.max(tl.abs(_load_chunk(A_ptr, stride_a, offs_m, mask_m, d0, dim, ACC,
                                                                  BLOCK_D)), axis=1))
                bmax = tl.maximum(bmax, tl.max(tl.abs(_load_chunk(B_ptr, stride_b, offs_m, mask_m, d0, dim, ACC,
                                                                  BLOCK_D)), axis=1))
        sa = _pow2_scale(amax, PRESCALE)
        sb = _pow2_scale(bmax, PRESCALE)
        aa = tl.zeros([BLOCK_M], dtype=ACC)
        bb = tl.zeros([BLOCK_M], dtype=ACC)
        ab = tl.zeros([BLOCK_M], dtype=ACC)
        for d0 in range(0, dim, BLOCK_D):
            a = _load_chunk(A_ptr, stride_a, offs_m, mask_m, d0, dim, ACC, BLOCK_D) * sa[:, None]
            b = _load_chunk(B_ptr, stride_b, offs_m, mask_m, d0, dim, ACC, BLOCK_D) * sb[:, None]
            aa += tl.sum(a * a, axis=1)
            bb += tl.sum(b * b, axis=1)
            ab += tl.sum(a * b, axis=1)

    # In the scaled units: ||a~|| = ||a|| sa, and the clamp max(||a||, eps) becomes max(||a~||, eps sa).
    norm_a_raw = tl.sqrt(aa)
    norm_b_raw = tl.sqrt(bb)
    norm_a = tl.maximum(norm_a_raw, eps * sa)
    norm_b = tl.maximum(norm_b_raw, eps * sb)
    cosine = ab / (norm_a * norm_b)
    target = tl.load(TARGET_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
    if MODE == 0:
        gap = cosine - target
        dc = 2.0 * gap * weight
    else:
        gap = tl.maximum(target - cosine, 0.0)
        dc = -2.0 * gap * weight
    tl.store(LOSS_ptr + offs_m, gap * gap, mask=mask_m)
    tl.store(COS_ptr + offs_m, cosine, mask=mask_m)
    tl.store(GT_ptr + offs_m, -dc, mask=mask_m)

    # dc/da = (b~ / ||b~|| - c a~ / ||a~||) sa / ||a~||, on the scaled rows; a row no longer than eps is a
    # constant (no gradient), as in reference.py: both of its terms vanish.
    live_a, live_b = norm_a_raw > eps * sa, norm_b_raw > eps * sb
    cross_a = tl.where(live_a, dc * sa / (norm_a * norm_b), 0.0)
    cross_b = tl.where(live_b, dc * sb / (norm_a * norm_b), 0.0)
    radial_a = tl.where(live_a, dc * cosine * sa / (norm_a * norm_a), 0.0)
    radial_b = tl.where(live_b, dc * cosine * sb / (norm_b * norm_b), 0.0)
    if WHOLE_ROW:
        _store_grads(GA_ptr, GB_ptr, a, b, cross_a, cross_b, radial_a, radial_b, offs_m, mask_m, 0, dim, GRAD_A, GRAD_B,
                     ROUND_BY_HAND, BLOCK_D)
    elif GRAD_A or GRAD_B:  # another pass over the rows (from L2)
        for d0 in range(0, dim, BLOCK_D):
            a = _load_chunk(A_ptr, stride_a, offs_m, mask_m, d0, dim, ACC, BLOCK_D) * sa[:, None]
            b = _load_chunk(B_ptr, stride_b, offs_m, mask_m, d0, dim, ACC, BLOCK_D) * sb[:, None]
            _store_grads(GA_ptr, GB_ptr, a, b, cross_a, cross_b, radial_a, radial_b, offs_m, mask_m, d0, dim, GRAD_A, GRAD_B,
                         ROUND_BY_HAND, BLOCK_D)


def _tiles(dim: int) -> tuple[int, int, bool, int]:
    """(BLOCK_M, BLOCK_D, WHOLE_ROW, num_warps): ~8K elements of each operand per program."""
    whole = max(16, next_power_of_2(dim))
    if whole <= _MAX_WHOLE_ROW:
        block_d, whole_row = whole, True
    else:
        block_d, whole_row = 256, False
    block_m = max(1, min(64, 8192 // block_d))
    return next_power_of_2(block_m), block_d, whole_row, 4 if block_m * block_d <= 4096 else 8


@torch.library.custom_op("synthcl_fast::triton_positive_pair_forward", mutates_args=())
def positive_pair_forward(a: Tensor, b: Tensor, target: Tensor, mode: int, reduction: int, eps: float,
                          compute_grad_a: bool, compute_grad_b: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, cosine, grad_a, grad_b, grad_target); see backends/_ops.py."""
    torch._check(a.dim() == 2 and a.shape[0] > 0 and a.shape[1] > 0 and a.shape == b.shape and a.dtype == b.dtype,
                 lambda: f"a and b must be non-empty 2-D tensors of one shape and dtype, got {tuple(a.shape)} "
                         f"{a.dtype} and {tuple(b.shape)} {b.dtype}")
    torch._check(a.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 lambda: f"a must be float16/bfloat16/float32/float64, got {a.dtype}")
    n_rows, dim = a.shape
    acc = accumulate_dtype(a.dtype)
    torch._check(target.shape == (n_rows,) and target.dtype == acc,
                 lambda: f"target must have shape ({n_rows},) and dtype {acc}, got {tuple(target.shape)} "
                         f"{target.dtype}")
    torch._check(b.device == a.device and target.device == a.device, lambda: "a, b and target must share a device")
    torch._check(mode in set(PairMode), lambda: f"mode code must be 0 or 1, got {mode}")
    torch._check(reduction in set(Reduction), lambda: f"reduction code must be 0, 1 or 2, got {reduction}")
    torch._check(eps > 0, lambda: f"eps must be positive, got {eps}")
    a_c = a if a.stride(1) == 1 else a.contiguous()
    b_c = b if b.stride(1) == 1 else b.contiguous()
    device = a.device
    loss, cosine, grad_target = (empty_output((n_rows,), acc, device) for _ in range(3))
    grad_a = empty_output((n_rows, dim), a.dtype, device) if compute_grad_a else a.new_empty((0,))
    grad_b = empty_output((n_rows, dim), b.dtype, device) if compute_grad_b else b.new_empty((0,))
    weight = 1.0 / n_rows if reduction == Reduction.MEAN else 1.0
    block_m, block_d, whole_row, num_warps = _tiles(dim)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _positive_pair_forward_kernel[(triton.cdiv(n_rows, block_m),)](
            a_c, b_c, a_c.stride(0), b_c.stride(0), target.contiguous(), loss, cosine,
            grad_a if compute_grad_a else loss, grad_b if compute_grad_b else loss, grad_target,
            n_rows, dim, *split_float(eps), *split_float(weight),
            MODE=mode, GRAD_A=compute_grad_a, GRAD_B=compute_grad_b,
            PRESCALE=a.dtype in (torch.float32, torch.bfloat16), ACC=TL_DTYPES[acc],
            ROUND_BY_HAND=round_by_hand(a.dtype),
            BLOCK_M=block_m, BLOCK_D=block_d, WHOLE_ROW=whole_row, num_warps=num_warps)
        if reduction != Reduction.NONE:
            loss, _ = reduce_rows(loss, None, weight)
    return loss, cosine, grad_a, grad_b, grad_target


register_positive_pair_op(positive_pair_forward)
