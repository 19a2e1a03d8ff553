"""Triton kernels for the general contrastive op, its symmetric (CLIP) form and its variants (layout of the
Triton backend: triton_tiles.py).

The math (s_ij, m_i, log S_i, L_i, G_ij, the gradients) is stated once, in synthcl_fast/reference.py; the op
contract (outputs, row statistics, compute_grad) in backends/_ops.py. What is particular to these kernels:

    P_ij  = [a_i == c_j and a_i >= 0 and (i != j if exclude_self)]    (the same mask seen from either side)
    column statistics (symmetric op only): m'_j, log S'_j, |P'(j)| over the rows, the transposed problem
    G_ij  = w_i (p_ij - P_ij/|P(i)|)  [+ w'_j (p'_ij - P_ij/|P'(j)|)  symmetric]
    variants (Mode.NEGATIVES, Mode.PER_POSITIVE): m and S over the negatives only; G of
    triton_gradients._variant_term

How it runs (no R x K buffer anywhere; memory O((R + K) D)):

1. `_prepare_rows_kernel` (triton_tiles.py), once per input (once when Y is X): the rows the products take.
2. `_contrastive_forward_kernel`: one program per BLOCK_M rows and per split of the columns; online row
   statistics over BLOCK_N-column tiles (running max m, S = sum exp(s - m), the positive gap
   sum_p (s_p - m) moved with m, |P|), label, -1 and self masks evaluated per tile. With several splits
   (few rows, many columns: MoCo's R=256, K=65536) each writes its statistics and `_merge_row_stats_kernel`
   combines them in a fixed order (triton_tiles.split_launch_and_merge). The symmetric op runs it a second
   time on the transposed problem.
3. `_contrastive_backward_kernel` (triton_gradients.py), launched twice (once for one symmetric tensor,
   below): rows own dU (X's gradient) and loop over column tiles; columns own dV (Y's gradient) and loop over
   row tiles. Each recomputes s and G tile by tile (same formula, seen from either side; the symmetric G costs
   the same as a one-direction G), so every gradient element is reduced by one program in a fixed order:
   deterministic, no atomics. The row launch also sums G_ij (s_ij - m_i) per row for the temperature
   gradient. When one program holds a whole gradient row (no split, BLOCK_DO >= D) it applies the
   normalization backward in its epilogue; otherwise it writes fp32 partial sums and
   `_normalize_backward_kernel` adds them in split order.
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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import Denominator, accumulate_dtype, register_contrastive_op, register_variant_op
from .triton_common import inverse_temperature, reduce_rows
from .triton_gradients import _gradients
from .triton_support import empty_output, expsum_dtype
from .triton_tiles import (_MEAN, _NONE, Mode, _check_inputs, _column_tile, _device_guard, _empty_grads,
                           _dot_dtypes, _launch, _load_rows, _Side, _sides, split_launch_and_merge)


@triton.jit
def _log_sum_exp(at_max, rest):
    """log S = log(at_max + rest) without rounding the sum first: log(at_max) + log1p(rest / at_max), log1p(x) as
    log(u) x / (u - 1) with u = 1 + x rounded (x where u = 1; a few eps relative for every x >= 0). A small loss
    is log(1 + rest) with rest << 1: the log of a rounded 1 + rest keeps only eps absolute (csrc RowStats)."""
    x = rest / tl.where(at_max > 0, at_max, 1.0)
    u = 1.0 + x
    log1p = tl.where(u == 1.0, x, tl.log(u) * x / tl.where(u == 1.0, 1.0, u - 1.0))
    return tl.where(at_max > 0, tl.log(tl.where(at_max > 0, at_max, 1.0)) + log1p, tl.log(at_max + rest))


@triton.jit
def _store_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                     NPOS_ptr, LOSS_ptr):
    """m, log S, |P| and L_i = log S - gap / |P| (0 without a positive). An empty denominator (R = K = 1 with
    exclude_self) leaves m = -inf and log S = -inf, with no positive."""
    log_sum = _log_sum_exp(tl.where(mask_m, row_atmax, 1.0), tl.where(mask_m, row_rest, 0.0)).to(row_gap.dtype)
    loss = tl.where(row_npos > 0, log_sum - row_gap / tl.maximum(row_npos, 1).to(row_gap.dtype), 0.0)
    tl.store(MAX_ptr + offs_m, row_max, mask=mask_m)
    tl.store(LOGSUM_ptr + offs_m, log_sum, mask=mask_m)
    tl.store(NPOS_ptr + offs_m, row_npos, mask=mask_m)
    tl.store(LOSS_ptr + offs_m, loss, mask=mask_m)


@triton.jit
def _store_variant_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                             NPOS_ptr, LOSS_ptr, POSMEAN_ptr):
    """The variants' rows: the shift m (0 without negatives, where log S = -inf), log S over the negatives, |P|,
    LOSS = log S - gap / |P| (the "negatives" loss for w' = 1) and POSMEAN = m + gap / |P| (0 without P)."""
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    log_sum = _log_sum_exp(tl.where(mask_m, row_atmax, 1.0), tl.where(mask_m, row_rest, 0.0)).to(row_gap.dtype)
    mean_gap = row_gap / tl.maximum(row_npos, 1).to(row_gap.dtype)
    live = row_npos > 0
    tl.store(MAX_ptr + offs_m, shift, mask=mask_m)
    tl.store(LOGSUM_ptr + offs_m, log_sum, mask=mask_m)
    tl.store(NPOS_ptr + offs_m, row_npos, mask=mask_m)
    tl.store(LOSS_ptr + offs_m, tl.where(live, log_sum - mean_gap, 0.0), mask=mask_m)
    tl.store(POSMEAN_ptr + offs_m, tl.where(live, shift + mean_gap, 0.0), mask=mask_m)


@triton.jit
def _add_terms(row_atmax, row_rest, row_max, new_max, shift, shifted, SUM: tl.constexpr):
    """A tile's terms exp(shifted) (shifted = s - shift, -inf where excluded) added to the running S = at_max + rest,
    whose earlier terms all fall below the max where the max rose (moved there by e^(row_max - shift))."""
    rose = new_max > row_max
    row_rest = tl.where(rose, (row_atmax + row_rest) * tl.exp(row_max - shift).to(SUM), row_rest)
    row_atmax = tl.where(rose, 0.0, row_atmax)
    at_max = shifted == 0.0
    row_atmax += tl.sum(at_max.to(SUM), axis=1)
    row_rest += tl.sum(tl.where(at_max, 0.0, tl.exp(shifted)).to(SUM), axis=1)
    return row_atmax, row_rest


@triton.jit
def _contrastive_forward_kernel(
        X_ptr, Y_ptr, stride_x, stride_y, INV_X_ptr, INV_Y_ptr, LABEL_X_ptr, LABEL_Y_ptr, T_ptr,
        PART_MAX_ptr, PART_ATMAX_ptr, PART_REST_ptr, PART_GAP_ptr, PART_NPOS_ptr,
        MAX_ptr, LOGSUM_ptr, NPOS_ptr, LOSS_ptr,
        n_x, n_y, dim, n_per_split,
        EXCLUDE_SELF: tl.constexpr, FINAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D_CHUNK: tl.constexpr,
        DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, NEGATIVES_ONLY: tl.constexpr = False,
        POSMEAN_ptr=None, SUM: tl.constexpr = tl.float64):
    """Row statistics of rows [pid_m*BLOCK_M, +BLOCK_M) over columns [pid_s*n_per_split, +n_per_split).

    NEGATIVES_ONLY (the variants' statistics, contrastive_variant_forward; csrc/contrastive_cpu.cpp's
    kNegativesOnly): m and S over the negatives only (a row with no negative yet has m = -inf and its positive
    gap relative to 0); FINAL then also writes POSMEAN = mean_p s_ip, and MAX the shift (m, or 0 without
    negatives), LOSS = log S - gap / |P|.

    FINAL (a single split): writes MAX (m), LOGSUM (log S), NPOS (int32) and the row loss LOSS. Otherwise writes
    the split's max, sum of exp(s - max) in two parts (the terms at the max, and the rest), positive gap
    sum_p (s_p - max) and positive count to PART_*[pid_s]."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_scale = inverse_temperature(T_ptr, ACC) * tl.load(INV_X_ptr + offs_m, mask=mask_m, other=1.0).to(ACC)
    label_x = tl.load(LABEL_X_ptr + offs_m, mask=mask_m, other=-1)
    x_tile = 0.0
    if SINGLE_D_CHUNK:
        x_tile = _load_rows(X_ptr, stride_x, offs_m, mask_m, 0, dim, BLOCK_D).to(DOT)

    # S = row_atmax + row_rest: the terms at the max (each exactly 1) counted apart from the others, so that a small
    # loss log S = log1p(rest) keeps its relative accuracy (_log_sum_exp). Summed in float64 (SUM): in float32
    # every term added to a running sum near 1 would round at 1.2e-7 of it. SUM = float32 only measures what that
    # costs (triton_support.expsum_dtype).
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    row_atmax = tl.zeros([BLOCK_M], dtype=SUM)
    row_rest = tl.zeros([BLOCK_M], dtype=SUM)
    row_gap = tl.zeros([BLOCK_M], dtype=ACC)
    row_npos = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_begin = pid_s * n_per_split
    n_end = tl.minimum(n_begin + n_per_split, n_y)
    for start_n in range(n_begin, n_end, BLOCK_N):
        s, allowed, positive = _column_tile(
            x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
            start_n, n_end, dim, EXCLUDE_SELF, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
        if NEGATIVES_ONLY:
            # the positives out of the sum and of its max (a positive far above the negatives must not shift
            # their terms into underflow); the gap is kept relative to the shift, 0 until a negative is seen
            s_negative = tl.where(allowed & ~positive, s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s_negative, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_gap += row_npos.to(ACC) * (tl.where(row_max == float("-inf"), 0.0, row_max) - shift)
            row_atmax, row_rest = _add_terms(row_atmax, row_rest, row_max, new_max, shift, s_negative - shift[:, None],
                                             SUM)
            row_gap += tl.sum(tl.where(positive, s - shift[:, None], 0.0), axis=1)
        else:
            s_allowed = tl.where(allowed, s, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(s_allowed, axis=1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # nothing allowed yet: exp() at 0, not NaN
            shifted = s_allowed - shift[:, None]
            # the earlier tiles' terms, moved from row_max to the new shift (no positive yet: nothing to move)
            row_gap += row_npos.to(ACC) * (tl.where(row_npos > 0, row_max, shift) - shift)
            row_atmax, row_rest = _add_terms(row_atmax, row_rest, row_max, new_max, shift, shifted, SUM)
            row_gap += tl.sum(tl.where(positive, shifted, 0.0), axis=1)
        row_npos += tl.sum(positive.to(tl.int32), axis=1)
        row_max = new_max

    if FINAL:
        if NEGATIVES_ONLY:
            _store_variant_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr,
                                     LOGSUM_ptr, NPOS_ptr, LOSS_ptr, POSMEAN_ptr)
        else:
            _store_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                             NPOS_ptr, LOSS_ptr)
    else:
        offs_part = pid_s * n_x + offs_m
        tl.store(PART_MAX_ptr + offs_part, row_max, mask=mask_m)
        tl.store(PART_ATMAX_ptr + offs_part, row_atmax, mask=mask_m)
        tl.store(PART_REST_ptr + offs_part, row_rest, mask=mask_m)
        tl.store(PART_GAP_ptr + offs_part, row_gap, mask=mask_m)
        tl.store(PART_NPOS_ptr + offs_part, row_npos, mask=mask_m)


@triton.jit
def _merge_row_stats_kernel(PART_MAX_ptr, PART_ATMAX_ptr, PART_REST_ptr, PART_GAP_ptr, PART_NPOS_ptr,
                            MAX_ptr, LOGSUM_ptr, NPOS_ptr, LOSS_ptr, n_x, n_splits,
                            ACC: tl.constexpr, BLOCK_M: tl.constexpr, NEGATIVES_ONLY: tl.constexpr = False,
                            POSMEAN_ptr=None, SUM: tl.constexpr = tl.float64):
    """Merges the per-split row statistics in split order (deterministic): each split's sum and positive gap
    are moved from its own max to the row max, then added. NEGATIVES_ONLY: a split's gap is relative to its max,
    or to 0 where it saw no negative (max -inf), and the variants' statistics are stored."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_x
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    for split in range(0, n_splits):
        row_max = tl.maximum(row_max, tl.load(PART_MAX_ptr + split * n_x + offs_m, mask=mask_m, other=0.0))
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_atmax = tl.zeros([BLOCK_M], dtype=SUM)
    row_rest = tl.zeros([BLOCK_M], dtype=SUM)
    row_gap = tl.zeros([BLOCK_M], dtype=ACC)
    row_npos = tl.zeros([BLOCK_M], dtype=tl.int32)
    for split in range(0, n_splits):
        offs_part = split * n_x + offs_m
        part_max = tl.load(PART_MAX_ptr + offs_part, mask=mask_m, other=float("-inf"))
        part_npos = tl.load(PART_NPOS_ptr + offs_part, mask=mask_m, other=0)
        part_atmax = tl.load(PART_ATMAX_ptr + offs_part, mask=mask_m, other=0.0)
        part_rest = tl.load(PART_REST_ptr + offs_part, mask=mask_m, other=0.0)
        # a split whose max is the row's keeps its terms at the max; the others' terms all lie below it
        at_row_max = part_max == row_max
        row_atmax += tl.where(at_row_max, part_atmax, 0.0)
        row_rest += tl.where(at_row_max, part_rest, (part_atmax + part_rest) * tl.exp(part_max - shift).to(SUM))
        row_gap += tl.load(PART_GAP_ptr + offs_part, mask=mask_m, other=0.0)
        if NEGATIVES_ONLY:
            row_gap += part_npos.to(ACC) * (tl.where(part_max == float("-inf"), 0.0, part_max) - shift)
        else:
            row_gap += part_npos.to(ACC) * (tl.where(part_npos > 0, part_max, shift) - shift)
        row_npos += part_npos
    if NEGATIVES_ONLY:
        _store_variant_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                                 NPOS_ptr, LOSS_ptr, POSMEAN_ptr)
    else:
        _store_row_stats(row_max, row_atmax, row_rest, row_gap, row_npos, offs_m, mask_m, MAX_ptr, LOGSUM_ptr,
                         NPOS_ptr, LOSS_ptr)


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


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------

