"""Triton kernels for the general contrastive op and its symmetric (CLIP) form.

The math (s_ij, m_i, log S_i, L_i, G_ij, the gradients) is stated once, in synthcl_fast/reference.py; the op
contract (outputs, row statistics, compute_grad) in backends/_ops.py. What is particular to these kernels:

    P_ij  = [a_i == c_j and a_i >= 0 and (i != j if exclude_self)]    (the same mask seen from either side)
    column statistics (symmetric op only): m'_j, log S'_j, |P'(j)| over the rows, the transposed problem
    G_ij  = w_i (p_ij - P_ij/|P(i)|)  [+ w'_j (p'_ij - P_ij/|P'(j)|)  symmetric]

How it runs (no R x K buffer anywhere; memory O((R + K) D)):

1. `_prepare_rows_kernel`, once per input (once when Y is X): ||x|| accumulated in float64 and the rows the
   products take, x~, with inv such that u = x~ inv. Products of raw fp32 or bf16 rows of norm 1e20 overflow
   fp32; of x~ they cannot. float32 rows: x~ = u, rounded once (inv = 1). bfloat16 rows: x~ = x 2^-k with
   ||x~|| in [1, 2), exact (only the exponent changes), so 16-bit inputs enter the products exactly and their
   loss has fp32 accuracy. float16 rows cannot overflow an fp32 accumulator and float64 ones cannot overflow at
   all: they are used as they are (no copy). Also dx_scale = 1 / max(||x||, eps) (0 for a row no longer than
   eps: a constant). s = (x~_i . y~_j) (inv_i / t) inv_j, with x~ . y~ from tl.dot (bf16/fp16 tensor cores
   with fp32 accumulation, tf32 for fp32, fp64 for fp64).
2. `_contrastive_forward_kernel`: one program per BLOCK_M rows and per split of the columns; online row
   statistics over BLOCK_N-column tiles (running max m, S = sum exp(s - m), the positive gap
   sum_p (s_p - m) moved with m, |P|), label, -1 and self masks evaluated per tile. With several splits
   (few rows, many columns: MoCo's R=256, K=65536) each writes its statistics and `_merge_row_stats_kernel`
   combines them in a fixed order. The symmetric op runs it a second time on the transposed problem.
3. `_contrastive_backward_kernel`, launched twice (once for one symmetric tensor, below): rows own dU (X's
   gradient) and loop over column tiles; columns own dV (Y's gradient) and loop over row tiles. Each
   recomputes s and G tile by tile (same formula, seen from either side; the symmetric G costs the same as
   a one-direction G), so every gradient element is reduced by one program in a fixed order: deterministic,
   no atomics. The row launch also sums G_ij (s_ij - m_i) per row for the temperature gradient. When one
   program holds a whole gradient row (no split, BLOCK_DO >= D) it applies the normalization backward in its
   epilogue; otherwise it writes fp32 partial sums and `_normalize_backward_kernel` adds them in split order.
4. One-program kernels reduce the row losses (triton_common.reduce_rows: sum in float64, the mean over rows
   with a positive, the upstream weight of each row) and the temperature gradient (`_temperature_grad_kernel`),
   in place of a handful of small torch ops each: at small shapes launches, not flops, set the time.

Work per forward + backward: 2RKD flops (forward) + 2 x 4RKD (each backward launch recomputes s: 2RKD, and
does one gradient product: 2RKD) = 10RKD, against 8RKD for a kernel that accumulates one of the two
gradients with float atomics (non-deterministic). When the candidates are the anchors with the same labels
(NT-Xent, SupCon, PPCL without extra negatives) s and the positive mask are symmetric and a single backward
launch gives the whole gradient, sum_j (G_ij + G_ji) u_j: 2RKD + 4RKD = 6RKD. For D > BLOCK_DO (D > 256 in
16-bit) each output chunk of BLOCK_DO features recomputes s. The symmetric (CLIP) op costs 2 x 2RKD + 8RKD =
12RKD against 20RKD for two one-direction calls. The scalar-loss path (reduction mean/sum) runs the
backward inside the forward op and keeps the gradients, as the CPU kernels do (backends/_ops.py).

Tile sizes are derived from the shape (`_forward_tiles`, `_backward_tiles`; SYNTHCL_FAST_TRITON_TILES
overrides them), not autotuned: autotuning recompiles/benchmarks per new shape and does not run in the
interpreter. The interpreter runs the same plans as an H200 (triton_support.plan_multiprocessors), so the
split-K merge is planned and run on the CPU too; what it cannot execute as the GPU does is listed in
triton_support.INTERPRETER_DIFFERENCES. Floats are never tl.constexpr: the temperature is read from its
tensor, so a learnable temperature never recompiles; eps is passed as two float32 halves
(triton_support.split_float).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import (Denominator, Reduction, accumulate_dtype, register_contrastive_op, register_hard_negative_op,
                   register_variant_op)
from .triton_common import TL_DTYPES, cast_output, inverse_temperature, reduce_rows, round_by_hand
from .triton_support import (empty_output, expsum_dtype, fp32_precision, next_power_of_2, plan_multiprocessors,
                             half_dot_operand, split_float, tile_overrides)

_MEAN, _SUM, _NONE = int(Reduction.MEAN), int(Reduction.SUM), int(Reduction.NONE)


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _prepare_rows_kernel(X_ptr, stride_x, XS_ptr, stride_xs, INV_ptr, DX_SCALE_ptr, n_rows, dim, eps_hi, eps_lo,
                         PREPARE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row: n = ||x|| (float64 sum of squares), c = max(n, eps), DX_SCALE = 1 / c (0 where n <= eps: a
    constant row), and the rows the products take, XS, with INV such that u = XS INV:

        PREPARE == 0 (fp16, fp64)  XS = x (not written), INV = 1 / c
        PREPARE == 1 (bf16)        XS = x 2^-k, exact, with 2^k the power of two at or below c (|k| <= 126),
                                   INV = 2^k / c
        PREPARE == 2 (fp32)        XS = u = x / c rounded to fp32 once, INV = 1 (as plain PyTorch normalizes)
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :],
                    mask=mask_m[:, None] & (offs_d[None, :] < dim), other=0.0).to(tl.float64)
        sum_sq += tl.sum(x * x, axis=1)
    norm = tl.sqrt(sum_sq)
    eps = tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)
    clamped = tl.maximum(norm, eps)
    if PREPARE == 1:
        # Any power of two serves (the scaling is exact either way): a floor(log2) off by one near a power of
        # two only leaves ||x~|| in [0.5, 4).
        k = tl.minimum(tl.maximum(tl.floor(tl.log2(clamped)), -126.0), 126.0)
        scale = tl.exp2(-k)
        inv = 1.0 / (clamped * scale)
    elif PREPARE == 2:
        scale = 1.0 / clamped
        inv = tl.full([BLOCK_M], 1.0, tl.float64)
    else:
        scale = tl.full([BLOCK_M], 1.0, tl.float64)
        inv = 1.0 / clamped
    if PREPARE != 0:
        for d0 in range(0, dim, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = mask_m[:, None] & (offs_d[None, :] < dim)
            x = tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
            if PREPARE == 1:  # exact in fp32 (and a float64 -> bfloat16 cast is what the interpreter mangles)
                xs = x.to(tl.float32) * scale.to(tl.float32)[:, None]
            else:
                xs = x.to(tl.float64) * scale[:, None]
            tl.store(XS_ptr + offs_m[:, None] * stride_xs + offs_d[None, :], xs.to(XS_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(INV_ptr + offs_m, inv.to(ACC), mask=mask_m)
    tl.store(DX_SCALE_ptr + offs_m, tl.where(norm > eps, 1.0 / clamped, 0.0).to(ACC), mask=mask_m)


@triton.jit
def _load_rows(X_ptr, stride_x, offs_m, mask_m, d0, dim, BLOCK_D: tl.constexpr):
    """The (BLOCK_M, BLOCK_D) tile X[offs_m, d0:d0+BLOCK_D], zero outside the matrix, in X's dtype."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    return tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :],
                   mask=mask_m[:, None] & (offs_d[None, :] < dim), other=0.0)


@triton.jit
def _logits_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, Y_ptr, stride_y, offs_n, mask_n, col_scale,
                 dim, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """s = (X~[offs_m] . Y~[offs_n]) * row_scale[:, None] * col_scale[None, :], a (BLOCK_M, BLOCK_N) ACC tile.

    Operands go to tl.dot in DOT (the input dtype on a GPU: tensor cores with ACC accumulation; see
    triton_support.half_dot_operand for the interpreter). With SINGLE_D_CHUNK the caller loaded x_tile (all of
    D) once, outside its loop over tiles; otherwise both operands are loaded chunk by chunk of D."""
    if SINGLE_D_CHUNK:
        y = _load_rows(Y_ptr, stride_y, offs_n, mask_n, 0, dim, BLOCK_D).to(DOT)
        dots = tl.dot(x_tile, tl.trans(y), input_precision=PRECISION, out_dtype=ACC)
    else:
        dots = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        for d0 in range(0, dim, BLOCK_D):
            x = _load_rows(X_ptr, stride_x, offs_m, mask_m, d0, dim, BLOCK_D).to(DOT)
            y = _load_rows(Y_ptr, stride_y, offs_n, mask_n, d0, dim, BLOCK_D).to(DOT)
            dots = tl.dot(x, tl.trans(y), dots, input_precision=PRECISION, out_dtype=ACC)
    return dots * row_scale[:, None] * col_scale[None, :]


@triton.jit
def _tile_masks(offs_m, mask_m, label_x, offs_n, mask_n, label_y, EXCLUDE_SELF: tl.constexpr):
    """(allowed, positive) of a tile: N(i) (in the matrix, and not the self pair when EXCLUDE_SELF) and P(i)
    (allowed, same label, label >= 0)."""
    allowed = mask_m[:, None] & mask_n[None, :]
    if EXCLUDE_SELF:
        allowed = allowed & (offs_m[:, None] != offs_n[None, :])
    return allowed, allowed & (label_x[:, None] == label_y[None, :]) & (label_x[:, None] >= 0)


