"""The backward kernel shared by the contrastive family (triton_contrastive.py) and the hard-negative statistics
(triton_hard_negatives.py), the normalization backward and the temperature gradient (layout: triton_tiles.py).

One kernel, _contrastive_backward_kernel, forms the gradient of either side of every op of both families:
rows own dU (X's gradient) and loop over column tiles; the column launch swaps X and Y and owns dV. Each
recomputes s and G tile by tile from the statistics of one side or both (_side_term, seen from either side:
AXIS), so every gradient element is reduced by one program in a fixed order: deterministic, no atomics. Its
tl.constexpr MODE (triton_tiles.Mode, the names of csrc/common.h) picks G:

    Mode.ALL             G_ij = w_i (p_ij - P_ij / |P(i)|)                      (_softmax_term)
    Mode.NEGATIVES,      negatives w c e^x, positives w ((sigmoid(x) [per_positive]) - w') / |P|
    Mode.PER_POSITIVE                                                           (_variant_term)
    Mode.HARD_NEGATIVES  each set's softmax times its coefficient a_k           (_hard_term)

The statistics of a family arrive as its statistics type (triton_contrastive.ContrastiveStats,
triton_hard_negatives.HardNegativeStats), read only through mode, kernel_args(unused) (the kernel's pointers
for that side), gradient_bound() (per row, a bound on |G_ij|: the float16 scale) and temperature_shift(n)
(what the shifted sums of the temperature gradient miss per row, or None).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import accumulate_dtype
from .triton_common import TL_DTYPES, cast_output, inverse_temperature, round_by_hand
from .triton_support import empty_output, next_power_of_2
from .triton_tiles import (MODE_ALL, MODE_HARD_NEGATIVES, MODE_PER_POSITIVE, Mode, _backward_tiles, _dot_dtypes,
                           _launch, _load_rows, _logits_tile, _Side, _Tiles, _tile_masks)


# ----------------------------------------------------------------------------------------------------------
# The gradient of each mode: G_ij from the statistics of one side
# ----------------------------------------------------------------------------------------------------------

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
    """Per row of one side (Mode.HARD_NEGATIVES): the references and log-sums of the three sets
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
def _side_term(s, positive, MAX_ptr, LOGSUM_ptr, NPOS_ptr, W_ptr, stride_w, COEF_ptr, WP_ptr, offs, mask,
               ACC: tl.constexpr, MODE: tl.constexpr, AXIS: tl.constexpr):
    """(G, s - shift) of the tile s from one side's statistics, loaded at offs: the tile's rows (AXIS 0, the
    launch's own term) or its columns (AXIS 1, the other term: G seen transposed). MODE picks the formula:

        MODE_ALL                            _softmax_term: MAX, LOGSUM, NPOS, W = m, log S, |P|, w
        MODE_NEGATIVES, MODE_PER_POSITIVE   _variant_term: also COEF, WP = c, w'
        MODE_HARD_NEGATIVES                 _hard_term: MAX, LOGSUM = r_k, log S_k (3 per row), W = a (4 per row),
                                            COEF = (c_0, c_1)"""
    if MODE == MODE_HARD_NEGATIVES:
        r0, r1, r2, l0, l1, l2, a0, a1, a2, a3, c0, c1 = _load_hard_stats(MAX_ptr, LOGSUM_ptr, W_ptr, COEF_ptr, offs,
                                                                          mask, ACC)
        return _hard_term(s, r0, r1, r2, l0, l1, l2, a0, a1, a2, a3, c0, c1, positive, AXIS)
    else:
        row_max = tl.load(MAX_ptr + offs, mask=mask, other=0.0).to(ACC)
        log_sum = tl.load(LOGSUM_ptr + offs, mask=mask, other=0.0).to(ACC)
        n_positive = tl.load(NPOS_ptr + offs, mask=mask, other=0)
        weight = tl.load(W_ptr + offs * stride_w, mask=mask, other=0.0).to(ACC)
        if MODE == MODE_ALL:
            return _softmax_term(s, row_max, log_sum, n_positive, weight, positive, AXIS)
        else:
            coef = tl.load(COEF_ptr + offs, mask=mask, other=0.0).to(ACC)
            positive_weight = tl.load(WP_ptr + offs, mask=mask, other=0.0).to(ACC)
            return _variant_term(s, row_max, log_sum, n_positive, weight, coef, positive_weight, positive, AXIS,
                                 MODE == MODE_PER_POSITIVE)