def _flat_weight(weight: Tensor) -> tuple[Tensor, int]:
    """(the upstream weights as the kernel reads them, their stride: 0 for one weight for all rows)."""
    flat = weight if weight.dim() == 1 else weight.reshape(-1 if weight.dim() == 2 else 1)
    return flat, 0 if weight.dim() == 0 or weight.shape[0] == 1 else weight.stride(0)


@dataclass(frozen=True)
class ContrastiveStats:
    """Statistics of one side of the contrastive op or a variant: m, log S, |P| per row and, for the backward,
    the upstream weight w per row (weight; a 0-d or one-element tensor: one weight for all). The variants
    (mode NEGATIVES or PER_POSITIVE): m and S over the negatives, c_i (coef) and w'_i (positive_weight).
    The backward (triton_gradients._gradients) reads it through mode, kernel_args, gradient_bound and
    temperature_shift, as it reads triton_hard_negatives.HardNegativeStats."""

    row_max: Tensor
    log_sum: Tensor
    n_positive: Tensor
    weight: Tensor | None = None
    mode: Mode = Mode.ALL
    coef: Tensor | None = None
    positive_weight: Tensor | None = None

    def weighted(self, weight: Tensor) -> ContrastiveStats:
        return dataclasses.replace(self, weight=weight)

    def outputs(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.row_max, self.log_sum, self.n_positive

    def kernel_args(self, unused: Tensor) -> tuple[tuple, tuple[Tensor, Tensor]]:
        """((MAX, LOGSUM, NPOS, W, stride_w), (COEF, WP)) of _contrastive_backward_kernel for this side."""
        weight, stride = _flat_weight(self.weight)
        variant = (self.coef, self.positive_weight) if self.mode != Mode.ALL else (unused, unused)
        return (self.row_max, self.log_sum, self.n_positive, weight, stride), variant

    def gradient_bound(self) -> Tensor:
        """Per row, a bound on |G_ij| over j (the float16 backward divides G by its max so that G stays in
        [-1, 1] when rounded to float16 for the products; csrc/contrastive_cuda.cu's weight_max, the same rule),
        0 for a row without a positive (its G is 0):

            plain op                     |G_ij| <= |w_i|               (|p_ij - [j in P(i)] / |P(i)|| <= 1)
            "negatives", "per_positive"  |G_ij| <= |w_i| (|w'_i| + 2)  (c_i p_ij <= 1, sigmoid <= 1, |w'_i| / |P(i)|)
        """
        bound = _flat_weight(self.weight)[0].abs()
        if self.mode != Mode.ALL:
            bound = bound * (self.positive_weight.abs() + 2)
        return torch.where(self.n_positive > 0, bound, 0.0)

    def temperature_shift(self, n_rows: int) -> Tensor | None:
        """What the shift-free sums of the temperature gradient miss per row, or None (the plain op shifts by m
        and misses nothing): sum_j G_ij = w_i (1 - w'_i) in the variants (m_i = 0 for a row without negatives),
        so m_i w_i (1 - w'_i)."""
        if self.mode == Mode.ALL:
            return None
        return torch.where(self.n_positive > 0, self.row_max * _flat_weight(self.weight)[0].expand(n_rows)
                           * (1 - self.positive_weight), 0.0)


def _row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool
               ) -> tuple[ContrastiveStats, Tensor]:
    """(statistics, row loss) of every row against all columns."""
    x = rows.x
    n_x = x.shape[0]
    acc = accumulate_dtype(x.dtype)
    row_max, log_sum, loss = (empty_output((n_x,), acc, x.device) for _ in range(3))
    npos = empty_output((n_x,), torch.int32, x.device)
    sum_torch, sum_tl = {"float64": (torch.float64, tl.float64), "float32": (torch.float32, tl.float32)}[expsum_dtype()]
    split_launch_and_merge(_contrastive_forward_kernel, _merge_row_stats_kernel, rows, cols, temperature,
                           exclude_self, parts=(((), acc), ((), sum_torch), ((), sum_torch), ((), acc), ((), torch.int32)),
                           unsplit=(row_max, row_max, row_max, row_max, npos), outputs=(row_max, log_sum, npos, loss),
                           stats_kwargs=dict(SUM=sum_tl), merge_kwargs=dict(SUM=sum_tl))
    return ContrastiveStats(row_max, log_sum, npos), loss


