"""Triton helpers shared by the kernel modules (imported with them, never at `import synthcl_fast`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import MIN_TEMPERATURE
from .triton_support import empty_output, interpreting, split_float

INTERPRET = interpreting()  # what triton.jit saw when the kernels were defined
_MIN_TEMPERATURE = tl.constexpr(MIN_TEMPERATURE)

TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


def round_by_hand(dtype: torch.dtype) -> bool:
    """Whether cast_output must round to bfloat16 itself: the interpreter truncates float32 -> bfloat16 (and
    mangles float64 -> bfloat16), where the GPU rounds to nearest even."""
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def inverse_temperature(T_ptr, ACC: tl.constexpr):
    """1/t from the temperature tensor, or NaN where t is out of range (not finite or below MIN_TEMPERATURE):
    every result is then NaN, as on every backend (reference.py, conventions). No host synchronization."""
    t = tl.load(T_ptr).to(ACC)
    return tl.where((t >= _MIN_TEMPERATURE) & (t < float("inf")), 1.0 / t, float("nan"))


@triton.jit
def cast_output(x, DTYPE: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    """x (float32/float64) as DTYPE, rounded to nearest even (by hand through the float32 bits when
    ROUND_BY_HAND, for the interpreter; a plain .to() on the GPU)."""
    if ROUND_BY_HAND:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    else:
        return x.to(DTYPE)


@triton.jit
def _reduce_rows_kernel(LOSS_ptr, NPOS_ptr, OUT_ptr, WEIGHT_ptr, n_rows, factor_hi, factor_lo,
                        MEAN: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    """One program: WEIGHT = factor (/ max(#rows with NPOS > 0, 1) for MEAN), the upstream weight of every row,
    and OUT (+)= WEIGHT * sum(LOSS), summed in float64 in a fixed order."""
    total = tl.zeros([BLOCK], dtype=tl.float64)
    count = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, n_rows, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_rows
        total += tl.load(LOSS_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        if MEAN:
            count += (tl.load(NPOS_ptr + offs, mask=mask, other=0) > 0).to(tl.int32)
    weight = tl.cast(factor_hi, tl.float64) + tl.cast(factor_lo, tl.float64)
    if MEAN:
        weight = weight / tl.maximum(tl.sum(count, axis=0), 1).to(tl.float64)
    result = tl.sum(total, axis=0) * weight
    if ACCUMULATE:
        result += tl.load(OUT_ptr).to(tl.float64)
    tl.store(OUT_ptr, result.to(OUT_ptr.dtype.element_ty))
    tl.store(WEIGHT_ptr, weight.to(WEIGHT_ptr.dtype.element_ty))


def reduce_rows(row_loss, n_positive=None, factor: float = 1.0, into=None):
    """(loss, weight) as 0-d tensors of row_loss's dtype: weight = factor / max(#rows with n_positive > 0, 1)
    (factor alone without n_positive), loss (+)= weight * sum(row_loss) into `into` when given. One launch in
    place of the handful of small torch ops it replaces, which dominate small shapes."""
    loss = into if into is not None else empty_output((), row_loss.dtype, row_loss.device)
    weight = empty_output((), row_loss.dtype, row_loss.device)
    _reduce_rows_kernel[(1,)](row_loss, n_positive if n_positive is not None else row_loss, loss, weight,
                              row_loss.shape[0], *split_float(factor), MEAN=n_positive is not None,
                              ACCUMULATE=into is not None, BLOCK=1024, num_warps=4)
    return loss, weight