@triton.jit
def _add_term(g, gs, term, shifted, allowed, COMPUTE_GS: tl.constexpr):
    """(g + the term on the allowed pairs, gs + its row sums against s - shift when COMPUTE_GS)."""
    term = tl.where(allowed, term, 0.0)
    if COMPUTE_GS:
        gs += tl.sum(term * tl.where(allowed, shifted, 0.0), axis=1)
    return g + term, gs


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------

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
        MODE: tl.constexpr = int(Mode.ALL), COEF_X_ptr=None, WP_X_ptr=None, COEF_Y_ptr=None, WP_Y_ptr=None,
        OWN_GRAD: tl.constexpr = True):
    """The gradient of X (the rows this program owns) through G: dU = sum_j G_ij v_j over the columns of split
    pid_s, features [pid_d*BLOCK_DO, +BLOCK_DO). X's own statistics give the term OWN_TERM, Y's the term
    OTHER_TERM (the column launch swaps X and Y, so G appears transposed and both launches share this code).

    FINAL: writes dX = normalize-backward((1/t) dU) in X's dtype. Otherwise writes dU (fp32/fp64) to
    DX[pid_s, row, feature] for _normalize_backward_kernel. COMPUTE_GS: GS[pid_s, row] = sum_j G_ij (s_ij - m),
    each term shifted by the max of the statistics it comes from. USE_GSCALE (float16): G is divided by the
    largest bound on |G| (the statistics' gradient_bound) before it is rounded to float16 for the product
    (w ~ 1/R would underflow float16, w' G would overflow it) and the product multiplied back. MODE (Mode, as
    int): the formula of G and what each side's statistics hold (_side_term): MAX_*, LOGSUM_*, NPOS_*, W_* and,
    for the variants and the hard negatives, COEF_* and WP_*.
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
            term, shifted = _side_term(s, positive, MAX_X_ptr, LOGSUM_X_ptr, NPOS_X_ptr, W_X_ptr, stride_wx, COEF_X_ptr,
                                       WP_X_ptr, offs_m, mask_m, ACC, MODE, 0)
            g, gs = _add_term(g, gs, term, shifted, allowed, COMPUTE_GS)
        if OTHER_TERM:
            term, shifted = _side_term(s, positive, MAX_Y_ptr, LOGSUM_Y_ptr, NPOS_Y_ptr, W_Y_ptr, stride_wy, COEF_Y_ptr,
                                       WP_Y_ptr, offs_n, mask_n, ACC, MODE, 1)
            g, gs = _add_term(g, gs, term, shifted, allowed, COMPUTE_GS)
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

def _launch_backward(own: _Side, other: _Side, own_stats, other_stats, temperature: Tensor, exclude_self: bool,
                     g_scale: Tensor | None, gs: Tensor | None, t: _Tiles, out: Tensor | None, final: bool) -> None:
    """One launch of _contrastive_backward_kernel: own's gradient into out, (n, D) in own's dtype when final,
    else fp32/fp64 partial sums (t.splits, n, D) for _finish_feature_grad; out None: the temperature's sums gs
    alone (own frozen: OWN_GRAD off, no product). own_stats / other_stats: a family's statistics type, or None
    for a side whose term is not taken."""
    x, y = own.x, other.x
    n_x, dim = x.shape
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    unused = own.inv
    absent = ((unused, unused, unused, unused, 0), (unused, unused))
    (stats_x, (coef_x, wp_x)), (stats_y, (coef_y, wp_y)) = (
        stats.kernel_args(unused) if stats is not None else absent for stats in (own_stats, other_stats))
    mode = max((st.mode for st in (own_stats, other_stats) if st is not None), default=Mode.ALL)
    own_grad = out is not None
    out = out if own_grad else own.inv  # not written
    # without the product the feature chunks would only repeat the same sums: one chunk
    grid = (triton.cdiv(n_x, t.block_m), t.splits, triton.cdiv(dim, t.block_do) if own_grad else 1)
    _launch(
        _contrastive_backward_kernel, grid,
        x, y, x.stride(0), y.stride(0), own.inv, other.inv, own.dx_scale, own.labels, other.labels, temperature,
        *stats_x, *stats_y,
        g_scale if g_scale is not None else unused, out, out.stride(0) if final else dim,
        gs if gs is not None else unused, n_x, y.shape[0], dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, OWN_TERM=own_stats is not None, OTHER_TERM=other_stats is not None,
        COMPUTE_GS=gs is not None, FINAL=final, USE_GSCALE=g_scale is not None, ROUND_BY_HAND=round_by_hand(x.dtype),
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d, BLOCK_DO=t.block_do,
        SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl, PRECISION=precision,
        MODE=int(mode), COEF_X_ptr=coef_x, WP_X_ptr=wp_x, COEF_Y_ptr=coef_y, WP_Y_ptr=wp_y, OWN_GRAD=own_grad,
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


def _gradients(rows: _Side, cols: _Side, row_stats, col_stats, temperature: Tensor, exclude_self: bool, mask):
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
        g_scale = torch.stack([s.gradient_bound().amax().to(torch.float32) for s in stats]).amax()
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
    shift_terms = row_stats.temperature_shift(n_rows)
    if shift_terms is not None:
        # the sums run shift-free (variants) or shifted by r_0 (hard negatives): each row's shift times sum_j G_ij
        # back, once per row (gs_factor halves the sum of the symmetric launch, which holds every term twice)
        gs[0] += shift_terms / gs_factor
    grad_t = empty_output((), temperature.dtype, x.device)
    _temperature_grad_kernel[(1,)](gs, temperature, grad_t, gs.numel(), gs_factor,
                                   ROUND_BY_HAND=round_by_hand(temperature.dtype), BLOCK=1024, num_warps=4)
    return grad_rows, grad_cols, grad_t