@triton.jit
def _column_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
                 start_n, n_end, dim, EXCLUDE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                 PRECISION: tl.constexpr):
    """(s, allowed, positive) of the rows' tile against columns [start_n, +BLOCK_N) (those below n_end): the
    forward-side kernels' loop body up to the statistics (the backward keeps its column scales for dV)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_end
    col_scale = tl.load(INV_Y_ptr + offs_n, mask=mask_n, other=1.0).to(ACC)
    label_y = tl.load(LABEL_Y_ptr + offs_n, mask=mask_n, other=-1)
    s = _logits_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, Y_ptr, stride_y, offs_n, mask_n, col_scale,
                     dim, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
    allowed, positive = _tile_masks(offs_m, mask_m, label_x, offs_n, mask_n, label_y, EXCLUDE_SELF)
    return s, allowed, positive


@triton.jit
def _store_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr, NPOS_ptr,
                     LOSS_ptr):
    """m, log S, |P| and L_i = log S - gap / |P| (0 without a positive). An empty denominator (R = K = 1 with
    exclude_self) leaves m = -inf and log S = -inf, with no positive."""
    log_sum = tl.log(tl.where(mask_m, row_sumexp, 1.0)).to(row_gap.dtype)
    loss = tl.where(row_npos > 0, log_sum - row_gap / tl.maximum(row_npos, 1).to(row_gap.dtype), 0.0)
    tl.store(MAX_ptr + offs_m, row_max, mask=mask_m)
    tl.store(LOGSUM_ptr + offs_m, log_sum, mask=mask_m)
    tl.store(NPOS_ptr + offs_m, row_npos, mask=mask_m)
    tl.store(LOSS_ptr + offs_m, loss, mask=mask_m)


@triton.jit
def _store_variant_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr, NPOS_ptr,
                             LOSS_ptr, POSMEAN_ptr):
    """The variants' rows: the shift m (0 without negatives, where log S = -inf), log S over the negatives, |P|,
    LOSS = log S - gap / |P| (the "negatives" loss for w' = 1) and POSMEAN = m + gap / |P| (0 without P)."""
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    log_sum = tl.log(tl.where(mask_m, row_sumexp, 1.0)).to(row_gap.dtype)
    mean_gap = row_gap / tl.maximum(row_npos, 1).to(row_gap.dtype)
    live = row_npos > 0
    tl.store(MAX_ptr + offs_m, shift, mask=mask_m)
    tl.store(LOGSUM_ptr + offs_m, log_sum, mask=mask_m)
    tl.store(NPOS_ptr + offs_m, row_npos, mask=mask_m)
    tl.store(LOSS_ptr + offs_m, tl.where(live, log_sum - mean_gap, 0.0), mask=mask_m)
    tl.store(POSMEAN_ptr + offs_m, tl.where(live, shift + mean_gap, 0.0), mask=mask_m)


@triton.jit
def _contrastive_forward_kernel(
        X_ptr, Y_ptr, stride_x, stride_y, INV_X_ptr, INV_Y_ptr, LABEL_X_ptr, LABEL_Y_ptr, T_ptr,
        PART_MAX_ptr, PART_SUMEXP_ptr, PART_GAP_ptr, PART_NPOS_ptr,
        MAX_ptr, LOGSUM_ptr, NPOS_ptr, LOSS_ptr,
        n_x, n_y, dim, n_per_split,
        EXCLUDE_SELF: tl.constexpr, FINAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D_CHUNK: tl.constexpr,
        DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, VARIANT: tl.constexpr = False,
        POSMEAN_ptr=None, SUM: tl.constexpr = tl.float64):
    """Row statistics of rows [pid_m*BLOCK_M, +BLOCK_M) over columns [pid_s*n_per_split, +n_per_split).

    VARIANT (the variants' statistics, contrastive_variant_forward): m and S over the negatives only (a row
    with no negative yet has m = -inf and its positive gap relative to 0); FINAL then also writes
    POSMEAN = mean_p s_ip, and MAX the shift (m, or 0 without negatives), LOSS = log S - gap / |P|.

    FINAL (a single split): writes MAX (m), LOGSUM (log S), NPOS (int32) and the row loss LOSS. Otherwise writes
    the split's max, sum of exp(s - max), positive gap sum_p (s_p - max) and positive count to PART_*[pid_s]."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_scale = inverse_temperature(T_ptr, ACC) * tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    label_x = tl.load(LABEL_X_ptr + offs_m, mask=mask_m, other=-1)
    x_tile = 0.0
    if SINGLE_D_CHUNK:
        x_tile = _load_rows(X_ptr, stride_x, offs_m, mask_m, 0, dim, BLOCK_D).to(DOT)

    # S is summed in float64 (SUM): in float32 every term added to a running S near 1 (the max's own term) would
    # round at 1.2e-7 of S, most of a small loss log S ~ S - 1. SUM = float32 only measures what that costs
    # (triton_support.expsum_dtype).
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    row_sumexp = tl.zeros([BLOCK_M], dtype=SUM)
    row_gap = tl.zeros([BLOCK_M], dtype=ACC)
    row_npos = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_begin = pid_s * n_per_split
    n_end = tl.minimum(n_begin + n_per_split, n_y)
    for start_n in range(n_begin, n_end, BLOCK_N):
        s, allowed, positive = _column_tile(
            x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
            start_n, n_end, dim, EXCLUDE_SELF, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
        if VARIANT:
            # the positives out of the sum and of its max (a positive far above the negatives must not shift
            # their terms into underflow); the gap is kept relative to the shift, 0 until a negative is seen
            s_negative = tl.where(allowed & ~positive, s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s_negative, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_gap += row_npos.to(ACC) * (tl.where(row_max == float("-inf"), 0.0, row_max) - shift)
            row_sumexp = (row_sumexp * tl.exp(row_max - shift).to(SUM)
                          + tl.sum(tl.exp(s_negative - shift[:, None]).to(SUM), axis=1))
            row_gap += tl.sum(tl.where(positive, s - shift[:, None], 0.0), axis=1)
        else:
            s_allowed = tl.where(allowed, s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s_allowed, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # nothing allowed yet: exp() at 0, not NaN
            shifted = s_allowed - shift[:, None]
            # the earlier tiles' terms, moved from row_max to the new shift (no positive yet: nothing to move)
            row_gap += row_npos.to(ACC) * (tl.where(row_npos > 0, row_max, shift) - shift)
            row_sumexp = (row_sumexp * tl.exp(row_max - shift).to(SUM)
                          + tl.sum(tl.exp(shifted).to(SUM), axis=1))
            row_gap += tl.sum(tl.where(positive, shifted, 0.0), axis=1)
        row_npos += tl.sum(positive.to(tl.int32), axis=1)
        row_max = new_max

    if FINAL:
        if VARIANT:
            _store_variant_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                                     NPOS_ptr, LOSS_ptr, POSMEAN_ptr)
        else:
            _store_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr, NPOS_ptr,
                             LOSS_ptr)
    else:
        offs_part = pid_s * n_x + offs_m
        tl.store(PART_MAX_ptr + offs_part, row_max, mask=mask_m)
        tl.store(PART_SUMEXP_ptr + offs_part, row_sumexp, mask=mask_m)
        tl.store(PART_GAP_ptr + offs_part, row_gap, mask=mask_m)
        tl.store(PART_NPOS_ptr + offs_part, row_npos, mask=mask_m)


@triton.jit
def _hard_stats_kernel(
        X_ptr, Y_ptr, stride_x, stride_y, INV_X_ptr, INV_Y_ptr, LABEL_X_ptr, LABEL_Y_ptr, T_ptr, SCALES_ptr,
        PART_REF_ptr, PART_SUM_ptr, PART_POSSUM_ptr, PART_NNEG_ptr, PART_NPOS_ptr,
        LSE_ptr, POSMEAN_ptr, NNEG_ptr, NPOS_ptr, REF_ptr, LOGSUM_ptr, n_x, n_y, dim, n_per_split,
        EXCLUDE_SELF: tl.constexpr, FINAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
        PRECISION: tl.constexpr):
    """HCL's row statistics (the hard_negative_stats op; csrc/contrastive_cpu.cpp states them and their
    gradient) of rows [pid_m*BLOCK_M, +BLOCK_M) over columns [pid_s*n_per_split, +n_per_split): for each set k
    (Neg(i) with the scale c_0 = 1 + beta, Neg(i) with c_1 = beta, P(i) with 1), online over the column tiles,
    the reference r_k (the max of s over the set; the min for a negative scale; 0 while the set is empty) and
    S_k = sum e^{c_k (s - r_k)} in float64, sum_p s_ip, |Neg(i)|, |P(i)|. FINAL (a single split): the op's
    outputs (_store_hard_stats); otherwise the split's statistics to PART_*[pid_s] (PART_REF, PART_SUM: 3 per
    row), merged by _merge_hard_stats_kernel."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_scale = inverse_temperature(T_ptr, ACC) * tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    label_x = tl.load(LABEL_X_ptr + offs_m, mask=mask_m, other=-1)
    c0 = tl.load(SCALES_ptr).to(ACC)
    c1 = tl.load(SCALES_ptr + 1).to(ACC)
    x_tile = 0.0
    if SINGLE_D_CHUNK:
        x_tile = _load_rows(X_ptr, stride_x, offs_m, mask_m, 0, dim, BLOCK_D).to(DOT)
    negative_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    negative_min = tl.full([BLOCK_M], float("inf"), dtype=ACC)
    positive_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    ref0 = tl.zeros([BLOCK_M], dtype=ACC)
    ref1 = tl.zeros([BLOCK_M], dtype=ACC)
    ref2 = tl.zeros([BLOCK_M], dtype=ACC)
    sum0 = tl.zeros([BLOCK_M], dtype=tl.float64)
    sum1 = tl.zeros([BLOCK_M], dtype=tl.float64)
    sum2 = tl.zeros([BLOCK_M], dtype=tl.float64)
    positive_sum = tl.zeros([BLOCK_M], dtype=tl.float64)
    n_negative = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_positive = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_begin = pid_s * n_per_split
    n_end = tl.minimum(n_begin + n_per_split, n_y)
    for start_n in range(n_begin, n_end, BLOCK_N):
        s, allowed, positive = _column_tile(
            x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
            start_n, n_end, dim, EXCLUDE_SELF, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
        negative = allowed & ~positive
        negative_max = tl.maximum(negative_max, tl.max(tl.where(negative, s, float("-inf")), axis=1))
        negative_min = tl.minimum(negative_min, tl.min(tl.where(negative, s, float("inf")), axis=1))
        positive_max = tl.maximum(positive_max, tl.max(tl.where(positive, s, float("-inf")), axis=1))
        # the new references (0 while a set has no element: its sum is still 0), the earlier terms moved to them
        new0 = tl.where(c0 >= 0, negative_max, negative_min)
        new1 = tl.where(c1 >= 0, negative_max, negative_min)
        new0 = tl.where(tl.abs(new0) == float("inf"), 0.0, new0)
        new1 = tl.where(tl.abs(new1) == float("inf"), 0.0, new1)
        new2 = tl.where(positive_max == float("-inf"), 0.0, positive_max)
        sum0 = tl.where(sum0 == 0, 0.0, sum0 * tl.exp((c0 * (ref0 - new0)).to(tl.float64)))
        sum1 = tl.where(sum1 == 0, 0.0, sum1 * tl.exp((c1 * (ref1 - new1)).to(tl.float64)))
        sum2 = tl.where(sum2 == 0, 0.0, sum2 * tl.exp((ref2 - new2).to(tl.float64)))
        ref0, ref1, ref2 = new0, new1, new2
        e0 = tl.exp(tl.where(negative, c0 * (s - ref0[:, None]), 0.0))
        e1 = tl.exp(tl.where(negative, c1 * (s - ref1[:, None]), 0.0))
        e2 = tl.exp(tl.where(positive, s - ref2[:, None], 0.0))
        sum0 += tl.sum(tl.where(negative, e0, 0.0).to(tl.float64), axis=1)
        sum1 += tl.sum(tl.where(negative, e1, 0.0).to(tl.float64), axis=1)
        sum2 += tl.sum(tl.where(positive, e2, 0.0).to(tl.float64), axis=1)
        positive_sum += tl.sum(tl.where(positive, s, 0.0).to(tl.float64), axis=1)
        n_negative += tl.sum(negative.to(tl.int32), axis=1)
        n_positive += tl.sum(positive.to(tl.int32), axis=1)
    if FINAL:
        _store_hard_stats(ref0, ref1, ref2, sum0, sum1, sum2, positive_sum, n_negative, n_positive, c0, c1, offs_m,
                          mask_m, LSE_ptr, POSMEAN_ptr, NNEG_ptr, NPOS_ptr, REF_ptr, LOGSUM_ptr, ACC)
    else:
        offs_part = pid_s * n_x + offs_m
        tl.store(PART_REF_ptr + offs_part * 3, ref0, mask=mask_m)
        tl.store(PART_REF_ptr + offs_part * 3 + 1, ref1, mask=mask_m)
        tl.store(PART_REF_ptr + offs_part * 3 + 2, ref2, mask=mask_m)
        tl.store(PART_SUM_ptr + offs_part * 3, sum0, mask=mask_m)
        tl.store(PART_SUM_ptr + offs_part * 3 + 1, sum1, mask=mask_m)
        tl.store(PART_SUM_ptr + offs_part * 3 + 2, sum2, mask=mask_m)
        tl.store(PART_POSSUM_ptr + offs_part, positive_sum, mask=mask_m)
        tl.store(PART_NNEG_ptr + offs_part, n_negative, mask=mask_m)
        tl.store(PART_NPOS_ptr + offs_part, n_positive, mask=mask_m)


@triton.jit
def _merge_hard_stats_kernel(PART_REF_ptr, PART_SUM_ptr, PART_POSSUM_ptr, PART_NNEG_ptr, PART_NPOS_ptr, SCALES_ptr,
                             LSE_ptr, POSMEAN_ptr, NNEG_ptr, NPOS_ptr, REF_ptr, LOGSUM_ptr, n_x, n_splits,
                             ACC: tl.constexpr, BLOCK_M: tl.constexpr):
    """Merges _hard_stats_kernel's splits in split order (deterministic): per set the row's reference is the
    extreme (in the direction of c_k) of the references of the splits where the set has an element, and each
    such split's S_k is moved to it (every exponent <= 0); sums and counts added."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    c0 = tl.load(SCALES_ptr).to(ACC)
    c1 = tl.load(SCALES_ptr + 1).to(ACC)
    high0 = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    low0 = tl.full([BLOCK_M], float("inf"), dtype=ACC)
    high1 = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    low1 = tl.full([BLOCK_M], float("inf"), dtype=ACC)
    high2 = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    for split in range(0, n_splits):
        offs_part = split * n_x + offs_m
        has_negative = tl.load(PART_NNEG_ptr + offs_part, mask=mask_m, other=0) > 0
        has_positive = tl.load(PART_NPOS_ptr + offs_part, mask=mask_m, other=0) > 0
        part0 = tl.load(PART_REF_ptr + offs_part * 3, mask=mask_m, other=0.0)
        part1 = tl.load(PART_REF_ptr + offs_part * 3 + 1, mask=mask_m, other=0.0)
        part2 = tl.load(PART_REF_ptr + offs_part * 3 + 2, mask=mask_m, other=0.0)
        high0 = tl.maximum(high0, tl.where(has_negative, part0, float("-inf")))
        low0 = tl.minimum(low0, tl.where(has_negative, part0, float("inf")))
        high1 = tl.maximum(high1, tl.where(has_negative, part1, float("-inf")))
        low1 = tl.minimum(low1, tl.where(has_negative, part1, float("inf")))
        high2 = tl.maximum(high2, tl.where(has_positive, part2, float("-inf")))
    # (r_0 and r_1 merged apart: with c_0 >= 0 > c_1 one is the negatives' max, the other their min)
    ref0 = tl.where(c0 >= 0, high0, low0)
    ref1 = tl.where(c1 >= 0, high1, low1)
    ref0 = tl.where(tl.abs(ref0) == float("inf"), 0.0, ref0)
    ref1 = tl.where(tl.abs(ref1) == float("inf"), 0.0, ref1)
    ref2 = tl.where(high2 == float("-inf"), 0.0, high2)
    sum0 = tl.zeros([BLOCK_M], dtype=tl.float64)
    sum1 = tl.zeros([BLOCK_M], dtype=tl.float64)
    sum2 = tl.zeros([BLOCK_M], dtype=tl.float64)
    positive_sum = tl.zeros([BLOCK_M], dtype=tl.float64)
    n_negative = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_positive = tl.zeros([BLOCK_M], dtype=tl.int32)
    for split in range(0, n_splits):
        offs_part = split * n_x + offs_m
        part_negative = tl.load(PART_NNEG_ptr + offs_part, mask=mask_m, other=0)
        part_positive = tl.load(PART_NPOS_ptr + offs_part, mask=mask_m, other=0)
        part0 = tl.load(PART_REF_ptr + offs_part * 3, mask=mask_m, other=0.0)
        part1 = tl.load(PART_REF_ptr + offs_part * 3 + 1, mask=mask_m, other=0.0)
        part2 = tl.load(PART_REF_ptr + offs_part * 3 + 2, mask=mask_m, other=0.0)
        # a split without elements of a set has S_k = 0: nothing to move
        sum0 += tl.where(part_negative > 0, tl.load(PART_SUM_ptr + offs_part * 3, mask=mask_m, other=0.0)
                         * tl.exp((c0 * (part0 - ref0)).to(tl.float64)), 0.0)
        sum1 += tl.where(part_negative > 0, tl.load(PART_SUM_ptr + offs_part * 3 + 1, mask=mask_m, other=0.0)
                         * tl.exp((c1 * (part1 - ref1)).to(tl.float64)), 0.0)
        sum2 += tl.where(part_positive > 0, tl.load(PART_SUM_ptr + offs_part * 3 + 2, mask=mask_m, other=0.0)
                         * tl.exp((part2 - ref2).to(tl.float64)), 0.0)
        positive_sum += tl.load(PART_POSSUM_ptr + offs_part, mask=mask_m, other=0.0)
        n_negative += part_negative
        n_positive += part_positive
    _store_hard_stats(ref0, ref1, ref2, sum0, sum1, sum2, positive_sum, n_negative, n_positive, c0, c1, offs_m,
                      mask_m, LSE_ptr, POSMEAN_ptr, NNEG_ptr, NPOS_ptr, REF_ptr, LOGSUM_ptr, ACC)


@triton.jit
def _store_hard_stats(ref0, ref1, ref2, sum0, sum1, sum2, positive_sum, n_negative, n_positive, c0, c1, offs_m,
                      mask_m, LSE_ptr, POSMEAN_ptr, NNEG_ptr, NPOS_ptr, REF_ptr, LOGSUM_ptr, ACC: tl.constexpr):
    """The hard_negative_stats op's outputs: LSE (R, 3) = c_k r_k + log S_k (-inf for an empty set), REF (r_k, 0
    for an empty set), LOGSUM (log S_k), POSMEAN = mean_p s_ip, NNEG = |Neg(i)|, NPOS = |P(i)|."""
    has_negative = n_negative > 0
    has_positive = n_positive > 0
    # log S (-inf for an empty set, as the CPU kernels; the log of 0 itself is not taken)
    log0 = tl.where(has_negative, tl.log(tl.where(has_negative, sum0, 1.0)), float("-inf")).to(ACC)
    log1 = tl.where(has_negative, tl.log(tl.where(has_negative, sum1, 1.0)), float("-inf")).to(ACC)
    log2 = tl.where(has_positive, tl.log(tl.where(has_positive, sum2, 1.0)), float("-inf")).to(ACC)
    offs3 = offs_m * 3
    tl.store(LSE_ptr + offs3, tl.where(has_negative, c0 * ref0 + log0, float("-inf")), mask=mask_m)
    tl.store(LSE_ptr + offs3 + 1, tl.where(has_negative, c1 * ref1 + log1, float("-inf")), mask=mask_m)
    tl.store(LSE_ptr + offs3 + 2, tl.where(has_positive, ref2 + log2, float("-inf")), mask=mask_m)
    tl.store(REF_ptr + offs3, ref0, mask=mask_m)
    tl.store(REF_ptr + offs3 + 1, ref1, mask=mask_m)
    tl.store(REF_ptr + offs3 + 2, ref2, mask=mask_m)
    tl.store(LOGSUM_ptr + offs3, log0, mask=mask_m)
    tl.store(LOGSUM_ptr + offs3 + 1, log1, mask=mask_m)
    tl.store(LOGSUM_ptr + offs3 + 2, log2, mask=mask_m)
    tl.store(POSMEAN_ptr + offs_m, (positive_sum / tl.maximum(n_positive, 1).to(tl.float64)).to(ACC), mask=mask_m)
    tl.store(NNEG_ptr + offs_m, n_negative, mask=mask_m)
    tl.store(NPOS_ptr + offs_m, n_positive, mask=mask_m)


@triton.jit
def _merge_row_stats_kernel(PART_MAX_ptr, PART_SUMEXP_ptr, PART_GAP_ptr, PART_NPOS_ptr,
                            MAX_ptr, LOGSUM_ptr, NPOS_ptr, LOSS_ptr, n_x, n_splits,
                            ACC: tl.constexpr, BLOCK_M: tl.constexpr, VARIANT: tl.constexpr = False,
                            POSMEAN_ptr=None, SUM: tl.constexpr = tl.float64):
    """Merges the per-split row statistics in split order (deterministic): each split's sum and positive gap
    are moved from its own max to the row max, then added. VARIANT: a split's gap is relative to its max, or
    to 0 where it saw no negative (max -inf), and the variants' statistics are stored."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    for split in range(0, n_splits):
        row_max = tl.maximum(row_max, tl.load(PART_MAX_ptr + split * n_x + offs_m, mask=mask_m, other=0.0))
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sumexp = tl.zeros([BLOCK_M], dtype=SUM)
    row_gap = tl.zeros([BLOCK_M], dtype=ACC)
    row_npos = tl.zeros([BLOCK_M], dtype=tl.int32)
    for split in range(0, n_splits):
        offs_part = split * n_x + offs_m
        part_max = tl.load(PART_MAX_ptr + offs_part, mask=mask_m, other=float("-inf"))
        part_npos = tl.load(PART_NPOS_ptr + offs_part, mask=mask_m, other=0)
        row_sumexp += (tl.load(PART_SUMEXP_ptr + offs_part, mask=mask_m, other=0.0)
                       * tl.exp(part_max - shift).to(SUM))
        row_gap += tl.load(PART_GAP_ptr + offs_part, mask=mask_m, other=0.0)
        if VARIANT:
            row_gap += part_npos.to(ACC) * (tl.where(part_max == float("-inf"), 0.0, part_max) - shift)
        else:
            row_gap += part_npos.to(ACC) * (tl.where(part_npos > 0, part_max, shift) - shift)
        row_npos += part_npos
    if VARIANT:
        _store_variant_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                                 NPOS_ptr, LOSS_ptr, POSMEAN_ptr)
    else:
        _store_row_stats(row_max, row_sumexp, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr, NPOS_ptr,
                         LOSS_ptr)


