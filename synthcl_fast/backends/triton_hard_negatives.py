"""Triton kernels for HCL's hard-negative statistics (the hard_negative_stats op; layout: triton_tiles.py).

The statistics (csrc/contrastive_cpu.cpp states them and their gradient; reference.hard_negative_row_stats):

    X0_i = lse_{Neg(i)} (1 + beta) s_ij     X1_i = lse_{Neg(i)} beta s_ij     X2_i = lse_{P(i)} s_ij
    Y_i  = mean_{P(i)} s_ij                 n_i = |Neg(i)|                    |P(i)|

each X_k kept as (r_k, log S_k): r_k the max of s over its set (the min for a negative scale c_k),
S_k = sum e^{c_k (s_j - r_k)} in float64, so every exponent is <= 0. The loss is formed in Python from them
(reference.hard_negative_row_loss, the same code for every backend). Its gradient, for upstream
g_ik = dLoss/dX_ik and h_i = dLoss/dY_i, is the shared backward kernel's Mode.HARD_NEGATIVES
(triton_gradients._hard_term), rows and columns launched as for the contrastive op:

    G_ij = g_i0 c_0 e^{c_0 (s_ij - r_i0) - log S_i0} + g_i1 c_1 e^{c_1 (s_ij - r_i1) - log S_i1}   j in Neg(i)
    G_ij = g_i2 e^{(s_ij - r_i2) - log S_i2} + h_i / |P(i)|                                       j in P(i)

`_hard_stats_kernel` runs over the column splits of the forward plan and `_merge_hard_stats_kernel` combines
the splits (triton_tiles.split_launch_and_merge, as the contrastive op's row statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import accumulate_dtype, register_hard_negative_op
from .triton_common import inverse_temperature
from .triton_gradients import _gradients
from .triton_support import empty_output
from .triton_tiles import (_NONE, Mode, _check_inputs, _column_tile, _device_guard, _load_rows, _Side, _sides,
                           split_launch_and_merge)


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# Launchers and ops
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HardNegativeStats:
    """Statistics of one side for the hard-negative backward: per row the references r_k and log-sums log S_k of
    the three sets (reference, log_sum: (R, 3); an empty set's log-sum read as 0), |P(i)| (n_positive), the
    coefficients a = (g_0 c_0, g_1 c_1, g_2, h / |P|) (coefficients: (R, 4), 0 for an empty set) and the
    scales (c_0, c_1). Read by triton_gradients._gradients as triton_contrastive.ContrastiveStats is."""

    reference: Tensor
    log_sum: Tensor
    n_positive: Tensor
    coefficients: Tensor
    scales: Tensor
    mode = Mode.HARD_NEGATIVES

    def kernel_args(self, unused: Tensor) -> tuple[tuple, tuple[Tensor, Tensor]]:
        """((MAX, LOGSUM, NPOS, W, stride_w), (COEF, WP)) of _contrastive_backward_kernel for this side."""
        stride = 0 if self.coefficients.shape[0] == 1 else self.coefficients.stride(0)
        return (self.reference, self.log_sum, self.n_positive, self.coefficients.reshape(-1), stride), (self.scales,
                                                                                                        unused)

    def gradient_bound(self) -> Tensor:
        """Per row, a bound on |G_ij| over j: sum_k |a_k| (each set's softmax term <= 1; the a_k are 0 for a
        row without the set)."""
        return self.coefficients.reshape(-1).view(-1, 4).abs().sum(dim=1)

    def temperature_shift(self, n_rows: int) -> Tensor:
        """What the sums of the temperature gradient, shifted by r_0, miss per row: r_0 sum_j G_ij, with
        sum_j G_ij = a_0 + a_1 + a_2 + a_3 |P| (0 for the empty sets)."""
        a = self.coefficients.reshape(-1).view(n_rows, 4)
        row_sums = a[:, 0] + a[:, 1] + a[:, 2] + a[:, 3] * self.n_positive.to(a.dtype)
        return self.reference[:, 0] * row_sums


def _hard_row_stats(rows: _Side, cols: _Side, temperature: Tensor, exclude_self: bool, scales: Tensor):
    """The outputs of hard_negative_stats_forward: _hard_stats_kernel, then _merge_hard_stats_kernel
    (split_launch_and_merge)."""
    x = rows.x
    n_x = x.shape[0]
    acc = accumulate_dtype(x.dtype)
    lse, ref, log_sum = (empty_output((n_x, 3), acc, x.device) for _ in range(3))
    positive_mean = empty_output((n_x,), acc, x.device)
    n_negative, n_positive = (empty_output((n_x,), torch.int32, x.device) for _ in range(2))
    outputs = (lse, positive_mean, n_negative, n_positive, ref, log_sum)
    split_launch_and_merge(_hard_stats_kernel, _merge_hard_stats_kernel, rows, cols, temperature, exclude_self,
                           parts=(((3,), acc), ((3,), torch.float64), ((), torch.float64), ((), torch.int32),
                                  ((), torch.int32)),
                           unsplit=(ref, log_sum, positive_mean, n_negative, n_positive), outputs=outputs,
                           inputs=(scales,))
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
    backward kernel's Mode.HARD_NEGATIVES (triton_gradients._hard_term), rows and columns as for the plain op."""
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
        stats = HardNegativeStats(row_reference.contiguous(), log_sum, row_n_positive.contiguous(), coefficients,
                                  _hard_scales(beta, anchors))
        return _gradients(rows, cols, stats, None, temperature.reshape(()), exclude_self, output_mask)


register_hard_negative_op(hard_negative_stats_forward, hard_negative_stats_backward)