def _variant_row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool, positive_weight: Tensor,
                       denominator: int) -> tuple[ContrastiveStats, Tensor, Tensor]:
    """(statistics with c_i and w'_i, row loss, mean_p s_ip) of the variants: m, S over the negatives
    (_contrastive_forward_kernel with NEGATIVES_ONLY), then for "per_positive" the positives' pass
    (_positive_terms_kernel). The row loss (reference.contrastive_loss_variant; 0 without a positive):
        "negatives"     L_i = (log S_i - gap_i / |P|) + (1 - w'_i) mean_p s_ip
        "per_positive"  L_i = sum_p softplus(z_ip) / |P| + (1 - w'_i) mean_p s_ip,  c_i = sum_p sigmoid(z_ip) / |P|
    (the weight term is exactly 0 for w' = 1)."""
    x, y = rows.x, cols.x
    n_x, dim = x.shape
    acc = accumulate_dtype(x.dtype)
    row_max, log_sum, loss, positive_mean = (empty_output((n_x,), acc, x.device) for _ in range(4))
    npos = empty_output((n_x,), torch.int32, x.device)
    negatives_only = dict(NEGATIVES_ONLY=True, POSMEAN_ptr=positive_mean)
    t = split_launch_and_merge(_contrastive_forward_kernel, _merge_row_stats_kernel, rows, cols, temperature,
                               exclude_self, parts=(((), acc), ((), torch.float64), ((), torch.float64), ((), acc),
                                                    ((), torch.int32)),
                               unsplit=(row_max, row_max, row_max, row_max, npos), outputs=(row_max, log_sum, npos, loss),
                               stats_kwargs=negatives_only, merge_kwargs=negatives_only)
    live = npos > 0
    count = npos.clamp_min(1).to(acc)
    weight_term = (1 - positive_weight) * positive_mean
    if denominator == int(Denominator.PER_POSITIVE):
        softplus_sum, sigmoid_sum = (empty_output((n_x,), torch.float64, x.device) for _ in range(2))
        dot, acc_tl, precision = _dot_dtypes(x.dtype)
        _launch(
            _positive_terms_kernel, (triton.cdiv(n_x, t.block_m),),
            x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature,
            row_max, log_sum, softplus_sum, sigmoid_sum, n_x, y.shape[0], dim, EXCLUDE_SELF=exclude_self,
            BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d, SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot,
            ACC=acc_tl, PRECISION=precision, num_warps=t.num_warps, num_stages=t.num_stages)
        loss = torch.where(live, (softplus_sum / count).to(acc) + weight_term, 0.0)
        coef = (sigmoid_sum / count).to(acc)
    else:
        loss = torch.where(live, loss + weight_term, 0.0)
        coef = torch.ones_like(loss)
    return ContrastiveStats(row_max, log_sum, npos, None, Mode(denominator), coef, positive_weight), loss, positive_mean