@triton.jit
def _positive_terms_kernel(
        X_ptr, Y_ptr, stride_x, stride_y, INV_X_ptr, INV_Y_ptr, LABEL_X_ptr, LABEL_Y_ptr, T_ptr,
        MAX_ptr, LOGSUM_ptr, SOFTPLUS_ptr, SIGMOID_ptr, n_x, n_y, dim,
        EXCLUDE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """"per_positive", once m and S (over the negatives) are final: per row sum_p softplus(z_ip) and
    sum_p sigmoid(z_ip), z_ip = lse_Neg(i) - s_ip = log S_i - (s_ip - m_i) (-inf without negatives: both 0), in
    float64, over every column. log(1 + e) for e = e^{-|z|} < 1e-3 by its series: a loss of size e^{-200} (a
    positive far above its negatives) keeps its relative accuracy."""
    pid_m = tl.program_id(0).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_scale = inverse_temperature(T_ptr, ACC) * tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    label_x = tl.load(LABEL_X_ptr + offs_m, mask=mask_m, other=-1)
    row_max = tl.load(MAX_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
    log_sum = tl.load(LOGSUM_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
    x_tile = 0.0
    if SINGLE_D_CHUNK:
        x_tile = _load_rows(X_ptr, stride_x, offs_m, mask_m, 0, dim, BLOCK_D).to(DOT)
    softplus_sum = tl.zeros([BLOCK_M], dtype=tl.float64)
    sigmoid_sum = tl.zeros([BLOCK_M], dtype=tl.float64)
    for start_n in range(0, n_y, BLOCK_N):
        s, allowed, positive = _column_tile(
            x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
            start_n, n_y, dim, EXCLUDE_SELF, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
        z = (log_sum[:, None] - (s - row_max[:, None])).to(tl.float64)
        e = tl.exp(-tl.abs(z))
        log1p_e = tl.where(e < 1e-3, e * (1.0 - e * (0.5 - e / 3.0)), tl.log(1.0 + e))
        softplus = tl.maximum(z, 0.0) + log1p_e
        sigmoid = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        softplus_sum += tl.sum(tl.where(positive, softplus, 0.0), axis=1)
        sigmoid_sum += tl.sum(tl.where(positive, sigmoid, 0.0), axis=1)
    tl.store(SOFTPLUS_ptr + offs_m, softplus_sum, mask=mask_m)
    tl.store(SIGMOID_ptr + offs_m, sigmoid_sum, mask=mask_m)


@triton.jit
def _variant_term(s, row_max, log_sum, n_positive, weight, coef, positive_weight, positive, AXIS: tl.constexpr,
                  PER_POSITIVE: tl.constexpr):
    """The variants' (G, s - m) (reference.contrastive_loss_variant; m, S over the negatives), x = s - m - log S:
        negative: w coef e^x          (coef: 1 for "negatives", c_i for "per_positive"; x <= 0)
        positive: w (sigmoid(x) / |P| [per_positive] - w' / |P|) = w ((1 - w') - sigmoid(-x)) / |P| [per_positive]
    0 for a row without positives. AXIS as in _softmax_term."""
    valid = n_positive > 0
    row_max = tl.where(valid, row_max, 0.0)
    log_sum = tl.where(valid, log_sum, 0.0)
    inv_npos = 1.0 / tl.maximum(n_positive, 1).to(s.dtype)
    if AXIS == 0:
        row_max, log_sum, inv_npos = row_max[:, None], log_sum[:, None], inv_npos[:, None]
        weight, coef, positive_weight, valid = weight[:, None], coef[:, None], positive_weight[:, None], valid[:, None]
    else:
        row_max, log_sum, inv_npos = row_max[None, :], log_sum[None, :], inv_npos[None, :]
        weight, coef, positive_weight, valid = weight[None, :], coef[None, :], positive_weight[None, :], valid[None, :]
    shifted = s - row_max
    x = shifted - log_sum
    e = tl.exp(tl.where(positive, -tl.abs(x), x))  # e^{-|x|} for a positive: its sigmoid without overflow
    positive_term = -positive_weight * inv_npos
    if PER_POSITIVE:
        # sigmoid(x) - w' = (1 - w') - sigmoid(-x): at a small loss x >> 0 and sigmoid(x) -> 1, and a rounded
        # sigmoid(x) minus w' = 1 would keep sigmoid(-x) (~ the loss) only to eps absolute
        positive_term = (1.0 - positive_weight - tl.where(x <= 0, 1.0 / (1.0 + e), e / (1.0 + e))) * inv_npos
    term = weight * tl.where(positive, positive_term, coef * e)
    return tl.where(valid, term, 0.0), shifted


@triton.jit
def _load_hard_stats(REF_ptr, LOGSUM_ptr, A_ptr, SCALES_ptr, offs, mask, ACC: tl.constexpr):
    """Per row of one side (hard_negative_stats, VARIANT 3): the references and log-sums of the three sets
    (REF, LOGSUM: 3 per row; empty sets 0) and the coefficients a (A: 4 per row), and the scales c_0, c_1."""
    o3, o4 = offs * 3, offs * 4
    return (tl.load(REF_ptr + o3, mask=mask, other=0.0).to(ACC), tl.load(REF_ptr + o3 + 1, mask=mask, other=0.0).to(ACC),
            tl.load(REF_ptr + o3 + 2, mask=mask, other=0.0).to(ACC),
            tl.load(LOGSUM_ptr + o3, mask=mask, other=0.0).to(ACC),
            tl.load(LOGSUM_ptr + o3 + 1, mask=mask, other=0.0).to(ACC),
            tl.load(LOGSUM_ptr + o3 + 2, mask=mask, other=0.0).to(ACC),
            tl.load(A_ptr + o4, mask=mask, other=0.0).to(ACC), tl.load(A_ptr + o4 + 1, mask=mask, other=0.0).to(ACC),
            tl.load(A_ptr + o4 + 2, mask=mask, other=0.0).to(ACC), tl.load(A_ptr + o4 + 3, mask=mask, other=0.0).to(ACC),
            tl.load(SCALES_ptr).to(ACC), tl.load(SCALES_ptr + 1).to(ACC))


@triton.jit
def _hard_term(s, r0, r1, r2, l0, l1, l2, a0, a1, a2, a3, c0, c1, positive, AXIS: tl.constexpr):
    """(G, s - r_0) of the hard-negative statistics (csrc/contrastive_cpu.cpp, hard_negative_stats):
        negative: a_0 e^{c_0 (s - r_0) - log S_0} + a_1 e^{c_1 (s - r_1) - log S_1}
        positive: a_2 e^{(s - r_2) - log S_2} + a_3                       (every exponent <= 0)
    a: the upstream gradients times c_k (0 for an empty set), a_3 = dLoss/dmean_P s / |P|. AXIS as in
    _softmax_term."""
    if AXIS == 0:
        r0, r1, r2, l0, l1, l2 = r0[:, None], r1[:, None], r2[:, None], l0[:, None], l1[:, None], l2[:, None]
        a0, a1, a2, a3 = a0[:, None], a1[:, None], a2[:, None], a3[:, None]
    else:
        r0, r1, r2, l0, l1, l2 = r0[None, :], r1[None, :], r2[None, :], l0[None, :], l1[None, :], l2[None, :]
        a0, a1, a2, a3 = a0[None, :], a1[None, :], a2[None, :], a3[None, :]
    e0 = tl.exp(tl.where(positive, 0.0, c0 * (s - r0) - l0))
    e1 = tl.exp(tl.where(positive, 0.0, c1 * (s - r1) - l1))
    e2 = tl.exp(tl.where(positive, (s - r2) - l2, 0.0))
    return tl.where(positive, a2 * e2 + a3, a0 * e0 + a1 * e1), s - r0


@triton.jit
def _exp_minus(x, b):
    """e^x - b (0 <= b <= 1) without rounding e^x first, as csrc/common.h's exp_minus: x = n ln2 + r (|r| <= ln2/2),
    e^x - b = 2^n expm1(r) + (2^n - b), expm1(r) by its Taylor series in Horner form, r (1 + r/2 (1 + r/3 (...)))
    to r^9 / 9! in float32 (remainder < 3e-10 relative), r^17 / 17! in float64 (< 1e-22), 2^n from the exponent
    bits (exact). Where b is a power of two near e^x (b = 1/|P| = 1 for one positive at a small loss) 2^n - b is
    exact and the difference keeps expm1(r)'s relative accuracy; e^x rounded first keeps it only to eps absolute.
    b = 0: e^x. Clamped below (e^x ~ 1e-38 in float32, 1e-308 in float64), like exp_nonpositive."""
    if x.dtype == tl.float64:
        x = tl.maximum(x, -708.0)
        n = tl.floor(x * 1.4426950408889634 + 0.5)
        r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10
        series = tl.full(x.shape, 1.0, x.dtype)
        for k in tl.static_range(17, 1, -1):
            series = 1.0 + r * series / k
        n = tl.where(n == n, n, 0.0).to(tl.int64)
        scale = ((n + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        x = tl.maximum(x, -87.0)
        n = tl.floor(x * 1.44269504 + 0.5)
        r = (x - n * 0.693359375) + n * 2.12194440e-4
        series = tl.full(x.shape, 1.0, x.dtype)
        for k in tl.static_range(9, 1, -1):
            series = 1.0 + r * series / k
        n = tl.where(n == n, n, 0.0).to(tl.int32)
        scale = ((n + 127) << 23).to(tl.float32, bitcast=True)
    return scale * (r * series) + (scale - b)


@triton.jit
def _softmax_term(s, row_max, log_sum, n_positive, weight, positive, AXIS: tl.constexpr):
    """(w (p - P/|P|), s - m) for statistics along rows (AXIS 0: one value per tile row) or columns (AXIS 1),
    p = exp(x), x = (s - m) - log S; the term is exactly 0 for a row without positives (whose m may be -inf: no
    inf * 0 = NaN). p - [positive] / |P| is formed by _exp_minus, not as a rounded e^x minus 1/|P|: at a small loss
    p -> 1/|P| (for |P| = 1, x = -L_i), and e^x rounded near 1 keeps p - 1 only to eps absolute, eps / L_i relative
    (the error of a plain fp32 cross-entropy's softmax - 1)."""
    valid = n_positive > 0
    row_max = tl.where(valid, row_max, 0.0)
    log_sum = tl.where(valid, log_sum, 0.0)
    inv_npos = 1.0 / tl.maximum(n_positive, 1).to(s.dtype)
    if AXIS == 0:
        shifted = s - row_max[:, None]
        term = weight[:, None] * _exp_minus(shifted - log_sum[:, None], tl.where(positive, inv_npos[:, None], 0.0))
        return tl.where(valid[:, None], term, 0.0), shifted
    else:
        shifted = s - row_max[None, :]
        term = weight[None, :] * _exp_minus(shifted - log_sum[None, :], tl.where(positive, inv_npos[None, :], 0.0))
        return tl.where(valid[None, :], term, 0.0), shifted


@triton.jit
def _contrastive_backward_kernel(
        X_ptr, Y_ptr, stride_x, stride_y, INV_X_ptr, INV_Y_ptr, DX_SCALE_ptr, LABEL_X_ptr, LABEL_Y_ptr, T_ptr,
        MAX_X_ptr, LOGSUM_X_ptr, NPOS_X_ptr, W_X_ptr, stride_wx,
        MAX_Y_ptr, LOGSUM_Y_ptr, NPOS_Y_ptr, W_Y_ptr, stride_wy,
        GSCALE_ptr, DX_ptr, stride_dx, GS_ptr,
        n_x, n_y, dim, n_per_split,
        EXCLUDE_SELF: tl.constexpr, OWN_TERM: tl.constexpr, OTHER_TERM: tl.constexpr, COMPUTE_GS: tl.constexpr,
        FINAL: tl.constexpr, USE_GSCALE: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
        SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        VARIANT: tl.constexpr = 0, COEF_X_ptr=None, WP_X_ptr=None, COEF_Y_ptr=None, WP_Y_ptr=None,
        OWN_GRAD: tl.constexpr = True):
    """The gradient of X (the rows this program owns) through G: dU = sum_j G_ij v_j over the columns of split
    pid_s, features [pid_d*BLOCK_DO, +BLOCK_DO). X's own statistics give the term OWN_TERM, Y's the term
    OTHER_TERM (the column launch swaps X and Y, so G appears transposed and both launches share this code).

    FINAL: writes dX = normalize-backward((1/t) dU) in X's dtype. Otherwise writes dU (fp32/fp64) to
    DX[pid_s, row, feature] for _normalize_backward_kernel. COMPUTE_GS: GS[pid_s, row] = sum_j G_ij (s_ij - m),
    each term shifted by the max of the statistics it comes from. USE_GSCALE (float16): G is divided by the
    largest bound on |G| (_gradient_bound) before it is rounded to float16 for the product (w ~ 1/R would
    underflow float16, w' G would overflow it) and the product multiplied back. VARIANT (1 "negatives", 2 "per_positive"): G of _variant_term, with each side's c and w'
    (COEF_*, WP_*). VARIANT 3 (hard_negative_stats): G of _hard_term, each side's statistics in MAX_* (the
    references, 3 per row), LOGSUM_* (3 per row), W_* (the coefficients, 4 per row) and COEF_* (c_0, c_1).
    OWN_GRAD False (X frozen, the temperature learnable): only GS, no product and nothing written to DX."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    pid_d = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    mask_do = offs_do < dim
    inv_t = inverse_temperature(T_ptr, ACC)
    inv_x = tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    # the forward kernel's row scale, bit for bit: the recomputed s must round as the s its statistics came
    # from (1 ulp of s = 1/t moves p = exp(s - m - log S) by ~eps/t, and the temperature gradient by ~eps/t^3)
    row_scale = inv_t * inv_x
    label_x = tl.load(LABEL_X_ptr + offs_m, mask=mask_m, other=-1)
    if OWN_TERM and VARIANT == 3:
        r0x, r1x, r2x, l0x, l1x, l2x, a0x, a1x, a2x, a3x, c0, c1 = _load_hard_stats(
            MAX_X_ptr, LOGSUM_X_ptr, W_X_ptr, COEF_X_ptr, offs_m, mask_m, ACC)
    elif OWN_TERM:
        max_x = tl.load(MAX_X_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
        logsum_x = tl.load(LOGSUM_X_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
        npos_x = tl.load(NPOS_X_ptr + offs_m, mask=mask_m, other=0)
        w_x = tl.load(W_X_ptr + offs_m * stride_wx, mask=mask_m, other=0.0).to(ACC)
        if VARIANT:
            coef_x = tl.load(COEF_X_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
            wp_x = tl.load(WP_X_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
    if USE_GSCALE:
        g_scale = tl.load(GSCALE_ptr).to(ACC)
    x_tile = 0.0
    if SINGLE_D_CHUNK:
        x_tile = _load_rows(X_ptr, stride_x, offs_m, mask_m, 0, dim, BLOCK_D).to(DOT)

    du = tl.zeros([BLOCK_M, BLOCK_DO], dtype=ACC)
    gs = tl.zeros([BLOCK_M], dtype=ACC)
    n_begin = pid_s * n_per_split
    n_end = tl.minimum(n_begin + n_per_split, n_y)
    for start_n in range(n_begin, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        inv_y = tl.load(INV_Y_ptr + offs_n, mask=mask_n, other=1.0).to(ACC)
        label_y = tl.load(LABEL_Y_ptr + offs_n, mask=mask_n, other=-1)
        s = _logits_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, Y_ptr, stride_y, offs_n,
                         mask_n, inv_y, dim, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
        allowed, positive = _tile_masks(offs_m, mask_m, label_x, offs_n, mask_n, label_y, EXCLUDE_SELF)
        g = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        if OWN_TERM:
            if VARIANT == 3:
                term, shifted = _hard_term(s, r0x, r1x, r2x, l0x, l1x, l2x, a0x, a1x, a2x, a3x, c0, c1, positive,
                                           0)
            elif VARIANT:
                term, shifted = _variant_term(s, max_x, logsum_x, npos_x, w_x, coef_x, wp_x, positive, 0,
                                              VARIANT == 2)
            else:
                term, shifted = _softmax_term(s, max_x, logsum_x, npos_x, w_x, positive, 0)
            term = tl.where(allowed, term, 0.0)
            g += term
            if COMPUTE_GS:
                gs += tl.sum(term * tl.where(allowed, shifted, 0.0), axis=1)
        if OTHER_TERM:
            if VARIANT == 3:
                r0y, r1y, r2y, l0y, l1y, l2y, a0y, a1y, a2y, a3y, c0y, c1y = _load_hard_stats(
                    MAX_Y_ptr, LOGSUM_Y_ptr, W_Y_ptr, COEF_Y_ptr, offs_n, mask_n, ACC)
                term, shifted = _hard_term(s, r0y, r1y, r2y, l0y, l1y, l2y, a0y, a1y, a2y, a3y, c0y, c1y, positive,
                                           1)
            else:
                max_y = tl.load(MAX_Y_ptr + offs_n, mask=mask_n, other=0.0).to(ACC)
                logsum_y = tl.load(LOGSUM_Y_ptr + offs_n, mask=mask_n, other=0.0).to(ACC)
                npos_y = tl.load(NPOS_Y_ptr + offs_n, mask=mask_n, other=0)
                w_y = tl.load(W_Y_ptr + offs_n * stride_wy, mask=mask_n, other=0.0).to(ACC)
                if VARIANT:
                    coef_y = tl.load(COEF_Y_ptr + offs_n, mask=mask_n, other=0.0).to(ACC)
                    wp_y = tl.load(WP_Y_ptr + offs_n, mask=mask_n, other=0.0).to(ACC)
                    term, shifted = _variant_term(s, max_y, logsum_y, npos_y, w_y, coef_y, wp_y, positive, 1,
                                                  VARIANT == 2)
                else:
                    term, shifted = _softmax_term(s, max_y, logsum_y, npos_y, w_y, positive, 1)
            term = tl.where(allowed, term, 0.0)
            g += term
            if COMPUTE_GS:
                gs += tl.sum(term * tl.where(allowed, shifted, 0.0), axis=1)
        if OWN_GRAD:
            # v_j = Y~_j inv_j is formed on the load (|v| <= 1: no float16 overflow for tiny-norm rows).
            v = _load_rows(Y_ptr, stride_y, offs_n, mask_n, pid_d * BLOCK_DO, dim, BLOCK_DO)
            v = (v.to(ACC) * inv_y[:, None]).to(DOT)
            if USE_GSCALE:
                g = g / g_scale
            du = tl.dot(g.to(DOT), v, du, input_precision=PRECISION, out_dtype=ACC)
    if OWN_GRAD:
        if USE_GSCALE:
            du = du * g_scale
        if FINAL:
            u = _load_rows(X_ptr, stride_x, offs_m, mask_m, pid_d * BLOCK_DO, dim, BLOCK_DO).to(ACC)
            u = u * inv_x[:, None]
            du = du * inv_t
            radial = tl.sum(u * du, axis=1)
            dx_scale = tl.load(DX_SCALE_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
            dx = tl.where((dx_scale > 0)[:, None], (du - radial[:, None] * u) * dx_scale[:, None], 0.0)
            tl.store(DX_ptr + offs_m[:, None] * stride_dx + offs_do[None, :],
                     cast_output(dx, DX_ptr.dtype.element_ty, ROUND_BY_HAND), mask=mask_m[:, None] & mask_do[None, :])
        else:
            tl.store(DX_ptr + (pid_s * n_x + offs_m[:, None]) * stride_dx + offs_do[None, :], du,
                     mask=mask_m[:, None] & mask_do[None, :])
    if COMPUTE_GS:
        # the first feature chunk writes GS; a branch, not `mask=mask_m & (pid_d == 0)`: triton 3.9's
        # interpreter rejects a mask combined with a scalar comparison ("mask has unsupported dtype")
        if pid_d == 0:
            tl.store(GS_ptr + pid_s * n_x + offs_m, gs, mask=mask_m)


@triton.jit
def _summed_partials(PART_ptr, X_ptr, stride_x, offs_m, offs_d, mask, n_x, dim, n_splits, ACC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(sum over splits of PART[split], X~) on a [BLOCK_M, BLOCK_D] panel; the splits are added in order
    (deterministic). Loaded twice by the caller rather than kept: a row may be longer than the registers."""
    du = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    for split in range(0, n_splits):
        du += tl.load(PART_ptr + (split * n_x + offs_m[:, None]) * dim + offs_d[None, :], mask=mask, other=0.0)
    x = tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    return du, x


@triton.jit
def _normalize_backward_kernel(PART_ptr, X_ptr, stride_x, INV_X_ptr, DX_SCALE_ptr, T_ptr, DX_ptr, stride_dx,
                               n_x, dim, n_splits,
                               ACC: tl.constexpr, ROUND_BY_HAND: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_D: tl.constexpr):
    """dX = normalize-backward((1/t) sum_splits PART[split]) for BLOCK_M rows; splits added in order."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    inv_t = inverse_temperature(T_ptr, ACC)
    inv_x = tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    dx_scale = tl.load(DX_SCALE_ptr + offs_m, mask=mask_m, other=0.0).to(ACC)
    radial = tl.zeros([BLOCK_M], dtype=ACC)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_m[:, None] & (offs_d[None, :] < dim)
        du, x = _summed_partials(PART_ptr, X_ptr, stride_x, offs_m, offs_d, mask, n_x, dim, n_splits, ACC,
                                 BLOCK_M, BLOCK_D)
        radial += tl.sum(x * inv_x[:, None] * du, axis=1)
    radial = radial * inv_t
    live = (dx_scale > 0)[:, None]  # a row no longer than eps is a constant: no gradient
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_m[:, None] & (offs_d[None, :] < dim)
        du, x = _summed_partials(PART_ptr, X_ptr, stride_x, offs_m, offs_d, mask, n_x, dim, n_splits, ACC,
                                 BLOCK_M, BLOCK_D)
        dx = tl.where(live, (du * inv_t - radial[:, None] * x * inv_x[:, None]) * dx_scale[:, None], 0.0)
        tl.store(DX_ptr + offs_m[:, None] * stride_dx + offs_d[None, :],
                 cast_output(dx, DX_ptr.dtype.element_ty, ROUND_BY_HAND), mask=mask)


@triton.jit
def _temperature_grad_kernel(GS_ptr, T_ptr, OUT_ptr, n, factor, ROUND_BY_HAND: tl.constexpr, BLOCK: tl.constexpr):
    """One program: OUT = -(factor/t) sum(GS) (GS: per split and row sum_j G_ij (s_ij - m)), summed in float64."""
    total = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        total += tl.load(GS_ptr + offs, mask=offs < n, other=0.0).to(tl.float64)
    grad = -tl.sum(total, axis=0) * tl.cast(factor, tl.float64) * inverse_temperature(T_ptr, tl.float64)
    tl.store(OUT_ptr, cast_output(grad, OUT_ptr.dtype.element_ty, ROUND_BY_HAND))


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tiles:
    block_m: int
    block_n: int
    block_d: int     # feature chunk of the logits product
    block_do: int    # feature chunk of a gradient program's output (backward only)
    splits: int      # programs sharing one row block's columns
    n_per_split: int
    num_warps: int
    num_stages: int


def _dot_dtypes(dtype: torch.dtype):
    """(operand dtype for tl.dot, accumulation dtype, input precision)."""
    if dtype == torch.float64:
        return tl.float64, tl.float64, "ieee"
    if dtype == torch.float32:
        return tl.float32, tl.float32, fp32_precision()
    return half_dot_operand(dtype), tl.float32, "ieee"


def _single_chunk_limit(dtype: torch.dtype) -> int:
    """Largest D kept whole in a tile (loaded once per program) rather than looped over in chunks."""
    return 256 if dtype.itemsize <= 2 else (128 if dtype == torch.float32 else 64)


def _feature_block(dim: int, dtype: torch.dtype) -> int:
    whole = max(16, next_power_of_2(dim))
    return whole if whole <= _single_chunk_limit(dtype) else (64 if dtype.itemsize <= 2 else 32)


def _fit(n: int, cap: int) -> int:
    """A power-of-two block >= 16 (tl.dot's minimum), at most cap, no larger than n needs."""
    return max(16, min(cap, next_power_of_2(n)))


def _splits(n_programs: int, n_other: int, block_n: int, device: torch.device) -> int:
    """Column splits so that a launch has ~2 programs per SM, each with at least 4 column tiles."""
    target = 2 * plan_multiprocessors(device)
    if n_programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, n_programs), n_other // (4 * block_n)))


def _finish_tiles(tiles: dict, n_other: int, device: torch.device, n_programs_per_split: int) -> _Tiles:
    tiles.update(tile_overrides())
    if "splits" not in tiles:
        tiles["splits"] = _splits(n_programs_per_split, n_other, tiles["block_n"], device)
    # Whole column tiles per split, rounded down (at least as many programs as asked for), no empty split.
    n_per_split = max(1, n_other // tiles["splits"] // tiles["block_n"]) * tiles["block_n"]
    tiles["splits"] = triton.cdiv(n_other, n_per_split)
    return _Tiles(n_per_split=n_per_split, **tiles)


def _forward_tiles(n_x: int, n_y: int, dim: int, dtype: torch.dtype, device: torch.device) -> _Tiles:
    wide = dtype.itemsize <= 2
    block_d = _feature_block(dim, dtype)
    # The row tile (BLOCK_M x BLOCK_D) stays on chip for the whole loop: 128 rows up to D = 128, 64 above.
    # Column tiles of 32 beside 128 rows, 64 beside 64 (16-bit): no register spills per ptxas at D = 128 and
    # 256 (64 x 128 spilled 292 bytes; benchmarks/results/triton_sm90_resources.md). Untimed choices.
    block_m = _fit(n_x, 64 if not wide or block_d > 128 else 128)
    block_n = _fit(n_y, 64 if wide and block_m < 128 else 32)
    tiles = dict(block_m=block_m, block_n=block_n, block_d=block_d, block_do=16,
                 num_warps=8 if wide and (block_m >= 128 or block_m * block_d >= 128 * 128) else 4,
                 num_stages=3 if wide and next_power_of_2(dim) <= _single_chunk_limit(dtype) else 2)
    return _finish_tiles(tiles, n_y, device, triton.cdiv(n_x, block_m))


def _backward_tiles(n_x: int, n_y: int, dim: int, dtype: torch.dtype, device: torch.device) -> _Tiles:
    wide = dtype.itemsize <= 2
    block_do = min(max(16, next_power_of_2(dim)), 256 if wide else 128)
    # The (BLOCK_M, BLOCK_DO) fp32 gradient accumulator stays in registers: <= 16K elements per program.
    block_m = _fit(n_x, min(128, max(16, 16384 // block_do)))
    # 64 columns per tile, 32 for fp32/fp64 or a 256-wide gradient chunk (ptxas: 260 bytes of spills at 64
    # for bf16 D = 256, 4 at 32; benchmarks/results/triton_sm90_resources.md).
    block_n = _fit(n_y, 64 if wide and block_do < 256 else 32)
    tiles = dict(block_m=block_m, block_n=block_n, block_d=_feature_block(dim, dtype), block_do=block_do,
                 num_warps=8 if block_m * max(block_n, block_do) >= 128 * 64 else 4, num_stages=2)
    n_do = triton.cdiv(dim, tile_overrides().get("block_do", block_do))
    return _finish_tiles(tiles, n_y, device, triton.cdiv(n_x, block_m) * n_do)


def _launch(kernel, grid, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs); if the GPU runs out of shared memory or registers for the software
    pipeline (the tile sizes are derived from the shape, not tuned on every card), retry with a single stage
    before giving up with a pointer to SYNTHCL_FAST_TRITON_TILES."""
    try:
        kernel[grid](*args, **kwargs)
    except triton.runtime.OutOfResources as error:
        if kwargs.get("num_stages", 1) <= 1:
            name = getattr(getattr(kernel, "fn", kernel), "__name__", "a kernel")
            raise RuntimeError(f"synthcl_fast: {name} does not fit this GPU with tiles {kwargs}; set "
                               "smaller ones with SYNTHCL_FAST_TRITON_TILES (see triton_support.py)") from error
        kernel[grid](*args, **{**kwargs, "num_stages": 1})


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _unit_stride(x: Tensor) -> Tensor:
    """The kernels index rows by stride and features by 1."""
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


class _Side:
    """One side of the product (rows or columns): its prepared rows (_prepare_rows_kernel: x~, inv, dx_scale)
    and labels. The same tensor object as the rows shares their preparation."""

    def __init__(self, features: Tensor, labels: Tensor, eps: float, same_as: _Side | None = None,
                 same_labels: bool = False):
        if same_as is not None:
            self.x, self.inv, self.dx_scale = same_as.x, same_as.inv, same_as.dx_scale
        else:
            self.x, self.inv, self.dx_scale = _prepare_rows(_unit_stride(features), eps)
        self.labels = labels.contiguous()
        self.same_as_rows = same_as is not None
        self.symmetric = self.same_as_rows and same_labels  # s and the positive mask are symmetric

    @property
    def n(self) -> int:
        return self.x.shape[0]


_PREPARE = {torch.float16: 0, torch.float64: 0, torch.bfloat16: 1, torch.float32: 2}


def _prepare_rows(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x~, inv, dx_scale) of _prepare_rows_kernel; x~ is x itself for float16 and float64 (no copy)."""
    n_rows, dim = x.shape
    acc = accumulate_dtype(x.dtype)
    prepare = _PREPARE[x.dtype]
    xs = empty_output((n_rows, dim), x.dtype, x.device) if prepare else x
    inv, dx_scale = empty_output((n_rows,), acc, x.device), empty_output((n_rows,), acc, x.device)
    block_m, block_d = 32, min(max(16, next_power_of_2(dim)), 256)
    _prepare_rows_kernel[(triton.cdiv(n_rows, block_m),)](
        x, x.stride(0), xs, xs.stride(0), inv, dx_scale, n_rows, dim, *split_float(eps), PREPARE=prepare,
        ACC=TL_DTYPES[acc], BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return xs, inv, dx_scale


def _sides(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor, eps: float):
    """(rows, columns). The same tensor object for both (not merely the same memory: x and x.detach() must
    keep separate gradients) shares the prepared rows and, in the backward, one gradient buffer."""
    rows = _Side(anchors, anchor_labels, eps)
    same = candidates is anchors
    return rows, _Side(candidates, candidate_labels, eps, rows if same else None,
                       same and candidate_labels is anchor_labels)


class _Stats:
    """Statistics of one side: m, log S, |P| per row, and for the backward the upstream weight per row
    (stride 0: one weight for all)."""

    def __init__(self, row_max: Tensor, log_sum: Tensor, n_positive: Tensor, weight: Tensor | None = None,
                 variant: int = 0, coef: Tensor | None = None, positive_weight: Tensor | None = None):
        self.max, self.log_sum, self.n_positive = row_max, log_sum, n_positive
        # the variants (denominator code; 0: the plain op): c_i and w'_i per row. VARIANT 3 (hard negatives):
        # max and log_sum (R, 3) per set, weight (R, 4) the coefficients a, coef the scales (c_0, c_1)
        self.variant, self.coef, self.positive_weight = variant, coef, positive_weight
        if weight is not None:
            self.weight = weight if weight.dim() == 1 else weight.reshape(-1 if weight.dim() == 2 else 1)
            self.stride = 0 if weight.dim() == 0 or weight.shape[0] == 1 else weight.stride(0)

    def weighted(self, weight: Tensor) -> _Stats:
        return _Stats(self.max, self.log_sum, self.n_positive, weight, self.variant, self.coef, self.positive_weight)

    def outputs(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.max, self.log_sum, self.n_positive


def _row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool) -> tuple[_Stats, Tensor]:
    """(statistics, row loss) of every row against all columns."""
    x, y = rows.x, cols.x
    n_x, dim = x.shape
    n_y = y.shape[0]
    acc = accumulate_dtype(x.dtype)
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    t = _forward_tiles(n_x, n_y, dim, x.dtype, x.device)
    row_max, log_sum, loss = (empty_output((n_x,), acc, x.device) for _ in range(3))
    npos = empty_output((n_x,), torch.int32, x.device)
    final = t.splits == 1
    sum_torch, sum_tl = {"float64": (torch.float64, tl.float64), "float32": (torch.float32, tl.float32)}[expsum_dtype()]
    if final:
        part = (row_max, row_max, row_max, npos)  # not written (FINAL)
    else:
        part = tuple(empty_output((t.splits, n_x), d, x.device) for d in (acc, sum_torch, acc, torch.int32))
    grid = (triton.cdiv(n_x, t.block_m), t.splits)
    _launch(
        _contrastive_forward_kernel, grid,
        x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature,
        *part, row_max, log_sum, npos, loss, n_x, n_y, dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, FINAL=final, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d,
        SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl, PRECISION=precision, SUM=sum_tl,
        num_warps=t.num_warps, num_stages=t.num_stages)
    if not final:
        block_m = 128
        _merge_row_stats_kernel[(triton.cdiv(n_x, block_m),)](*part, row_max, log_sum, npos, loss, n_x, t.splits,
                                                              ACC=acc_tl, BLOCK_M=block_m, SUM=sum_tl, num_warps=4)
    return _Stats(row_max, log_sum, npos), loss


def _variant_row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool, positive_weight: Tensor,
                       denominator: int) -> tuple[_Stats, Tensor, Tensor]:
    """(statistics with c_i and w'_i, row loss, mean_p s_ip) of the variants: m, S over the negatives
    (_contrastive_forward_kernel with VARIANT), then for "per_positive" the positives' pass
    (_positive_terms_kernel). The row loss (reference.contrastive_loss_variant; 0 without a positive):
        "negatives"     L_i = (log S_i - gap_i / |P|) + (1 - w'_i) mean_p s_ip
        "per_positive"  L_i = sum_p softplus(z_ip) / |P| + (1 - w'_i) mean_p s_ip,  c_i = sum_p sigmoid(z_ip) / |P|
    (the weight term is exactly 0 for w' = 1)."""
    x, y = rows.x, cols.x
    n_x, dim = x.shape
    n_y = y.shape[0]
    acc = accumulate_dtype(x.dtype)
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    t = _forward_tiles(n_x, n_y, dim, x.dtype, x.device)
    row_max, log_sum, loss, positive_mean = (empty_output((n_x,), acc, x.device) for _ in range(4))
    npos = empty_output((n_x,), torch.int32, x.device)
    final = t.splits == 1
    if final:
        part = (row_max, row_max, row_max, npos)  # not written (FINAL)
    else:
        part = tuple(empty_output((t.splits, n_x), d, x.device) for d in (acc, torch.float64, acc, torch.int32))
    common = dict(BLOCK_N=t.block_n, BLOCK_D=t.block_d, SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl,
                  PRECISION=precision, num_warps=t.num_warps, num_stages=t.num_stages)
    _launch(
        _contrastive_forward_kernel, (triton.cdiv(n_x, t.block_m), t.splits),
        x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature,
        *part, row_max, log_sum, npos, loss, n_x, n_y, dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, FINAL=final, BLOCK_M=t.block_m, VARIANT=True, POSMEAN_ptr=positive_mean,
        **common)
    if not final:
        block_m = 128
        _merge_row_stats_kernel[(triton.cdiv(n_x, block_m),)](*part, row_max, log_sum, npos, loss, n_x, t.splits,
                                                              ACC=acc_tl, BLOCK_M=block_m, VARIANT=True,
                                                              POSMEAN_ptr=positive_mean, num_warps=4)
    live = npos > 0
    count = npos.clamp_min(1).to(acc)
    weight_term = (1 - positive_weight) * positive_mean
    if denominator == int(Denominator.PER_POSITIVE):
        softplus_sum, sigmoid_sum = (empty_output((n_x,), torch.float64, x.device) for _ in range(2))
        _launch(
            _positive_terms_kernel, (triton.cdiv(n_x, t.block_m),),
            x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature,
            row_max, log_sum, softplus_sum, sigmoid_sum, n_x, n_y, dim, EXCLUDE_SELF=exclude_self,
            BLOCK_M=t.block_m, **common)
        loss = torch.where(live, (softplus_sum / count).to(acc) + weight_term, 0.0)
        coef = (sigmoid_sum / count).to(acc)
    else:
        loss = torch.where(live, loss + weight_term, 0.0)
        coef = torch.ones_like(loss)
    return _Stats(row_max, log_sum, npos, None, denominator, coef, positive_weight), loss, positive_mean


def _launch_backward(own: _Side, other: _Side, own_stats: _Stats | None, other_stats: _Stats | None,
                     temperature: Tensor, exclude_self: bool, g_scale: Tensor | None, gs: Tensor | None,
                     t: _Tiles, out: Tensor | None, final: bool) -> None:
    """One launch of _contrastive_backward_kernel: own's gradient into out, (n, D) in own's dtype when final,
    else fp32/fp64 partial sums (t.splits, n, D) for _finish_feature_grad; out None: the temperature's sums gs
    alone (own frozen: OWN_GRAD off, no product)."""
    x, y = own.x, other.x
    n_x, dim = x.shape
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    unused = own.inv

    def stats_args(stats: _Stats | None):
        if stats is None:
            return unused, unused, unused, unused, 0
        return stats.max, stats.log_sum, stats.n_positive, stats.weight, stats.stride

    def variant_args(stats: _Stats | None):
        if stats is None or not stats.variant:
            return unused, unused
        return stats.coef, stats.positive_weight if stats.variant != 3 else unused

    variant = max((st.variant for st in (own_stats, other_stats) if st is not None), default=0)
    own_grad = out is not None
    out = out if own_grad else own.inv  # not written
    # without the product the feature chunks would only repeat the same sums: one chunk
    grid = (triton.cdiv(n_x, t.block_m), t.splits, triton.cdiv(dim, t.block_do) if own_grad else 1)
    coef_x, wp_x = variant_args(own_stats)
    coef_y, wp_y = variant_args(other_stats)
    _launch(
        _contrastive_backward_kernel, grid,
        x, y, x.stride(0), y.stride(0), own.inv, other.inv, own.dx_scale, own.labels, other.labels, temperature,
        *stats_args(own_stats), *stats_args(other_stats),
        g_scale if g_scale is not None else unused, out, out.stride(0) if final else dim,
        gs if gs is not None else unused, n_x, y.shape[0], dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, OWN_TERM=own_stats is not None, OTHER_TERM=other_stats is not None,
        COMPUTE_GS=gs is not None, FINAL=final, USE_GSCALE=g_scale is not None, ROUND_BY_HAND=round_by_hand(x.dtype),
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d, BLOCK_DO=t.block_do,
        SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl, PRECISION=precision,
        VARIANT=variant, COEF_X_ptr=coef_x, WP_X_ptr=wp_x, COEF_Y_ptr=coef_y, WP_Y_ptr=wp_y, OWN_GRAD=own_grad,
        num_warps=t.num_warps, num_stages=t.num_stages)


def _finish_feature_grad(own: _Side, partial: Tensor, temperature: Tensor) -> Tensor:
    """normalize-backward((1/t) sum over the leading axis of partial) in own's dtype."""
    x = own.x
    n_x, dim = x.shape
    dx = empty_output((n_x, dim), x.dtype, x.device)
    block_m, block_d = 32, min(max(16, next_power_of_2(dim)), 128)
    _normalize_backward_kernel[(triton.cdiv(n_x, block_m),)](
        partial, x, x.stride(0), own.inv, own.dx_scale, temperature, dx, dx.stride(0), n_x, dim, partial.shape[0],
        ACC=TL_DTYPES[partial.dtype], ROUND_BY_HAND=round_by_hand(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d,
        num_warps=4)
    return dx


def _gradient_bound(stats: _Stats) -> Tensor:
    """Per row, a bound on |G_ij| over j (the float16 backward divides G by its max so that G stays in [-1, 1]
    when rounded to float16 for the products; csrc/contrastive_cuda.cu's weight_max, the same rule):

        plain op                      |G_ij| <= |w_i|                  (|p_ij - [j in P(i)] / |P(i)|| <= 1)
        "negatives", "per_positive"   |G_ij| <= |w_i| (|w'_i| + 2)     (c_i p_ij <= 1, sigmoid <= 1, |w'_i| / |P(i)|)
        hard negatives (a_k)          |G_ij| <= sum_k |a_k|            (each set's softmax term <= 1)

    0 for a row without a positive (its G is 0), except for the hard negatives, whose a_k are 0 there already."""
    if stats.variant == 3:
        return stats.weight.view(-1, 4).abs().sum(dim=1)
    bound = stats.weight.abs()
    if stats.variant:
        bound = bound * (stats.positive_weight.abs() + 2)
    return torch.where(stats.n_positive > 0, bound, 0.0)


def _gradients(rows: _Side, cols: _Side, row_stats: _Stats, col_stats: _Stats | None, temperature: Tensor,
               exclude_self: bool, mask):
    """(grad of the anchors, grad of the candidates, grad of the temperature) for the weights in the stats,
    those the gradient mask (backends/_ops.py) asks for; the others are empty (0,) tensors and cost nothing: a
    frozen side's launch is not made, a frozen anchors' row launch (needed for a learnable temperature's sums)
    runs without its product (OWN_GRAD off), a float temperature's sums and kernel are skipped.

    Row launch: the anchors' gradient and sum_j G_ij (s_ij - m) per row; column launch: the candidates'
    gradient. When the candidates are the anchors (one tensor) the whole gradient is formed and rounded once
    and returned as the anchors' gradient (the candidates' is zero), like the CPU op. With the same labels too
    (NT-Xent, SupCon, PPCL without extra negatives) s and the positive mask are symmetric, so the
    candidates' part sum_i G_ij u_i = sum_i G_ji u_i is the "other" term of the same launch: one launch
    computes sum_j (G_ij + G_ji) u_j, 4RKD flops instead of 8RKD, and sums both terms against s, twice the
    temperature's sum."""
    x = rows.x
    n_rows, dim = x.shape
    n_cols = cols.n
    acc = accumulate_dtype(x.dtype)
    # one tensor (cols.same_as_rows): its two roles are one gradient, on if either is asked for
    want_rows = mask[0] or (cols.same_as_rows and mask[1])
    want_cols = mask[1] or (cols.same_as_rows and mask[0])
    want_t = mask[2]
    no_grad = (rows.x.new_empty((0,)), cols.x.new_empty((0,)))
    g_scale = None
    if x.dtype == torch.float16:
        stats = [row_stats] + ([col_stats] if col_stats is not None else [])
        g_scale = torch.stack([_gradient_bound(s).amax().to(torch.float32) for s in stats]).amax()
        g_scale = g_scale.clamp_min(torch.finfo(torch.float32).tiny)
    t_rows = _backward_tiles(n_rows, n_cols, dim, x.dtype, x.device)
    t_cols = _backward_tiles(n_cols, n_rows, dim, x.dtype, x.device)
    gs = empty_output((t_rows.splits, n_rows), acc, x.device) if want_t else None
    common = (temperature, exclude_self, g_scale)
    gs_factor = 1.0
    if not (want_rows or want_cols):  # the temperature's gradient alone: one launch of sums, no product
        if want_t:
            _launch_backward(rows, cols, row_stats, row_stats if cols.symmetric and col_stats is None else col_stats,
                             *common, gs, t_rows, None, False)
        grad_rows, grad_cols = no_grad
        gs_factor = 0.5 if cols.symmetric and col_stats is None else 1.0
    elif cols.symmetric and col_stats is None:
        if t_rows.splits == 1 and dim <= t_rows.block_do:
            grad_rows = empty_output(tuple(x.shape), x.dtype, x.device)
            _launch_backward(rows, cols, row_stats, row_stats, *common, gs, t_rows, grad_rows, True)
        else:
            partial = empty_output((t_rows.splits, n_rows, dim), acc, x.device)
            _launch_backward(rows, cols, row_stats, row_stats, *common, gs, t_rows, partial, False)
            grad_rows = _finish_feature_grad(rows, partial, temperature)
        grad_cols = torch.zeros_like(cols.x, memory_format=torch.contiguous_format)
        gs_factor = 0.5
    elif cols.same_as_rows:
        partial = empty_output((t_rows.splits + t_cols.splits, n_rows, dim), acc, x.device)
        _launch_backward(rows, cols, row_stats, col_stats, *common, gs, t_rows, partial[:t_rows.splits], False)
        _launch_backward(cols, rows, col_stats, row_stats, *common, None, t_cols, partial[t_rows.splits:], False)
        grad_rows = _finish_feature_grad(rows, partial, temperature)
        grad_cols = torch.zeros_like(cols.x, memory_format=torch.contiguous_format)
    else:
        grads = []
        for own, other, own_stats, other_stats, t, own_gs, want in (
                (rows, cols, row_stats, col_stats, t_rows, gs, want_rows),
                (cols, rows, col_stats, row_stats, t_cols, None, want_cols)):
            if not want:  # a frozen side: its product is not run (the row launch still sums for the temperature)
                if own_gs is not None:
                    _launch_backward(own, other, own_stats, other_stats, *common, own_gs, t, None, False)
                grads.append(no_grad[len(grads)])
                continue
            if t.splits == 1 and dim <= t.block_do:  # one program holds whole gradient rows: finish in-kernel
                grad = empty_output(tuple(own.x.shape), own.x.dtype, x.device)
                _launch_backward(own, other, own_stats, other_stats, *common, own_gs, t, grad, True)
            else:
                partial = empty_output((t.splits, own.n, dim), acc, x.device)
                _launch_backward(own, other, own_stats, other_stats, *common, own_gs, t, partial, False)
                grad = _finish_feature_grad(own, partial, temperature)
            grads.append(grad)
        grad_rows, grad_cols = grads
    if not want_t:
        return grad_rows, grad_cols, temperature.new_empty((0,))
    if row_stats.variant:
        # sum_j G_ij = w_i (1 - w'_i) in the variants (m_i = 0 for a row without negatives): the shift-free sum
        # of the temperature gradient gets m_i w_i (1 - w'_i) back, once per row (gs_factor halves the sum of
        # the symmetric launch, which holds every term twice). Hard negatives: sum_j G_ij = a_0 + a_1 + a_2 +
        # a_3 |P| (0 for the empty sets), shifted by r_0.
        if row_stats.variant == 3:
            a = row_stats.weight.view(n_rows, 4)
            row_sums = a[:, 0] + a[:, 1] + a[:, 2] + a[:, 3] * row_stats.n_positive.to(a.dtype)
            shift_terms = row_stats.max[:, 0] * row_sums
        else:
            shift_terms = torch.where(row_stats.n_positive > 0, row_stats.max * row_stats.weight.expand(n_rows)
                                      * (1 - row_stats.positive_weight), 0.0)
        gs[0] += shift_terms / gs_factor
    grad_t = empty_output((), temperature.dtype, x.device)
    _temperature_grad_kernel[(1,)](gs, temperature, grad_t, gs.numel(), gs_factor,
                                   ROUND_BY_HAND=round_by_hand(temperature.dtype), BLOCK=1024, num_warps=4)
    return grad_rows, grad_cols, grad_t


def _reduce(row_loss: Tensor, n_positive: Tensor, reduction: int, factor: float = 1.0, into: Tensor | None = None):
    """(loss, upstream weight of every row as a 0-d tensor) for reduction mean/sum, times factor; with into,
    the loss is added to into (the symmetric op: half the row loss plus half the column loss)."""
    return reduce_rows(row_loss, n_positive if reduction == _MEAN else None, factor, into)


def _check_inputs(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                  temperature: Tensor, reduction: int, eps: float) -> None:
    """The last line of defence for a direct call of the ops (the public API validates with friendlier errors)."""
    for t, name in ((anchors, "anchors"), (candidates, "candidates")):
        torch._check(t.dim() == 2 and t.shape[0] > 0 and t.shape[1] > 0,
                     lambda: f"{name} must be a non-empty 2-D tensor, got shape {tuple(t.shape)}")
        torch._check(t.dtype in TL_DTYPES, lambda: f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    torch._check(anchors.shape[1] == candidates.shape[1] and anchors.dtype == candidates.dtype,
                 lambda: "anchors and candidates must have the same feature dimension and dtype")
    for t, name, n in ((anchor_labels, "anchor_labels", anchors.shape[0]),
                       (candidate_labels, "candidate_labels", candidates.shape[0])):
        torch._check(t.shape == (n,) and t.dtype == torch.int64,
                     lambda: f"{name} must be int64 of shape ({n},), got {t.dtype} {tuple(t.shape)}")
    torch._check(temperature.numel() == 1 and temperature.dtype.is_floating_point,
                 lambda: "temperature must be a one-element floating tensor")
    for t, name in ((candidates, "candidates"), (anchor_labels, "anchor_labels"),
                    (candidate_labels, "candidate_labels"), (temperature, "temperature")):
        torch._check(t.device == anchors.device, lambda: f"{name} is on {t.device} but anchors on {anchors.device}")
    torch._check(reduction in (_NONE, _MEAN, _SUM), lambda: f"reduction code must be 0, 1 or 2, got {reduction}")
    torch._check(eps > 0, lambda: f"eps must be positive, got {eps}")


def _check_stats(n: int, dtype: torch.dtype, *stats: Tensor) -> None:
    for t, name in zip(stats, ("max", "log_sum", "n_positive")):
        want = torch.int32 if name == "n_positive" else accumulate_dtype(dtype)
        torch._check(t.shape == (n,) and t.dtype == want,
                     lambda: f"{name} must have shape ({n},) and dtype {want}, got {t.dtype} {tuple(t.shape)}")


def _empty_grads(anchors: Tensor, candidates: Tensor, temperature: Tensor):
    return anchors.new_empty((0,)), candidates.new_empty((0,)), temperature.new_empty((0,))


# ----------------------------------------------------------------------------------------------------------
# Registration: torch.library ops with the contract of backends/_ops.py
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("synthcl_fast::triton_contrastive_forward", mutates_args=())
def contrastive_forward(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                        temperature: Tensor, exclude_self: bool, reduction: int, eps: float,
                        compute_grad: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, row_max, row_log_sum, row_n_positive, grad_anchors, grad_candidates, grad_temperature)."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, reduction, eps)
    torch._check(not (any(compute_grad) and reduction == _NONE), lambda: "compute_grad needs a scalar loss")
    temperature = temperature.reshape(())
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        stats, row_loss = _row_stats(rows, cols, temperature, exclude_self)
        if reduction == _NONE:
            return row_loss, *stats.outputs(), *_empty_grads(anchors, candidates, temperature)
        loss, weight = _reduce(row_loss, stats.n_positive, reduction)
        if not any(compute_grad):
            return loss, *stats.outputs(), *_empty_grads(anchors, candidates, temperature)
        grads = _gradients(rows, cols, stats.weighted(weight), None, temperature, exclude_self, compute_grad)
    return loss, *stats.outputs(), *grads


@torch.library.custom_op("synthcl_fast::triton_contrastive_backward", mutates_args=())
def contrastive_backward(grad_rows: Tensor, anchors: Tensor, candidates: Tensor, anchor_labels: Tensor,
                         candidate_labels: Tensor, temperature: Tensor, row_max: Tensor, row_log_sum: Tensor,
                         row_n_positive: Tensor, exclude_self: bool, eps: float, output_mask: list[bool]
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_anchors, grad_candidates, grad_temperature) for upstream weights grad_rows (R,), recomputing s;
    those output_mask asks for (the others empty)."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, _NONE, eps)
    n_rows = anchors.shape[0]
    torch._check(grad_rows.shape == (n_rows,), lambda: f"grad_rows must have shape ({n_rows},)")
    _check_stats(n_rows, anchors.dtype, row_max, row_log_sum, row_n_positive)
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        stats = _Stats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
                       grad_rows.contiguous())
        return _gradients(rows, cols, stats, None, temperature.reshape(()), exclude_self, output_mask)


@torch.library.custom_op("synthcl_fast::triton_symmetric_contrastive_forward", mutates_args=())
def symmetric_contrastive_forward(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor,
                                  candidate_labels: Tensor, temperature: Tensor, exclude_self: bool, reduction: int,
                                  eps: float, compute_grad: list[bool]
                                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                             Tensor]:
    """(loss, row_max, row_log_sum, row_n_positive, col_max, col_log_sum, col_n_positive, grad_anchors,
    grad_candidates, grad_temperature).

    loss = (row loss + column loss) / 2 under the reduction (each side's mean over its rows/columns with a
    positive; "none" needs R == K and averages row i with column i): CLIP's symmetric loss in one call."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, reduction, eps)
    torch._check(not (any(compute_grad) and reduction == _NONE), lambda: "compute_grad needs a scalar loss")
    torch._check(reduction != _NONE or anchors.shape[0] == candidates.shape[0],
                 lambda: "reduction 'none' of the symmetric loss needs as many anchors as candidates")
    temperature = temperature.reshape(())
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        row_stats, row_loss = _row_stats(rows, cols, temperature, exclude_self)
        col_stats, col_loss = _row_stats(cols, rows, temperature, exclude_self)
        stats = (*row_stats.outputs(), *col_stats.outputs())
        if reduction == _NONE:
            return (row_loss + col_loss) / 2, *stats, *_empty_grads(anchors, candidates, temperature)
        loss, row_weight = _reduce(row_loss, row_stats.n_positive, reduction, 0.5)
        loss, col_weight = _reduce(col_loss, col_stats.n_positive, reduction, 0.5, into=loss)
        if not any(compute_grad):
            return loss, *stats, *_empty_grads(anchors, candidates, temperature)
        grads = _gradients(rows, cols, row_stats.weighted(row_weight), col_stats.weighted(col_weight), temperature,
                           exclude_self, compute_grad)
    return loss, *stats, *grads


@torch.library.custom_op("synthcl_fast::triton_symmetric_contrastive_backward", mutates_args=())
def symmetric_contrastive_backward(grad_rows: Tensor, grad_cols: Tensor, anchors: Tensor, candidates: Tensor,
                                   anchor_labels: Tensor, candidate_labels: Tensor, temperature: Tensor,
                                   row_max: Tensor, row_log_sum: Tensor, row_n_positive: Tensor, col_max: Tensor,
                                   col_log_sum: Tensor, col_n_positive: Tensor, exclude_self: bool, eps: float,
                                   output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for upstream weights of each row's (grad_rows) and each column's (grad_cols) loss."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, _NONE, eps)
    _check_stats(anchors.shape[0], anchors.dtype, row_max, row_log_sum, row_n_positive)
    _check_stats(candidates.shape[0], anchors.dtype, col_max, col_log_sum, col_n_positive)
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        row_stats = _Stats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
                           grad_rows.contiguous())
        col_stats = _Stats(col_max.contiguous(), col_log_sum.contiguous(), col_n_positive.contiguous(),
                           grad_cols.contiguous())
        return _gradients(rows, cols, row_stats, col_stats, temperature.reshape(()), exclude_self, output_mask)


@torch.library.custom_op("synthcl_fast::triton_contrastive_variant_forward", mutates_args=())
def contrastive_variant_forward(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                                temperature: Tensor, positive_weight: Tensor, denominator: int, exclude_self: bool,
                                reduction: int, eps: float, compute_grad: list[bool]
                                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, row_max, row_log_sum, row_n_positive, row_coef, row_positive_mean, grad_anchors, grad_candidates,
    grad_temperature) of the variants (backends/_ops.py)."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, reduction, eps)
    _check_variant(anchors, positive_weight, denominator)
    torch._check(not (any(compute_grad) and reduction == _NONE), lambda: "compute_grad needs a scalar loss")
    temperature = temperature.reshape(())
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        stats, row_loss, positive_mean = _variant_row_stats(rows, cols, temperature, exclude_self,
                                                            positive_weight.contiguous(), denominator)
        outputs = (*stats.outputs(), stats.coef, positive_mean)
        if reduction == _NONE:
            return row_loss, *outputs, *_empty_grads(anchors, candidates, temperature)
        loss, weight = _reduce(row_loss, stats.n_positive, reduction)
        if not any(compute_grad):
            return loss, *outputs, *_empty_grads(anchors, candidates, temperature)
        grads = _gradients(rows, cols, stats.weighted(weight), None, temperature, exclude_self, compute_grad)
    return loss, *outputs, *grads


@torch.library.custom_op("synthcl_fast::triton_contrastive_variant_backward", mutates_args=())
def contrastive_variant_backward(grad_rows: Tensor, anchors: Tensor, candidates: Tensor, anchor_labels: Tensor,
                                 candidate_labels: Tensor, temperature: Tensor, positive_weight: Tensor,
                                 row_max: Tensor, row_log_sum: Tensor, row_n_positive: Tensor, row_coef: Tensor,
                                 denominator: int, exclude_self: bool, eps: float, output_mask: list[bool]
                                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_anchors, grad_candidates, grad_temperature) of the variants for upstream weights grad_rows (R,)."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, _NONE, eps)
    _check_variant(anchors, positive_weight, denominator)
    n_rows = anchors.shape[0]
    torch._check(grad_rows.shape == (n_rows,), lambda: f"grad_rows must have shape ({n_rows},)")
    _check_stats(n_rows, anchors.dtype, row_max, row_log_sum, row_n_positive)
    acc = accumulate_dtype(anchors.dtype)
    torch._check(row_coef.shape == (n_rows,) and row_coef.dtype == acc,
                 lambda: f"row_coef must have shape ({n_rows},) and dtype {acc}, got {row_coef.dtype} "
                         f"{tuple(row_coef.shape)}")
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        stats = _Stats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
                       grad_rows.contiguous(), denominator, row_coef.contiguous(), positive_weight.contiguous())
        return _gradients(rows, cols, stats, None, temperature.reshape(()), exclude_self, output_mask)


def _hard_row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool, scales: Tensor):
    """The outputs of hard_negative_stats_forward: _hard_stats_kernel over the column splits of the forward's
    tile plan (a few row blocks would leave most SMs idle), then _merge_hard_stats_kernel."""
    x, y = rows.x, cols.x
    n_x, dim = x.shape
    acc = accumulate_dtype(x.dtype)
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    t = _forward_tiles(n_x, y.shape[0], dim, x.dtype, x.device)
    lse, ref, log_sum = (empty_output((n_x, 3), acc, x.device) for _ in range(3))
    positive_mean = empty_output((n_x,), acc, x.device)
    n_negative, n_positive = (empty_output((n_x,), torch.int32, x.device) for _ in range(2))
    outputs = (lse, positive_mean, n_negative, n_positive, ref, log_sum)
    final = t.splits == 1
    if final:
        part = (ref, log_sum, positive_mean, n_negative, n_positive)  # not written (FINAL)
    else:
        part = (empty_output((t.splits, n_x, 3), acc, x.device), empty_output((t.splits, n_x, 3), torch.float64,
                                                                              x.device),
                empty_output((t.splits, n_x), torch.float64, x.device),
                *(empty_output((t.splits, n_x), torch.int32, x.device) for _ in range(2)))
    _launch(
        _hard_stats_kernel, (triton.cdiv(n_x, t.block_m), t.splits),
        x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature, scales,
        *part, *outputs, n_x, y.shape[0], dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, FINAL=final, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d,
        SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl, PRECISION=precision, num_warps=t.num_warps,
        num_stages=t.num_stages)
    if not final:
        block_m = 128
        _merge_hard_stats_kernel[(triton.cdiv(n_x, block_m),)](*part, scales, *outputs, n_x, t.splits, ACC=acc_tl,
                                                               BLOCK_M=block_m, num_warps=4)
    return outputs


def _hard_scales(beta: float, anchors: Tensor) -> Tensor:
    """(c_0, c_1) = (1 + beta, beta) as a device tensor (floats are never tl.constexpr: no recompile per beta)."""
    return torch.tensor([1.0 + beta, beta], dtype=accumulate_dtype(anchors.dtype), device=anchors.device)


@torch.library.custom_op("synthcl_fast::triton_hard_negative_stats_forward", mutates_args=())
def hard_negative_stats_forward(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                                temperature: Tensor, beta: float, exclude_self: bool, eps: float
                                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(row_lse (R, 3), row_positive_mean, row_n_negative, row_n_positive, row_reference (R, 3), row_log_sum
    (R, 3)) of HCL's statistics (backends/_ops.py)."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, _NONE, eps)
    torch._check(math.isfinite(beta), lambda: f"beta must be finite, got {beta}")
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        return _hard_row_stats(rows, cols, temperature.reshape(()), exclude_self, _hard_scales(beta, anchors))


@torch.library.custom_op("synthcl_fast::triton_hard_negative_stats_backward", mutates_args=())
def hard_negative_stats_backward(grad_lse: Tensor, grad_positive_mean: Tensor, anchors: Tensor, candidates: Tensor,
                                 anchor_labels: Tensor, candidate_labels: Tensor, temperature: Tensor, beta: float,
                                 row_n_negative: Tensor, row_n_positive: Tensor, row_reference: Tensor,
                                 row_log_sum: Tensor, exclude_self: bool, eps: float, output_mask: list[bool]
                                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_anchors, grad_candidates, grad_temperature) for dLoss/dlse (R, 3) and dLoss/dmean_P s (R,): the
    backward kernel's VARIANT 3 (_hard_term), rows and columns as for the plain op."""
    _check_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, _NONE, eps)
    torch._check(math.isfinite(beta), lambda: f"beta must be finite, got {beta}")
    n, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
    for t, name, shape, dtype in ((grad_lse, "grad_lse", (n, 3), acc), (grad_positive_mean, "grad_positive_mean",
                                                                         (n,), acc),
                                  (row_n_negative, "row_n_negative", (n,), torch.int32),
                                  (row_n_positive, "row_n_positive", (n,), torch.int32),
                                  (row_reference, "row_reference", (n, 3), acc),
                                  (row_log_sum, "row_log_sum", (n, 3), acc)):
        torch._check(t.shape == shape and t.dtype == dtype,
                     lambda: f"{name} must have shape {shape} and dtype {dtype}, got {t.dtype} {tuple(t.shape)}")
    has_negative, has_positive = row_n_negative > 0, row_n_positive > 0
    # the coefficients of each set's softmax (0 for an empty set) and its log-sum (-inf there: read as 0)
    coefficients = torch.stack([torch.where(has_negative, grad_lse[:, 0] * (1.0 + beta), 0.0),
                                torch.where(has_negative, grad_lse[:, 1] * beta, 0.0),
                                torch.where(has_positive, grad_lse[:, 2], 0.0),
                                torch.where(has_positive, grad_positive_mean / row_n_positive.clamp_min(1), 0.0)],
                               dim=1).to(acc).contiguous()
    log_sum = row_log_sum.masked_fill(row_log_sum == float("-inf"), 0.0).contiguous()
    with _device_guard(anchors):
        rows, cols = _sides(anchors, candidates, anchor_labels, candidate_labels, eps)
        stats = _Stats(row_reference.contiguous(), log_sum, row_n_positive.contiguous(), coefficients, 3,
                       _hard_scales(beta, anchors))
        return _gradients(rows, cols, stats, None, temperature.reshape(()), exclude_self, output_mask)


def _check_variant(anchors: Tensor, positive_weight: Tensor, denominator: int) -> None:
    n, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
    torch._check(denominator in (int(Denominator.NEGATIVES), int(Denominator.PER_POSITIVE)),
                 lambda: f"denominator code must be 1 (negatives) or 2 (per_positive), got {denominator}")
    torch._check(positive_weight.shape == (n,) and positive_weight.dtype == acc
                 and positive_weight.device == anchors.device,
                 lambda: f"positive_weight must have shape ({n},) and dtype {acc} on {anchors.device}, got "
                         f"{positive_weight.dtype} {tuple(positive_weight.shape)} on {positive_weight.device}")


register_contrastive_op(contrastive_forward, contrastive_backward, sides=1)
register_contrastive_op(symmetric_contrastive_forward, symmetric_contrastive_backward, sides=2)
register_variant_op(contrastive_variant_forward, contrastive_variant_backward)
register_hard_negative_op(hard_negative_stats_forward, hard_negative_stats_backward)