def _reduce(row_loss: Tensor, n_positive: Tensor, reduction: int, factor: float = 1.0, into: Tensor | None = None):
    """(loss, upstream weight of every row as a 0-d tensor) for reduction mean/sum, times factor; with into,
    the loss is added to into (the symmetric op: half the row loss plus half the column loss)."""
    return reduce_rows(row_loss, n_positive if reduction == _MEAN else None, factor, into)


def _check_stats(n: int, dtype: torch.dtype, *stats: Tensor) -> None:
    for t, name in zip(stats, ("max", "log_sum", "n_positive")):
        want = torch.int32 if name == "n_positive" else accumulate_dtype(dtype)
        torch._check(t.shape == (n,) and t.dtype == want,
                     lambda: f"{name} must have shape ({n},) and dtype {want}, got {t.dtype} {tuple(t.shape)}")


def _check_variant(anchors: Tensor, positive_weight: Tensor, denominator: int) -> None:
    n, acc = anchors.shape[0], accumulate_dtype(anchors.dtype)
    torch._check(denominator in (int(Denominator.NEGATIVES), int(Denominator.PER_POSITIVE)),
                 lambda: f"denominator code must be 1 (negatives) or 2 (per_positive), got {denominator}")
    torch._check(positive_weight.shape == (n,) and positive_weight.dtype == acc
                 and positive_weight.device == anchors.device,
                 lambda: f"positive_weight must have shape ({n},) and dtype {acc} on {anchors.device}, got "
                         f"{positive_weight.dtype} {tuple(positive_weight.shape)} on {positive_weight.device}")


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
        stats = ContrastiveStats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
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
        row_stats = ContrastiveStats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
                                     grad_rows.contiguous())
        col_stats = ContrastiveStats(col_max.contiguous(), col_log_sum.contiguous(), col_n_positive.contiguous(),
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
        stats = ContrastiveStats(row_max.contiguous(), row_log_sum.contiguous(), row_n_positive.contiguous(),
                                 grad_rows.contiguous(), Mode(denominator), row_coef.contiguous(),
                                 positive_weight.contiguous())
        return _gradients(rows, cols, stats, None, temperature.reshape(()), exclude_self, output_mask)


register_contrastive_op(contrastive_forward, contrastive_backward, sides=1)
register_contrastive_op(symmetric_contrastive_forward, symmetric_contrastive_backward, sides=2)
register_variant_op(contrastive_variant_forward, contrastive_variant_backward)
